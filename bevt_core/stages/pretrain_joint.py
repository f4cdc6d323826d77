"""Stage ``pretrain-joint``: BEVT's two-stream pretraining (docs/official-behaviour.md §4).

Every micro-step takes one video batch (tube masks) and one image batch (block masks) through
the same backbone, sums the two masked-token losses and does one backward. The video loader
defines the epoch; the image stream cycles. Initialised by 2D->3D inflation from the
``pretrain-image`` checkpoint (``--init``). Writes ``bevt_pretrain.pt`` with the official key
names, which ``finetune`` loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bevt_core import storage
from bevt_core.config import ConfigError, at_least, non_empty, option
from bevt_core.loading import pretrain as pretrain_data
from bevt_core.loading.streams import StepStream, loader
from bevt_core.loading.targets import tokenizer_of
from bevt_core.models import load_checkpoint, read_state_dict
from bevt_core.recipes import PRETRAIN_JOINT, resolve
from bevt_core.stages.training import TrainStageResult, build_from, session
from bevt_core.tracking import masked
from bevt_core.tracking.config import TrackingConfig
from bevt_core.train.engine import Task
from bevt_core.train.optim import param_groups, pretrain_keys
from bevt_core.train.options import ModelOptions, OptimConfig, RunConfig, ScheduleConfig

KEYS = ("loss", "loss_video", "acc_video", "loss_image", "acc_image")


@dataclass
class PretrainJointConfig:
    videos: str = option(help="Video shard directory (pretraining shards: frame interval 8).", check=non_empty)
    video_tokens: str = option(help="Token directory for --videos.", check=non_empty)
    run: RunConfig = option(RunConfig, help="Execution settings.")
    images: str = option("", help="Image shard directory. Empty: the video stream alone (the video-only ablation).")
    image_tokens: str = option("", help="Token directory for --images.")
    init: str = option(
        "",
        help="Initial weights: the pretrain-image checkpoint (2D, inflated to 3D) or a 3D "
        "BEVT checkpoint. Empty: random init.",
    )
    init_lm_head: bool = option(
        False,
        help="Also take the token classifier (cls_head.lm_head) from --init. The "
        "official joint stage starts it fresh and loads only the backbone.",
    )
    preset: str = option("swin-b", help=f"Recipe the unset fields come from: {', '.join(PRETRAIN_JOINT)}.")
    targets: str = option(
        "stored",
        help="stored: ids of one of the token directory's views; online: a fresh augmentation on every read, "
        "tokenized inside the step, as the official pipeline does; replay: a stored view tokenized inside the step "
        "(trains exactly like stored).",
        choices=("stored", "online", "replay"),
    )
    image_batch_size: int | None = option(help="Images per rank per micro-step.", check=at_least(1), preset=True)
    clip_len: int | None = option(help="Frames per clip.", check=at_least(2), preset=True)
    frame_interval: int | None = option(
        help="Frames of the video between a clip's frames, counted as the official "
        "SampleFrames counts them (the shards' stride must divide it).",
        check=at_least(1),
        preset=True,
    )
    model: ModelOptions = option(ModelOptions, help="Model.")
    optim: OptimConfig = option(OptimConfig, help="Optimizer.")
    schedule: ScheduleConfig = option(ScheduleConfig, help="Schedule.")
    tracking: TrackingConfig = option(TrackingConfig, help="MLflow tracking.")

    def __post_init__(self) -> None:
        resolve(self, PRETRAIN_JOINT)

    def check(self) -> str | None:
        if bool(self.images) != bool(self.image_tokens):
            return "image_tokens: give both --images and --image-tokens, or neither (video stream alone)"
        return None


def vocabulary(streams: list[StepStream]) -> int:
    """The one vocabulary of the streams' tokens (the shared lm_head needs one)."""
    records = [stream.token_set.record["tokenizer"] for stream in streams]
    if len({int(r["vocab_size"]) for r in records}) != 1 or len({r["sha256"] for r in records}) != 1:
        raise ConfigError(
            "image_tokens: made by another tokenizer than video_tokens; the shared lm_head needs one "
            "vocabulary (tokenize both with the same weights or codebook)"
        )
    return int(records[0]["vocab_size"])


