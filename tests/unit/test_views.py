"""Augmentation views: the official distribution, determinism from (seed, key, index), exact replay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bevt_core.data.views import Augment, View, apply_view, draw_view, sample_views, view_rng


def test_official_geometry_distribution():
    aug = Augment(crop=224, seed=0)
    views = [draw_view(aug, 240, 320, True, view_rng(0, "k", i)) for i in range(3000)]
    shorts = [min(v.scaled_height, v.scaled_width) for v in views]
    assert min(shorts) == 256 and max(shorts) == 320, "short side ~ U{256..320}, both ends inclusive"
    for v in views:
        assert v.scaled_height == min(v.scaled_height, v.scaled_width)
        assert v.scaled_width == int(320 * v.scaled_height / 240 + 0.5)  # aspect kept, mmcv rounding
        # randint(0, side - 224): the upper bound is exclusive, so the last offset never occurs.
        assert 0 <= v.top < v.scaled_height - 224 or v.top == 0 == v.scaled_height - 224
        assert 0 <= v.left < v.scaled_width - 224
        assert [op for op, _ in v.jitter] == list(aug.jitter_order)
        assert all(0.6 <= f <= 1.4 for _, f in v.jitter)
    at_256 = [v for v in views if v.scaled_height == 256]
    assert max(v.top for v in at_256) == 256 - 224 - 1
    assert 0.45 < np.mean([v.flip for v in views]) < 0.55
    factors = np.array([f for v in views for _, f in v.jitter])
    assert factors.min() < 0.62 and factors.max() > 1.38


def test_sizes_scale_with_the_crop_and_video_has_no_jitter():
    aug = Augment(crop=64, seed=1)
    assert aug.scales == (73, 91)
    views = sample_views(aug, "clip", 200, 128, 96, color=False)
    assert {min(v.scaled_height, v.scaled_width) for v in views} <= set(range(73, 92))
    assert all(v.size == 64 and v.jitter == () for v in views)


def test_jitter_order_is_fixed_per_run_and_drawn_from_the_seed():
    orders = {Augment(seed=s).jitter_order for s in range(20)}
    assert all(sorted(o) == ["brightness", "contrast", "saturation"] for o in orders)
    assert len(orders) > 1 and Augment(seed=3).jitter_order == Augment(seed=3).jitter_order


def test_views_depend_only_on_seed_key_and_index():
    aug = Augment(crop=64, seed=7)
    four = sample_views(aug, "a", 4, 100, 150, color=True)
    assert sample_views(aug, "a", 8, 100, 150, color=True)[:4] == four
    assert four != sample_views(aug, "b", 4, 100, 150, color=True)
    assert four != sample_views(Augment(crop=64, seed=8), "a", 4, 100, 150, color=True)
    assert len(set(four)) == 4


def test_view_json_round_trip_is_exact():
    for v in sample_views(Augment(crop=96, seed=2), "x", 10, 120, 90, color=True):
        assert View.from_dict(json.loads(json.dumps(v.to_dict()))) == v


def test_replay_geometry_with_an_identity_rescale():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 80, 100, 3), dtype=np.uint8)
    v = View(80, 100, 80, 100, top=5, left=17, size=64, flip=False)
    assert np.array_equal(apply_view(frames, v), frames[:, 5:69, 17:81])
    flipped = apply_view(frames, View(80, 100, 80, 100, 5, 17, 64, True))
    assert np.array_equal(flipped, frames[:, 5:69, 17:81][:, :, ::-1])


def test_replay_is_per_frame_so_a_window_equals_the_full_replay():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (6, 72, 96, 3), dtype=np.uint8)
    for v in sample_views(Augment(crop=48, seed=0), "w", 4, 72, 96, color=True):
        full = apply_view(frames, v)
        assert full.shape == (6, 48, 48, 3) and full.dtype == np.uint8
        idx = [4, 1, 1, 5]
        assert np.array_equal(apply_view(frames[idx], v), full[idx])
        assert np.array_equal(apply_view(frames[2], v), full[2])


def test_colour_jitter_ops():
    img = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    base = dict(height=40, width=40, scaled_height=40, scaled_width=40, top=0, left=0, size=40, flip=False)
    gray_out = apply_view(img, View(**base, jitter=(("saturation", 0.0),)))
    assert np.abs(gray_out.astype(int) - gray_out[..., :1]).max() == 0, "saturation 0 gives a gray image"
    flat = apply_view(img, View(**base, jitter=(("contrast", 0.0),)))
    gray = img.astype(np.float64) @ [0.2989, 0.587, 0.114]
    assert np.abs(flat.astype(float) - gray.mean()).max() <= 1.0, "contrast 0 gives the mean gray (truncated)"
    bright = apply_view(img, View(**base, jitter=(("brightness", 1.4),)))
    assert np.array_equal(bright, np.clip(img.astype(np.float32) * np.float32(1.4), 0, 255).astype(np.uint8))
    # As mmaction's ColorJitter: the ops run unclipped on floats, one clip and truncation at the end.
    both = apply_view(img, View(**base, jitter=(("brightness", 1.4), ("contrast", 0.6))))
    x = img.astype(np.float32) * np.float32(1.4)
    mean = np.float32(
        (x[..., 0] * np.float32(0.2989) + x[..., 1] * np.float32(0.587) + x[..., 2] * np.float32(0.114)).mean()
    )
    expected = np.clip(np.float32(0.6) * x + np.float32(1 - 0.6) * mean, 0, 255).astype(np.uint8)
    assert np.array_equal(both, expected)
    clipped_each = np.clip(np.float32(0.6) * np.clip(x, 0, 255) + np.float32(0.4) * mean, 0, 255).astype(np.uint8)
    assert not np.array_equal(both, clipped_each), "saturated pixels must carry their excess into the next op"
    # Unclipped, the three ops are linear and commute: the official op order changes only float rounding.
    a = apply_view(img, View(**base, jitter=(("brightness", 1.3), ("contrast", 0.7))))
    b = apply_view(img, View(**base, jitter=(("contrast", 0.7), ("brightness", 1.3))))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_replay_refuses_frames_of_another_size():
    v = sample_views(Augment(crop=32), "k", 1, 50, 60, color=False)[0]
    with pytest.raises(ValueError, match="drawn for 50x60"):
        apply_view(np.zeros((2, 60, 50, 3), np.uint8), v)
