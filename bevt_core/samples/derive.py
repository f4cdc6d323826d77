"""Derive two labelled video tasks from the real footage fetched by ``fetch.py``.

What it produces (under ``<cache>/tasks/<profile>-seed<seed>/``, written atomically, stamped):

``camera-motion/``  an SSv2-like *temporal* task. 6 classes: pan_left, pan_right, pan_up, pan_down,
    zoom_in, zoom_out, made as a moving square crop over the real clips; 32 frames, 128x128,
    25 fps. A crop is three numbers per frame: ``ux, uy`` in [0, 1] (the crop centre's position
    inside the region the largest crop may occupy, so every crop stays inside the frame and a
    zoom is a pure zoom) and ``ls`` = log(crop side / frame short side) in [log 0.3, log 0.6].
    Clips come in a matched design: clip ``j`` of every class shares the source, the time
    window, the trajectory centres ``c ~ U(lo + m, hi - m)`` (``m`` = 30 % of each parameter's
    range) and the static offsets; the classes differ only in which parameter moves and which
    way. The moving parameter sweeps ``c - m .. c + m`` linearly over the 32 frames; a static one
    sits at ``c + m * t`` with ``t`` one of the same 32 sweep points (antithetic pairs ``t``,
    ``-t`` in clips 2i and 2i + 1, stratified). Pooled over frames every class therefore has the
    same distribution of (ux, uy, ls) (per-class means equal exactly for an even clip count) and
    the same source videos: one frame carries no label information, only the motion does.
    Train and val use disjoint source videos (split by source
    group, g1/g2 being two takes of one scene). Sources shorter than 32 frames are played back
    and forth (ping-pong) - the label comes from the crop, so that does not leak. Image
    convention: pan_left moves the crop (the camera) left, so the content drifts right; zoom_in
    shrinks the crop.

``scene/``  a K400-like *appearance* task: label = source video (one class per source with at
    least ``SCENE_MIN_FRAMES`` frames; shorter ones are skipped). Clips are 32 consecutive frames
    from a random time window with a random static square crop (side 0.6-1.0 of the short side).
    Train clips come from the first 70 % of each source's frames, val clips from the last 30 %
    (disjoint in time). A split by source is impossible when the label *is* the source, so this
    task measures generalisation across time and crop, not across scenes. A segment shorter than
    32 frames is played back and forth.

Each task directory holds ``train.txt`` / ``val.txt`` (K400 format: ``relative/path.mp4 label``),
``classes.txt`` and ``params.json`` (per clip: source, frame indices and the per-frame crop
parameters ``[ux, uy, ls]``), which the tests use to check the class-independence of the crops.

Encoding: h264 (libx264 from PyAV's bundled FFmpeg; mpeg4 if that encoder is missing), yuv420p,
25 fps, one encoder thread, so the bytes are reproducible for a given seed and PyAV build.
Sources are decoded with PyAV (it handles every codec here) and resized with OpenCV to a short
side of ``DECODE_SHORT`` px.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .fetch import log, recipe_hash, replace_dir, write_stamp

DERIVE_VERSION = "2"
FRAMES = 32
SIZE = 128
FPS = 25
DECODE_SHORT = 320

PROFILES = {
    "demo": {"cm_train": 24, "cm_val": 8, "scene_train": 12, "scene_val": 4},
    # 8 val clips per class: with 4 (24 clips), one clip is worth 4 points of camera-motion top-1, too
    # coarse to tell a weak motion model from chance (16.7%).
    "ci": {"cm_train": 8, "cm_val": 8, "scene_train": 4, "scene_val": 2},
}
CM_CLASSES = ["pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out"]
CM_MOTION = {
    "pan_left": (0, -1),
    "pan_right": (0, 1),
    "pan_up": (1, -1),
    "pan_down": (1, 1),
    "zoom_in": (2, -1),
    "zoom_out": (2, 1),
}
CM_RANGES = [(0.0, 1.0), (0.0, 1.0), (math.log(0.3), math.log(0.6))]
CM_AMP = 0.3  # sweep half-amplitude as a fraction of each parameter's range
CM_VAL_FRACTION = 0.25  # of the source videos
SCENE_MIN_FRAMES = 64
SCENE_TRAIN_FRACTION = 0.7
SCENE_SCALE = (0.6, 1.0)
PARAM_NAMES = ["ux", "uy", "log_scale"]


def derive_recipe(seed: int, profile: str, fetch_hash: str) -> dict:
    return {
        "version": DERIVE_VERSION,
        "seed": seed,
        "profile": profile,
        "fetch": fetch_hash,
        "frames": FRAMES,
        "size": SIZE,
        "fps": FPS,
        "profile_counts": PROFILES[profile],
        "codec": video_codec(),
    }


def video_codec() -> str:
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 -- any failure to look the encoder up means it cannot be used
        return "mpeg4"


# ---------------------------------------------------------------- planning


def _pingpong(start: int, lo: int, hi: int, count: int) -> list[int]:
    """``count`` frame indices from ``start`` in [lo, hi), reflecting at both ends."""
    length = hi - lo
    if length <= 1:
        return [lo] * count
    period = 2 * (length - 1)
    out = []
    for k in range(count):
        position = (start - lo + k) % period
        out.append(lo + (position if position < length else period - position))
    return out


def _window(rng: np.random.Generator, lo: int, hi: int) -> list[int]:
    length = hi - lo
    if length >= FRAMES:
        first = lo + int(rng.integers(0, length - FRAMES + 1))
        return list(range(first, first + FRAMES))
    return _pingpong(lo + int(rng.integers(0, max(length, 1))), lo, hi, FRAMES)


def camera_params(centre: np.ndarray, static_idx: np.ndarray, cls: str) -> np.ndarray:
    """Per-frame (ux, uy, ls), shape (FRAMES, 3), for one clip of class ``cls``.

    ``centre[j]`` is the trajectory centre of parameter j; ``static_idx[j]`` the sweep point a
    static parameter sits at. The moving parameter (and its direction) is the class.
    """
    moving, direction = CM_MOTION[cls]
    sweep = np.linspace(-1.0, 1.0, FRAMES)
    params = np.empty((FRAMES, 3))
    for j, (lo, hi) in enumerate(CM_RANGES):
        amplitude = CM_AMP * (hi - lo)
        if j == moving:
            params[:, j] = centre[j] + amplitude * direction * sweep
        else:
            params[:, j] = centre[j] + amplitude * sweep[static_idx[j]]
    return params


def hold_out_groups(sources: list[dict], fraction: float, rng: np.random.Generator) -> set[str]:
    """Whole source groups, in ``rng``'s order, until they hold ``fraction`` of the sources (at least one)."""
    groups = sorted({source["group"] for source in sources})
    order = [groups[i] for i in rng.permutation(len(groups))]
    need = max(1, math.ceil(fraction * len(sources)))
    held: set[str] = set()
    for group in order:
        if sum(source["group"] in held for source in sources) >= need:
            break
        held.add(group)
    return held


