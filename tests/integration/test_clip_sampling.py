"""Finetune clips take exactly the frames the official samplers take, counted in the video's own frames.

A synthetic video whose every frame paints its own index is sharded at stride 1 and 2; the training and
test clips read back from the shards must hold the frames of mmaction's ``SampleFrames`` (K400) and of
the uniform sampler (SSv2), re-implemented below from the official code
(``mmaction/datasets/pipelines/loading.py`` L133-L192, L210-L255; docs/official-behaviour.md §5.1).
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from bevt_core.config import ConfigError
from bevt_core.data.decode import decode_jpeg
from bevt_core.data.loader import read_sample
from bevt_core.data.manifest import load_manifest
from bevt_core.loading import clips
from bevt_core.loading.clip_spec import ClipSpec
from bevt_core.stages.shard import ShardConfig
from bevt_core.stages.shard import run as shard
from bevt_core.tracking.config import TrackingConfig

FRAMES = 301
K400 = ClipSpec(clip_len=32, frame_interval=2, sampling="interval", crop=32, test_clips=4, test_crops=3)
SSV2 = ClipSpec(clip_len=32, frame_interval=1, sampling="uniform", crop=32, test_clips=1, test_crops=3)


def official_train_start_range(total: int, clip_len: int, interval: int) -> range:
    """``_get_train_clips`` with num_clips=1: the start is ``randint(total - span + 1)`` when that is positive,
    else 0."""
    span = clip_len * interval
    return range(total - span + 1) if total - span + 1 > 0 else range(1)


def official_test_starts(total: int, clip_len: int, interval: int, clips: int) -> list[int]:
    """``_get_test_clips``: the middle of each of ``clips`` equal shares of the valid starts."""
    span = clip_len * interval
    share = (total - span + 1) / float(clips)
    if total > span - 1:
        return list((np.arange(clips) * share + share / 2.0).astype(np.int64))
    return [0] * clips


def official_clip(start: int, total: int, clip_len: int, interval: int) -> list[int]:
    """``__call__``: every ``interval``-th frame from the start, looped (``out_of_bound_opt='loop'``)."""
    return [int(i) for i in np.mod(start + np.arange(clip_len) * interval, total)]


def official_segments(total: int, clip_len: int) -> list[tuple[int, int]]:
    """The uniform sampler's segment bounds (``frame_uniform=True``): round(s i), round(s (i+1)), s = (n-1)/clip_len."""
    length = (total - 1) / clip_len
    return [(int(np.round(length * i)), int(np.round(length * (i + 1)))) for i in range(clip_len)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The index video, sharded keeping every frame and every second frame."""
    root = tmp_path_factory.mktemp("index-video")
    with av.open(str(root / "index.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv444p"
        for k in range(FRAMES):
            pixels = np.zeros((32, 32, 3), np.uint8)
            pixels[..., 0], pixels[..., 1] = (k // 20) * 12 + 6, (k % 20) * 12 + 6
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    (root / "list.txt").write_text("index.mp4 0\n")
    out = {}
    for stride in (1, 2):
        out[stride] = str(root / f"stride{stride}")
        result = shard(
            ShardConfig(
                input=str(root / "list.txt"),
                output=out[stride],
                frame_interval=stride,
                short_side=0,
                progress=False,
                workers=1,
                tracking=TrackingConfig("none"),
            )
        )
        assert result.ok == 1, result.summary()
    return out


def read_indices(root: str, positions: np.ndarray) -> list[int]:
    """The raw frame index each stored position's pixels paint."""
    manifest = load_manifest(root)
    sample = read_sample(manifest, manifest.rows[0])
    pixels = [decode_jpeg(sample.jpegs[p]).mean(axis=(0, 1)) for p in positions.tolist()]
    return [int(r // 12) * 20 + int(g // 12) for r, g, _ in pixels]


def the_sample(root: str):
    manifest = load_manifest(root)
    return read_sample(manifest, manifest.rows[0])


@pytest.mark.parametrize("stride", [1, 2])
def test_k400_clips_are_the_official_ones(shards, stride):
    sample = the_sample(shards[stride])
    rng = np.random.default_rng(0)
    starts = official_train_start_range(FRAMES, K400.clip_len, K400.frame_interval)
    for _ in range(20):
        got = read_indices(shards[stride], clips.train_indices(sample, K400, rng))
        # At stride 1 the clip is the official one for its start; at stride 2 the start is rounded down to a
        # stored frame and the interval stays the official 2 frames of the video.
        assert got[0] in starts and got[0] % stride == 0
        assert got == official_clip(got[0], FRAMES, K400.clip_len, K400.frame_interval)
    tests = [read_indices(shards[stride], idx) for idx in clips.test_indices(sample, K400)]
    official = official_test_starts(FRAMES, K400.clip_len, K400.frame_interval, K400.test_clips)
    expected = [official_clip(s - s % stride, FRAMES, K400.clip_len, K400.frame_interval) for s in official]
    assert tests == expected
    if stride == 1:
        assert [t[0] for t in tests] == official  # exactly the official starts


def test_ssv2_clips_are_the_official_ones(shards):
    sample = the_sample(shards[1])
    segments = official_segments(FRAMES, SSV2.clip_len)
    rng = np.random.default_rng(0)
    for _ in range(20):
        got = read_indices(shards[1], clips.train_indices(sample, SSV2, rng))
        assert all(low <= index <= high for index, (low, high) in zip(got, segments, strict=True))
    (test,) = [read_indices(shards[1], idx) for idx in clips.test_indices(sample, SSV2)]
    assert test == [(low + high) // 2 for low, high in segments]


def test_a_stride_that_cannot_give_the_interval_is_refused(shards):
    with pytest.raises(ConfigError, match=r"clip.frame_interval: 3 frames cannot be sampled from .*one frame in 2"):
        clips.clip_stream(shards[2], ClipSpec(8, 3, "interval", 32), "train", 1, 0, 1, 0)
