"""Tiny joint-pretraining inputs, shared by the tests that run a PyTorchJob's replicas for real
(as local processes: tests/integration/test_kube_contract.py; as containers: tests/containers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bevt_core.stages.shard import ShardConfig
from bevt_core.stages.shard import run as shard
from bevt_core.stages.tokenize import TokenizeConfig
from bevt_core.stages.tokenize import run as tokenize

STEPS = 2


def prepare_joint_data(samples, root: Path) -> Path:
    """A handful of real clips and photos under ``root``, sharded and tokenized (shared codebook), 64 px."""
    (root / "videos.txt").write_text("\n".join(samples.scene.train_list.read_text().splitlines()[:8]) + "\n")
    (root / "images.txt").write_text("\n".join(samples.images_list.read_text().splitlines()[:16]) + "\n")
    shard(
        ShardConfig(
            input=str(root / "videos.txt"),
            root=str(samples.scene.root),
            output=str(root / "videos"),
            short_side=64,
            frame_interval=2,
            progress=False,
            workers=1,
        )
    )
    shard(
        ShardConfig(
            input=str(root / "images.txt"),
            root=str(samples.images_root),
            output=str(root / "images"),
            modality="image",
            short_side=64,
            progress=False,
            workers=1,
        )
    )
    tokenize(
        TokenizeConfig(
            input=str(root / "videos"),
            output=str(root / "vtok"),
            tokenizer="codebook",
            codebook_size=32,
            crop=64,
            views=1,
            fit_samples=8,
            fit_iters=5,
            progress=False,
            threads=1,
        )
    )
    tokenize(
        TokenizeConfig(
            input=str(root / "images"),
            output=str(root / "itok"),
            tokenizer="codebook",
            codebook=str(root / "vtok" / "codebook.npz"),
            crop=64,
            views=1,
            progress=False,
            threads=1,
        )
    )
    return root


def joint_config(data: Path, work_dir: Path, batch: int, workers: int = 0) -> dict[str, Any]:
    """The tiny ``pretrain-joint`` config over :func:`prepare_joint_data`'s output: ``STEPS`` steps."""
    return {
        "preset": "tiny",
        "videos": str(data / "videos"),
        "video_tokens": str(data / "vtok"),
        "images": str(data / "images"),
        "image_tokens": str(data / "itok"),
        "image_batch_size": 2,
        "frame_interval": 2,  # the shards keep every second frame
        "schedule": {"max_steps": STEPS},
        # One micro-batch per rank per step, whatever the world size (the recipe's global batch is for two ranks).
        "run": {"work_dir": str(work_dir), "batch_size": batch, "accum_steps": 1, "workers": workers, "timeout_s": 120},
        "tracking": {"uri": "none"},
    }


def finished_line(world_size: int, batch: int) -> str:
    """What every rank prints at the end: each step consumed one micro-batch per rank."""
    return f"pretrain-joint: {STEPS} steps, {STEPS * world_size * batch} samples"
