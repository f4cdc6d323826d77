"""Which frames a clip reads: the official samplers, counted in the video's own (raw) frames.

The official pipelines sample frame indices of the decoded video (mmaction's ``SampleFrames``,
docs/official-behaviour.md §4.4 and §5.1): an ``interval`` recipe of ``frame_interval=2`` means every
second frame of the file, whatever a shard stored. A shard keeps every ``stride``-th frame from frame 0
(its manifest records which), so a raw index is read from the stored frame at ``index // stride``:
exactly that frame when the stride divides it, else the stored frame just before it. A clip's
interval must therefore be a multiple of the stride (:func:`check_stride`); with stride 1 the clips
are exactly the official ones, with a coarser stride their first frame is the official one rounded
down to a stored frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevt_core.config import ConfigError
from bevt_core.data.shard_format import Sample


@dataclass(frozen=True)
class StoredFrames:
    """The frames a shard sample holds: ``count`` of them, every ``stride``-th of ``raw`` decoded frames."""

    stride: int
    count: int
    raw: int

    @classmethod
    def of(cls, sample: Sample) -> StoredFrames:
        count = len(sample.jpegs)
        kept = sample.meta.get("frame_indices") or list(range(count))
        stride = kept[1] - kept[0] if len(kept) > 1 else 1
        # A frame cap (shard --max-frames) cuts the video: its raw length ends after the last stored frame.
        raw = min(int(sample.meta.get("num_frames") or count * stride), kept[-1] + stride)
        return cls(stride, count, raw)

    def positions(self, raw_indices: np.ndarray) -> np.ndarray:
        """Where raw frame indices are stored (each rounded down to a stored frame)."""
        return np.minimum(np.asarray(raw_indices) // self.stride, self.count - 1)


def check_stride(frame_interval: int, stride: int, where: str, field: str = "clip.frame_interval") -> None:
    if frame_interval % stride:
        raise ConfigError(
            f"{field}: {frame_interval} frames cannot be sampled from {where}, whose shards keep one "
            f"frame in {stride}; shard it with a --frame-interval that divides {frame_interval}"
        )


def interval_train(raw: int, clip_len: int, interval: int, rng: np.random.Generator) -> np.ndarray:
    """``SampleFrames(num_clips=1)`` training: a start drawn from 0..raw-span (both included), then every
    ``interval``-th frame; a video shorter than the span starts at 0 and wraps."""
    span = clip_len * interval
    start = int(rng.integers(0, raw - span + 1)) if raw >= span else 0
    return (start + np.arange(clip_len) * interval) % raw


def interval_test(raw: int, clip_len: int, interval: int, clips: int) -> list[np.ndarray]:
    """``SampleFrames(test_mode=True)``: ``clips`` starts, each in the middle of its share of the video."""
    span = clip_len * interval
    share = (raw - span + 1) / clips
    starts = [int(share / 2 + share * i) for i in range(clips)] if raw > span - 1 else [0] * clips
    return [(start + np.arange(clip_len) * interval) % raw for start in starts]


def _segments(raw: int, clip_len: int) -> list[tuple[int, int]]:
    length = (raw - 1) / clip_len
    return [(round(length * i), round(length * (i + 1))) for i in range(clip_len)]


def uniform_train(raw: int, clip_len: int, rng: np.random.Generator) -> np.ndarray:
    """SSv2's uniform sampling: the video cut into ``clip_len`` segments, one frame drawn in each (ends included)."""
    return np.array([int(rng.integers(start, end + 1)) for start, end in _segments(raw, clip_len)])


def uniform_test(raw: int, clip_len: int) -> np.ndarray:
    """The middle frame of each segment."""
    return np.array([(start + end) // 2 for start, end in _segments(raw, clip_len)])
