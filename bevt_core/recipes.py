"""Every training recipe, once: what a stage's ``--preset`` decides, as typed values.

A :class:`Recipe` holds the config sections a preset fills (model, optimizer, schedule, run, clip)
and the few stage-level values (loss settings, stream sizes). A stage config resolves its preset
with :func:`resolve`: every ``preset=True`` field still unset is taken from the recipe, and the
model's window and drop path default to its architecture preset in :mod:`bevt_core.models`, so no
architecture value is written twice. ``evaluate`` resolves the finetune recipes the same way and
takes their ``clip`` section.

Where the values come from: docs/official-behaviour.md §4.3 (pretraining), §5.1 (finetuning),
Q1 (no image-stream recipe was released: the joint stage's image-stream settings are used) and
Q3 (no Diving48 recipe: K400's optimisation with SSv2-style sampling). The ``tiny`` recipes are
ours: CPU-sized (64 px, 8 frames, a 32-wide Swin) for the demo, the study and the tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bevt_core.config import ConfigError, fill_from, unfilled
from bevt_core.loading.clip_spec import ClipOptions
from bevt_core.train.options import ModelOptions, OptimConfig, RunConfig, ScheduleConfig


@dataclass(frozen=True)
class Recipe:
    model: ModelOptions
    optim: OptimConfig
    schedule: ScheduleConfig
    run: RunConfig  # the preset part only: batch_size, global_batch, precision
    clip: ClipOptions | None = None  # finetune and evaluate
    label_smoothing: float | None = None  # finetune
    mixup: float | None = None  # finetune
    ema_momentum: float | None = None  # finetune
    image_batch_size: int | None = None  # pretrain-joint
    clip_len: int | None = None  # pretrain-joint
    frame_interval: int | None = None  # pretrain-joint, in frames of the video


def _run(batch_size: int, global_batch: int, precision: str) -> RunConfig:
    return RunConfig(batch_size=batch_size, global_batch=global_batch, precision=precision)


PRETRAIN_OPTIM = OptimConfig(lr=5e-4, weight_decay=0.05, groups="pretrain", clip_grad=3.0)
TINY_PRETRAIN_MODEL = ModelOptions("bevt-tiny", drop_path_rate=0.0)

PRETRAIN_IMAGE: dict[str, Recipe] = {
    "swin-b": Recipe(
        ModelOptions("bevt-swin-b"),
        PRETRAIN_OPTIM,
        ScheduleConfig(epochs=800, warmup_epochs=10, cosine_by_epoch=False),
        _run(64, 2048, "bf16"),
    ),
    "tiny": Recipe(
        TINY_PRETRAIN_MODEL,
        dataclasses.replace(PRETRAIN_OPTIM, lr=2e-3),
        ScheduleConfig(epochs=8, warmup_epochs=1, cosine_by_epoch=False),
        _run(16, 16, "fp32"),
    ),
}

# Global batches are the official runs' (the accumulation follows from the job's world size):
# swin_base_patch244_window877_bevt_in1k_k400.py: 4 clips + 32 images per GPU per micro-step, 2 micro-steps
# per update on 32 GPUs, so 256 clips + 2048 images per optimizer step; the image stage is given the joint
# stage's 2048 images. The finetunes: 64 clips per step on 8 GPUs (K400 2 x 4, SSv2 1 x 8).
PRETRAIN_JOINT: dict[str, Recipe] = {
    "swin-b": Recipe(
        ModelOptions("bevt-swin-b"),
        PRETRAIN_OPTIM,
        ScheduleConfig(epochs=150, warmup_epochs=10, cosine_by_epoch=False),
        _run(4, 256, "bf16"),
        image_batch_size=32,
        clip_len=16,
        frame_interval=8,
    ),
    "tiny": Recipe(
        TINY_PRETRAIN_MODEL,
        dataclasses.replace(PRETRAIN_OPTIM, lr=1e-3),
        ScheduleConfig(epochs=6, warmup_epochs=1, cosine_by_epoch=False),
        _run(4, 8, "fp32"),
        image_batch_size=8,
        clip_len=8,
        frame_interval=1,
    ),
}

K400_OPTIM = OptimConfig(lr=3e-4, weight_decay=0.001, groups="layer_decay", clip_grad=40.0)
SSV2_OPTIM = OptimConfig(lr=5e-4, weight_decay=0.05, groups="backbone_mult", clip_grad=0.0)
FINETUNE_SCHEDULE = ScheduleConfig(epochs=60, warmup_epochs=2.5, cosine_by_epoch=True)
K400_CLIP = ClipOptions(
    clip_len=32,
    frame_interval=2,
    sampling="interval",
    crop=224,
    flip=0.5,
    rand_augment="off",
    erase=0.0,
    test_clips=4,
    test_crops=3,
)
SSV2_CLIP = ClipOptions(
    clip_len=32,
    frame_interval=1,
    sampling="uniform",
    crop=224,
    flip=0.0,
    rand_augment="imgaug-n4-m7",
    erase=0.25,
    test_clips=1,
    test_crops=3,
)
NO_REGULARISATION = dict(label_smoothing=0.0, mixup=0.0, ema_momentum=0.0)

# The tiny recipes: the camera-motion task's motion is learned late (the loss sits at chance for a few
# hundred steps), hence 100 epochs for the temporal recipe. Layer decay keeps the pretrained trunk close to
# its init while the head learns, as in the K400 recipe.
TINY_RECOGNIZER = ModelOptions("recognizer-tiny", drop_path_rate=0.0)
TINY_SCHEDULE = ScheduleConfig(epochs=12, warmup_epochs=1, cosine_by_epoch=False)
TINY_RUN = _run(4, 8, "fp32")

FINETUNE: dict[str, Recipe] = {
    "k400-swin-b": Recipe(
        ModelOptions("k400-swin-b"), K400_OPTIM, FINETUNE_SCHEDULE, _run(2, 64, "bf16"), K400_CLIP, **NO_REGULARISATION
    ),
    "ssv2-swin-b": Recipe(
        ModelOptions("ssv2-swin-b"),
        SSV2_OPTIM,
        FINETUNE_SCHEDULE,
        _run(1, 64, "bf16"),
        SSV2_CLIP,
        label_smoothing=0.1,
        mixup=0.0,
        ema_momentum=2e-4,
    ),
    "diving48-swin-b": Recipe(
        ModelOptions("diving48-swin-b"),
        K400_OPTIM,
        FINETUNE_SCHEDULE,
        _run(2, 64, "bf16"),
        dataclasses.replace(SSV2_CLIP, rand_augment="off", erase=0.0, flip=0.0),
        **NO_REGULARISATION,
    ),
    "k400-tiny": Recipe(
        TINY_RECOGNIZER,
        dataclasses.replace(K400_OPTIM, lr=2e-3, weight_decay=0.05),
        TINY_SCHEDULE,
        TINY_RUN,
        dataclasses.replace(K400_CLIP, clip_len=8, frame_interval=3, crop=64, test_clips=2),
        **NO_REGULARISATION,
    ),
    "ssv2-tiny": Recipe(
        TINY_RECOGNIZER,
        dataclasses.replace(SSV2_OPTIM, lr=2e-3),
        dataclasses.replace(TINY_SCHEDULE, epochs=100),
        TINY_RUN,
        dataclasses.replace(SSV2_CLIP, clip_len=8, crop=64, rand_augment="off"),
        label_smoothing=0.1,
        mixup=0.0,
        ema_momentum=0.0,
    ),
}


def _architecture_defaults(model: ModelOptions) -> None:
    """Window and drop path the recipe leaves to the architecture preset."""
    from bevt_core.models import preset_config  # torch: only when a config is resolved, not when listing recipes

    try:
        swin = preset_config(model.name).swin
    except ValueError as e:
        raise ConfigError(f"model.name: {e}") from None
    if model.drop_path_rate is None:
        model.drop_path_rate = swin.drop_path_rate
    if model.window_size is None:
        model.window_size = swin.window_size


def resolve(cfg: Any, recipes: dict[str, Recipe]) -> None:
    """Fill ``cfg``'s unset preset fields from ``recipes[cfg.preset]``; raise naming a field still unset."""
    if cfg.preset not in recipes:
        raise ConfigError(f"preset: must be one of {', '.join(recipes)}; got {cfg.preset!r}")
    fill_from(cfg, recipes[cfg.preset])
    model = getattr(cfg, "model", None)
    if model is not None and model.name is not None:
        _architecture_defaults(model)
    name = unfilled(cfg)
    if name:
        raise ConfigError(f"{name}: the preset {cfg.preset!r} sets no value; give one")
