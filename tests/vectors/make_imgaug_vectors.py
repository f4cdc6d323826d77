"""Record imgaug 0.4.0's ``RandAugment`` as test vectors: writes tests/vectors/imgaug_randaugment.json.

``tests/unit/test_imgaug_randaugment.py`` checks :mod:`bevt_core.loading.imgaug_augment` against them. imgaug 0.4.0
needs numpy < 1.24 (it uses ``np.bool``), so this runs in a scratch environment, not the project's. Pillow and
OpenCV are the versions in requirements/lock.txt, so that imgaug calls the same PIL / cv2 primitives as the project;
opencv-python-headless 5.0.0.93 declares numpy >= 2 but runs on numpy 1.23, and imgaug declares the non-headless
opencv-python, hence ``--no-deps`` for those two. From the repository root::

    python3 -m venv /tmp/imgaug-env
    /tmp/imgaug-env/bin/pip install numpy==1.23.5 pillow==13.0.0 six 'scipy<1.12' 'scikit-image<0.22' \
        imageio 'shapely<2.1'
    /tmp/imgaug-env/bin/pip install --no-deps imgaug==0.4.0 opencv-python-headless==5.0.0.93
    /tmp/imgaug-env/bin/python tests/vectors/make_imgaug_vectors.py

What imgaug sampled is read by wrapping the methods that draw its samples (``_draw_samples`` of each augmenter
class, ``flip.fliplr``) and the order of the ops from imgaug's own hooks (``HooksImages``, called for every augmenter
that runs). Images are stored as base64 of their raw uint8 bytes, with their shapes. Sections:

- ``images``: the inputs. ``small`` is 24x24 (imgaug equalizes it with PIL), ``medium`` 48x48 (with its own numpy
  version, which differs from PIL's on this image since no channel reaches 255).
- ``single_ops``: each op on its own with fixed parameters, built as ``RandAugment`` builds it
  (imgaug/augmenters/collections.py L293-L335): the parameters imgaug used and its output.
- ``head``: the flip and the crop + resize back on their own (L231-L248).
- ``seeds``: ``RandAugment(n=4, m=7, seed=s).to_deterministic()`` on ``medium``, as the official pipeline runs it
  per frame, for seeds that together use all 18 ops: flip, crop, the ops in order with their sampled parameters,
  and the output.
- ``magnitudes``: the parameters of all 18 ops (``n=18``) for several m, a few draws each.
- ``choices``: 2000 draws of ``RandAugment(n=4, m=7)`` on a 224x224 frame: the ops in order as letters (``a`` is
  ``op_names[0]``, ``b`` the next, ...), the flips as a string of 0 and 1, the crops as 4 digits (top, right,
  bottom, left).
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

import cv2
import imgaug
import imgaug.augmenters as iaa
import numpy as np
import PIL
from imgaug.augmenters import arithmetic, color, flip, pillike, size
from PIL import Image, ImageOps

OUT = Path(__file__).resolve().parent / "imgaug_randaugment.json"
# The children of RandAugment's SomeOf, in imgaug's order (collections.py L293-L335).
OP_NAMES = (
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
N, M = 4, 7
MAGNITUDES = (0, 3, 5, 7, 9, 15, 30)
CHOICE_DRAWS = 2000
GLOBAL_SEED = 20240601
# In ``choices``, op i of OP_NAMES is the letter OP_LETTERS[i].
OP_LETTERS = "abcdefghijklmnopqr"


class Recorder:
    """What imgaug sampled during one ``augment_image`` call."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.flipped = False
        self.crop: tuple[int, ...] | None = None
        self.ran: list[object] = []
        self.samples: dict[int, dict] = {}

    def hooks(self) -> imgaug.HooksImages:
        def preprocess(images, augmenter, parents):
            self.ran.append(augmenter)
            return images

        return imgaug.HooksImages(preprocessor=preprocess)


REC = Recorder()


