"""Finetune / evaluation clips from data shards (docs/official-behaviour.md §5.1).

Frame sampling in the video's own frames, read from the stored ones (:mod:`bevt_core.loading.frames`):
``interval`` is K400's ``SampleFrames`` (random start, fixed interval, wrap around; test clips
evenly spaced), ``uniform`` is SSv2's segment sampling (random frame per segment; test takes the
middle). Training crops: short side to 256/224 of the crop, RandomResizedCrop (area .08-1,
ratio 3/4-4/3), resize to the crop, flip, optional RandAugment (one draw for all frames) and
RandomErasing (one zero box for all frames). Test views: short side to the crop, then 1 center
or 3 crops along the long side, for each of ``test_clips`` clips.
"""

from __future__ import annotations

import math
import random

import cv2
import numpy as np
import torch

from bevt_core.data.decode import decode_jpeg
from bevt_core.data.jobs import recorded_settings
from bevt_core.data.manifest import load_manifest
from bevt_core.data.shard_format import Sample
from bevt_core.loading import imgaug_augment
from bevt_core.loading.clip_spec import IMGAUG_SPEC, ClipSpec
from bevt_core.loading.frames import (
    StoredFrames,
    check_stride,
    interval_test,
    interval_train,
    uniform_test,
    uniform_train,
)
from bevt_core.loading.streams import StepStream
from bevt_core.loading.targets import normalize


