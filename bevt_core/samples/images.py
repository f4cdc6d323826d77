"""Build the sample image folder: real photos plus a labelled Fashion-MNIST subset.

What it produces (under ``<cache>/raw/images``):

* ``photos/*``                      ~17 real photos from Debian packages (PNG/JPEG, 200x53 up to
                                    2590x1497, one CMYK JPEG as a real decoding edge case)
* ``fashion_mnist/<class>/*.png``   the first ``PER_CLASS`` images of each of the 10 classes of the
                                    Fashion-MNIST training set (file order), 28x28 greyscale PNG
* ``images.txt``                    one ``relative/path label`` per line; label is the Fashion-MNIST
                                    class index, and ``-1`` for the photos
* ``classes.txt``                   the 10 class names, index order

Why the photos are unlabelled (-1) rather than a class "photo": a class that differs from all
others in resolution, colour and source would be learnt from those nuisances, not content; the
image stream of BEVT pretraining needs no labels, and the labelled part (Fashion-MNIST) gives a
real classification signal for linear-probe style checks.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

PER_CLASS = 60
FASHION_CLASSES = [
    "t_shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def build_images(images_dir: Path, photos: list[dict], fashion_dir: Path, fashion_origin: dict) -> dict:
    from PIL import Image

    x = _read_idx(fashion_dir / "train-images-idx3-ubyte.gz")
    y = _read_idx(fashion_dir / "train-labels-idx1-ubyte.gz")
    lines = [f"{p['path'].removeprefix('images/')} -1" for p in photos]
    for k, name in enumerate(FASHION_CLASSES):
        d = images_dir / "fashion_mnist" / name
        d.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(y == k)[:PER_CLASS]:
            rel = f"fashion_mnist/{name}/{int(i):05d}.png"
            Image.fromarray(x[i], mode="L").save(images_dir / rel, optimize=False)
            lines.append(f"{rel} {k}")
    (images_dir / "images.txt").write_text("\n".join(lines) + "\n")
    (images_dir / "classes.txt").write_text("\n".join(FASHION_CLASSES) + "\n")
    return {
        "list": "images/images.txt",
        "classes": FASHION_CLASSES,
        "photos": photos,
        "fashion_mnist": {"origin": fashion_origin, "per_class": PER_CLASS, "count": PER_CLASS * len(FASHION_CLASSES)},
    }
