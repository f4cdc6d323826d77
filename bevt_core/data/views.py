"""Augmentation views: the complete spatial augmentation of one sample, drawn once, replayed exactly.

A :class:`View` is the official BEVT pretraining augmentation (docs/official-behaviour.md §4.4) with every random
choice made: short side rescaled to U{256..320} (bicubic, aspect kept, mmcv's rounding), a crop
whose offsets are ``randint(0, side - crop)`` with the upper bound exclusive as in mmaction's
``RandomCrop``, a horizontal flip with p=0.5, and for images a colour jitter (brightness,
contrast, saturation ~ U(0.6, 1.4), hue off) applied to the whole rescaled image before the
crop, in an op order fixed per run. All sizes scale with the crop (crop 64 rescales to
U{73..91}), so small presets keep the official geometry.

Views are drawn deterministically from ``(seed, key, view index)`` (:func:`sample_views`), so the
tokenize stage and anyone else can recompute them, and stored beside the tokens as JSON. The one
replay function, :func:`apply_view`, is what both the tokenize stage and the training loader
call: that is what makes stored token ids match the pixels the model sees. It works frame by
frame, so replaying it on a temporal window gives exactly the frames of the full replay.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import cv2
import numpy as np

OFFICIAL_CROP = 224
OFFICIAL_SCALES = (256, 320)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # the official op set; hue is off (0)
GRAY = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class View:
    height: int  # size of the frames the view was drawn for; replay refuses any other size
    width: int
    scaled_height: int  # after the short-side rescale
    scaled_width: int
    top: int  # crop box in the rescaled frame
    left: int
    size: int
    flip: bool
    jitter: tuple[tuple[str, float], ...] = ()  # (op, factor) in application order; () for video

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> View:
        return cls(**{**d, "jitter": tuple((str(op), float(f)) for op, f in d.get("jitter", ()))})


@dataclass(frozen=True)
class Augment:
    """The random augmentation a run draws views from."""

    crop: int = OFFICIAL_CROP
    jitter: float = 0.4  # brightness/contrast/saturation strength, images only
    flip: float = 0.5
    seed: int = 0

    @property
    def scales(self) -> tuple[int, int]:
        lo, hi = OFFICIAL_SCALES
        return round(lo * self.crop / OFFICIAL_CROP), round(hi * self.crop / OFFICIAL_CROP)

    @property
    def jitter_order(self) -> tuple[str, ...]:
        # Drawn once per run, like the official ``np.random.permutation(4)`` at pipeline build.
        perm = np.random.default_rng([self.seed, 0x0C0105]).permutation(len(JITTER_OPS))
        return tuple(JITTER_OPS[i] for i in perm if JITTER_OPS[i] != "hue")


def view_rng(seed: int, key: str, index: int) -> np.random.Generator:
    """A generator that depends only on (seed, key, view index): not on order, process or machine."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def draw_view(aug: Augment, height: int, width: int, color: bool, rng: np.random.Generator) -> View:
    lo, hi = aug.scales
    short = int(rng.integers(lo, hi + 1))
    scale = short / min(height, width)
    sh, sw = int(height * scale + 0.5), int(width * scale + 0.5)  # mmcv.rescale_size
    top = int(rng.integers(0, sh - aug.crop)) if sh > aug.crop else 0
    left = int(rng.integers(0, sw - aug.crop)) if sw > aug.crop else 0
    flip = bool(rng.random() < aug.flip)
    jitter = (
        tuple((op, float(rng.uniform(1 - aug.jitter, 1 + aug.jitter))) for op in aug.jitter_order)
        if color and aug.jitter > 0
        else ()
    )
    return View(height, width, sh, sw, top, left, aug.crop, flip, jitter)


def sample_views(aug: Augment, key: str, count: int, height: int, width: int, color: bool) -> list[View]:
    """The ``count`` fixed views of sample ``key`` (colour jitter when ``color``: images)."""
    return [draw_view(aug, height, width, color, view_rng(aug.seed, key, i)) for i in range(count)]


def _jitter(img: np.ndarray, jitter: tuple[tuple[str, float], ...]) -> np.ndarray:
    """mmaction's ColorJitter in float32: the ops run unclipped, then the result is clipped and truncated to uint8
    (docs/official-behaviour.md §4.4)."""
    x = img.astype(np.float32)
    for op, f in jitter:
        if op == "brightness":
            x = x * np.float32(f)
        else:
            # Elementwise, not a matmul: the same pixels give the same bits in any thread or process.
            gray = x[..., 0] * np.float32(GRAY[0]) + x[..., 1] * np.float32(GRAY[1]) + x[..., 2] * np.float32(GRAY[2])
            other = np.float32(gray.mean()) if op == "contrast" else gray[..., None]
            x = np.float32(f) * x + np.float32(1 - f) * other
    return np.clip(x, 0, 255).astype(np.uint8)


def _apply_one(frame: np.ndarray, v: View) -> np.ndarray:
    out = cv2.resize(frame, (v.scaled_width, v.scaled_height), interpolation=cv2.INTER_CUBIC)
    if v.jitter:
        out = _jitter(out, v.jitter)
    out = out[v.top : v.top + v.size, v.left : v.left + v.size]
    return np.ascontiguousarray(out[:, ::-1] if v.flip else out)


def apply_view(frames: np.ndarray, view: View) -> np.ndarray:
    """Replay ``view`` on RGB uint8 ``(H, W, 3)`` or ``(F, H, W, 3)``; crops of the same rank."""
    if frames.shape[-3:-1] != (view.height, view.width):
        raise ValueError(
            f"view was drawn for {view.height}x{view.width} frames, got {frames.shape[-3]}x{frames.shape[-2]}"
        )
    if frames.ndim == 3:
        return _apply_one(frames, view)
    return np.stack([_apply_one(f, view) for f in frames])
