"""Kill the shard stage with SIGKILL mid-run; rerunning it gives exactly the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import bevt_cli


def shard_cmd(samples, out: Path) -> list[str]:
    task = samples.camera_motion
    return bevt_cli() + ["shard", "--input", str(task.train_list), "--root", str(task.root),
                         "--classes", str(task.root / "classes.txt"), "--output", str(out),
                         "--samples-per-shard", "3", "--short-side", "64", "--workers", "1", "--no-progress"]


def tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_sigkill_then_rerun_equals_uninterrupted(samples, tmp_path, cli_env):
    ref = tmp_path / "ref"
    subprocess.run(shard_cmd(samples, ref), check=True, capture_output=True, env=cli_env)

    out = tmp_path / "killed"
    proc = subprocess.Popen(shard_cmd(samples, out), env=cli_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    # Kill while a shard is half written, after at least two shards finished.
    while time.monotonic() < deadline:
        parts = list((out / "_parts").glob("*.parquet")) if (out / "_parts").exists() else []
        if len(parts) >= 2 and list(out.glob(".*.tmp-*")):
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.parquet").exists(), "an interrupted run must not look complete"
    finished = {p.stem for p in (out / "_parts").glob("*.parquet")}
    assert 2 <= len(finished) < len(list((ref / "_parts").glob("*.parquet")))

    rerun = subprocess.run(shard_cmd(samples, out), check=True, capture_output=True, text=True, env=cli_env)
    assert "reused from an earlier run" in rerun.stdout
    assert not list(out.glob(".*.tmp-*")), "temporaries of the killed run are cleaned up"
    assert pq.read_table(out / "manifest.parquet").equals(pq.read_table(ref / "manifest.parquet"))
    assert tars(out) == tars(ref)
    keys = pq.read_table(out / "manifest.parquet").column("key").to_pylist()
    assert len(keys) == len(set(keys))
