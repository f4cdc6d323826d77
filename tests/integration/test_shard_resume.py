"""Kill the shard stage with SIGKILL mid-run; rerunning it gives exactly the uninterrupted result."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import bevt_cli
from tests.services import kill_mid_job


def shard_cmd(samples, out: Path) -> list[str]:
    task = samples.camera_motion
    return bevt_cli() + [
        "shard",
        "--input",
        str(task.train_list),
        "--root",
        str(task.root),
        "--classes",
        str(task.root / "classes.txt"),
        "--output",
        str(out),
        "--samples-per-shard",
        "3",
        "--short-side",
        "64",
        "--workers",
        "1",
        "--no-progress",
    ]


def tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_sigkill_then_rerun_equals_uninterrupted(samples, tmp_path, cli_env):
    ref = tmp_path / "ref"
    subprocess.run(shard_cmd(samples, ref), check=True, capture_output=True, env=cli_env)

    out = tmp_path / "killed"
    finished = kill_mid_job(shard_cmd(samples, out), out, cli_env)
    assert 2 <= finished < len(list((ref / "_parts").glob("*-*.parquet")))

    rerun = subprocess.run(shard_cmd(samples, out), check=True, capture_output=True, text=True, env=cli_env)
    assert "reused from an earlier run" in rerun.stdout
    assert not list(out.glob(".*.tmp-*")), "temporaries of the killed run are cleaned up"
    assert pq.read_table(out / "manifest.parquet").equals(pq.read_table(ref / "manifest.parquet"))
    assert tars(out) == tars(ref)
    keys = pq.read_table(out / "manifest.parquet").column("key").to_pylist()
    assert len(keys) == len(set(keys))
