"""imgaug 0.4.0's ``iaa.RandAugment`` for uint8 clips: one draw, replayed on every frame.

BEVT's SSv2 finetune recipe augments with imgaug's ``RandAugment(n=4, m=7)`` and applies one deterministic copy of it
to all frames of a clip (docs/official-behaviour.md §5.1). It is not timm's RandAugment. This module is our own
implementation of imgaug's semantics, written from a reading of its source (line numbers are imgaug 0.4.0's):

- ``imgaug/augmenters/collections.py`` L181 (M is on a 0-30 scale), L218-L227 (a fixed head, then ``SomeOf``),
  L231-L248 (the head: horizontal flip with p = 0.5, then crop each side by U(0, M)/224 of the size and resize back
  with linear interpolation), L252-L335 (the 18 ops and how M maps to their parameters).
- ``imgaug/augmenters/meta.py`` L3357-L3411 (``SomeOf`` with ``random_order``: exactly n distinct ops, uniformly
  chosen, in uniformly random order).
- ``imgaug/augmenters/size.py`` L69-L91, L2058-L2169 (crop amounts: side x fraction, rounded), L4785-L4807 and
  ``imgaug/imgaug.py`` L1310-L1572 (resize back with ``cv2.INTER_LINEAR``, only when the crop changed the size).
- ``imgaug/augmenters/flip.py`` L878-L884 (flip).
- ``imgaug/augmenters/pillike.py`` L75, L252-L348 (equalize: PIL below 64*64 array elements, else a numpy
  re-implementation whose step leaves out bin 255 rather than the last used bin), L444-L532 (autocontrast with
  cutoff 0: per channel min/max stretch, truncated), L535-L728 (enhance ops: PIL ``ImageEnhance``), L731-L824
  (PIL ``BLUR`` and ``SMOOTH``), L1127-L1318 and L2517-L2545 (affine: a float32 matrix, inverted, handed to PIL's
  nearest-neighbour ``transform``; shear uses tanh of the angle; fill 128 on all channels).
- ``imgaug/augmenters/arithmetic.py`` L691-L781, L850-L883, L2590-L2700 (cutout: a square of side ``size`` x
  height at a uniform centre, truncated to pixels, filled with 128), L1043-L1186, L1285-L1310 (invert, and
  solarize = invert values >= threshold).
- ``imgaug/augmenters/color.py`` L3894-L4136 (posterize keeps the top ``bits`` bits).
- ``imgaug/augmenters/geometric.py`` L598-L634 (translation in pixels = fraction x width or height).

The random stream is ours (a ``numpy.random.Generator``); the distribution of ops and parameters is imgaug's.
Every op uses the same PIL / OpenCV primitive that imgaug calls, or integer arithmetic that equals it, so outputs
match imgaug's bit for bit (``tests/unit/test_imgaug_randaugment.py`` checks this against vectors recorded from
imgaug 0.4.0 itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageOps, ImageStat

M_MAX = 30
FILL = 128
OP_NAMES: tuple[str, ...] = (
    "Identity",
    "Autocontrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "EnhanceColor",
    "EnhanceContrast",
    "EnhanceBrightness",
    "EnhanceSharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Cutout",
    "FilterBlur",
    "FilterSmooth",
)

# imgaug sizes its crop for 224-pixel ImageNet images: up to M pixels of 224 per side.
_CROP_REFERENCE = 224
# Below this many array elements imgaug equalizes with PIL, above it with its own numpy version (they differ).
_EQUALIZE_PIL_BELOW = 64 * 64
_CUTOUT_MAX = 20 / 32
_FILL_RGB = (FILL, FILL, FILL)
# PIL's BLUR and SMOOTH kernels (PIL.ImageFilter), without their divisors 16 and 13.
_BLUR_WEIGHTS = np.pad(np.zeros((3, 3), np.float32), 1, constant_values=1.0)
_SMOOTH_WEIGHTS = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32)
# Every value 0-255 on all three channels, one pixel each.
_RAMP = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2))

Params = dict[str, Any]


@dataclass(frozen=True)
class RandAugmentDraw:
    """One RandAugment draw, enough to replay it on any number of frames.

    ``crop`` is (top, right, bottom, left) in pixels of the frame size the draw was made for; ``ops`` are applied in
    order, each as (name from :data:`OP_NAMES`, its parameters).
    """

    flip: bool
    crop: tuple[int, int, int, int]
    ops: tuple[tuple[str, Params], ...]


def _level(m: int, maxval: float) -> float:
    # imgaug stores maxval / M_MAX as a float32 constant and multiplies M by it in float64.
    return m * float(np.float32(maxval / M_MAX))


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _enhance_factor(m: int, rng: np.random.Generator) -> Params:
    return {"factor": float(np.clip(1.0 + _sign(rng) * _level(m, 0.9), 0.1, 1.9))}


def _signed(key: str, maxval: float) -> Callable[[int, np.random.Generator], Params]:
    return lambda m, rng: {key: _sign(rng) * _level(m, maxval)}


def _no_params(m: int, rng: np.random.Generator) -> Params:
    return {}


def _posterize_params(m: int, rng: np.random.Generator) -> Params:
    return {"bits": 8 - min(max(int(_level(m, 6)), 0), 6)}


def _solarize_params(m: int, rng: np.random.Generator) -> Params:
    return {"threshold": min(max(256 - int(_level(m, 256)), 0), 256)}


def _cutout_params(m: int, rng: np.random.Generator) -> Params:
    size = float(np.clip(_level(m, _CUTOUT_MAX), 0.0, _CUTOUT_MAX))
    return {"center_x": float(rng.random()), "center_y": float(rng.random()), "size": size}


_SHEAR_MAX_DEG = float(np.rad2deg(0.3))
_SAMPLERS: dict[str, Callable[[int, np.random.Generator], Params]] = {
    "Identity": _no_params,
    "Autocontrast": _no_params,
    "Equalize": _no_params,
    "Invert": _no_params,
    "Rotate": _signed("degrees", 30),
    "Posterize": _posterize_params,
    "Solarize": _solarize_params,
    "EnhanceColor": _enhance_factor,
    "EnhanceContrast": _enhance_factor,
    "EnhanceBrightness": _enhance_factor,
    "EnhanceSharpness": _enhance_factor,
    "ShearX": _signed("degrees", _SHEAR_MAX_DEG),
    "ShearY": _signed("degrees", _SHEAR_MAX_DEG),
    "TranslateX": _signed("fraction", 0.33),
    "TranslateY": _signed("fraction", 0.33),
    "Cutout": _cutout_params,
    "FilterBlur": _no_params,
    "FilterSmooth": _no_params,
}


def _draw_crop(m: int, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    # imgaug draws top, right, bottom, left in turn; a fraction of the side's own length, rounded half to even.
    top, right, bottom, left = (
        int(np.round(side * rng.uniform(0, m) / _CROP_REFERENCE)) for side in (height, width) * 2
    )
    if top + bottom >= height or left + right >= width:
        raise ValueError(f"m={m} crops a {height}x{width} frame to nothing")
    return top, right, bottom, left


def draw(n: int, m: int, height: int, width: int, rng: np.random.Generator) -> RandAugmentDraw:
    """Draw imgaug ``RandAugment(n, m)``'s flip, crop and ops for frames of ``height`` x ``width``."""
    if n < 0 or m < 0:
        raise ValueError(f"n and m must be >= 0, got n={n}, m={m}")
    flip = bool(rng.random() < 0.5)
    crop = _draw_crop(m, height, width, rng)
    chosen = rng.permutation(len(OP_NAMES))[: min(n, len(OP_NAMES))]
    ops = tuple((OP_NAMES[i], _SAMPLERS[OP_NAMES[i]](m, rng)) for i in chosen)
    return RandAugmentDraw(flip=flip, crop=crop, ops=ops)


