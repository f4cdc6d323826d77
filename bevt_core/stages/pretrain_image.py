"""Stage ``pretrain-image``: the image stream alone (BEiT-style masked image modeling).

Block-masked images from image shards predict their precomputed token ids (the token directory
``bevt tokenize`` wrote), or ids computed inside the step (``--targets online``). The product is
a 2D Swin checkpoint (``image_encoder.pt``: a 2D ``patch_embed``, 2D relative-position tables,
the image decoder and ``lm_head``) that ``pretrain-joint`` inflates to 3D (spec §1.10). The
official image-stream recipe was never released (spec Q1); the swin-b preset uses the joint
stage's image-stream settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bevt_core.config import non_empty, option, to_dict, to_yaml
from bevt_core.data import storage
from bevt_core.models.checkpoint import TABLE_KEY
from bevt_core.reports import masked
from bevt_core.train import pretrain_data
from bevt_core.train.common import ModelOptions, build, rank_seed, save_weights, session
from bevt_core.train.engine import Task, train
from bevt_core.train.optim import param_groups, pretrain_keys
from bevt_core.train.options import OptimConfig, RunConfig, ScheduleConfig, apply_preset
from bevt_core.train.results import TrainStageResult
from bevt_core.train.streams import loader

PRESETS = {
    "swin-b": {"model": {"name": "bevt-swin-b", "drop_path_rate": 0.3, "window_size": (8, 7, 7)},
               "optim": {"lr": 5e-4, "weight_decay": 0.05, "groups": "pretrain", "clip_grad": 3.0},
               "schedule": {"epochs": 800, "warmup_epochs": 10, "cosine_by_epoch": False},
               "run": {"batch_size": 64, "accum_steps": 1, "precision": "bf16"}},
    # CPU-sized: 64 px crops (4x4 token grid), a 32-wide Swin; falls within a minute on 2 cores.
    "tiny": {"model": {"name": "bevt-tiny", "drop_path_rate": 0.0, "window_size": (4, 4, 4)},
             "optim": {"lr": 2e-3, "weight_decay": 0.05, "groups": "pretrain", "clip_grad": 3.0},
             "schedule": {"epochs": 8, "warmup_epochs": 1, "cosine_by_epoch": False},
             "run": {"batch_size": 16, "accum_steps": 1, "precision": "fp32"}},
}
KEYS = ("loss", "loss_image", "acc_image")


@dataclass
class PretrainImageConfig:
    images: str = option(help="Image shard directory (`bevt shard --modality image`).", check=non_empty)
    image_tokens: str = option(help="Token directory for --images (`bevt tokenize`).", check=non_empty)
    run: RunConfig = option(help="Execution settings.")
    preset: str = option("swin-b", help=f"Recipe the unset fields come from: {', '.join(PRESETS)}.")
    targets: str = option("stored", help="stored: ids from the token shards; online: run the token directory's "
                          "tokenizer inside the step (the official setup, for comparison).",
                          choices=("stored", "online"))
    model: ModelOptions = option(ModelOptions, help="Model.")
    optim: OptimConfig = option(OptimConfig, help="Optimizer.")
    schedule: ScheduleConfig = option(ScheduleConfig, help="Schedule.")

    def __post_init__(self) -> None:
        apply_preset(self, PRESETS)


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
            value = value[(wd - 1) * plane: wd * plane]
        out[key.replace("backbone.patch_embed_2d.", "backbone.patch_embed.")] = value
    return out


def run(cfg: PretrainImageConfig) -> TrainStageResult:
    with session(cfg, "pretrain-image") as s:
        env, r = s.env, cfg.run
        data = pretrain_data.stream(cfg.images, cfg.image_tokens, clip_len=1, frame_stride=1, mode=cfg.targets,
                                    micro_batch=r.batch_size, rank=env.rank, world=env.world, seed=r.seed)
        record = data.token_set.record
        model = build(cfg.model, r, vocab_size=int(record["tokenizer"]["vocab_size"]))
        rank_seed(r, env)
        ids = pretrain_data.online_ids(data.token_set.tokenizer(device="auto")) if cfg.targets == "online" else None

        def batches(epoch: int, start: int):
            data.set_position(epoch, start)
            return iter(loader(data, r.workers))

        def loss(net, batch):
            return net(image=pretrain_data.image_inputs(batch, ids))

        task = Task(model, param_groups(model, cfg.optim.lr, cfg.optim.weight_decay, pretrain_keys()),
                    data.micro_steps, r.batch_size, batches, loss, find_unused_parameters=True)
        result = train(task, r, cfg.optim, cfg.schedule, env, s.tracker, to_dict(cfg), s.say)
        weights = storage.join(r.work_dir, "image_encoder.pt")
        if env.main and not result.stopped:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            save_weights(image_checkpoint(state, model.config.swin.window_size), weights, {"format": "swin-2d"})
            s.tracker.artifact_text("config.yaml", to_yaml(cfg))
            s.tracker.tags({"weights": weights, "checkpoint": result.checkpoint,
                            "init": getattr(cfg, "init", "") or ""})
            if s.tracker.run_id:
                data.set_position(0, 0)
                image, mask, target = pretrain_data.image_inputs(next(iter(loader(data, 0))), ids)
                s.tracker.artifact_bytes("plots/masked_prediction.png", masked.figure(
                    model, image, mask, mask, target, data.token_set, "pretrain-image: masked image modeling"))
        return TrainStageResult.build("pretrain-image", r.work_dir, weights, result, KEYS, s.tracker.run_id)