def joint_batches(videos: StepStream, images: StepStream | None, workers: int):
    """``batches(epoch, start)`` for the engine: every video micro-batch with the next image micro-batch. The
    image stream cycles through the whole run, started at the same global position as the videos."""
    image_iter = None

    def batches(epoch: int, start: int):
        nonlocal image_iter
        videos.set_position(epoch, start)
        if images is None:
            yield from ({"video": video, "image": None} for video in loader(videos, workers))
            return
        if image_iter is None:
            position = epoch * videos.micro_steps + start
            images.set_position(position // images.micro_steps, position % images.micro_steps)
            image_iter = iter(loader(images, workers))
        for video in loader(videos, workers):
            yield {"video": video, "image": next(image_iter)}

    return batches


HEAD_PREFIXES = ("cls_head.", "lm_head.")


def initialise(model: torch.nn.Module, init: str, lm_head: bool, say: Callable[[str], None]) -> None:
    """Load ``init`` (2D: inflated) into the model; without ``lm_head`` only its backbone, as the official joint
    stage does: the image checkpoint goes to ``backbone.pretrained`` and the token classifier starts fresh
    (docs/official-behaviour.md §1.10)."""
    state = read_state_dict(init)
    if not lm_head:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    loaded = load_checkpoint(model, state, strict=False)
    modules = sorted({k.rsplit(".", 2)[0] for k in loaded.missing_keys})
    left = f"{len(loaded.missing_keys)} tensors left at their init: {', '.join(modules[:6])}"
    say(f"initialised from {init} ({left})")


def run(cfg: PretrainJointConfig) -> TrainStageResult:
    with session(cfg, "pretrain-joint", PRETRAIN_JOINT) as job:
        env, settings = job.env, cfg.run
        common = dict(mode=cfg.targets, rank=env.rank, world=env.world, seed=settings.seed)
        videos = pretrain_data.stream(
            cfg.videos,
            cfg.video_tokens,
            clip_len=cfg.clip_len,
            frame_interval=cfg.frame_interval,
            micro_batch=settings.batch_size,
            **common,
        )
        images = (
            pretrain_data.stream(
                cfg.images,
                cfg.image_tokens,
                clip_len=1,
                frame_interval=1,
                micro_batch=cfg.image_batch_size,
                cycle=True,
                **common,
            )
            if cfg.images
            else None
        )
        model = build_from(
            cfg.model, settings, vocab_size=vocabulary([videos] + ([images] if images else [])), num_frames=cfg.clip_len
        )
        if cfg.init:
            initialise(model, cfg.init, cfg.init_lm_head, job.say)
        job.model_ready()
        ids = pretrain_data.online_ids(tokenizer_of(videos.token_set)) if cfg.targets != "stored" else None

        def loss(net, batch):
            image = batch["image"]
            return net(
                video=pretrain_data.video_inputs(batch["video"], ids),
                image=None if image is None else pretrain_data.image_inputs(image, ids),
            )

        task = Task(
            model,
            param_groups(model, cfg.optim.lr, cfg.optim.weight_decay, pretrain_keys()),
            videos.micro_steps,
            settings.batch_size,
            joint_batches(videos, images, settings.workers),
            loss,
            find_unused_parameters=True,
        )
        result = job.train(task)
        weights = storage.join(settings.work_dir, "bevt_pretrain.pt")
        meta = {"format": "bevt-3d", "model": cfg.model.name}
        if job.export(result, weights, model.state_dict(), meta) and job.tracker.run_id:
            videos.set_position(0, 0)
            clip, in_mask, out_mask, target = pretrain_data.video_inputs(next(iter(loader(videos, 0))), ids)
            job.tracker.artifact_bytes(
                "plots/masked_prediction.png",
                masked.figure(
                    model,
                    clip,
                    in_mask,
                    out_mask,
                    target,
                    videos.token_set,
                    "pretrain-joint: video stream (tube masks), first frame",
                ),
            )
        keys = KEYS if images is not None else tuple(k for k in KEYS if "image" not in k)
        return TrainStageResult.of("pretrain-joint", settings.work_dir, weights, result, keys, job.tracker.run_id)
