"""The target loader's sampling and normalisation (the end-to-end checks are in integration)."""

from __future__ import annotations

import numpy as np
import torch

from bevt_core.loading.targets import clip_indices, normalize


def test_clip_window_follows_sample_frames():
    rng = np.random.default_rng(0)
    starts = {int(clip_indices(40, 4, 2, rng)[0]) for _ in range(2000)}
    assert starts == set(range(0, 40 - 8 + 1)), "start ~ U[0, frames - clip_len*stride], both ends"
    for _ in range(20):
        idx = clip_indices(40, 4, 2, rng)
        assert np.array_equal(np.diff(idx), [2, 2, 2])
    # Too short for the span: start at 0 and wrap around (SampleFrames' out_of_bound_opt='loop').
    assert clip_indices(5, 4, 2, rng).tolist() == [0, 2, 4, 1]
    assert clip_indices(16, 16, 1, rng).tolist() == list(range(16))


def test_normalize_layout_and_values():
    crops = np.zeros((2, 4, 5, 3), np.uint8)
    crops[..., 0] = 255
    x = normalize(crops)
    assert x.shape == (3, 2, 4, 5) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.tensor((255 - 123.675) / 58.395))
    assert torch.allclose(x[2], torch.tensor(-103.53 / 57.375))
    assert normalize(crops[0]).shape == (3, 4, 5)
