"""The unlabelled pool: thousands of clips with random camera motion, from training sources only.

Self-supervised pretraining is meant for plenty of unlabelled video and few labels. The sample
tasks have a few hundred labelled clips; the pool turns the camera-motion *training* sources into
as many unlabelled clips as asked, rendered like camera-motion clips (a moving square crop over a
real video, 32 frames, 128 px) but with a random motion each: every crop parameter (``ux``, ``uy``,
``log_scale``) sweeps its own random amplitude and direction, so pans, zooms, their mixtures and
near-still clips all occur, and no clip has a label.

The held-out rule: no clip, frame or source that feeds a validation set enters the pool.

- Camera-motion val uses its own source groups (``derive.split_sources``): the pool takes only the
  other, training groups.
- Scene val is the last 30 % of the frames of every source long enough for the scene task
  (``derive.plan_scene``): the pool takes frames only before that cut.
- The *selection* groups, a part of the training groups held out for choosing settings (the
  label-efficiency study evaluates on them instead of val when asked), stay out of the pool too,
  so that a choice made on them sees what val will see: sources the pool never showed.

Written atomically under ``<cache>/tasks/<profile>-seed<seed>-pool-<clips>/`` and stamped like the
tasks (a rerun with the same recipe costs nothing): ``train.txt`` (paths alone: unlabelled, relative
to ``pool/``), ``params.json`` (per clip: source, frame indices, per-frame crop) and the clips.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import derive
from .fetch import log, read_stamp, recipe_hash, replace_dir, write_stamp

POOL_VERSION = "1"
SELECTION_FRACTION = 0.2  # of the camera-motion training sources, held out for choosing settings


@dataclass(frozen=True)
class Pool:
    root: Path  # the list's paths are relative to it (the list itself is in its parent)
    train_list: Path  # one clip path per line, no label
    params: Path  # params.json: per clip its source, frames and crops
    selection_sources: tuple[str, ...]  # the held-out training sources (names)


@dataclass(frozen=True)
class Span:
    """The frames [lo, hi) of one source the pool may use."""

    source: dict
    lo: int
    hi: int


def selection_groups(train_sources: list[dict], seed: int) -> set[str]:
    """About SELECTION_FRACTION of the camera-motion training sources, by whole groups (at least one),
    held out for choosing settings."""
    return derive.hold_out_groups(train_sources, SELECTION_FRACTION, np.random.default_rng([seed, 11]))


def spans(manifest: dict, seed: int) -> list[Span]:
    """What the pool may draw from (module docstring: the held-out rule)."""
    train, _ = derive.split_sources(manifest["sources"], seed)
    held = selection_groups(train, seed)
    scene = {s["name"] for s in derive.scene_sources(manifest["sources"])}
    out = []
    for source in train:
        if source["group"] in held:
            continue
        total = source["pyav"]["frames"]
        hi = int(total * derive.SCENE_TRAIN_FRACTION) if source["name"] in scene else total
        out.append(Span(source, 0, hi))
    return out


def random_motion(rng: np.random.Generator) -> np.ndarray:
    """Per-frame (ux, uy, ls), shape (FRAMES, 3): each parameter sweeps a random amplitude (up to the
    camera-motion classes' own, either way) around a random centre that keeps the sweep in range."""
    sweep = np.linspace(-1.0, 1.0, derive.FRAMES)
    params = np.empty((derive.FRAMES, 3))
    for j, (lo, hi) in enumerate(derive.CM_RANGES):
        room = derive.CM_AMP * (hi - lo)
        centre = rng.uniform(lo + room, hi - room)
        params[:, j] = centre + rng.uniform(-room, room) * sweep
    return params


def plan_pool(manifest: dict, seed: int, clips: int) -> list[dict]:
    """``clips`` unlabelled clip specs, deterministic from (manifest, seed, clips); sources in turn."""
    usable = spans(manifest, seed)
    order = np.random.default_rng([seed, 12]).permutation(len(usable))
    specs = []
    for j in range(clips):
        span = usable[int(order[j % len(usable)])]
        rng = np.random.default_rng([seed, 12, j])
        frames = derive._window(rng, span.lo, span.hi)
        params = np.round(random_motion(rng), 6).tolist()
        spec = derive._clip_spec("pool", "train", -1, "", j, span.source, frames, params)
        specs.append(spec | {"path": f"clips/{j // 1000:03d}/clip_{j:05d}.mp4"})  # 1000 files per folder
    return specs


def pool_recipe(seed: int, clips: int, derive_hash: str) -> dict:
    return {"version": POOL_VERSION, "seed": seed, "clips": clips, "derive": derive_hash, "codec": derive.video_codec()}


def prepare_pool(tasks_dir: Path, raw_dir: Path, manifest: dict, seed: int, clips: int) -> Pool:
    """The pool of ``clips`` clips beside the tasks in ``tasks_dir`` (made once; the caller holds the
    cache lock)."""
    root = tasks_dir.parent / f"{tasks_dir.name}-pool-{clips}"
    digest = recipe_hash(pool_recipe(seed, clips, read_stamp(tasks_dir) or ""))
    train, _ = derive.split_sources(manifest["sources"], seed)
    held = selection_groups(train, seed)
    pool = Pool(
        root=root / "pool",
        train_list=root / "train.txt",
        params=root / "params.json",
        selection_sources=tuple(s["name"] for s in train if s["group"] in held),
    )
    if read_stamp(root) == digest:
        return pool
    started = time.time()
    specs = plan_pool(manifest, seed, clips)
    log(f"rendering the unlabelled pool: {clips} clips from {len(spans(manifest, seed))} training sources")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{root.name}-", dir=root.parent))
    try:
        derive.render(specs, raw_dir, tmp)  # into tmp/pool/clips/...: the list's root
        (tmp / "train.txt").write_text("".join(f"{s['path']}\n" for s in specs))
        clips_meta = [{k: s[k] for k in ("path", "source", "frames", "params")} for s in specs]
        meta = {"param_names": derive.PARAM_NAMES, "selection_sources": list(pool.selection_sources)}
        (tmp / "params.json").write_text(json.dumps(meta | {"clips": clips_meta}))
        write_stamp(tmp, digest, {"seed": seed, "clips": clips})
        replace_dir(tmp, root)
        log(f"pool done: {clips} clips in {time.time() - started:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return pool