def train_indices(sample: Sample, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """Stored positions of a training clip's frames, sampled as the official recipe samples the video's own."""
    frames = StoredFrames.of(sample)
    if spec.sampling == "interval":
        return frames.positions(interval_train(frames.raw, spec.clip_len, spec.frame_interval, rng))
    return frames.positions(uniform_train(frames.raw, spec.clip_len, rng))


def test_indices(sample: Sample, spec: ClipSpec) -> list[np.ndarray]:
    """Stored positions of the test clips' frames (``spec.test_clips`` for interval sampling, one for uniform)."""
    frames = StoredFrames.of(sample)
    if spec.sampling == "uniform":
        return [frames.positions(uniform_test(frames.raw, spec.clip_len))]
    clips = interval_test(frames.raw, spec.clip_len, spec.frame_interval, spec.test_clips)
    return [frames.positions(clip) for clip in clips]


def _frames(sample: Sample, idx: np.ndarray) -> np.ndarray:
    decoded = {i: decode_jpeg(sample.jpegs[i]) for i in np.unique(idx).tolist()}
    return np.stack([decoded[i] for i in idx.tolist()])


def _short_side(frames: np.ndarray, side: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    scale = side / min(h, w)
    size = (max(side, int(w * scale + 0.5)), max(side, int(h * scale + 0.5)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames])


def _resized_crop_box(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)  # fallback: the centre square
    return (h - side) // 2, (w - side) // 2, side, side


def _rand_augment(frames: np.ndarray, spec: str, rng: np.random.Generator) -> np.ndarray:
    """imgaug's RandAugment (``imgaug-nN-mM``, the official SSv2 one) or timm's, one draw for all frames."""
    imgaug = IMGAUG_SPEC.match(spec)
    if imgaug:
        return imgaug_augment.rand_augment(frames, int(imgaug["n"]), int(imgaug["m"]), rng)
    return _timm_rand_augment(frames, spec, rng)


def _timm_rand_augment(frames: np.ndarray, spec: str, rng: np.random.Generator) -> np.ndarray:
    """timm RandAugment with one random draw replayed on every frame (it uses ``random``/``np.random``)."""
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    op = rand_augment_transform(spec, {"img_mean": (124, 116, 104)})
    seed = int(rng.integers(1 << 31))
    saved = random.getstate(), np.random.get_state()
    try:
        out = []
        for f in frames:
            random.seed(seed)
            np.random.seed(seed)
            out.append(np.asarray(op(Image.fromarray(f))))
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    return np.stack(out)


def _erase(clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """timm RandomErasing ('const' mode: zeros after normalisation), the same box on every frame."""
    _, _, h, w = clip.shape
    for _ in range(10):
        target = h * w * rng.uniform(0.02, 1 / 3)
        ratio = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        eh, ew = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if eh < h and ew < w:
            top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            clip[:, :, top : top + eh, left : left + ew] = 0
            break
    return clip


def train_clip(sample: Sample, spec: ClipSpec, rng: np.random.Generator) -> torch.Tensor:
    """Normalised (3, T, crop, crop) training clip."""
    frames = _short_side(_frames(sample, train_indices(sample, spec, rng)), round(spec.crop * 256 / 224))
    top, left, ch, cw = _resized_crop_box(*frames.shape[1:3], rng)
    frames = np.stack(
        [
            cv2.resize(f[top : top + ch, left : left + cw], (spec.crop, spec.crop), interpolation=cv2.INTER_LINEAR)
            for f in frames
        ]
    )
    if rng.random() < spec.flip:
        frames = np.ascontiguousarray(frames[:, :, ::-1])
    if spec.rand_augment:
        frames = _rand_augment(frames, spec.rand_augment, rng)
    clip = normalize(frames)
    if spec.erase and rng.random() < spec.erase:
        clip = _erase(clip, rng)
    return clip


def test_views(sample: Sample, spec: ClipSpec) -> torch.Tensor:
    """Normalised (clips x crops, 3, T, crop, crop) test views."""
    views = []
    for idx in test_indices(sample, spec):
        frames = _short_side(_frames(sample, idx), spec.crop)
        h, w = frames.shape[1:3]
        long_h = h > w
        extent = (h if long_h else w) - spec.crop
        offsets = [extent // 2] if spec.test_crops == 1 else [0, extent // 2, extent]
        short_off = ((w if long_h else h) - spec.crop) // 2
        for o in offsets:
            top, left = (o, short_off) if long_h else (short_off, o)
            views.append(normalize(frames[:, top : top + spec.crop, left : left + spec.crop]))
    return torch.stack(views)


def validation_view(sample: Sample, spec: ClipSpec) -> torch.Tensor:
    """The official single-view validation: the middle clip, short side to 256/224 of the crop, centre crop
    (``Resize(-1, 256)``, ``CenterCrop(224)``, docs/official-behaviour.md §5.1); (1, 3, T, crop, crop)."""
    (idx,) = test_indices(sample, ClipSpec(spec.clip_len, spec.frame_interval, spec.sampling, spec.crop))
    frames = _short_side(_frames(sample, idx), round(spec.crop * 256 / 224))
    top, left = (frames.shape[1] - spec.crop) // 2, (frames.shape[2] - spec.crop) // 2
    return normalize(frames[:, top : top + spec.crop, left : left + spec.crop])[None]


MODES = ("train", "validation", "test")


def clip_stream(root: str, spec: ClipSpec, mode: str, micro_batch: int, rank: int, world: int, seed: int) -> StepStream:
    """Labelled clips of a shard directory. ``train``: shuffled training clips (``{'clip', 'label'}``);
    ``validation`` / ``test``: each video's single validation view or its test views (``{'views', 'label'}``), in
    order, every video read once across the ranks."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    manifest = load_manifest(root)
    if spec.sampling == "interval":
        check_stride(spec.frame_interval, recorded_settings(root)["frame_interval"], root)
    if mode == "train":

        def make(row, sample, _, rng):
            return train_clip(sample, spec, rng), row["label"]

        def collate(items):
            return {"clip": torch.stack([c for c, _ in items]), "label": torch.tensor([y for _, y in items])}
    else:
        views = validation_view if mode == "validation" else test_views

        def make(row, sample, _, rng):
            return views(sample, spec), row["label"]

        def collate(items):
            return {"views": torch.stack([v for v, _ in items]), "label": torch.tensor([y for _, y in items])}

    training = mode == "train"
    return StepStream(
        manifest,
        make,
        collate,
        micro_batch=micro_batch,
        rank=rank,
        world=world,
        seed=seed,
        shuffle=training,
        keep_tail=not training,
    )