def _wrap_draw(cls, read) -> None:
    original = cls._draw_samples

    def wrapped(self, *args, **kwargs):
        samples = original(self, *args, **kwargs)
        REC.samples[id(self)] = read(samples)
        return samples

    cls._draw_samples = wrapped


def _record_flip() -> None:
    original = flip.fliplr

    def wrapped(arr):
        REC.flipped = True
        return original(arr)

    flip.fliplr = wrapped


def _record_crop() -> None:
    original = size.CropAndPad._draw_samples

    def wrapped(self, random_state, shapes):
        result = original(self, random_state, shapes)
        first = result[0]
        REC.crop = tuple(int(v) for v in (first.crop_top, first.crop_right, first.crop_bottom, first.crop_left))
        return result

    size.CropAndPad._draw_samples = wrapped


def install_recorders() -> None:
    _record_flip()
    _record_crop()
    _wrap_draw(
        pillike.Affine,
        lambda s: {
            "rotate": float(s.rotate[0]),
            "shear_x": float(s.shear[0][0]),
            "shear_y": float(s.shear[1][0]),
            "translate_x": float(s.translate[0][0]),
            "translate_y": float(s.translate[1][0]),
        },
    )
    _wrap_draw(pillike._EnhanceBase, lambda s: {"factor": float(s[0])})
    _wrap_draw(color._AbstractColorQuantization, lambda s: {"bits": int(s[0])})
    _wrap_draw(arithmetic.Invert, lambda s: {"threshold": None if s.threshold[0] is None else float(s.threshold[0])})
    _wrap_draw(
        arithmetic.Cutout,
        lambda s: {
            "center_x": float(s.pos_x[0]),
            "center_y": float(s.pos_y[0]),
            "size": float(s.size_h[0]),
            "size_w": float(s.size_w[0]),
        },
    )


def op_params(name: str, raw: dict | None) -> dict:
    """The sampled values in bevt_core.loading.imgaug_augment's parameter names."""
    raw = raw or {}
    if name == "Rotate":
        return {"degrees": raw["rotate"]}
    if name in ("ShearX", "ShearY"):
        return {"degrees": raw["shear_x" if name == "ShearX" else "shear_y"]}
    if name in ("TranslateX", "TranslateY"):
        return {"fraction": raw["translate_x" if name == "TranslateX" else "translate_y"]}
    if name.startswith("Enhance"):
        return {"factor": raw["factor"]}
    if name == "Posterize":
        return {"bits": raw["bits"]}
    if name == "Solarize":
        return {"threshold": int(raw["threshold"])}
    if name == "Cutout":
        assert raw["size"] == raw["size_w"], raw
        return {k: raw[k] for k in ("center_x", "center_y", "size")}
    return {}


def encode(image: np.ndarray) -> dict:
    return {"shape": list(image.shape), "b64": base64.b64encode(np.ascontiguousarray(image).tobytes()).decode()}


