"""`bevt study` (BEVT-mini): every arm pretrains and finetunes per seed and the table aggregates them.

Cut to a few steps per run: this checks the study's plumbing (the video-only and image-only
checkpoints load into finetuning, one value per seed, mean and spread, the files it writes), not
the numbers; the README's table comes from the full command.
"""

from __future__ import annotations

import json
import statistics
import subprocess

import pytest

from tests.conftest import bevt_cli

pytestmark = pytest.mark.slow


def test_study_runs_every_arm_per_seed_and_tabulates(samples, tmp_path, cli_env):
    out = tmp_path / "study"
    proc = subprocess.run(
        bevt_cli()
        + ["study", "--work-dir", str(out), "--seeds", "0", "1", "--max-steps", "2", "--samples.profile", "ci"],
        env=cli_env | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    cells = {(c["arm"], c["task"]): c for c in study["cells"]}
    assert set(cells) == {(a, t) for a in ("scratch", "image", "video", "joint") for t in ("camera-motion", "scene")}
    for c in cells.values():
        assert len(c["top1"]) == 2 and all(0.0 <= v <= 1.0 for v in c["top1"])
        assert c["mean"] == pytest.approx(statistics.fmean(c["top1"]))
        assert c["std"] == pytest.approx(statistics.stdev(c["top1"]))
    assert study["chance"] == {"camera-motion": pytest.approx(1 / 6), "scene": pytest.approx(1 / 11)}
    # The video arm pretrained without images; the joint arm with both streams, from the image arm.
    for seed in ("0", "1"):
        last = study["pretraining_last_losses"][seed]
        assert "loss_image" not in last["video"] and "loss_video" in last["video"]
        assert {"loss_image", "loss_video"} <= set(last["joint"]) and "loss" in last["image"]
        assert (out / f"seed{seed}" / "pretrain-video" / "bevt_pretrain.pt").exists()
    table = (out / "study.md").read_text()
    assert "| scratch |" in table and "| chance | 16.7% | 9.1% |" in table
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"


def test_study_compares_view_counts_and_online_targets(samples, tmp_path, cli_env):
    out = tmp_path / "study"
    args = ["--arms", "scratch", "joint", "--views", "1", "3", "--online", "--seeds", "0", "--max-steps", "2"]
    proc = subprocess.run(
        bevt_cli() + ["study", "--work-dir", str(out), *args, "--samples.profile", "ci"],
        env=cli_env | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    names = [(c["arm"], c["targets"]) for c in study["cells"] if c["task"] == "scene"]
    assert names == [("scratch", ""), ("joint", "1 view"), ("joint", "3 views"), ("joint", "online")]
    # Each count of views has its own token directory, all with the one codebook fitted on the videos.
    digests = set()
    for views, tokens in ((2, "tokens"), (1, "tokens-1views"), (3, "tokens-3views")):
        for stream in ("camera-motion/train", "images"):
            record = json.loads((out / "data" / tokens / stream / "tokenizer.json").read_text())
            assert record["views"] == views
            digests.add(record["tokenizer"]["sha256"])
    assert len(digests) == 1
    last = study["pretraining_last_losses"]["0"]
    assert set(last) == {f"{arm} ({t})" for arm in ("image", "joint") for t in ("1 view", "3 views", "online")}
    assert (out / "seed0" / "pretrain-joint-online" / "bevt_pretrain.pt").exists()
    table = (out / "study.md").read_text()
    assert "| joint (3 views) |" in table and "| joint (online) |" in table and "| scratch |" in table
