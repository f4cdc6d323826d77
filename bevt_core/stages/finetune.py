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
from copy import deepcopy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bevt_core import storage
from bevt_core.config import ConfigError, at_least, between, non_empty, option, to_dict
from bevt_core.loading.clip_spec import ClipOptions, ClipSpec
from bevt_core.loading.clips import clip_stream
from bevt_core.loading.streams import loader
from bevt_core.models import load_checkpoint, read_state_dict, save_weights
from bevt_core.recipes import FINETUNE, resolve
from bevt_core.serving.preprocessing import META_KEY, Preprocessing, first_video
from bevt_core.stages.training import Session, TrainStageResult, build_from, session
from bevt_core.tracking.config import TrackingConfig
from bevt_core.tracking.tracker import resolve_uri
from bevt_core.train import evaluation
from bevt_core.train.distributed import Dist
from bevt_core.train.engine import Task, TrainResult
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
    val: str = option(
        "", help="Validation shard directory: validated every --validate-every epochs, then the multi-view tests."
    )
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
    validate_every: int = option(
        5,
        help="Validate (one view per video, the official Resize 256 + CenterCrop) on --val "
        "every N epochs and at the end, keep the best weights (recognizer-best.pt), then "
        "test the best and the last with the multi-view test views, as the official "
        "--validate --test-best --test-last. 0: only at the end.",
        check=at_least(0),
    )
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


SCORES = ("top1", "top5", "mean_class_accuracy")


def score(model: torch.nn.Module, root: str, spec: ClipSpec, mode: str, env: Dist, workers: int) -> dict[str, float]:
    """Accuracy on every video of ``root`` (its validation view or its test views), each rank scoring its share."""
    videos = clip_stream(root, spec, mode, 1, env.rank, env.world, 0)
    probs, labels = evaluation.predict(model, loader(videos, workers), env.device)
    scores = evaluation.Counts.of(probs, labels, len(videos.manifest.classes)).summed().metrics()
    return {name: getattr(scores, name) for name in SCORES}


def weights_of(model: torch.nn.Module, uri: str) -> torch.nn.Module:
    """A copy of ``model`` holding the weights in ``uri``."""
    copy = deepcopy(model)
    copy.load_state_dict(read_state_dict(uri))
    return copy


def test_best_and_last(job: Session, cfg: FinetuneConfig, result: TrainResult, final: torch.nn.Module) -> dict:
    """The official ``--test-best --test-last``: the multi-view test of the best and the last weights."""
    views = {"last": final, "best": weights_of(final, result.best_weights) if result.best_weights else final}
    tests = {
        name: score(model, cfg.val, cfg.clip.spec(), "test", job.env, cfg.run.workers) for name, model in views.items()
    }
    job.tracker.metrics(
        {f"test_{name}_{k}": v for name, scores in tests.items() for k, v in scores.items()}, result.steps
    )
    job.tracker.tags({"best_step": str(result.best.get("step", "")), "best_epoch": str(result.best.get("epoch", ""))})
    return tests


def registry_of(cfg: FinetuneConfig) -> str:
    """The tracking URI to register the model in ("" when not registering), checked before training."""
    if not cfg.register_as:
        return ""
    uri = resolve_uri(cfg.tracking.uri, cfg.run.work_dir)
    if not uri:  # "auto" finds no store for an s3:// work dir
        raise ConfigError("register_as: registering needs MLflow tracking; give --tracking.uri")
    return uri


def run(cfg: FinetuneConfig) -> TrainStageResult:
    with session(cfg, "finetune", FINETUNE) as job:
        env, settings = job.env, cfg.run
        spec: ClipSpec = cfg.clip.spec()
        data = clip_stream(cfg.train, spec, "train", settings.batch_size, env.rank, env.world, settings.seed)
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

        def validate(weights: torch.nn.Module) -> dict[str, float]:
            return score(weights, cfg.val, spec, "validation", env, settings.workers)

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
            validate=validate if cfg.val else None,
            validate_every=cfg.validate_every,
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
        if cfg.val and not result.stopped:
            last = [h for h in result.history if "val_top1" in h][-1]
            out.val = {name: last[f"val_{name}"] for name in SCORES} | {"chance": 1 / len(classes)}
            out.best, out.test = result.best, test_best_and_last(job, cfg, result, final)
        if job.export(result, weights, final.state_dict(), meta):
            if result.best_weights:
                save_weights(
                    read_state_dict(result.best_weights),
                    storage.join(settings.work_dir, "recognizer-best.pt"),
                    meta | {"best": result.best},
                )
            if registry:
                from bevt_core.serving.pyfunc import register

                example = first_video(cfg.train)
                out.registered = register(registry, job.tracker.run_id, weights, cfg.register_as, example)
                job.say(f"registered {out.registered}")
        return out
