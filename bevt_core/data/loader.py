"""Stream samples back out of a shard directory, split exactly across nodes and workers.

The manifest fixes an order for each epoch (shards in a seeded order when shuffling, samples in
tar order within a shard). Ranks take equal contiguous blocks of that order and each dataloader
worker a contiguous block of its rank's, so every sample is read exactly once per epoch and each
reader streams long runs of consecutive bytes: a seek locally, one ranged GET per shard run on S3.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from bevt_core import storage
from bevt_core.data.decode import decode_jpeg
from bevt_core.data.manifest import Manifest, load_manifest
from bevt_core.data.shard_format import Sample, parse_sample


@dataclass(frozen=True)
class Consumer:
    """One reader of an epoch: a rank of the job and a dataloader worker of that rank."""

    rank: int = 0
    world: int = 1
    worker: int = 0
    workers: int = 1


def block(n: int, parts: int, i: int) -> range:
    """The i-th of ``parts`` contiguous, near-equal blocks of ``range(n)``."""
    return range(i * n // parts, (i + 1) * n // parts)


def epoch_order(manifest: Manifest, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """Row indices in the order the epoch reads them: grouped by shard, tar order inside."""
    by_shard: dict[str, list[int]] = {}
    for i, row in enumerate(manifest.rows):
        by_shard.setdefault(row["shard"], []).append(i)
    shards = sorted(by_shard)
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(shards)
    return [i for s in shards for i in sorted(by_shard[s], key=lambda j: manifest.rows[j]["offset"])]


def assign(order: list[int], c: Consumer, even_ranks: bool) -> list[int]:
    """The part of the epoch's order that consumer ``c`` reads.

    With ``even_ranks`` every rank gets exactly ``len(order) // world`` samples (DDP steps must
    match across ranks); the few left over are the tail of this epoch's order, which changes
    with the epoch when shuffling. Without it, nothing is dropped and ranks differ by at most one.
    """
    n = len(order)
    if even_ranks:
        n = n // c.world * c.world
    rank_part = block(n, c.world, c.rank)
    worker_part = block(len(rank_part), c.workers, c.worker)
    return [order[rank_part.start + i] for i in worker_part]


def current_consumer(rank: int | None = None, world: int | None = None) -> Consumer:
    """Rank and world from torch.distributed, else the torchrun / PyTorchJob environment."""
    if rank is None or world is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    info = get_worker_info()
    return Consumer(rank, world, info.id if info else 0, info.num_workers if info else 1)


def read_sample(manifest: Manifest, row: dict) -> Sample:
    """Random access to one sample: exactly its byte range of the shard."""
    data = storage.read_range(manifest.shard_uri(row), row["offset"], row["offset"] + row["bytes"])
    return parse_sample(data)


def read_runs(manifest: Manifest, rows: list[dict], parse: Callable[[bytes], Any] = parse_sample) -> Iterator:
    """Read rows in order, one sequential stream per run of adjacent samples in a shard; yields
    ``parse(sample bytes)`` (a :class:`Sample` by default; other shard kinds pass their own)."""
    stream, shard, pos = None, None, -1
    try:
        for row in rows:
            if row["shard"] != shard or row["offset"] != pos:
                if stream is not None:
                    stream.close()
                shard = row["shard"]
                stream = storage.open_read(manifest.shard_uri(row), row["offset"])
            data = stream.read(row["bytes"])
            if len(data) != row["bytes"]:
                raise OSError(f"{shard}: expected {row['bytes']} bytes at {row['offset']}, got {len(data)}")
            pos = row["offset"] + row["bytes"]
            yield parse(data)
    finally:
        if stream is not None:
            stream.close()


class ShardStream(IterableDataset):
    """Samples of a shard directory (local or ``s3://``), each read once per epoch across the job.

    Yields :class:`~bevt_core.data.shard_format.Sample` (JPEG bytes, so a transform decodes only the
    frames it uses), or with ``decode=True`` a dict with ``frames`` as a (F, H, W, 3) uint8 array.
    Call :meth:`set_epoch` before each epoch when shuffling.
    """

    def __init__(
        self,
        root: str,
        *,
        shuffle: bool = False,
        seed: int = 0,
        even_ranks: bool = False,
        shuffle_buffer: int = 0,
        decode: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.manifest = load_manifest(root)
        self.shuffle, self.seed, self.even_ranks = shuffle, seed, even_ranks
        self.shuffle_buffer, self.decode = shuffle_buffer, decode
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rows_for(self, consumer: Consumer) -> list[dict]:
        order = epoch_order(self.manifest, self.epoch, self.seed, self.shuffle)
        return [self.manifest.rows[i] for i in assign(order, consumer, self.even_ranks)]

    def __len__(self) -> int:
        """Samples this rank reads per epoch (all its workers together)."""
        c = current_consumer(self.rank, self.world_size)
        return len(self.rows_for(Consumer(c.rank, c.world, 0, 1)))

    def __iter__(self):
        consumer = current_consumer(self.rank, self.world_size)
        samples = read_runs(self.manifest, self.rows_for(consumer))
        if self.shuffle and self.shuffle_buffer > 1:
            samples = buffer_shuffle(
                samples, self.shuffle_buffer, random.Random(hash((self.seed, self.epoch, consumer)))
            )
        for sample in samples:
            yield self._decode(sample) if self.decode else sample

    @staticmethod
    def _decode(sample: Sample) -> dict:
        return {
            "key": sample.key,
            "label": sample.label,
            "meta": sample.meta,
            "frames": np.stack([decode_jpeg(j) for j in sample.jpegs]),
        }


def buffer_shuffle(items: Iterator, size: int, rng: random.Random) -> Iterator:
    buf = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            yield buf.pop(rng.randrange(len(buf)))
    rng.shuffle(buf)
    yield from buf
