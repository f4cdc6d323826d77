"""`bevt pipeline run-local`: the whole BEVT pipeline on this machine with KFP's local runner.

Tiny presets on real sample footage and photos: every component runs in its own subprocess as
KFP runs it, artifacts flow between them, the distributed steps run torchrun with two processes
(DDP over gloo) from the same entrypoint a PyTorchJob uses, and the finetune loop (a ParallelFor)
finetunes and evaluates the joint model on both sample tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_pipeline_locally

pytestmark = pytest.mark.slow


def subset(src: Path, dst: Path, n: int, step: int = 1) -> str:
    dst.write_text("\n".join(src.read_text().splitlines()[::step][:n]) + "\n")
    return str(dst)


def test_run_local_whole_pipeline(samples, tmp_path, cli_env):
    scene, motion = samples.scene, samples.camera_motion
    params = {
        "pretrain_videos": subset(scene.train_list, tmp_path / "pt.txt", 8),
        "images": subset(samples.images_list, tmp_path / "images.txt", 24),  # tiny: 16 per image step
        # Whole lists: train and val must hold the same classes (evaluate refuses a class mismatch).
        "finetune_tasks": [
            {
                "run_label": "scene",
                "train_list": str(scene.train_list),
                "val_list": str(scene.val_list),
                "classes": str(scene.root / "classes.txt"),
                "preset": "k400-tiny",
                "frame_interval": 1,
            },
            {
                "run_label": "camera-motion",
                "train_list": str(motion.train_list),
                "val_list": str(motion.val_list),
                "classes": str(motion.root / "classes.txt"),
                "preset": "ssv2-tiny",
                "frame_interval": 1,
            },
        ],
        "videos_root": str(scene.root),
        "images_root": str(samples.images_root),
        "recipe": "tiny",
        "tokenizer": "codebook",
        "views": 1,
        "crop": 64,
        "codebook_size": 32,
        "short_side": 64,
        "pretrain_frame_interval": 1,
        "max_steps": 2,
        "procs_per_node": 2,
        "finetune_procs_per_node": 2,
        "workers": 0,
        "tracking_uri": "none",
    }
    config = {"action": "run-local", "params": params, "pipeline_root": str(tmp_path / "root"), "caching": False}
    proc = run_pipeline_locally(config, tmp_path / "pipeline.yaml", cli_env | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    assert "pipeline run-local: finished" in proc.stdout

    root = tmp_path / "root"
    (joint,) = root.rglob("pretrain-joint/model/bevt_pretrain.pt")
    assert torch.load(joint, weights_only=True)["meta"]["format"] == "bevt-3d"
    (result,) = root.rglob("pretrain-joint/model/pretrain-joint-result.json")
    # Two torchrun processes: each optimizer step took one micro-batch per rank.
    r = json.loads(result.read_text())
    assert r["steps"] == 2 and r["samples"] == 2 * 2 * 4  # tiny preset: 4 clips per rank
    # One loop iteration per task, in the list's order, each with the task's own classes.
    for i, task in enumerate((scene, motion)):
        (recognizer,) = root.rglob(f"for-loop-*-iteration-{i}/finetune/model/recognizer.pt")
        meta = torch.load(recognizer, weights_only=True)["meta"]
        assert meta["format"] == "recognizer" and meta["classes"] == task.classes, task.name
        (result,) = root.rglob(f"for-loop-*-iteration-{i}/finetune/model/finetune-result.json")
        assert json.loads(result.read_text())["samples"] == 2 * 8  # the tiny recipe's global batch: 4 clips x 2 ranks
        (metrics,) = root.rglob(f"for-loop-*-iteration-{i}/evaluate/results/metrics.json")
        scores = json.loads(metrics.read_text())
        assert scores["classes"] == task.classes
        assert sum(map(sum, scores["confusion"])) == len(task.val_list.read_text().splitlines())
        assert 0.0 <= scores["top1"] <= 1.0
        (report,) = root.rglob(f"for-loop-*-iteration-{i}/evaluate/report")
        page = report.read_text()
        assert f"<h2>evaluate {task.name}</h2>" in page and "data:image/png;base64," in page