def make_image(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients, noise and one saturated patch; no value reaches 255 and no channel spans 0-255."""
    noise = np.random.RandomState(seed).randint(-15, 16, (height, width, 3))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    yy, xx = yy / (height - 1), xx / (width - 1)
    red = 40 + 150 * xx + 20 * np.sin(9 * yy)
    green = 70 + 110 * yy * xx + 30 * np.cos(7 * xx)
    blue = 20 + 200 * (1 - yy) ** 2
    image = np.stack([red, green, blue], -1) + noise
    image[height // 3 : height // 2, width // 4 : width // 2] = (250, 30, 240)
    return np.clip(image, 0, 254).astype(np.uint8)


def run(augmenter, image: np.ndarray) -> np.ndarray:
    REC.reset()
    return augmenter.augment_image(image, hooks=REC.hooks())


def fixed_op_augmenters():
    """(name, augmenter) for each op with fixed parameters, built as collections.py L293-L335 builds it."""
    affine = {"fillcolor": 128, "center": (0.0, 0.0)}
    yield "Identity", iaa.Identity()
    yield "Autocontrast", pillike.Autocontrast(cutoff=0)
    yield "Equalize", pillike.Equalize()
    yield "Invert", arithmetic.Invert(p=1.0)
    for degrees in (7.0, -7.0, 30.0):
        yield "Rotate", pillike.Affine(rotate=degrees, fillcolor=128, center=(0.5, 0.5))
    for bits in (7, 4):
        yield "Posterize", pillike.Posterize(nb_bits=bits)
    for threshold in (197, 0):
        yield "Solarize", pillike.Solarize(p=1.0, threshold=threshold)
    for cls in (pillike.EnhanceColor, pillike.EnhanceContrast, pillike.EnhanceBrightness, pillike.EnhanceSharpness):
        for factor in (1.0 + 7 * np.float32(0.9 / 30), 1.0 - 7 * np.float32(0.9 / 30), 1.9):
            yield cls.__name__, cls(factor=float(factor))
    shear = 7 * np.float32(np.rad2deg(0.3) / 30)
    for degrees in (shear, -shear, -np.rad2deg(0.3)):
        yield "ShearX", pillike.Affine(shear={"x": float(degrees)}, **affine)
        yield "ShearY", pillike.Affine(shear={"y": float(degrees)}, **affine)
    for fraction in (7 * np.float32(0.33 / 30), -7 * np.float32(0.33 / 30), 0.33):
        yield "TranslateX", pillike.Affine(translate_percent={"x": float(fraction)}, **affine)
        yield "TranslateY", pillike.Affine(translate_percent={"y": float(fraction)}, **affine)
    cutout_size = float(7 * np.float32(20 / 32 / 30))
    for center, side in (
        ((0.5, 0.5), cutout_size),
        ((0.03, 0.9), cutout_size),
        ((0.97, 0.02), 0.625),
        ((0.3, 0.7), 0.3),
    ):
        yield ("Cutout", arithmetic.Cutout(1, position=center, size=side, squared=True, fill_mode="constant", cval=128))
    yield "FilterBlur", pillike.FilterBlur()
    yield "FilterSmooth", pillike.FilterSmooth()


# On the medium image too: equalize takes imgaug's numpy path there, blur has more than its border.
MEDIUM_TOO = {"Equalize", "FilterBlur"}


def single_ops(images: dict[str, np.ndarray]) -> list[dict]:
    entries = []
    seen_medium = set()
    for name, augmenter in fixed_op_augmenters():
        wanted = ["small"]
        if name in MEDIUM_TOO and name not in seen_medium:
            wanted.append("medium")
            seen_medium.add(name)
        for key in wanted:
            out = run(augmenter, images[key])
            params = op_params(name, REC.samples.get(id(augmenter)))
            entries.append({"op": name, "params": params, "image": key, "output": encode(out)})
    return entries


def head(images: dict[str, np.ndarray]) -> list[dict]:
    entries = [
        {"flip": True, "crop": [0, 0, 0, 0], "image": "small", "output": encode(run(iaa.Fliplr(1.0), images["small"]))}
    ]
    for crop, key in (
        ((1, 2, 0, 1), "medium"),
        ((2, 0, 2, 0), "medium"),
        ((0, 0, 0, 1), "medium"),
        ((1, 0, 1, 2), "small"),
    ):
        cropper = size.Crop(px=crop, sample_independently=True, keep_size=False)
        augmenter = size.KeepSizeByResize(cropper, interpolation="linear")
        out = run(augmenter, images[key])
        assert REC.crop == crop, (REC.crop, crop)
        entries.append({"flip": False, "crop": list(crop), "image": key, "output": encode(out)})
    return entries


def applied_ops(someof, recorder: Recorder) -> list[list]:
    index = {id(child): i for i, child in enumerate(someof)}
    ops = []
    for augmenter in recorder.ran:
        if id(augmenter) in index:
            name = OP_NAMES[index[id(augmenter)]]
            ops.append([name, op_params(name, recorder.samples.get(id(augmenter)))])
    return ops


def check_op_order(augmenter) -> None:
    names = [type(child).__name__ for child in augmenter[1]]
    expected = ["Identity", "Autocontrast", "Equalize", "Invert", "Affine", "Posterize", "Solarize"]
    expected += ["EnhanceColor", "EnhanceContrast", "EnhanceBrightness", "EnhanceSharpness"]
    expected += ["Affine"] * 4 + ["Cutout", "FilterBlur", "FilterSmooth"]
    assert names == expected, names


def seeds(image: np.ndarray) -> list[dict]:
    """Whole draws for seeds 0, 1, ..., keeping each seed that brings an op not seen yet, until all 18 are seen."""
    entries, seen = [], set()
    for seed in itertools.count():
        deterministic = iaa.RandAugment(n=N, m=M, seed=seed).to_deterministic()
        check_op_order(deterministic)
        out = run(deterministic, image)
        entry = {"seed": seed, "flip": REC.flipped, "crop": list(REC.crop), "ops": applied_ops(deterministic[1], REC)}
        assert len(entry["ops"]) == N, entry
        # The official pipeline calls the deterministic copy once per frame: every call must give the same draw.
        assert np.array_equal(run(deterministic, image), out)
        names = {name for name, _ in entry["ops"]}
        if names - seen:
            seen |= names
            entries.append({**entry, "image": "medium", "output": encode(out)})
        if len(seen) == len(OP_NAMES):
            return entries
    raise AssertionError("unreachable")


def magnitudes(image: np.ndarray) -> list[dict]:
    entries = []
    for m in MAGNITUDES:
        augmenter = iaa.RandAugment(n=len(OP_NAMES), m=m, seed=100 + m)
        for _ in range(3):
            run(augmenter, image)
            ops = applied_ops(augmenter[1], REC)
            assert sorted(name for name, _ in ops) == sorted(OP_NAMES)
            entries.append({"m": m, "params": dict(ops)})
    return entries


def choices() -> dict:
    """Draws written compactly to keep the file small: one string per draw, a character per op or side."""
    augmenter = iaa.RandAugment(n=N, m=M, seed=2024)
    frame = make_image(224, 224, seed=3)
    index = {id(child): i for i, child in enumerate(augmenter[1])}
    ops, flips, crops = [], [], []
    for _ in range(CHOICE_DRAWS):
        run(augmenter, frame)
        ops.append("".join(OP_LETTERS[index[id(a)]] for a in REC.ran if id(a) in index))
        flips.append(str(int(REC.flipped)))
        crops.append("".join(str(side) for side in REC.crop))
    return {"frame_shape": [224, 224, 3], "ops": ops, "flips": "".join(flips), "crops": crops}


def main() -> None:
    # RandAugment(seed=...) seeds the augmenters it lists (collections.py L214-L216), not the Crop inside
    # KeepSizeByResize, which draws from imgaug's global RNG: seed that too, so that reruns write the same file.
    imgaug.random.seed(GLOBAL_SEED)
    install_recorders()
    images = {"small": make_image(24, 24, seed=1), "medium": make_image(48, 48, seed=2)}
    medium_equalized = run(pillike.Equalize(), images["medium"])
    assert not np.array_equal(medium_equalized, np.asarray(ImageOps.equalize(Image.fromarray(images["medium"]))))
    vectors = {
        "versions": {
            "imgaug": imgaug.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "pillow": PIL.__version__,
        },
        "n": N,
        "m": M,
        "op_names": list(OP_NAMES),
        "images": {key: encode(image) for key, image in images.items()},
        "single_ops": single_ops(images),
        "head": head(images),
        "seeds": seeds(images["medium"]),
        "magnitudes": magnitudes(images["small"]),
        "choices": choices(),
    }
    OUT.write_text(json.dumps(vectors, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
