"""DDP from the PyTorchJob / torchrun environment, resume after SIGKILL, and a dead rank stopping the job.

Every run is a separate process started like the real thing: `bevt finetune` (the CLI), or
`python -m torch.distributed.run` per node with only the PET_* variables the training operator
injects. CPU, gloo, one thread per process, so the runs are deterministic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bevt_core.models import build_model
from bevt_core.stages.shard import ShardConfig
from bevt_core.stages.shard import run as shard
from tests.conftest import bevt_cli
from tests.services import free_port


@pytest.fixture(scope="module")
def scene(samples, tmp_path_factory) -> Path:
    """16 real scene clips (11 classes), 64 px, every frame."""
    root = tmp_path_factory.mktemp("train-dist")
    lines = samples.scene.train_list.read_text().splitlines()
    (root / "train.txt").write_text("\n".join(lines[::2][:16]) + "\n")
    shard(
        ShardConfig(
            input=str(root / "train.txt"),
            root=str(samples.scene.root),
            output=str(root / "train"),
            short_side=64,
            samples_per_shard=8,
            progress=False,
            workers=1,
        )
    )
    return root


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "MASTER_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    return e | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"} | extra


def finetune_args(data: Path, work: Path, batch: int, *more: str) -> list[str]:
    return [
        "finetune",
        "--preset",
        "k400-tiny",
        "--train",
        str(data / "train"),
        "--run.work-dir",
        str(work),
        "--run.batch-size",
        str(batch),
        "--run.workers",
        "0",
        "--tracking.uri",
        "none",
        "--model.head-dropout",
        "0",
        "--run.log-every",
        "1",
        *more,
    ]


def weights(work: Path) -> dict[str, torch.Tensor]:
    return torch.load(work / "recognizer.pt", weights_only=True)["state_dict"]


def test_two_node_torchrun_ddp_equals_one_process(scene, tmp_path):
    single = subprocess.run(
        [*bevt_cli(), *finetune_args(scene, tmp_path / "one", 4, "--schedule.max-steps", "3")],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    port = str(free_port())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "-m",
        "bevt_core.cli",
        *finetune_args(scene, tmp_path / "ddp", 2, "--schedule.max-steps", "3"),
    ]
    nodes = [
        subprocess.Popen(
            cmd,
            env=env(
                PET_NNODES="2",
                PET_NPROC_PER_NODE="1",
                PET_NODE_RANK=str(i),
                PET_MASTER_ADDR="127.0.0.1",
                PET_MASTER_PORT=port,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "step 3" in outs[0]

    a, b = weights(tmp_path / "one"), weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    # Equal up to float reduction order. atol covers the attention key biases: their true gradient is
    # zero (softmax ignores a constant added to every key), so AdamW turns rounding noise into tiny
    # steps that differ between the two layouts (1.5e-5 seen; the lr x steps bound is 6e-3).
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    # The comparison means something only if training moved the weights away from the (seeded) init.
    torch.manual_seed(0)
    init = build_model("recognizer-tiny", num_classes=11, num_frames=8, image_size=64).state_dict()
    assert any(not torch.allclose(init[k], a[k]) for k in a if a[k].is_floating_point())


def test_sigkill_then_resume_auto_reaches_the_same_weights(scene, tmp_path):
    args = ("--schedule.max-steps", "8", "--run.checkpoint-every", "2")
    full = subprocess.run(
        [*bevt_cli(), *finetune_args(scene, tmp_path / "full", 4, *args)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert full.returncode == 0, full.stderr[-3000:]

    work = tmp_path / "killed"
    cmd = [*bevt_cli(), *finetune_args(scene, work, 4, *args)]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    index = work / "checkpoints" / "latest.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (index.exists() and "state-00000004.pt" in index.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (work / "recognizer.pt").exists()  # it really died mid-run

    resumed = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "state-0000000" in resumed.stdout
    a, b = weights(tmp_path / "full"), weights(work)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["dies", "hangs"])
def test_a_dead_or_hung_rank_makes_the_other_exit_within_the_timeout(scene, tmp_path, how):
    port = str(free_port())
    timeout = 15
    cmd = [
        *bevt_cli(),
        *finetune_args(scene, tmp_path / "w", 2, "--schedule.epochs", "1000", "--run.timeout-s", str(timeout)),
    ]
    ranks = [
        subprocess.Popen(
            cmd,
            env=env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    # Wait until rank 0 reports training steps: both ranks are inside the loop.
    seen = ""
    deadline = time.time() + 240
    while time.time() < deadline and "step 2/" not in seen:
        line = ranks[0].stdout.readline()
        if not line:
            break
        seen += line
    assert "step 2/" in seen, seen[-3000:]
    ranks[1].send_signal(how)
    killed_at = time.time()
    try:
        out = seen + ranks[0].communicate(timeout=timeout + 60)[0]
    finally:
        ranks[1].kill()  # a stopped rank stays stopped until killed
        ranks[1].wait()
    elapsed = time.time() - killed_at
    assert ranks[0].returncode not in (0, None)
    assert elapsed < timeout + 10, f"rank 0 took {elapsed:.0f} s to exit"
    assert "rank 0" in out and "peer rank" in out, out[-3000:]
    if how == signal.SIGSTOP:  # no socket breaks: the watchdog (or gloo's own timeout) ends it at the timeout
        assert elapsed >= timeout - 2, f"{elapsed:.0f} s"
