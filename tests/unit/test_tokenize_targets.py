"""The target loader's sampling and normalisation (the end-to-end checks are in integration)."""

from __future__ import annotations

import numpy as np
import torch

from bevt_core.data.shard_format import Sample
from bevt_core.loading.frames import StoredFrames, interval_train
from bevt_core.loading.targets import normalize


def test_clip_window_follows_sample_frames():
    rng = np.random.default_rng(0)
    starts = {int(interval_train(40, 4, 2, rng)[0]) for _ in range(2000)}
    assert starts == set(range(0, 40 - 8 + 1)), "start ~ U[0, frames - clip_len*interval], both ends"
    for _ in range(20):
        idx = interval_train(40, 4, 2, rng)
        assert np.array_equal(np.diff(idx), [2, 2, 2])
    # Too short for the span: start at 0 and wrap around (SampleFrames' out_of_bound_opt='loop').
    assert interval_train(5, 4, 2, rng).tolist() == [0, 2, 4, 1]
    assert interval_train(16, 16, 1, rng).tolist() == list(range(16))


def test_raw_frames_are_read_from_the_stored_ones():
    """A shard at stride 2 holds frames 0, 2, 4...: raw frame 7 is read from the stored frame of raw 6."""

    def sample(kept: list[int], raw: int) -> Sample:
        return Sample("k", 0, {"frame_indices": kept, "num_frames": raw}, [b""] * len(kept))

    frames = StoredFrames.of(sample(list(range(0, 301, 2)), 301))
    assert (frames.stride, frames.count, frames.raw) == (2, 151, 301)
    assert frames.positions(np.array([0, 6, 7, 300])).tolist() == [0, 3, 3, 150]
    capped = StoredFrames.of(sample([0, 2, 4, 6], 301))  # shard --max-frames 4: the video ends after frame 7
    assert (capped.raw, capped.positions(np.array([7, 9])).tolist()) == (8, [3, 3])


def test_normalize_layout_and_values():
    crops = np.zeros((2, 4, 5, 3), np.uint8)
    crops[..., 0] = 255
    x = normalize(crops)
    assert x.shape == (3, 2, 4, 5) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.tensor((255 - 123.675) / 58.395))
    assert torch.allclose(x[2], torch.tensor(-103.53 / 57.375))
    assert normalize(crops[0]).shape == (3, 4, 5)