# --- the ops: each maps a contiguous uint8 clip (T, H, W, 3) to a new one -------------------------------------


def _lut(clip: np.ndarray, table: np.ndarray) -> np.ndarray:
    flat = clip.reshape(-1, clip.shape[-2] * clip.shape[-1])
    return cv2.LUT(flat, table.astype(np.uint8)).reshape(clip.shape)


def _frame_luts(clip: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Apply one (256, 3) table per frame, a column per channel."""
    out = np.empty_like(clip)
    for t, table in enumerate(tables):
        cv2.LUT(clip[t], np.ascontiguousarray(table.reshape(1, 256, 3)), dst=out[t])
    return out


def _per_frame(clip: np.ndarray, op: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    out = np.empty_like(clip)
    for t, frame in enumerate(clip):
        out[t] = np.asarray(op(Image.fromarray(frame)))
    return out


def _identity(clip: np.ndarray) -> np.ndarray:
    return clip


def _autocontrast(clip: np.ndarray) -> np.ndarray:
    # Reducing rows first keeps the reductions contiguous (about 50 times faster than axis=(1, 2)).
    low = clip.min(axis=1).min(axis=1).astype(np.float64)
    high = clip.max(axis=1).max(axis=1).astype(np.float64)
    flat = high <= low
    scale = 255.0 / np.where(flat, 1.0, high - low)
    values = np.arange(256, dtype=np.float64)
    tables = np.clip(values * scale[..., None] - low[..., None] * scale[..., None], 0, 255).astype(np.uint8)
    tables[flat] = np.arange(256, dtype=np.uint8)
    return _frame_luts(clip, tables.transpose(0, 2, 1))


def _equalize_table(hist: np.ndarray) -> np.ndarray:
    """imgaug's numpy equalize: its step leaves out bin 255, where PIL's leaves out the last used bin."""
    identity = np.arange(256)
    step = int(hist[:-1].sum()) // 255
    if np.count_nonzero(hist) <= 1 or not step:
        return identity
    starts = step // 2 + np.concatenate([[0], np.cumsum(hist)[:-1]])
    return np.minimum(starts // step, 255)


def _equalize(clip: np.ndarray) -> np.ndarray:
    if clip[0].size < _EQUALIZE_PIL_BELOW:
        return _per_frame(clip, ImageOps.equalize)
    tables = np.empty((len(clip), 256, 3), np.uint8)
    for t, frame in enumerate(clip):
        for c in range(3):
            hist = cv2.calcHist([frame], [c], None, [256], [0, 256]).ravel().astype(np.int64)
            tables[t, :, c] = _equalize_table(hist)
    return _frame_luts(clip, tables)


def _invert(clip: np.ndarray) -> np.ndarray:
    return np.bitwise_not(clip)


def _posterize(clip: np.ndarray, bits: int) -> np.ndarray:
    return np.bitwise_and(clip, np.uint8((0xFF << (8 - int(bits))) & 0xFF))


def _solarize(clip: np.ndarray, threshold: float) -> np.ndarray:
    table = np.arange(256)
    table[int(threshold) :] = 255 - table[int(threshold) :]
    return _lut(clip, table)


def _pil_table(degenerate: Image.Image, factor: float) -> np.ndarray:
    """PIL's blend of ``degenerate`` with every value 0-255, as a (256, 3) table.

    For ops whose output depends only on the pixel's own value this gives exactly PIL's result (its float rounding
    included, whatever the platform) at the cost of one PIL call on 256 pixels.
    """
    return np.asarray(Image.blend(degenerate, _RAMP, factor))[0]


def _tall(clip: np.ndarray) -> Image.Image:
    # For per-pixel ops the frames, stacked into one tall image, take one PIL call instead of T.
    return Image.fromarray(clip.reshape(-1, *clip.shape[2:]))


def _enhance_color(clip: np.ndarray, factor: float) -> np.ndarray:
    return np.asarray(ImageEnhance.Color(_tall(clip)).enhance(factor)).reshape(clip.shape)


def _enhance_contrast(clip: np.ndarray, factor: float) -> np.ndarray:
    tables = np.empty((len(clip), 256, 3), np.uint8)
    for t, frame in enumerate(clip):
        # PIL blends with a grey of the frame's mean luma, rounded half up (PIL.ImageEnhance.Contrast).
        mean = int(ImageStat.Stat(Image.fromarray(frame).convert("L")).mean[0] + 0.5)
        tables[t] = _pil_table(Image.new("RGB", _RAMP.size, (mean,) * 3), factor)
    return _frame_luts(clip, tables)


def _enhance_brightness(clip: np.ndarray, factor: float) -> np.ndarray:
    return _lut(clip, _pil_table(Image.new("RGB", _RAMP.size, 0), factor)[:, 0])


def _enhance_sharpness(clip: np.ndarray, factor: float) -> np.ndarray:
    # PIL blends with its SMOOTH filter's output; the blend is per pixel, so one call does all frames.
    return np.asarray(Image.blend(_tall(_filter_smooth(clip)), _tall(clip), factor)).reshape(clip.shape)


def _keep_border(filtered: np.ndarray, frame: np.ndarray, width: int) -> np.ndarray:
    # PIL's 3x3 / 5x5 filters leave a border of (kernel size - 1) / 2 pixels as it was.
    filtered[:width], filtered[-width:] = frame[:width], frame[-width:]
    filtered[:, :width], filtered[:, -width:] = frame[:, :width], frame[:, -width:]
    return filtered


def _filter_by_sum(clip: np.ndarray, weights: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """round(S * scale + offset) per pixel, S the integer weighted sum of its window, borders kept as PIL keeps them.

    The sums are integers well inside float32's exact range, so only the final rounding needs an argument; the
    callers choose ``scale`` and ``offset`` so that it gives PIL's result (see each caller).
    """
    border = weights.shape[0] // 2
    if clip.shape[1] < weights.shape[0] or clip.shape[2] < weights.shape[1]:
        return clip.copy()  # PIL returns such small images unfiltered
    out = np.empty_like(clip)
    for t, frame in enumerate(clip):
        sums = cv2.filter2D(frame, cv2.CV_32F, weights, borderType=cv2.BORDER_REPLICATE)
        out[t] = _keep_border(cv2.convertScaleAbs(sums, alpha=scale, beta=offset), frame, border)
    return out


def _filter_blur(clip: np.ndarray) -> np.ndarray:
    """PIL's BLUR: trunc(0.5 + S / 16) in float32, S the sum of the 16 pixels on the 5x5 window's edge.

    Every term is a multiple of 1/16, so PIL's float32 sum is exact and the result is floor(S / 16 + 0.5). The
    residue S / 16 - floor(S / 16) is a multiple of 1/16, so rounding S / 16 + 1/32 to nearest gives the same
    integer without ever meeting a tie.
    """
    return _filter_by_sum(clip, _BLUR_WEIGHTS, 1 / 16, 1 / 32)


def _filter_smooth(clip: np.ndarray) -> np.ndarray:
    """PIL's SMOOTH: trunc(0.5 + sum of weight / 13 x pixel) in float32, weights 1 and 5 at the centre.

    The exact value S / 13 + 0.5 (S the integer weighted sum) is at least 1/26 away from any integer, far more than
    float32 error over nine terms of at most 255 x 5/13, so PIL's result is floor(S / 13 + 0.5) = round(S / 13),
    which has no ties either.
    """
    return _filter_by_sum(clip, _SMOOTH_WEIGHTS, 1 / 13, 0.0)


def _affine_coefficients(
    width: int,
    height: int,
    *,
    rotate_deg: float = 0.0,
    shear_deg: tuple[float, float] = (0.0, 0.0),
    translate_px: tuple[float, float] = (0.0, 0.0),
    center: tuple[float, float] = (0.0, 0.0),
) -> tuple[float, ...]:
    """The output-to-input map that imgaug hands PIL, built in float32 in imgaug's order so it rounds the same."""
    center_x, center_y = width * center[0], height * center[1]
    rotate_rad, shear_x_rad, shear_y_rad = np.deg2rad([rotate_deg, *shear_deg])
    rotate_rad = -rotate_rad
    cos, sin = np.cos(rotate_rad), np.sin(rotate_rad)
    steps = (
        [[1, 0, -center_x], [0, 1, -center_y], [0, 0, 1]],
        [[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]],
        [[1, np.tanh(shear_x_rad), 0], [np.tanh(shear_y_rad), 1, 0], [0, 0, 1]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        [[1, 0, translate_px[0]], [0, 1, translate_px[1]], [0, 0, 1]],
        [[1, 0, center_x], [0, 1, center_y], [0, 0, 1]],
    )
    matrix = np.eye(3, dtype=np.float32)
    for step in steps:
        matrix = np.matmul(np.array(step, dtype=np.float32), matrix)
    return tuple(float(v) for v in np.linalg.inv(matrix)[:2].ravel())


def _warp(clip: np.ndarray, **affine: Any) -> np.ndarray:
    height, width = clip.shape[1:3]
    coefficients = _affine_coefficients(width, height, **affine)

    def warp(image: Image.Image) -> Image.Image:
        return image.transform(
            image.size, Image.Transform.AFFINE, coefficients, Image.Resampling.NEAREST, fillcolor=_FILL_RGB
        )

    return _per_frame(clip, warp)


def _rotate(clip: np.ndarray, degrees: float) -> np.ndarray:
    return _warp(clip, rotate_deg=degrees, center=(0.5, 0.5))


def _shear_x(clip: np.ndarray, degrees: float) -> np.ndarray:
    return _warp(clip, shear_deg=(degrees, 0.0))


def _shear_y(clip: np.ndarray, degrees: float) -> np.ndarray:
    return _warp(clip, shear_deg=(0.0, degrees))


def _translate_x(clip: np.ndarray, fraction: float) -> np.ndarray:
    return _warp(clip, translate_px=(fraction * clip.shape[2], 0.0))


def _translate_y(clip: np.ndarray, fraction: float) -> np.ndarray:
    return _warp(clip, translate_px=(0.0, fraction * clip.shape[1]))


def _cutout_box(height: int, width: int, center_x: float, center_y: float, size: float) -> tuple[int, ...]:
    # imgaug's arithmetic, step by step: a box of size x (width, height), made square on the height, truncated.
    x1, x2 = (center_x - size / 2) * width, (center_x + size / 2) * width
    y1, y2 = (center_y - size / 2) * height, (center_y + size / 2) * height
    half = (y2 - y1) / 2
    middle = x1 + (x2 - x1) / 2
    x1, x2 = middle - half, middle + half
    return (
        min(max(int(x1), 0), width),
        min(max(int(y1), 0), height),
        min(max(int(x2), 0), width),
        min(max(int(y2), 0), height),
    )


def _cutout(clip: np.ndarray, center_x: float, center_y: float, size: float) -> np.ndarray:
    x1, y1, x2, y2 = _cutout_box(*clip.shape[1:3], center_x, center_y, size)
    out = clip.copy()
    out[:, y1:y2, x1:x2] = FILL
    return out


_OPS: dict[str, Callable[..., np.ndarray]] = {
    "Identity": _identity,
    "Autocontrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": _invert,
    "Rotate": _rotate,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "EnhanceColor": _enhance_color,
    "EnhanceContrast": _enhance_contrast,
    "EnhanceBrightness": _enhance_brightness,
    "EnhanceSharpness": _enhance_sharpness,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Cutout": _cutout,
    "FilterBlur": _filter_blur,
    "FilterSmooth": _filter_smooth,
}


def _crop_and_resize(clip: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
    top, right, bottom, left = crop
    if not any(crop):
        return clip
    height, width = clip.shape[1:3]
    out = np.empty_like(clip)
    for t, frame in enumerate(clip[:, top : height - bottom, left : width - right]):
        cv2.resize(frame, (width, height), dst=out[t], interpolation=cv2.INTER_LINEAR)
    return out


def _flip(clip: np.ndarray) -> np.ndarray:
    # cv2.flip per frame: a contiguous copy of the reversed view is over ten times slower.
    out = np.empty(clip.shape, np.uint8)
    for t, frame in enumerate(clip):
        cv2.flip(np.ascontiguousarray(frame), 1, dst=out[t])
    return out


def apply(frames: np.ndarray, d: RandAugmentDraw) -> np.ndarray:
    """Replay draw ``d`` on every frame of a uint8 clip (T, H, W, 3); returns a new clip of the same shape."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    clip = _flip(frames) if d.flip else np.ascontiguousarray(frames)
    clip = _crop_and_resize(clip, d.crop)
    for name, params in d.ops:
        clip = _OPS[name](clip, **params)
    return clip.copy() if np.may_share_memory(clip, frames) else clip


def rand_augment(frames: np.ndarray, n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """imgaug ``RandAugment(n, m)`` on a uint8 clip (T, H, W, 3), one draw for all frames."""
    return apply(frames, draw(n, m, frames.shape[1], frames.shape[2], rng))
