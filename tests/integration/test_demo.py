"""The README's demo command, end to end on the CI-sized sample data (the shortened demo: the same
pipeline and tiny recipes on fewer derived clips).

The demo is the pipeline on KFP's local runner: every step ran as a KFP step (its outputs under the
pipeline root), pretrain-joint as a 2-process torchrun, finetune and evaluate once per sample task,
every step's run nested under one MLflow run in the work dir's SQLite store, both models
registered. A rerun resumes from KFP's step cache: same parent run, no step run again.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from bevt_core.data.token_format import load_tokens
from tests.conftest import REPO, bevt_cli

pytestmark = pytest.mark.slow

TASKS = ("scene", "camera-motion")
STEPS = [
    "shard pretraining videos",
    "shard images",
    "tokenize videos",
    "tokenize images",
    "pretrain-image",
    "pretrain-joint",
] + [f"{stage} {task}" for task in TASKS for stage in ("shard", "shard", "finetune", "evaluate")]


def test_demo_runs_the_pipeline_locally_and_resumes(samples, tmp_path, cli_env):
    import mlflow

    work = tmp_path / "demo"
    cmd = bevt_cli() + ["demo", "--work-dir", str(work), "--samples.profile", "ci"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "demo finished" in first.stdout
    # The summary table: a row per step run, and how to look further.
    for step in STEPS:
        assert f"  {step} (" in first.stdout, step
    assert f"mlflow ui --backend-store-uri sqlite:///{work / 'mlflow.db'}" in first.stdout
    # Chance beside every accuracy, and what the numbers cannot carry (48 camera-motion val clips in CI).
    for line in first.stdout.splitlines():
        if "top-1" in line and line.startswith("  "):
            assert "(chance " in line, line
    assert "camera-motion 48 (2.1% each)" in first.stdout and "--design label-efficiency" in first.stdout
    assert "Downloading artifacts" not in first.stdout + first.stderr

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "bevt-demo"]
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "demo"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1, "every step's run nests under the demo run"
    assert sorted(r.info.run_name for r in children) == sorted(STEPS)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert parent.data.params["recipe"] == "tiny"
    assert "report.html" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "pretrain-joint" in (work / "kfp" / "report.html").read_text()
    assert not (REPO / "mlruns").exists() and (work / "mlartifacts").is_dir()
    one = {r.info.run_name: r for r in children}
    assert one["pretrain-joint"].data.tags["world_size"] == "2", "pretrain-joint runs as a 2-process torchrun"
    # Both streams' targets come from one codebook: the image tokens' tokenizer is the videos' fitted one.
    by_id = {r.info.run_id: r for r in children}
    assert by_id[one["tokenize images"].data.tags["bevt.upstream.codebook"]].info.run_name == "tokenize videos"
    (video_tokens,) = (work / "kfp").rglob("tokenize/tokens")
    (image_tokens,) = (work / "kfp").rglob("tokenize-2/tokens")
    assert load_tokens(str(video_tokens)).record["tokenizer"] == load_tokens(str(image_tokens)).record["tokenizer"]
    # Per task: evaluated over its val clips, the model registered from its finetune run.
    for task in ("scene", "camera-motion"):
        (version,) = client.search_model_versions(f"name = 'bevt-demo-{task}'")
        assert version.run_id == one[f"finetune {task}"].info.run_id
        evaluated = one[f"evaluate {task}"].data
        assert evaluated.metrics["top1"] >= 0.0 and evaluated.params["preset"] in ("k400-tiny", "ssv2-tiny")
    assert one["evaluate scene"].data.metrics["top1"] > 2 / len(samples.scene.classes), "scene is learned"

    shards = {p: p.read_bytes() for p in sorted((work / "kfp").rglob("*.tar"))}
    again = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    runs_after = client.search_runs([experiment.experiment_id])
    assert len(runs_after) == len(runs), "the rerun took every step from the cache"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert json.loads((work / "demo-run.json").read_text())["parent_run_id"] == parent.info.run_id
    assert {p: p.read_bytes() for p in sorted((work / "kfp").rglob("*.tar"))} == shards, "a rerun changes nothing"
