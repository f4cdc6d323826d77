"""Stage ``pretrain-joint``: BEVT's two-stream pretraining (spec §4).

Every micro-step takes one video batch (tube masks) and one image batch (block masks) through
the same backbone, sums the two masked-token losses and does one backward. The video loader
defines the epoch; the image stream cycles. Initialised by 2D->3D inflation from the
``pretrain-image`` checkpoint (``--init``). Writes ``bevt_pretrain.pt`` with the official key
names, which ``finetune`` loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from bevt_core.config import at_least, non_empty, option, to_dict, to_yaml
from bevt_core.data import storage
from bevt_core.models import load_checkpoint
from bevt_core.reports import masked
from bevt_core.train import pretrain_data
from bevt_core.train.common import ModelOptions, build, rank_seed, save_weights, session
from bevt_core.train.engine import Task, train
from bevt_core.train.optim import param_groups, pretrain_keys
from bevt_core.train.options import OptimConfig, RunConfig, ScheduleConfig, apply_preset
from bevt_core.train.results import TrainStageResult
from bevt_core.train.streams import loader

PRESETS = {
    # swin_base_patch244_window877_bevt_in1k_k400.py: 4 clips + 32 images per GPU per micro-step,
    # 2 micro-steps per update; 32 GPUs -> 256 clips + 2048 images per optimizer step.
    "swin-b": {"model": {"name": "bevt-swin-b", "drop_path_rate": 0.3, "window_size": (8, 7, 7)},
               "optim": {"lr": 5e-4, "weight_decay": 0.05, "groups": "pretrain", "clip_grad": 3.0},
               "schedule": {"epochs": 150, "warmup_epochs": 10, "cosine_by_epoch": False},
               "run": {"batch_size": 4, "accum_steps": 2, "precision": "bf16"},
               "image_batch_size": 32, "clip_len": 16},
    "tiny": {"model": {"name": "bevt-tiny", "drop_path_rate": 0.0, "window_size": (4, 4, 4)},
             "optim": {"lr": 1e-3, "weight_decay": 0.05, "groups": "pretrain", "clip_grad": 3.0},
             "schedule": {"epochs": 6, "warmup_epochs": 1, "cosine_by_epoch": False},
             "run": {"batch_size": 4, "accum_steps": 1, "precision": "fp32"},
             "image_batch_size": 8, "clip_len": 8},
}
KEYS = ("loss", "loss_video", "acc_video", "loss_image", "acc_image")


@dataclass
class PretrainJointConfig:
    videos: str = option(help="Video shard directory (pretraining shards: frame interval 8).", check=non_empty)
    video_tokens: str = option(help="Token directory for --videos.", check=non_empty)
    run: RunConfig = option(help="Execution settings.")
    images: str = option("", help="Image shard directory. Empty: the video stream alone (the video-only ablation).")
    image_tokens: str = option("", help="Token directory for --images.")
    init: str = option("", help="Initial weights: the pretrain-image checkpoint (2D, inflated to 3D) or a 3D "
                       "BEVT checkpoint. Empty: random init.")
    preset: str = option("swin-b", help=f"Recipe the unset fields come from: {', '.join(PRESETS)}.")
    targets: str = option("stored", help="stored: ids from the token shards; online: the token directories' "
                          "tokenizer inside the step.", choices=("stored", "online"))
    image_batch_size: int | None = option(None, help="Images per rank per micro-step. Default: from the preset.",
                                          check=at_least(1))
    clip_len: int | None = option(None, help="Frames per clip, consecutive stored frames. Default: from the preset.",
                                  check=at_least(2))
    model: ModelOptions = option(ModelOptions, help="Model.")
    optim: OptimConfig = option(OptimConfig, help="Optimizer.")
    schedule: ScheduleConfig = option(ScheduleConfig, help="Schedule.")

    def __post_init__(self) -> None:
        apply_preset(self, PRESETS)

    def check(self) -> str | None:
        if bool(self.images) != bool(self.image_tokens):
            return "image_tokens: give both --images and --image-tokens, or neither (video stream alone)"
        return None


def run(cfg: PretrainJointConfig) -> TrainStageResult:
    with session(cfg, "pretrain-joint") as s:
        env, r = s.env, cfg.run
        common = dict(mode=cfg.targets, rank=env.rank, world=env.world, seed=r.seed)
        videos = pretrain_data.stream(cfg.videos, cfg.video_tokens, clip_len=cfg.clip_len, frame_stride=1,
                                      micro_batch=r.batch_size, **common)
        images = pretrain_data.stream(cfg.images, cfg.image_tokens, clip_len=1, frame_stride=1,
                                      micro_batch=cfg.image_batch_size, cycle=True, **common) if cfg.images else None
        token_sets = [videos.token_set] + ([images.token_set] if images else [])
        vocab = {int(t.record["tokenizer"]["vocab_size"]) for t in token_sets}
        if len(vocab) != 1 or len({t.record["tokenizer"]["sha256"] for t in token_sets}) != 1:
            raise ValueError("video_tokens and image_tokens were made by different tokenizers; the shared lm_head "
                             "needs one vocabulary")
        model = build(cfg.model, r, vocab_size=vocab.pop(), num_frames=cfg.clip_len)
        if cfg.init:
            loaded = load_checkpoint(model, cfg.init, strict=False)
            s.say(f"initialised from {cfg.init} ({len(loaded.missing_keys)} tensors left at their init: "
                  f"{', '.join(sorted({k.rsplit('.', 2)[0] for k in loaded.missing_keys})[:6])})")
        rank_seed(r, env)
        ids = pretrain_data.online_ids(videos.token_set.tokenizer(device="auto")) if cfg.targets == "online" else None
        image_iter = {}

        def batches(epoch: int, start: int):
            videos.set_position(epoch, start)
            if images is None:
                yield from ({"video": video, "image": None} for video in loader(videos, r.workers))
                return
            if "it" not in image_iter:  # one cycling image stream for the whole run, from the same global position
                g = epoch * videos.micro_steps + start
                images.set_position(g // images.micro_steps, g % images.micro_steps)
                image_iter["it"] = iter(loader(images, r.workers))
            for video in loader(videos, r.workers):
                yield {"video": video, "image": next(image_iter["it"])}

        def loss(net, batch):
            image = batch["image"]
            return net(video=pretrain_data.video_inputs(batch["video"], ids),
                       image=None if image is None else pretrain_data.image_inputs(image, ids))

        task = Task(model, param_groups(model, cfg.optim.lr, cfg.optim.weight_decay, pretrain_keys()),
                    videos.micro_steps, r.batch_size, batches, loss, find_unused_parameters=True)
        result = train(task, r, cfg.optim, cfg.schedule, env, s.tracker, to_dict(cfg), s.say)
        weights = storage.join(r.work_dir, "bevt_pretrain.pt")
        if env.main and not result.stopped:
            save_weights({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights,
                         {"format": "bevt-3d", "model": cfg.model.name})
            s.tracker.artifact_text("config.yaml", to_yaml(cfg))
            s.tracker.tags({"weights": weights, "checkpoint": result.checkpoint,
                            "init": getattr(cfg, "init", "") or ""})
            if s.tracker.run_id:
                videos.set_position(0, 0)
                clip, in_mask, out_mask, target = pretrain_data.video_inputs(next(iter(loader(videos, 0))), ids)
                s.tracker.artifact_bytes("plots/masked_prediction.png", masked.figure(
                    model, clip, in_mask, out_mask, target, videos.token_set,
                    "pretrain-joint: video stream (tube masks), first frame"))
        keys = KEYS if images is not None else tuple(k for k in KEYS if "image" not in k)
        return TrainStageResult.build("pretrain-joint", r.work_dir, weights, result, keys, s.tracker.run_id)
