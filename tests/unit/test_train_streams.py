"""Training batches do not depend on the job's split: ranks, workers and resume positions."""

from __future__ import annotations

import numpy as np
import pytest

from bevt_core.data.manifest import load_manifest
from bevt_core.loading.streams import StepStream, loader
from bevt_core.stages.shard import ShardConfig
from bevt_core.stages.shard import run as shard


@pytest.fixture(scope="module")
def images(samples, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("streams")
    (root / "list.txt").write_text("\n".join(samples.images_list.read_text().splitlines()[:26]) + "\n")
    shard(
        ShardConfig(
            input=str(root / "list.txt"),
            root=str(samples.images_root),
            modality="image",
            output=str(root / "shards"),
            short_side=32,
            samples_per_shard=5,
            progress=False,
            workers=1,
        )
    )
    return str(root / "shards")


def make(row, sample, _, rng):
    return sample.key, float(rng.random())  # the key, and a per-sample random draw


def stream(root: str, micro: int, rank: int = 0, world: int = 1, cycle: bool = False) -> StepStream:
    return StepStream(load_manifest(root), make, list, micro_batch=micro, rank=rank, world=world, seed=3, cycle=cycle)


def epoch(s: StepStream, workers: int = 0, e: int = 0, start: int = 0) -> list[list]:
    s.set_position(e, start)
    return list(loader(s, workers))


def test_ranks_split_each_global_batch_and_draw_the_same(images):
    one = epoch(stream(images, 4))
    r0, r1 = epoch(stream(images, 2, 0, 2)), epoch(stream(images, 2, 1, 2))
    assert len(one) == len(r0) == len(r1) == 26 // 4  # the incomplete global batch is dropped on every rank
    for big, a, b in zip(one, r0, r1):
        assert big == a + b  # same samples, same random draws


def test_workers_keep_the_order_and_resume_starts_at_the_exact_batch(images):
    s = stream(images, 3)
    base = epoch(s)
    assert epoch(s, workers=2) == base
    assert epoch(s, workers=2, start=3) == base[3:]
    keys = [k for b in base for k, _ in b]
    assert len(set(keys)) == len(keys) and epoch(s, e=1) != base  # reshuffled per epoch


def test_cycling_continues_across_epochs_in_order(images):
    s = stream(images, 4, cycle=True)
    per_epoch = s.micro_steps
    s.set_position(0, 4)
    it = iter(loader(s, 2))
    got = [next(it) for _ in range(per_epoch + 2)]
    expected = epoch(stream(images, 4), e=0)[4:] + epoch(stream(images, 4), e=1)
    assert got == expected[: len(got)]
    assert np.isfinite([v for b in got for _, v in b]).all()
