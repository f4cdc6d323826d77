"""Stage ``pretrain-image``: the image stream alone (BEiT-style masked image modeling).

Block-masked images from image shards predict their precomputed token ids (the token directory
``bevt tokenize`` wrote), or ids computed inside the step (``--targets online``). The product is
a 2D Swin checkpoint (``image_encoder.pt``: a 2D ``patch_embed``, 2D relative-position tables,
the image decoder and ``lm_head``) that ``pretrain-joint`` inflates to 3D (docs/official-behaviour.md §1.10). The
official image-stream recipe was never released (docs/official-behaviour.md Q1); the swin-b preset uses the joint
stage's image-stream settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bevt_core import storage
from bevt_core.config import non_empty, option
from bevt_core.loading import pretrain as pretrain_data
from bevt_core.loading.streams import loader
from bevt_core.loading.targets import tokenizer_of
from bevt_core.models.checkpoint import TABLE_KEY
from bevt_core.recipes import PRETRAIN_IMAGE, resolve
from bevt_core.stages.training import TrainStageResult, build_from, session
from bevt_core.tracking import masked
from bevt_core.tracking.config import TrackingConfig
from bevt_core.train.engine import Task
from bevt_core.train.optim import param_groups, pretrain_keys
from bevt_core.train.options import ModelOptions, OptimConfig, RunConfig, ScheduleConfig

KEYS = ("loss", "loss_image", "acc_image")


@dataclass
class PretrainImageConfig:
    images: str = option(help="Image shard directory (`bevt shard --modality image`).", check=non_empty)
    image_tokens: str = option(help="Token directory for --images (`bevt tokenize`).", check=non_empty)
    run: RunConfig = option(RunConfig, help="Execution settings.")
    preset: str = option("swin-b", help=f"Recipe the unset fields come from: {', '.join(PRETRAIN_IMAGE)}.")
    targets: str = option(
        "stored",
        help="stored: ids of one of the token directory's views; online: a fresh augmentation on every read, "
        "tokenized inside the step, as the official pipeline does; replay: a stored view tokenized inside the step "
        "(trains exactly like stored).",
        choices=("stored", "online", "replay"),
    )
    model: ModelOptions = option(ModelOptions, help="Model.")
    optim: OptimConfig = option(OptimConfig, help="Optimizer.")
    schedule: ScheduleConfig = option(ScheduleConfig, help="Schedule.")
    tracking: TrackingConfig = option(TrackingConfig, help="MLflow tracking.")

    def __post_init__(self) -> None:
        resolve(self, PRETRAIN_IMAGE)


def image_checkpoint(state: dict[str, torch.Tensor], window_size: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """The 2D Swin view of a pretraining model: the 2D patch embedding as ``patch_embed``, each 3D
    table's zero-temporal-offset slice (what the image path reads), no video-only modules."""
    wd, wh, ww = window_size
    plane = (2 * wh - 1) * (2 * ww - 1)
    out = {}
    for key, value in state.items():
        if key.startswith(("backbone.patch_embed.", "backbone.fpn_s", "backbone.fpn_t", "backbone.lm_down_st")):
            continue
        if key.endswith("relative_position_index"):
            continue
        if key.endswith(TABLE_KEY):
            value = value[(wd - 1) * plane : wd * plane]
        out[key.replace("backbone.patch_embed_2d.", "backbone.patch_embed.")] = value
    return out


def run(cfg: PretrainImageConfig) -> TrainStageResult:
    with session(cfg, "pretrain-image", PRETRAIN_IMAGE) as job:
        env, settings = job.env, cfg.run
        data = pretrain_data.stream(
            cfg.images,
            cfg.image_tokens,
            clip_len=1,
            frame_interval=1,
            mode=cfg.targets,
            micro_batch=settings.batch_size,
            rank=env.rank,
            world=env.world,
            seed=settings.seed,
        )
        model = build_from(cfg.model, settings, vocab_size=int(data.token_set.record["tokenizer"]["vocab_size"]))
        job.model_ready()
        ids = pretrain_data.online_ids(tokenizer_of(data.token_set)) if cfg.targets != "stored" else None

        def batches(epoch: int, start: int):
            data.set_position(epoch, start)
            return iter(loader(data, settings.workers))

        def loss(net, batch):
            return net(image=pretrain_data.image_inputs(batch, ids))

        task = Task(
            model,
            param_groups(model, cfg.optim.lr, cfg.optim.weight_decay, pretrain_keys()),
            data.micro_steps,
            settings.batch_size,
            batches,
            loss,
            find_unused_parameters=True,
        )
        result = job.train(task)
        weights = storage.join(settings.work_dir, "image_encoder.pt")
        state = image_checkpoint(model.state_dict(), model.config.swin.window_size)
        if job.export(result, weights, state, {"format": "swin-2d"}) and job.tracker.run_id:
            data.set_position(0, 0)
            image, mask, target = pretrain_data.image_inputs(next(iter(loader(data, 0))), ids)
            job.tracker.artifact_bytes(
                "plots/masked_prediction.png",
                masked.figure(
                    model, image, mask, mask, target, data.token_set, "pretrain-image: masked image modeling"
                ),
            )
        return TrainStageResult.of("pretrain-image", settings.work_dir, weights, result, KEYS, job.tracker.run_id)