def split_sources(sources: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Camera-motion split by source group: about CM_VAL_FRACTION of the sources go to val."""
    val_groups = hold_out_groups(sources, CM_VAL_FRACTION, np.random.default_rng([seed, 7]))
    train = [source for source in sources if source["group"] not in val_groups]
    val = [source for source in sources if source["group"] in val_groups]
    if not train or not val:
        raise RuntimeError("camera-motion needs at least two source groups")
    return train, val


def _clip_spec(
    task: str, split: str, label: int, cls: str, index: int, source: dict, frames: list[int], params: list
) -> dict:
    """One clip to render: clip ``index`` of class ``cls`` in ``split``, cut from ``source``."""
    return {
        "task": task,
        "split": split,
        "label": label,
        "class": cls,
        "path": f"{split}/{cls}/{cls}_{split}_{index:04d}.mp4",
        "source": source["name"],
        "source_path": source["path"],
        "frames": frames,
        "params": params,
    }


def _plan_camera_motion_split(split: str, sources: list[dict], count: int, seed: int) -> list[dict]:
    """``count`` matched clips per camera-motion class for ``split``, drawn from ``sources``."""
    # Matched design: clip j of every class shares the source, time window, trajectory centre
    # and static offsets; the classes differ only in which parameter moves and which way. Every
    # class therefore sees the same sources and the same per-frame crop distribution. Static
    # offsets come in antithetic pairs (sweep points t and 31 - t for clips 2i and 2i + 1,
    # stratified over the 16 point pairs), so with an even clip count the per-class means of
    # every parameter are equal exactly.
    half = FRAMES // 2
    split_rng = np.random.default_rng([seed, 1, split == "val"])
    order = split_rng.permutation(len(sources))
    strata = np.stack([split_rng.permutation(half) for _ in CM_RANGES])  # (3, 16)
    specs = []
    for j in range(count):
        source = sources[int(order[j % len(sources)])]
        rng = np.random.default_rng([seed, 1, split == "val", j])
        frames = _window(rng, 0, source["pyav"]["frames"])
        centre = np.array([rng.uniform(lo + CM_AMP * (hi - lo), hi - CM_AMP * (hi - lo)) for lo, hi in CM_RANGES])
        stratum = strata[:, (j // 2) % half]
        static_idx = half + stratum if j % 2 == 0 else half - 1 - stratum
        for k, cls in enumerate(CM_CLASSES):
            params = np.round(camera_params(centre, static_idx, cls), 6).tolist()
            specs.append(_clip_spec("camera-motion", split, k, cls, j, source, frames, params))
    return specs


def plan_camera_motion(sources: list[dict], seed: int, counts: dict) -> list[dict]:
    """The camera-motion clips of both splits (train and val use disjoint source groups)."""
    train_src, val_src = split_sources(sources, seed)
    train = _plan_camera_motion_split("train", train_src, counts["cm_train"], seed)
    val = _plan_camera_motion_split("val", val_src, counts["cm_val"], seed)
    return train + val


def _scene_clip(seed: int, split: str, label: int, index: int, source: dict, lo: int, hi: int) -> dict:
    """Scene clip ``index`` of ``split``: a random window in frames [lo, hi), one static crop."""
    rng = np.random.default_rng([seed, 2, split == "val", label, index])
    frames = _window(rng, lo, hi)
    scale = rng.uniform(*SCENE_SCALE)
    ux, uy = rng.uniform(0, 1), rng.uniform(0, 1)
    crop = [round(ux, 6), round(uy, 6), round(math.log(scale), 6)]
    return _clip_spec("scene", split, label, source["name"], index, source, frames, [crop] * FRAMES)


def plan_scene(sources: list[dict], seed: int, counts: dict) -> list[dict]:
    """The scene clips: per source, train clips from its first frames, val clips from the rest."""
    specs = []
    for label, source in enumerate(scene_sources(sources)):
        total = source["pyav"]["frames"]
        cut = int(total * SCENE_TRAIN_FRACTION)
        for split, (lo, hi), count in (
            ("train", (0, cut), counts["scene_train"]),
            ("val", (cut, total), counts["scene_val"]),
        ):
            specs += [_scene_clip(seed, split, label, j, source, lo, hi) for j in range(count)]
    return specs


def plan(manifest: dict, seed: int, profile: str, counts: dict | None = None) -> list[dict]:
    """Every clip to render, deterministic from (manifest, seed, profile). Cheap: no decoding."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    merged = {**PROFILES[profile], **(counts or {})}
    sources = manifest["sources"]
    return plan_camera_motion(sources, seed, merged) + plan_scene(sources, seed, merged)


def scene_sources(sources: list[dict]) -> list[dict]:
    return [source for source in sources if source["pyav"]["frames"] >= SCENE_MIN_FRAMES]


# ---------------------------------------------------------------- rendering


def decode_resized(path: Path, keep: set[int], short: int = DECODE_SHORT) -> dict[int, np.ndarray]:
    """Decode with PyAV; return the frames whose index is in ``keep``, short side = ``short``."""
    import av
    import cv2

    out: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i in keep:
                img = frame.to_ndarray(format="rgb24")
                height, width = img.shape[:2]
                ratio = short / min(height, width)
                size = (max(short, round(width * ratio)), max(short, round(height * ratio)))
                interp = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
                out[i] = cv2.resize(img, size, interpolation=interp)
    if not out:
        raise RuntimeError(f"no frames decoded from {path}")
    return out


def _moving_crop(img: np.ndarray, ux: float, uy: float, ls: float) -> np.ndarray:
    """The SIZE x SIZE camera-motion crop (ux, uy, ls) of ``img``, placed and scaled to sub-pixel precision."""
    import cv2

    height, width = img.shape[:2]
    short = min(height, width)
    side = math.exp(ls) * short
    largest = math.exp(CM_RANGES[2][1]) * short
    x0 = largest / 2 + ux * (width - largest) - side / 2
    y0 = largest / 2 + uy * (height - largest) - side / 2
    pixel_step = side / SIZE
    inverse_map = np.array([[pixel_step, 0, x0 + 0.5 * pixel_step - 0.5], [0, pixel_step, y0 + 0.5 * pixel_step - 0.5]])
    return cv2.warpAffine(
        img, inverse_map, (SIZE, SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )


def _static_crop(img: np.ndarray, ux: float, uy: float, ls: float) -> np.ndarray:
    """The scene crop (ux, uy, ls) of ``img`` on whole pixels, area-averaged down to SIZE x SIZE."""
    import cv2

    height, width = img.shape[:2]
    side = round(math.exp(ls) * min(height, width))
    x0 = round(ux * (width - side))
    y0 = round(uy * (height - side))
    return cv2.resize(img[y0 : y0 + side, x0 : x0 + side], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def render_frames(spec: dict, frames: dict[int, np.ndarray]) -> np.ndarray:
    crop = _static_crop if spec["task"] == "scene" else _moving_crop  # camera-motion, and the pool (pool.py)
    last = max(frames)
    clip = [crop(frames[min(idx, last)], ux, uy, ls) for idx, (ux, uy, ls) in zip(spec["frames"], spec["params"])]
    return np.stack(clip)


def encode_mp4(frames: np.ndarray, path: Path, fps: int = FPS) -> None:
    """Encode RGB uint8 frames (T, H, W, 3) as yuv420p mp4, single-threaded (reproducible bytes)."""
    import av

    codec = video_codec()
    opts = {"crf": "20", "preset": "medium", "threads": "1"} if codec == "libx264" else {"threads": "1"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps, options=opts)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        if codec != "libx264":
            stream.codec_context.bit_rate = 1_500_000
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = i
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def render(specs: list[dict], raw_dir: Path, out_root: Path) -> None:
    """Render ``specs`` under ``out_root/<task>/<path>``, decoding each source once."""
    by_source: dict[str, list[dict]] = defaultdict(list)
    for spec in specs:
        by_source[spec["source_path"]].append(spec)
    for src_path, group in by_source.items():
        keep = {i for spec in group for i in spec["frames"]}
        started = time.time()
        frames = decode_resized(raw_dir / src_path, keep)
        for spec in group:
            encode_mp4(render_frames(spec, frames), out_root / spec["task"] / spec["path"])
        log(f"  {Path(src_path).name}: {len(group)} clips ({time.time() - started:.1f} s)")
        del frames


def write_task_files(root: Path, specs: list[dict], classes: list[str], codec: str) -> None:
    """The list files, ``classes.txt`` and ``params.json`` of the task whose clips are ``specs``."""
    for split in ("train", "val"):
        lines = [f"{spec['path']} {spec['label']}" for spec in specs if spec["split"] == split]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    clips = [
        {key: spec[key] for key in ("path", "split", "label", "class", "source", "frames", "params")} for spec in specs
    ]
    side = {"param_names": PARAM_NAMES, "frames": FRAMES, "size": SIZE, "fps": FPS, "codec": codec, "clips": clips}
    (root / "params.json").write_text(json.dumps(side))


def derive(raw_dir: Path, tasks_dir: Path, manifest: dict, seed: int, profile: str, rhash: str) -> None:
    """Plan, render and write both tasks into ``tasks_dir`` atomically (temp dir + rename)."""
    started = time.time()
    specs = plan(manifest, seed, profile)
    codec = video_codec()
    if codec != "libx264":
        log("WARNING: PyAV's FFmpeg has no libx264 encoder; writing mpeg4 clips instead")
    log(f"deriving {len(specs)} clips (camera-motion + scene, profile={profile}, seed={seed}, {codec})")
    tasks_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{tasks_dir.name}-", dir=tasks_dir.parent))
    try:
        render(specs, raw_dir, tmp)
        scene_classes = [source["name"] for source in scene_sources(manifest["sources"])]
        for task, classes in (("camera-motion", CM_CLASSES), ("scene", scene_classes)):
            write_task_files(tmp / task, [spec for spec in specs if spec["task"] == task], classes, codec)
        write_stamp(tmp, rhash, {"seed": seed, "profile": profile, "clips": len(specs)})
        replace_dir(tmp, tasks_dir)
        log(f"derive done: {len(specs)} clips in {time.time() - started:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["derive", "derive_recipe", "encode_mp4", "plan", "recipe_hash", "render"]
