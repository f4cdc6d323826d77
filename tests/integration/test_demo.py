"""The README's demo command, end to end on the CI-sized sample data."""

from __future__ import annotations

import json
import subprocess

from bevt_core.data.manifest import load_manifest
from bevt_core.data.targets import load_tokens
from tests.conftest import REPO, bevt_cli


def test_demo_runs_every_stage_end_to_end(samples, tmp_path, cli_env):
    work = tmp_path / "demo"
    cmd = bevt_cli() + ["demo", "--work-dir", str(work), "--samples.profile", "ci"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=cli_env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "demo finished" in first.stdout
    for task in (samples.camera_motion, samples.scene):
        for split, listing in (("train", task.train_list), ("val", task.val_list)):
            m = load_manifest(str(work / "shards" / task.name / split))
            assert len(m) == len(listing.read_text().splitlines())
            assert m.classes == task.classes
    assert len(load_manifest(str(work / "shards" / "images"))) == len(samples.images_list.read_text().splitlines())
    identities = set()
    for name in ("camera-motion/train", "scene/train", "images"):
        tokens = load_tokens(str(work / "tokens" / name))
        assert {r["key"] for r in tokens.manifest.rows} == {r["key"] for r in load_manifest(str(work / "shards" / name)).rows}
        identities.add(json.dumps(tokens.record["tokenizer"], sort_keys=True))
    assert len(identities) == 1, "both streams must share one tokenizer"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(work / 'mlflow.db').resolve()}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments() if e.name == "bevt-demo"])
    (parent,) = [r for r in runs if r.info.run_name == "demo"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1, "every stage run nests under the demo run"
    assert sorted(r.info.run_name for r in children) == sorted(
        ["shard"] * 5 + ["tokenize"] * 3 + ["pretrain-image", "pretrain-joint", "finetune", "finetune", "evaluate",
                                            "evaluate"])
    assert all(r.info.status == "FINISHED" for r in runs)
    assert "report.html" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "pretrain-joint" in (work / "report.html").read_text()
    assert not (REPO / "mlruns").exists() and (work / "mlartifacts").is_dir()
    scene = json.loads((work / "eval" / "scene" / "metrics.json").read_text())
    assert scene["top1"] > 2 / len(samples.scene.classes), "the scene task is learned well above chance"
    before = {p: p.read_bytes() for p in sorted(work.rglob("*.tar"))}
    again = subprocess.run(cmd, capture_output=True, text=True, env=cli_env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.read_bytes() for p in sorted(work.rglob("*.tar"))} == before, "a rerun changes nothing"
