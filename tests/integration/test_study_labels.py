"""`bevt study --design label-efficiency`: the unlabelled pool, its held-out rule, the few-shot
subsets and the study's plumbing on the CI-sized sample data.

The pool and the splits are checked on the real sample footage (its manifest and the derived tasks'
params.json): no clip, frame or source that feeds a validation set enters the pool, and the
selection split shares neither sources (camera-motion) nor frames (scene) with what is finetuned.
The study itself is cut to a few steps per run: plumbing, not numbers.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest

from bevt_core.samples import derive, prepare_pool
from bevt_core.samples import pool as pool_module
from bevt_core.study import StudyConfig
from bevt_core.study.labels import labelled_splits
from tests.conftest import bevt_cli

pytestmark = pytest.mark.slow


def val_sources_and_scene_cuts(samples) -> tuple[set[str], dict[str, int]]:
    """The sources of camera-motion val, and per scene source the first frame its val clips may use,
    read from what the derived tasks actually hold."""
    cm = json.loads(samples.camera_motion.params.read_text())["clips"]
    scene = json.loads(samples.scene.params.read_text())["clips"]
    cm_val = {c["source"] for c in cm if c["split"] == "val"}
    first_val_frame = {}
    for c in scene:
        if c["split"] == "val":
            first_val_frame[c["source"]] = min(first_val_frame.get(c["source"], 10**9), min(c["frames"]))
    return cm_val, first_val_frame


def test_no_validation_clip_frame_or_source_enters_the_pool(samples):
    manifest = json.loads(samples.manifest.read_text())
    cm_val, scene_val_from = val_sources_and_scene_cuts(samples)
    assert cm_val and scene_val_from  # both tasks have val clips to keep out
    train, _ = derive.split_sources(manifest["sources"], 0)
    selection = {s["name"] for s in train if s["group"] in pool_module.selection_groups(train, 0)}
    assert selection and not selection & cm_val
    specs = pool_module.plan_pool(manifest, 0, 3000)
    used = Counter(s["source"] for s in specs)
    assert not set(used) & cm_val, "a camera-motion val source in the pool"
    assert not set(used) & selection, "a held-out selection source in the pool"
    assert len(used) >= 5 and max(used.values()) - min(used.values()) <= 1  # sources in turn
    for s in specs:
        if s["source"] in scene_val_from:
            assert max(s["frames"]) < scene_val_from[s["source"]], (s["path"], "uses scene val frames")
        assert s["label"] == -1
    # Random motion: every parameter moves in some clips and not others, both ways.
    sweeps = [[row[-1][j] - row[0][j] for j in range(3)] for row in (s["params"] for s in specs)]
    for j in range(3):
        assert min(d[j] for d in sweeps) < 0 < max(d[j] for d in sweeps)


def test_the_pool_is_rendered_unlabelled_and_reused(samples, tmp_path):
    pool = prepare_pool(samples.cache_dir, seed=0, profile="ci", clips=12)
    lines = pool.train_list.read_text().splitlines()
    assert len(lines) == 12 and all(line.endswith(".mp4") and " " not in line for line in lines)
    assert all((pool.root / line).stat().st_size > 0 for line in lines)
    stamp = (pool.root.parent / ".stamp.json").stat().st_mtime_ns
    assert prepare_pool(samples.cache_dir, seed=0, profile="ci", clips=12) == pool
    assert (pool.root.parent / ".stamp.json").stat().st_mtime_ns == stamp, "a second call redoes nothing"


def test_the_selection_split_is_disjoint_from_what_is_finetuned(samples, tmp_path):
    pool = prepare_pool(samples.cache_dir, seed=0, profile="ci", clips=12)
    splits = labelled_splits(StudyConfig(selection=True), samples, pool, tmp_path)
    params = {
        t.name: {c["path"]: c for c in json.loads(t.params.read_text())["clips"]}
        for t in (samples.camera_motion, samples.scene)
    }

    def clips(task: str, which: int) -> list[dict]:
        return [params[task][line.split()[0]] for line in splits[task][which].read_text().splitlines()]

    fit, held = clips("camera-motion", 0), clips("camera-motion", 1)
    assert fit and held and {c["split"] for c in fit + held} == {"train"}
    assert {c["source"] for c in held} <= set(pool.selection_sources)  # a small profile may not use them all
    assert not {c["source"] for c in fit} & set(pool.selection_sources)
    fit, held = clips("scene", 0), clips("scene", 1)
    assert fit and held and {c["split"] for c in fit + held} == {"train"}
    for source in {c["source"] for c in held}:
        last_fit = max((max(c["frames"]) for c in fit if c["source"] == source), default=-1)
        assert last_fit < min(min(c["frames"]) for c in held if c["source"] == source)
    # Without --selection: the tasks' own train and val lists.
    plain = labelled_splits(StudyConfig(), samples, pool, tmp_path)
    assert plain["scene"] == (samples.scene.train_list, samples.scene.val_list)


def study(out, *args: str, env) -> dict:
    proc = subprocess.run(
        bevt_cli()
        + ["study", "--design", "label-efficiency", "--work-dir", str(out), "--samples.profile", "ci"]
        + ["--max-steps", "2", "--pool-clips", "24", *args],
        env=env | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "study.json").read_text())


def test_label_efficiency_study_pretrains_on_the_pool_and_finetunes_on_few_labels(samples, tmp_path, cli_env):
    out = tmp_path / "study"
    record = study(out, "--seeds", "0", "--shots", "2", "0", env=cli_env)
    cells = {(c["arm"], c["task"], c["shots"]): c for c in record["cells"]}
    arms = ("scratch", "image", "video", "joint")
    assert set(cells) == {(a, t, k) for a in arms for t in ("camera-motion", "scene") for k in (2, 0)}
    assert all(len(c["top1"]) == 1 and 0.0 <= c["top1"][0] <= 1.0 for c in cells.values())
    assert record["chance"] == {"camera-motion": pytest.approx(1 / 6), "scene": pytest.approx(1 / 11)}
    # k=2: two clips of each class; all: the whole training list (CI profile: 8 per class, 4 per class).
    assert record["train_clips"] == {"camera-motion": {"2": 12, "0": 48}, "scene": {"2": 22, "0": 44}}
    k2 = (out / "data" / "val" / "lists" / "camera-motion-train-k2-seed0.txt").read_text().split("\n")
    assert Counter(line.split()[1] for line in k2 if line) == {str(c): 2 for c in range(6)}
    # The pretraining read the pool (its video stream) and the images, with one codebook fitted on the pool.
    tokens = out / "data" / "tokens"
    assert json.loads((tokens / "pool" / "tokenizer.json").read_text())["input"] == str(
        out / "data" / "shards" / "pool"
    )
    same = {json.loads((tokens / s / "tokenizer.json").read_text())["tokenizer"]["sha256"] for s in ("pool", "images")}
    assert len(same) == 1
    last = record["pretraining_last_losses"]["0"]
    assert "loss_image" not in last["video"] and {"loss_image", "loss_video"} <= set(last["joint"])
    table = (out / "study.md").read_text()
    assert "| camera-motion | k=2 (12 clips) | all (48 clips) |" in table and "| chance | 16.7% | 16.7% |" in table
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"

    # --selection: the held-out training sources instead of val, in runs of their own.
    record = study(out, "--seeds", "0", "--shots", "2", "--arms", "scratch", "--selection", env=cli_env)
    assert record["evaluated_on"] == "selection" and len(record["cells"]) == 2
    assert (out / "seed0" / "finetune-selection-scene-k2-scratch").is_dir()
