"""bevt_core.loading.imgaug_augment against imgaug 0.4.0 itself.

The vectors in tests/vectors/imgaug_randaugment.json were recorded from imgaug 0.4.0 by
tests/vectors/make_imgaug_vectors.py (how to rerun it is in its docstring), with the Pillow and OpenCV versions of
requirements/lock.txt. Every op is compared bit for bit, without tolerance: our ops call the PIL / OpenCV primitive
imgaug calls, or compute a result that provably equals it (integer forms of PIL's BLUR and SMOOTH, PIL-built lookup
tables for brightness and contrast, imgaug's own integer equalize and truncated autocontrast), so no rounding
differs. If a Pillow or OpenCV upgrade changes their rounding, these tests fail: record the vectors again.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from scipy.stats import chi2_contingency

from bevt_core.loading.imgaug_augment import OP_NAMES, RandAugmentDraw, apply, draw, rand_augment

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "imgaug_randaugment.json").read_text())
NO_CROP = (0, 0, 0, 0)
# The ops whose parameter is ± a magnitude set by M, and the parameter's name.
SIGNED = {
    "Rotate": "degrees",
    "ShearX": "degrees",
    "ShearY": "degrees",
    "TranslateX": "fraction",
    "TranslateY": "fraction",
}
ENHANCERS = {
    "EnhanceColor": ImageEnhance.Color,
    "EnhanceContrast": ImageEnhance.Contrast,
    "EnhanceBrightness": ImageEnhance.Brightness,
    "EnhanceSharpness": ImageEnhance.Sharpness,
}
# Below this p-value two samples are taken to come from different distributions; the draws are seeded, so each
# test gives the same answer on every run.
P_MIN = 1e-3


def recorded_ops() -> list[list[int]]:
    """imgaug's recorded draws as op indices (the file writes op i as the i-th letter of the alphabet)."""
    return [[ord(letter) - ord("a") for letter in ops] for ops in VECTORS["choices"]["ops"]]


def decode(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["b64"]), np.uint8).reshape(entry["shape"])


IMAGES = {key: decode(entry) for key, entry in VECTORS["images"].items()}


def replay(image: np.ndarray, flip: bool, crop, ops) -> np.ndarray:
    ops = tuple((name, dict(params)) for name, params in ops)
    return apply(image[None], RandAugmentDraw(flip=flip, crop=tuple(crop), ops=ops))[0]


def entry_id(entry: dict) -> str:
    return f"{entry['op']}-{entry['image']}-" + "-".join(f"{v:.4g}" for v in entry["params"].values())


def test_op_list_is_imgaugs():
    assert list(OP_NAMES) == VECTORS["op_names"]


# --- (a) every op, the head and whole draws reproduce imgaug's output --------------------------------------------


@pytest.mark.parametrize("entry", VECTORS["single_ops"], ids=entry_id)
def test_each_op_reproduces_imgaug(entry):
    out = replay(IMAGES[entry["image"]], False, NO_CROP, [(entry["op"], entry["params"])])
    np.testing.assert_array_equal(out, decode(entry["output"]))


@pytest.mark.parametrize("entry", VECTORS["head"], ids=lambda e: f"flip{int(e['flip'])}-crop{e['crop']}")
def test_flip_and_crop_reproduce_imgaug(entry):
    out = replay(IMAGES[entry["image"]], entry["flip"], entry["crop"], [])
    np.testing.assert_array_equal(out, decode(entry["output"]))


@pytest.mark.parametrize("entry", VECTORS["seeds"], ids=lambda e: f"seed{e['seed']}")
def test_whole_draws_reproduce_imgaug(entry):
    """imgaug's RandAugment(4, 7) draws, replayed: flip, crop and four ops in imgaug's order."""
    out = replay(IMAGES[entry["image"]], entry["flip"], entry["crop"], entry["ops"])
    np.testing.assert_array_equal(out, decode(entry["output"]))


def natural_frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth content with noise, so that filters and equalization have something to work on."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, height // 8 + 2, width // 8 + 2, 3)).astype(np.float64)
    rows = np.linspace(0, coarse.shape[1] - 1, height).round().astype(int)
    cols = np.linspace(0, coarse.shape[2] - 1, width).round().astype(int)
    frames = coarse[:, rows][:, :, cols] + rng.normal(0, 12, (count, height, width, 3))
    return np.clip(frames, 0, 255).astype(np.uint8)


FILTERS = {"FilterBlur": ImageFilter.BLUR, "FilterSmooth": ImageFilter.SMOOTH}


def pil_reference(name: str, params: dict, frame: np.ndarray) -> np.ndarray:
    """What imgaug's op computes: a PIL filter or PIL.ImageEnhance (imgaug pillike.py L535-L824)."""
    image = Image.fromarray(frame)
    if name in FILTERS:
        return np.asarray(image.filter(FILTERS[name]))
    return np.asarray(ENHANCERS[name](image).enhance(params["factor"]))


