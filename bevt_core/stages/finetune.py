"""Stage ``finetune``: video classification from a pretraining checkpoint (docs/official-behaviour.md §5).

Recipes (:mod:`bevt_core.recipes`): ``k400-swin-b`` (interval sampling, layer-wise lr decay 0.9),
``ssv2-swin-b`` (uniform segments, (16,7,7) windows, RandAugment, RandomErasing, label smoothing, EMA,
backbone lr x0.1) and ``diving48-swin-b`` (no official recipe, docs/official-behaviour.md Q3: the K400
optimisation with SSv2-style uniform sampling for this temporal task), plus CPU-sized ``*-tiny`` ones. Writes
``recognizer.pt`` (official Video Swin key names; the EMA weights when EMA is on) and, given
``--val``, single-view validation accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bevt_core import storage
from bevt_core.config import ConfigError, at_least, between, non_empty, option, to_dict
from bevt_core.loading.clip_spec import ClipOptions, ClipSpec
from bevt_core.loading.clips import clip_stream
from bevt_core.loading.streams import loader
from bevt_core.models import load_checkpoint
from bevt_core.recipes import FINETUNE, resolve
from bevt_core.serving.preprocessing import META_KEY, Preprocessing, first_video
from bevt_core.stages.training import Session, TrainStageResult, build_from, session
from bevt_core.tracking.config import TrackingConfig
from bevt_core.tracking.tracker import resolve_uri
from bevt_core.train import evaluation
from bevt_core.train.engine import Task
from bevt_core.train.optim import backbone_mult_keys, layer_decay_keys, param_groups, pretrain_keys
from bevt_core.train.options import ModelOptions, OptimConfig, RunConfig, ScheduleConfig

KEYS = ("loss", "acc")


@dataclass
class FinetuneConfig:
    train: str = option(
        help="Training video shard directory (`bevt shard`; K400 shards at frame interval 2, SSv2 every frame).",
        check=non_empty,
    )
    run: RunConfig = option(RunConfig, help="Execution settings.")
    val: str = option("", help="Validation shard directory: single-view accuracy after training.")
    init: str = option(
        "",
        help="Pretraining checkpoint (pretrain-joint's bevt_pretrain.pt, an official BEVT "
        "checkpoint, or a 2D image-stream checkpoint). Empty: train from scratch.",
    )
    preset: str = option("k400-swin-b", help=f"Recipe the unset fields come from: {', '.join(FINETUNE)}.")
    label_smoothing: float | None = option(help="Label smoothing.", check=between(0.0, 1.0), preset=True)
    mixup: float | None = option(help="Mixup alpha (0: off; soft-target CE when on).", check=at_least(0.0), preset=True)
    ema_momentum: float | None = option(
        help="EMA momentum per micro-step (mmcv EMAHook; 0: no EMA).", check=between(0.0, 1.0), preset=True
    )
    model: ModelOptions = option(ModelOptions, help="Model.")
    optim: OptimConfig = option(OptimConfig, help="Optimizer.")
    schedule: ScheduleConfig = option(ScheduleConfig, help="Schedule.")
    clip: ClipOptions = option(ClipOptions, help="Frame sampling and augmentation.")
    register_as: str = option(
        "",
        help="Register the finetuned model in the MLflow model registry under this "
        "name (a pyfunc model `mlflow models serve` serves; `bevt predict --model`). "
        "Empty: don't register.",
    )
    tracking: TrackingConfig = option(TrackingConfig, help="MLflow tracking.")

    def __post_init__(self) -> None:
        resolve(self, FINETUNE)

    def check(self) -> str | None:
        if self.register_as and not self.tracking.enabled:
            return "register_as: registering needs MLflow tracking (tracking.uri is none)"
        return None


def param_groups_of(cfg: FinetuneConfig, model: torch.nn.Module) -> list[dict]:
    optim = cfg.optim
    keys = {
        "layer_decay": lambda: layer_decay_keys(model.config.swin.depths, optim.layer_decay),
        "backbone_mult": lambda: backbone_mult_keys(optim.backbone_lr_mult),
        "pretrain": pretrain_keys,
    }[optim.groups]()
    return param_groups(model, optim.lr, optim.weight_decay, keys)


def initialise(job: Session, model: torch.nn.Module, init: str) -> None:
    loaded = load_checkpoint(model, init, strict=False)
    stray = [k for k in loaded.missing_keys if not k.startswith("cls_head.")]
    if stray:
        raise ConfigError(f"init: {init} lacks backbone weights, e.g. {stray[:3]}: not a BEVT checkpoint?")
    job.say(f"initialised from {init}")


def classification_loss(cfg: FinetuneConfig, num_classes: int) -> Callable:
    """``loss(net, batch)`` of the recipe: cross-entropy with label smoothing, or with mixup the soft-target
    cross-entropy of mixed clips (no accuracy then: the targets are mixtures)."""
    if cfg.mixup:
        from timm.data import Mixup

        mixup = Mixup(
            mixup_alpha=cfg.mixup, cutmix_alpha=0.0, label_smoothing=cfg.label_smoothing, num_classes=num_classes
        )

        def mixed(net, batch):
            clip, soft = mixup(batch["clip"], batch["label"])
            logits = net(clip)
            return {"loss": torch.sum(-soft * F.log_softmax(logits.float(), -1), -1).mean()}

        return mixed

    def plain(net, batch):
        logits, label = net(batch["clip"]), batch["label"]
        return {
            "loss": F.cross_entropy(logits.float(), label, label_smoothing=cfg.label_smoothing),
            "acc": (logits.detach().argmax(-1) == label).float().mean(),
        }

    return plain


def validate(cfg: FinetuneConfig, model: torch.nn.Module, device: torch.device, classes: list[str]) -> dict[str, float]:
    """Single-view (one clip, one crop) accuracy on the validation shards."""
    val = clip_stream(cfg.val, cfg.clip.spec(1, 1), False, 1, 0, 1, cfg.run.seed)
    probs, labels = evaluation.predict(model, loader(val, cfg.run.workers), device)
    scores = evaluation.metrics(probs, labels)
    return {
        "top1": scores.top1,
        "top5": scores.top5,
        "mean_class_accuracy": scores.mean_class_accuracy,
        "chance": 1 / len(classes),
    }


def registry_of(cfg: FinetuneConfig) -> str:
    """The tracking URI to register the model in ("" when not registering), checked before training."""
    if not cfg.register_as:
        return ""
    uri = resolve_uri(cfg.tracking.uri, cfg.run.work_dir)
    if not uri:  # "auto" finds no store for an s3:// work dir
        raise ConfigError("register_as: registering needs MLflow tracking; give --tracking.uri")
    return uri


def run(cfg: FinetuneConfig) -> TrainStageResult:
    with session(cfg, "finetune") as job:
        env, settings = job.env, cfg.run
        spec: ClipSpec = cfg.clip.spec()
        data = clip_stream(cfg.train, spec, True, settings.batch_size, env.rank, env.world, settings.seed)
        classes = data.manifest.classes
        # How `bevt predict` prepares a video for this model: the training shards' settings and this clip recipe.
        preprocessing = Preprocessing.of_training(cfg.train, spec)
        registry = registry_of(cfg)
        model = build_from(
            cfg.model, settings, num_classes=len(classes), num_frames=spec.clip_len, image_size=spec.crop
        )
        if cfg.init:
            initialise(job, model, cfg.init)
        job.model_ready()

        def batches(epoch: int, start: int):
            data.set_position(epoch, start)
            return iter(loader(data, settings.workers))

        # EMA per micro-step on unchanged weights between updates = one EMA step of momentum^accum.
        ema_decay = (1 - cfg.ema_momentum) ** settings.accum_steps if cfg.ema_momentum else 0.0
        task = Task(
            model,
            param_groups_of(cfg, model),
            data.micro_steps,
            settings.batch_size,
            batches,
            classification_loss(cfg, len(classes)),
            ema_decay=ema_decay,
        )
        result = job.train(task)
        final = result.ema_model or model
        weights = storage.join(settings.work_dir, "recognizer.pt")
        out = TrainStageResult.of(
            "finetune", settings.work_dir, weights, result, KEYS if not cfg.mixup else ("loss",), job.tracker.run_id
        )
        meta = {
            "format": "recognizer",
            "config": to_dict(model.config),
            "classes": classes,
            META_KEY: preprocessing.to_meta(),
        }
        if job.export(result, weights, final.state_dict(), meta):
            if cfg.val:
                out.val = validate(cfg, final, env.device, classes)
                job.tracker.metrics({f"val_{k}": v for k, v in out.val.items()}, result.steps)
            if registry:
                from bevt_core.serving.pyfunc import register

                example = first_video(cfg.train)
                out.registered = register(registry, job.tracker.run_id, weights, cfg.register_as, example)
                job.say(f"registered {out.registered}")
        return out
