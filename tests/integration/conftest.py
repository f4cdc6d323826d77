"""Session fixtures shared by the tests that look at trained, tracked results: a finetuned, evaluated
and registered scene model (``bevt predict``, ``mlflow models serve``) and one tiny pipeline run
tracked on the real MLflow server (its lineage, the MLflow UI)."""

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
from tests.conftest import run_pipeline_locally

MODEL_NAME = "bevt-scene"
EXPERIMENT = "bevt-predict"
PIPELINE_EXPERIMENT = "bevt"  # bevt pipeline run-local's default experiment
PIPELINE_RUN = "lineage-test"
PIPELINE_MODEL = "bevt-lineage-test"
PIPELINE_STEPS = {  # the pipeline's step runs: name -> how many of them (one finetune task: scene)
    "shard pretraining videos": 1,
    "shard images": 1,
    "tokenize videos": 1,
    "tokenize images": 1,
    "pretrain-image": 1,
    "pretrain-joint": 1,
    "shard scene": 2,
    "finetune scene": 1,
    "evaluate scene": 1,
}


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
        shard(
            ShardConfig(
                input=str(listing),
                root=str(task.root),
                classes=str(task.root / "classes.txt"),
                output=str(root / split),
                progress=False,
                workers=2,
                short_side=64,
            )
        )
    tracked = {"uri": mlflow_server.uri, "experiment": EXPERIMENT}
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    ft = finetune.run(
        from_dict(
            finetune.FinetuneConfig,
            {
                "preset": "k400-tiny",
                "train": str(root / "train"),
                "register_as": MODEL_NAME,
                "optim": {"layer_decay": 1.0},  # from scratch there is no pretrained trunk to keep near its init
                "run": {"work_dir": str(root / "finetune"), "workers": 0, "log_every": 10},
                "tracking": tracked,
            },
        )
    )
    assert not ft.failed and ft.registered, ft.summary()
    # MLflow's fluent API exports the URI it logs to; registering must not leave it for later stages.
    assert os.environ.get("MLFLOW_TRACKING_URI") == exported
    evaluate.run(
        from_dict(
            evaluate.EvaluateConfig,
            {
                "preset": "k400-tiny",
                "weights": ft.weights,
                "data": str(root / "val"),
                "output": str(root / "eval"),
                "workers": 0,
                "tracking": tracked,
            },
        )
    )
    videos = [(task.root / row["source"], row["label"]) for row in load_manifest(str(root / "val")).rows]
    return SceneModel(root / "val", ft.weights, ft.registered, ft.run_id, root / "eval" / "metrics.json", videos)


@dataclass(frozen=True)
class TrackedPipeline:
    experiment_id: str
    parent_run_id: str  # the pipeline's parent run (named PIPELINE_RUN), every step's run nested under it


@pytest.fixture(scope="session")
def tracked_pipeline(samples, mlflow_server, tmp_path_factory) -> TrackedPipeline:
    """`bevt pipeline run-local` of the tiny pipeline on the scene task, against the real MLflow server
    (SQLite, artifacts on SeaweedFS), found there by the tracking URI in the standard variable as in a
    cluster's bevt-env ConfigMap. Two steps per training stage; the finetuned model registered."""
    import mlflow

    from tests.integration.test_pipeline_local import subset

    tmp = tmp_path_factory.mktemp("tracked-pipeline")
    scene = samples.scene
    # One training clip per class: the smallest set with every class of the val list (evaluate
    # refuses a class mismatch).
    picked: dict[str, str] = {}
    for line in scene.train_list.read_text().splitlines():
        picked.setdefault(line.split()[-1], line)
    (tmp / "train.txt").write_text("\n".join(picked.values()) + "\n")
    params = {
        "pretrain_videos": subset(scene.train_list, tmp / "pt.txt", 4),
        "images": subset(samples.images_list, tmp / "images.txt", 16),
        "finetune_tasks": [
            {
                "run_label": "scene",
                "train_list": str(tmp / "train.txt"),
                "val_list": str(scene.val_list),
                "root": str(scene.root),
                "classes": str(scene.root / "classes.txt"),
                "preset": "k400-tiny",
                "frame_interval": 3,  # the recipe's interval: one stored frame per clip frame
                "register_as": PIPELINE_MODEL,
            }
        ],
        "videos_root": str(scene.root),
        "images_root": str(samples.images_root),
        "recipe": "tiny",
        "tokenizer": "codebook",
        "views": 1,
        "crop": 64,
        "codebook_size": 16,
        "short_side": 64,
        "pretrain_frame_interval": 1,
        "max_steps": 2,
        "procs_per_node": 1,
        "workers": 0,
        "tracking_uri": "auto",
    }
    config = {
        "action": "run-local",
        "params": params,
        "run_name": PIPELINE_RUN,
        "pipeline_root": str(tmp / "root"),
        "caching": False,
    }
    env = dict(os.environ) | mlflow_server.env() | {"OMP_NUM_THREADS": "1", "BEVT_GIT_REVISION": "0123abc"}
    proc = run_pipeline_locally(config, tmp / "pipeline.yaml", env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name(PIPELINE_EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment], f"attributes.run_name = '{PIPELINE_RUN}'")
    return TrackedPipeline(experiment, parent.info.run_id)
