"""Training batches that do not depend on how the job is split.

An epoch is a seeded permutation of the manifest's samples, cut into *micro-global batches* of
``micro_batch x world`` samples; rank r reads its slice of each, and dataloader worker w of that
rank the micro-batches w, w+W, ... (which the DataLoader hands back in order). Every random draw
for a sample (view, temporal window, crop, masks) comes from a generator seeded by (seed, epoch,
sample index). So the samples in an optimizer step and everything drawn for them are the same
for 1 process or N ranks with the same global batch, and a resumed run restarts at an exact
micro-batch without replaying any RNG: the data position is just (epoch, micro-batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bevt_core.data.loader import read_runs
from bevt_core.data.manifest import Manifest
from bevt_core.data.shard_format import parse_sample
from bevt_core.data.token_format import TokenSet, parse_data, parse_tokens

# make(row, sample, tokens | None, rng) -> one item; collate(items) -> a micro-batch.
Make = Callable[[dict, Any, Any, np.random.Generator], Any]


class StepStream(IterableDataset):
    def __init__(
        self,
        manifest: Manifest,
        make: Make,
        collate: Callable[[list], Any],
        *,
        micro_batch: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        tokens: TokenSet | None = None,
        cycle: bool = False,
        keep_tail: bool = False,
    ):
        if len(manifest) < micro_batch * world and not keep_tail:
            raise ValueError(
                f"{manifest.root}: {len(manifest)} samples cannot fill one micro-batch of "
                f"{micro_batch} per rank x {world} ranks"
            )
        self.manifest, self.make, self.collate, self.tokens = manifest, make, collate, tokens
        self.micro_batch, self.rank, self.world = micro_batch, rank, world
        self.seed, self.shuffle, self.cycle, self.keep_tail = seed, shuffle, cycle, keep_tail
        self.epoch, self.start = 0, 0

    @property
    def micro_steps(self) -> int:
        """Micro-batches per epoch. Training drops the incomplete last global batch (ranks must step together);
        with ``keep_tail`` (evaluation) every sample is read once, the last batches short or empty."""
        per_step = self.micro_batch * self.world
        return -(-len(self.manifest) // per_step) if self.keep_tail else len(self.manifest) // per_step

    def set_position(self, epoch: int, micro: int) -> None:
        self.epoch, self.start = epoch, micro

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.manifest)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(n)

    def batch_rows(self, epoch: int, micro: int) -> list[dict]:
        order = self.order(epoch)
        first = micro * self.micro_batch * self.world + self.rank * self.micro_batch
        return [self.manifest.rows[i] for i in order[first : first + self.micro_batch]]

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        epoch, start, done = self.epoch, self.start, 0
        while True:
            # The DataLoader takes batch i from worker i % workers: keep that alignment across epochs.
            first = start + (worker - done) % workers
            for micro in range(first, self.micro_steps, workers):
                rows = self.batch_rows(epoch, micro)
                if rows:
                    yield self.collate(self._read(epoch, rows))
            if not self.cycle:
                return
            done += self.micro_steps - start
            epoch, start = epoch + 1, 0

    def _read(self, epoch: int, rows: list[dict]) -> list:
        data = read_runs(self.manifest, rows, parse_data if self.tokens else parse_sample)
        if self.tokens is None:
            pairs = ((d, None) for d in data)
        else:
            by_key = self.tokens.by_key
            pairs = zip(data, read_runs(self.tokens.manifest, [by_key[r["key"]] for r in rows], parse_tokens))
        return [
            self.make(row, d, t, np.random.default_rng([self.seed, epoch, row["index"]]))
            for row, (d, t) in zip(rows, pairs)
        ]


def loader(stream: StepStream, workers: int) -> DataLoader:
    """Batches come pre-collated; workers read ahead. With workers>0 the order is still exact."""
    return DataLoader(
        stream, batch_size=None, num_workers=workers, persistent_workers=False, prefetch_factor=2 if workers else None
    )
