"""Mask generators of BEVT (docs/official-behaviour.md §3): BEiT block masks for images, tube masks for video.

Masks are numpy bool arrays, True = masked. Every draw takes its random source as an argument
(``random.Random`` or ``numpy.random.Generator``), so a loader can derive one per sample from
(seed, key) and replay it. With ``random.Random`` the draws are made in the same order and with
the same calls as the official (BEiT) generator, which uses the ``random`` module.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

Rng = random.Random | np.random.Generator


def _uniform(rng: Rng, low: float, high: float) -> float:
    """random.uniform's formula, which also allows low > high (a budget below the minimum block)."""
    return low + (high - low) * rng.random()


def _randint(rng: Rng, low: int, high: int) -> int:
    """Inclusive of both ends, like random.randint."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high + 1))
    return rng.randint(low, high)


@dataclass(frozen=True)
class BlockMaskGenerator:
    """BEiT block-wise masking on a ``grid`` x ``grid`` map of 16x16-pixel cells.

    Rectangles of random area and aspect are added until ``num_masked`` cells are covered, or a
    round of 10 attempts adds nothing; the result never exceeds ``num_masked`` and nearly always
    equals it.
    """

    grid: int = 14
    num_masked: int = 98
    min_block: int = 16
    max_block: int | None = None
    min_aspect: float = 0.3
    max_aspect: float | None = None
    attempts_per_round: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.num_masked <= self.grid * self.grid:
            raise ValueError(f"num_masked={self.num_masked} must be in 1..{self.grid * self.grid}")

    @classmethod
    def scaled(cls, grid: int) -> BlockMaskGenerator:
        """BEVT's proportions on another grid: half the cells, blocks of at least 16/196 of the map."""
        return cls(grid=grid, num_masked=grid * grid // 2, min_block=max(1, round(16 * grid * grid / 196)))

    def __call__(self, rng: Rng) -> np.ndarray:
        mask = np.zeros((self.grid, self.grid), dtype=bool)
        max_block = self.max_block if self.max_block is not None else self.num_masked
        count = 0
        while count < self.num_masked:
            added = self._add_block(mask, min(self.num_masked - count, max_block), rng)
            if added == 0:
                break
            count += added
        return mask

    def _add_block(self, mask: np.ndarray, budget: int, rng: Rng) -> int:
        """Mask one random rectangle that adds between 1 and ``budget`` new cells; return how many."""
        log_aspect = (math.log(self.min_aspect), math.log(self.max_aspect or 1 / self.min_aspect))
        for _ in range(self.attempts_per_round):
            area = _uniform(rng, self.min_block, budget)
            aspect = math.exp(_uniform(rng, *log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h >= self.grid or w >= self.grid:
                continue
            top = _randint(rng, 0, self.grid - h)
            left = _randint(rng, 0, self.grid - w)
            block = mask[top : top + h, left : left + w]
            new = h * w - int(block.sum())
            if 0 < new <= budget:
                block[:] = True
                return new
        return 0


@dataclass(frozen=True)
class TubeMaskGenerator:
    """One block mask repeated over a cyclic run of temporal slots (docs/official-behaviour.md §3).

    A clip of ``num_frames`` frames has ``num_frames / temporal_scale`` slots, one per 2-frame
    tubelet. The run starts anywhere and its length is uniform over ``tube_range`` of the slots
    (4..8 of 8 by default), wrapping past the last slot to the first.
    """

    num_frames: int = 16
    temporal_scale: int = 2
    tube_range: tuple[float, float] = (0.5, 1.0)
    block: BlockMaskGenerator = BlockMaskGenerator()

    def __call__(self, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
        """(input mask (slots, G, G) for the backbone, target mask (num_frames, G, G) for the loss)."""
        slots = self.num_frames // self.temporal_scale
        spatial = self.block(rng)
        start = _randint(rng, 0, slots - 1)
        shortest = max(int(self.tube_range[0] * slots), 1)
        longest = min(int(self.tube_range[1] * slots), slots)
        length = _randint(rng, shortest, longest)
        tube = np.zeros((slots, *spatial.shape), dtype=bool)
        tube[(start + np.arange(length)) % slots] = spatial
        return tube, np.repeat(tube, self.temporal_scale, axis=0)
