"""A finetuned, evaluated and registered scene model, shared by the tests that use a trained model
(``bevt predict``, ``mlflow models serve``, the MLflow UI)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from bevt_core.config import from_dict
from bevt_core.data.manifest import load_manifest
from bevt_core.stages import evaluate, finetune
from bevt_core.stages.shard import ShardConfig
from bevt_core.stages.shard import run as shard

MODEL_NAME = "bevt-scene"
EXPERIMENT = "bevt-predict"


@dataclass(frozen=True)
class SceneModel:
    val: Path  # the val shard directory
    weights: str  # finetune's recognizer.pt
    uri: str  # models:/NAME/VERSION in the mlflow_server registry
    finetune_run: str
    metrics: Path  # evaluate's metrics.json over the val shards
    videos: list[tuple[Path, int]]  # the val source videos and their labels, in manifest order


@pytest.fixture(scope="session")
def scene_model(samples, mlflow_server, tmp_path_factory) -> SceneModel:
    """The scene task (11 appearance classes) with the k400-tiny recipe from scratch, the cheapest model
    that learns it (about a minute on 2 cores); finetune and evaluate tracked on the real MLflow server,
    the model registered there."""
    root = tmp_path_factory.mktemp("scene")
    task = samples.scene
    for split, listing in (("train", task.train_list), ("val", task.val_list)):
        shard(ShardConfig(input=str(listing), root=str(task.root), classes=str(task.root / "classes.txt"),
                          output=str(root / split), progress=False, workers=2, short_side=64))
    tracked = {"tracking_uri": mlflow_server.uri, "experiment": EXPERIMENT}
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    ft = finetune.run(from_dict(finetune.FinetuneConfig, {
        "preset": "k400-tiny", "train": str(root / "train"), "register_as": MODEL_NAME,
        "optim": {"layer_decay": 1.0},  # from scratch there is no pretrained trunk to keep near its init
        "run": {"work_dir": str(root / "finetune"), "workers": 0, "log_every": 10} | tracked}))
    assert not ft.failed and ft.registered, ft.summary()
    # MLflow's fluent API exports the URI it logs to; registering must not leave it for later stages.
    assert os.environ.get("MLFLOW_TRACKING_URI") == exported
    evaluate.run(from_dict(evaluate.EvaluateConfig, {
        "preset": "k400-tiny", "weights": ft.weights, "data": str(root / "val"), "output": str(root / "eval"),
        "workers": 0} | tracked))
    videos = [(task.root / row["source"], row["label"]) for row in load_manifest(str(root / "val")).rows]
    return SceneModel(root / "val", ft.weights, ft.registered, ft.run_id, root / "eval" / "metrics.json", videos)
