"""The README's demo command, end to end on the CI-sized sample data."""

from __future__ import annotations

import subprocess

from bevt_core.data.manifest import load_manifest
from tests.conftest import bevt_cli


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
    before = {p: p.read_bytes() for p in sorted(work.rglob("*.tar"))}
    again = subprocess.run(cmd, capture_output=True, text=True, env=cli_env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.read_bytes() for p in sorted(work.rglob("*.tar"))} == before, "a rerun changes nothing"
