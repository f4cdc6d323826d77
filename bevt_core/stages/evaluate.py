"""Stage ``evaluate``: multi-view testing of a finetuned recognizer (docs/official-behaviour.md §5.1).

Each video gives clips x crops views (K400 4x3, SSv2 1x3); softmax probabilities are averaged
over views. Writes ``metrics.json`` (top-1/top-5, per-class accuracy, confusion matrix) and
``confusion.png`` to ``--output``, and logs them to MLflow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from bevt_core.config import ConfigError, at_least, non_empty, option
from bevt_core.loading.clip_spec import ClipOptions
from bevt_core.loading.clips import clip_stream
from bevt_core.loading.streams import loader
from bevt_core.recipes import FINETUNE, resolve
from bevt_core.serving.recognizer import load_recognizer
from bevt_core.tracking import stage_report
from bevt_core.tracking.config import TrackingConfig
from bevt_core.tracking.stage_run import stage_run
from bevt_core.tracking.tracker import Tracker
from bevt_core.train import evaluation


@dataclass
class EvaluateConfig:
    weights: str = option(help="Finetuned recognizer (finetune's recognizer.pt).", check=non_empty)
    data: str = option(help="Video shard directory to test on (the same frame stride as training).", check=non_empty)
    output: str = option(help="Directory or s3:// prefix for metrics.json and confusion.png.", check=non_empty)
    preset: str = option(
        "k400-swin-b", help=f"Test-view recipe the unset clip fields come from: {', '.join(FINETUNE)}."
    )
    clip: ClipOptions = option(ClipOptions, help="Frame sampling and views.")
    max_views: int = option(0, help="At most this many views per forward (memory bound; 0: all).", check=at_least(0))
    workers: int = option(2, help="Dataloader workers.", check=at_least(0))
    tracking: TrackingConfig = option(TrackingConfig, help="MLflow tracking.")

    def __post_init__(self) -> None:
        resolve(self, FINETUNE)


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
        return (
            f"evaluate: {self.samples} videos x {self.views} views in {self.seconds:.1f} s: top-1 {self.top1:.2%}, "
            f"top-5 {self.top5:.2%}, mean class accuracy {self.mean_class_accuracy:.2%} (chance {self.chance:.2%})\n"
            f"  {self.files.get('metrics', '')}, {self.files.get('confusion', '')}"
            + (f"\n  MLflow run {self.run_id}" if self.run_id else "")
        )


def run(cfg: EvaluateConfig) -> EvaluateResult:
    with stage_run("evaluate", cfg, cfg.output, sqlite_dir=cfg.output) as tracker:
        return evaluate(cfg, tracker)


def evaluate(cfg: EvaluateConfig, tracker: Tracker) -> EvaluateResult:
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_recognizer(cfg.weights)
    classes = list(meta["classes"])
    model.to(device)
    spec = cfg.clip.spec()
    data = clip_stream(cfg.data, spec, "test", 1, 0, 1, 0)
    if data.manifest.classes != classes:
        raise ConfigError("data: its classes.json differs from the classes the model was trained on")
    probs, labels = evaluation.predict(model, loader(data, cfg.workers), device, cfg.max_views or None)
    scores = evaluation.metrics(probs, labels)
    files = evaluation.write_report(scores, classes, cfg.output)
    result = EvaluateResult(
        cfg.output,
        scores.samples,
        spec.test_clips * spec.test_crops,
        scores.top1,
        scores.top5,
        scores.mean_class_accuracy,
        1 / len(classes),
        time.perf_counter() - start,
        files,
        tracker.run_id,
    )
    stage_report.evaluation(tracker, result, scores.per_class_accuracy, classes)
    return result
