"""Stage ``evaluate``: multi-view testing of a finetuned recognizer (spec §5.1).

Each video gives clips x crops views (K400 4x3, SSv2 1x3); softmax probabilities are averaged
over views. Writes ``metrics.json`` (top-1/top-5, per-class accuracy, confusion matrix) and
``confusion.png`` to ``--output``, and logs them to MLflow.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import torch

from bevt_core.config import ConfigError, at_least, non_empty, option
from bevt_core.data import storage
from bevt_core.models import Recognizer3D, RecognizerConfig, SwinConfig
from bevt_core.train import evaluation, tracking
from bevt_core.train.options import fill, missing
from bevt_core.stages.finetune import PRESETS, ClipOptions, clip_stream
from bevt_core.train.streams import loader


@dataclass
class EvaluateConfig:
    weights: str = option(help="Finetuned recognizer (finetune's recognizer.pt).", check=non_empty)
    data: str = option(help="Video shard directory to test on (the same frame stride as training).",
                       check=non_empty)
    output: str = option(help="Directory or s3:// prefix for metrics.json and confusion.png.", check=non_empty)
    preset: str = option("k400-swin-b", help=f"Test-view recipe the unset clip fields come from: {', '.join(PRESETS)}.")
    clip: ClipOptions = option(ClipOptions, help="Frame sampling and views.")
    max_views: int = option(0, help="At most this many views per forward (memory bound; 0: all).", check=at_least(0))
    workers: int = option(2, help="Dataloader workers.", check=at_least(0))
    tracking_uri: str = option("auto", help="MLflow tracking URI; auto: $MLFLOW_TRACKING_URI when set, else "
                               "a sqlite file in --output when local; none: off.")
    experiment: str = option("bevt", help="MLflow experiment name.")
    parent_run_id: str = option("", help="MLflow run (a pipeline run) this stage's run is nested under.")
    run_label: str = option("", help="Added to the MLflow run's name ('evaluate scene'): tells apart the runs of one "
                            "stage in a pipeline run.")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"preset: must be one of {', '.join(PRESETS)}; got {self.preset!r}")
        fill(self.clip, PRESETS[self.preset]["clip"])
        name = missing(self.clip, "clip.")
        if name:
            raise ConfigError(f"{name}: the preset sets no value; give one")


@dataclass
class EvaluateResult:
    output: str
    samples: int
    views: int
    top1: float
    top5: float
    mean_class_accuracy: float
    chance: float
    seconds: float
    files: dict[str, str] = field(default_factory=dict)
    run_id: str = ""

    def summary(self) -> str:
        return (f"evaluate: {self.samples} videos x {self.views} views in {self.seconds:.1f} s: top-1 {self.top1:.2%}, "
                f"top-5 {self.top5:.2%}, mean class accuracy {self.mean_class_accuracy:.2%} (chance {self.chance:.2%})\n"
                f"  {self.files.get('metrics', '')}, {self.files.get('confusion', '')}"
                + (f"\n  MLflow run {self.run_id}" if self.run_id else ""))


def load_recognizer(uri: str, field_name: str = "weights") -> tuple[Recognizer3D, dict]:
    """The model and its checkpoint meta (classes, model config, preprocessing recipe); errors name ``field_name``."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ConfigError(f"{field_name}: {uri} does not exist") from None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- on foreign bytes torch.load raises UnpicklingError, KeyError, EOFError, ...
        raise ConfigError(f"{field_name}: {uri} is not a checkpoint torch loads with weights_only") from None
    meta = payload.get("meta", {}) if isinstance(payload, dict) else {}
    if meta.get("format") != "recognizer":
        raise ConfigError(f"{field_name}: {uri} is not a finetuned recognizer written by `bevt finetune`")
    config = dict(meta["config"])
    swin = SwinConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.pop("swin").items()})
    model = Recognizer3D(RecognizerConfig(swin=swin, **config))
    model.load_state_dict(payload["state_dict"])
    return model, meta


def run(cfg: EvaluateConfig) -> EvaluateResult:
    with tracking.stage_run("evaluate", cfg, cfg.tracking_uri, cfg.output, cfg.experiment, cfg.parent_run_id,
                            cfg.output, label=cfg.run_label) as tracker:
        return _evaluate(cfg, tracker)


def _evaluate(cfg: EvaluateConfig, tracker: tracking.Tracker) -> EvaluateResult:
    from bevt_core.reports import stage as report

    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_recognizer(cfg.weights)
    classes = list(meta["classes"])
    model.to(device)
    spec = cfg.clip.spec()
    data = clip_stream(cfg.data, spec, False, 1, 0, 1, 0)
    if data.manifest.classes != classes:
        raise ConfigError("data: its classes.json differs from the classes the model was trained on")
    probs, labels = evaluation.predict(model, loader(data, cfg.workers), device, cfg.max_views or None)
    m = evaluation.metrics(probs, labels)
    files = evaluation.write_report(m, classes, cfg.output)
    result = EvaluateResult(cfg.output, m.samples, spec.test_clips * spec.test_crops, m.top1, m.top5,
                            m.mean_class_accuracy, 1 / len(classes), time.perf_counter() - start, files,
                            tracker.run_id)
    report.evaluation(tracker, result, m.per_class_accuracy, classes)
    return result