@pytest.mark.parametrize(
    ("name", "params"),
    [(name, {}) for name in FILTERS] + [(name, {"factor": f}) for name in ENHANCERS for f in (0.79, 1.21)],
)
def test_ops_imgaug_leaves_to_pil_equal_pil_on_larger_frames(name, params):
    """Ours do not all call PIL, so they are also compared with PIL at sizes the vectors do not cover."""
    for height, width in ((224, 224), (57, 31), (5, 5), (4, 9)):
        frames = natural_frames(3, height, width, seed=height * width)
        frames[0, :2] = 255
        frames[0, -2:] = 0
        out = apply(frames, RandAugmentDraw(flip=False, crop=NO_CROP, ops=((name, params),)))
        expected = np.stack([pil_reference(name, params, frame) for frame in frames])
        np.testing.assert_array_equal(out, expected, err_msg=f"{name} on {height}x{width}")


# --- (b) the ops, their number and their magnitudes are drawn as imgaug draws them -------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 4, 18, 25])
def test_draw_applies_exactly_n_distinct_ops(n):
    rng = np.random.default_rng(n)
    for _ in range(300):
        names = [name for name, _ in draw(n, 7, 224, 224, rng).ops]
        assert len(names) == min(n, len(OP_NAMES)) == len(set(names))
        assert set(names) <= set(OP_NAMES)


def test_imgaug_vectors_draw_four_distinct_ops():
    assert all(len(ops) == len(set(ops)) == VECTORS["n"] for ops in recorded_ops())


def our_choices(count: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[OP_NAMES.index(name) for name, _ in draw(4, 7, 224, 224, rng).ops] for _ in range(count)]


def homogeneous(ours: Counter, theirs: Counter, categories) -> float:
    """p-value of a chi-square test that two samples of ``categories`` come from one distribution."""
    table = np.array([[counts[c] for c in categories] for counts in (ours, theirs)])
    return chi2_contingency(table).pvalue


def test_ops_are_chosen_with_imgaugs_frequencies():
    """Which ops, and which op in which position: uniform over 18 ops without replacement, in random order."""
    ours, theirs = our_choices(8000, seed=1), recorded_ops()
    categories = range(len(OP_NAMES))
    pvalue = homogeneous(Counter(i for ops in ours for i in ops), Counter(i for ops in theirs for i in ops), categories)
    assert pvalue > P_MIN, f"all positions: p = {pvalue:.2g}"
    for position in range(4):
        pvalue = homogeneous(
            Counter(ops[position] for ops in ours), Counter(ops[position] for ops in theirs), categories
        )
        assert pvalue > P_MIN, f"position {position}: p = {pvalue:.2g}"


MAGNITUDE_KEYS = {"Posterize": "bits", "Solarize": "threshold", "Cutout": "size"}


def magnitude(name: str, params: dict) -> float | None:
    """The part of an op's parameters that M sets (signs and cutout positions are random)."""
    if name in SIGNED:
        return abs(params[SIGNED[name]])
    if name in ENHANCERS:
        return abs(params["factor"] - 1.0)
    return params[MAGNITUDE_KEYS[name]] if name in MAGNITUDE_KEYS else None


@pytest.mark.parametrize("m", sorted({entry["m"] for entry in VECTORS["magnitudes"]}))
def test_magnitudes_are_on_imgaugs_scale(m):
    """With M on imgaug's 0-30 scale every magnitude equals imgaug's (for m = 7: rotate 7 degrees, factors 1 ± 0.21,
    posterize to 7 bits, solarize from 197, ...); timm's 0-10 scale or its own mappings give other values."""
    theirs = [entry["params"] for entry in VECTORS["magnitudes"] if entry["m"] == m]
    ours = draw(len(OP_NAMES), m, 224, 224, np.random.default_rng(m)).ops
    for name, params in ours:
        expected = {magnitude(name, recorded[name]) for recorded in theirs}
        assert expected == {magnitude(name, params)}, (name, m)


def test_signs_are_fair_coins():
    """imgaug's RandomSign: + and - with probability 0.5 each, for every signed op and enhance factor."""
    rng = np.random.default_rng(5)
    positive = Counter()
    for _ in range(2000):
        for name, params in draw(len(OP_NAMES), 7, 224, 224, rng).ops:
            if name in SIGNED:
                positive[name] += params[SIGNED[name]] > 0
            elif name in ENHANCERS:
                positive[name] += params["factor"] > 1
    assert len(positive) == len(SIGNED) + len(ENHANCERS)
    assert all(abs(count / 2000 - 0.5) < 0.04 for count in positive.values()), positive


def test_cutout_centres_are_uniform():
    rng = np.random.default_rng(6)
    centres = np.array(
        [
            [params["center_x"], params["center_y"]]
            for _ in range(3000)
            for name, params in draw(len(OP_NAMES), 7, 224, 224, rng).ops
            if name == "Cutout"
        ]
    )
    histogram = np.histogram2d(centres[:, 0], centres[:, 1], bins=4, range=[[0, 1], [0, 1]])[0]
    assert np.all(np.abs(histogram / len(centres) - 1 / 16) < 0.02)


