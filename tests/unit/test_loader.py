"""Exact splitting of an epoch across ranks and dataloader workers, on real shards."""

from __future__ import annotations

import itertools

import pytest
from torch.utils.data import DataLoader

from bevt_core.data.loader import Consumer, ShardStream, assign, epoch_order
from bevt_core.data.manifest import Manifest
from bevt_core.stages.shard import ShardConfig, run


def fake_manifest(sizes: list[int]) -> Manifest:
    rows = []
    for s, n in enumerate(sizes):
        for i in range(n):
            rows.append({"key": f"s{s}_{i}", "shard": f"shard-{s:06d}.tar", "offset": i * 100, "bytes": 100})
    return Manifest("/nowhere", rows, [])


@pytest.mark.parametrize("world, workers", list(itertools.product([1, 2, 3, 4], [1, 2, 3])))
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_sample_exactly_once(world, workers, shuffle):
    m = fake_manifest([5, 7, 1, 0, 11])
    for epoch in range(3):
        order = epoch_order(m, epoch, seed=1, shuffle=shuffle)
        seen = [
            i
            for r in range(world)
            for w in range(workers)
            for i in assign(order, Consumer(r, world, w, workers), False)
        ]
        assert sorted(seen) == list(range(len(m.rows)))
        per_rank = [
            sum(len(assign(order, Consumer(r, world, w, workers), False)) for w in range(workers)) for r in range(world)
        ]
        assert max(per_rank) - min(per_rank) <= 1
        even = [
            sum(len(assign(order, Consumer(r, world, w, workers), True)) for w in range(workers)) for r in range(world)
        ]
        assert len(set(even)) == 1 and even[0] == len(m.rows) // world


def test_shuffle_changes_with_epoch_and_is_seeded():
    m = fake_manifest([3] * 8)
    orders = [epoch_order(m, e, seed=0, shuffle=True) for e in range(4)]
    assert len({tuple(o) for o in orders}) > 1
    assert orders[2] == epoch_order(m, 2, seed=0, shuffle=True)
    assert epoch_order(m, 0, 0, False) == list(range(24))


@pytest.fixture(scope="module")
def real_shards(samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    task = samples.scene
    run(
        ShardConfig(
            input=str(task.train_list),
            root=str(task.root),
            output=str(out),
            frame_interval=4,
            short_side=48,
            samples_per_shard=5,
            progress=False,
        )
    )
    return str(out)


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 2), (3, 2)])
def test_dataloader_workers_and_ranks_read_each_sample_once(real_shards, world, workers):
    keys = []
    for rank in range(world):
        ds = ShardStream(real_shards, shuffle=True, seed=3, rank=rank, world_size=world)
        ds.set_epoch(1)
        dl = DataLoader(ds, batch_size=None, num_workers=workers)
        keys += [s.key for s in dl]
        assert len(ds) in (len(ds.manifest) // world, len(ds.manifest) // world + 1)
    assert sorted(keys) == sorted(r["key"] for r in ds.manifest.rows)


def test_rank_from_torchrun_environment(real_shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = ShardStream(real_shards, even_ranks=True)
    got = [s.key for s in ds]
    n = len(ds.manifest)
    assert got == [r["key"] for r in ds.manifest.rows][n // 2 : n // 2 * 2]


def test_decoded_samples_and_shuffle_buffer(real_shards):
    ds = ShardStream(real_shards, shuffle=True, shuffle_buffer=4, decode=True)
    items = list(ds)
    assert len(items) == len(ds.manifest)
    f = items[0]["frames"]
    assert f.dtype.name == "uint8" and f.ndim == 4 and f.shape[-1] == 3 and min(f.shape[1:3]) == 48
