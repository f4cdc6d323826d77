"""Stage ``predict``: the top-k classes of one video from a finetuned recognizer.

The model is a registered MLflow model (``--model models:/NAME/VERSION``, or any model URI MLflow
loads; the registry is --tracking-uri, else $MLFLOW_TRACKING_URI) or finetune's ``recognizer.pt``
(``--checkpoint``, local or s3://). The video gets evaluation's preprocessing: the shard settings of
the training data and the recipe's multi-view test clips, both recorded in the checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bevt_core.config import ConfigError, at_least, non_empty, option
from bevt_core.serving.predictor import Predictor


@dataclass
class PredictConfig:
    video: str = option(help="Video file to classify (local path or s3://).", check=non_empty)
    model: str = option("", help="Registered model, e.g. models:/bevt-scene/1 (or a runs:/ URI).")
    checkpoint: str = option("", help="Or finetune's recognizer.pt (local or s3://).")
    top_k: int = option(5, help="How many classes to print.", check=at_least(1))
    tracking_uri: str = option("", help="MLflow tracking / registry server for --model. Default: $MLFLOW_TRACKING_URI.")

    def check(self) -> str | None:
        if bool(self.model) == bool(self.checkpoint):
            return "model: give exactly one of --model and --checkpoint"
        return None


@dataclass
class PredictResult:
    video: str
    model: str
    views: int
    top: list[tuple[str, float]] = field(default_factory=list)  # (class, probability), best first
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"predict: {self.video} ({self.views} views) with {self.model} in {self.seconds:.1f} s"]
        lines += [f"  {rank}. {name:<24} {p:.2%}" for rank, (name, p) in enumerate(self.top, 1)]
        return "\n".join(lines)


def load_registered(uri: str, tracking_uri: str = "") -> Predictor:
    """The predictor inside a registered bevt model (the same object ``mlflow models serve`` runs)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from bevt_core.serving.pyfunc import VideoClassifier

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as e:
        raise ConfigError(f"model: cannot load {uri}: {str(e).splitlines()[0]}") from None
    try:
        classifier = model.unwrap_python_model()
    except MlflowException:
        classifier = None
    if not isinstance(classifier, VideoClassifier):
        raise ConfigError(f"model: {uri} is not a bevt video classifier (registered by `bevt finetune --register-as`)")
    return classifier.predictor


def run(cfg: PredictConfig) -> PredictResult:
    start = time.perf_counter()
    predictor = Predictor.load(cfg.checkpoint) if cfg.checkpoint else load_registered(cfg.model, cfg.tracking_uri)
    top = predictor.top_k(cfg.video, cfg.top_k)
    spec = predictor.preprocessing.clip
    return PredictResult(
        cfg.video, cfg.model or cfg.checkpoint, spec.test_clips * spec.test_crops, top, time.perf_counter() - start
    )