def test_crops_are_drawn_as_imgaug_draws_them():
    """Each side loses round(224 * U(0, 7) / 224) pixels of a 224-pixel frame: 0 and 7 half as often as 1-6."""
    theirs = Counter(int(side) for crop in VECTORS["choices"]["crops"] for side in crop)
    rng = np.random.default_rng(7)
    ours = Counter(side for _ in range(8000) for side in draw(4, 7, 224, 224, rng).crop)
    assert set(ours) == set(theirs) == set(range(8))
    assert homogeneous(ours, theirs, range(8)) > P_MIN


# --- (c) one draw, the same on every frame ------------------------------------------------------------------------


def every_op_draws() -> list[RandAugmentDraw]:
    """A dozen RandAugment(4, 7) draws, and one with flip, crop and all 18 ops."""
    rng = np.random.default_rng(8)
    draws = [draw(4, 7, 40, 48, rng) for _ in range(12)]
    everything = draw(len(OP_NAMES), 7, 40, 48, rng)
    return draws + [RandAugmentDraw(flip=True, crop=(2, 1, 0, 3), ops=everything.ops)]


@pytest.mark.parametrize("selected", every_op_draws(), ids=lambda d: "+".join(name for name, _ in d.ops))
def test_one_draw_is_applied_identically_to_every_frame(selected):
    """Every frame gets the draw imgaug's deterministic copy gives each frame: the clip's output is the frames'
    outputs side by side, and identical frames stay identical."""
    frames = natural_frames(5, 40, 48, seed=12)
    out = apply(frames, selected)
    for t, frame in enumerate(frames):
        np.testing.assert_array_equal(out[t], apply(frame[None], selected)[0], err_msg=f"frame {t}")
    same = apply(np.repeat(frames[:1], 4, axis=0), selected)
    assert all(np.array_equal(same[0], frame) for frame in same[1:])


def test_rand_augment_keeps_shape_and_dtype_and_leaves_its_input_alone():
    frames = natural_frames(4, 32, 36, seed=9)
    before = frames.copy()
    out = rand_augment(frames, 4, 7, np.random.default_rng(9))
    assert out.shape == frames.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(frames, before)
    unchanged = apply(frames, RandAugmentDraw(flip=False, crop=NO_CROP, ops=(("Identity", {}),)))
    assert not np.shares_memory(unchanged, frames)


@pytest.mark.parametrize("seed", range(6))
def test_rand_augment_draws_once_per_clip(seed):
    out = rand_augment(np.repeat(natural_frames(1, 32, 36, seed=seed), 4, axis=0), 4, 7, np.random.default_rng(seed))
    assert all(np.array_equal(out[0], frame) for frame in out[1:])


# --- (d) the flip ---------------------------------------------------------------------------------------------------


def test_flip_happens_half_the_time_as_in_imgaug():
    rng = np.random.default_rng(10)
    ours = np.mean([draw(4, 7, 224, 224, rng).flip for _ in range(4000)])
    theirs = np.mean([flip == "1" for flip in VECTORS["choices"]["flips"]])
    assert abs(ours - 0.5) < 0.03 and abs(theirs - 0.5) < 0.04, (ours, theirs)


def test_flip_mirrors_every_frame():
    frames = natural_frames(3, 20, 30, seed=11)
    out = apply(frames, RandAugmentDraw(flip=True, crop=NO_CROP, ops=()))
    np.testing.assert_array_equal(out, frames[:, :, ::-1])


def test_the_ssv2_recipe_trains_with_imgaugs_randaugment(monkeypatch):
    """The SSv2 recipe's training clips go through this module's RandAugment(n=4, m=7), once per clip, on the
    cropped frames; timm's stays available by its own spec."""
    from bevt_core.data.decode import encode_jpeg
    from bevt_core.data.shard_format import Sample
    from bevt_core.loading import imgaug_augment
    from bevt_core.loading.clip_spec import rand_augment_problem
    from bevt_core.loading.clips import train_clip
    from bevt_core.recipes import FINETUNE

    assert rand_augment_problem("imgaug-n4-m7") is None and rand_augment_problem("rand-m7-n4") is None
    assert rand_augment_problem("randaugment") is not None
    calls = []

    def recorded(frames, n, m, rng):
        calls.append((frames.shape, n, m))
        return rand_augment(frames, n, m, rng)

    monkeypatch.setattr(imgaug_augment, "rand_augment", recorded)
    frames = natural_frames(40, 40, 48, seed=3)
    sample = Sample("k", 0, {"frame_indices": list(range(40)), "num_frames": 40}, [encode_jpeg(f, 95) for f in frames])
    spec = FINETUNE["ssv2-swin-b"].clip.spec()
    clip = train_clip(sample, spec, np.random.default_rng(0))
    assert clip.shape == (3, 32, 224, 224) and calls == [((32, 224, 224, 3), 4, 7)]
