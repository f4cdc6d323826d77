"""What both study designs are made of: cells of top-1 per seed, and the stage configs of their runs
(sharding, tokenizing, pretraining each arm, finetuning a task), all untracked: a study's many runs
are summed up in its study.json, not each in MLflow."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bevt_core.config import from_dict
from bevt_core.samples.command import DataSettings
from bevt_core.stages import finetune, pretrain_image, pretrain_joint, shard, tokenize
from bevt_core.stages.training import TrainStageResult
from bevt_core.tracking.config import TrackingConfig

ARMS = ("scratch", "image", "video", "joint")
UNTRACKED = {"uri": "none"}
TASKS = {"camera-motion": "ssv2-tiny", "scene": "k400-tiny"}  # task -> finetune preset


@dataclass
class Cell:
    arm: str
    task: str
    targets: str = ""  # the arms design's Targets label; "" for scratch and for the data's own views alone
    shots: int = 0  # the label-efficiency design's labelled clips per class (0: all, or not that design)
    top1: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.arm} ({self.targets})" if self.targets else self.arm

    @property
    def slug(self) -> str:
        return self.arm + (f"-{self.targets.replace(' ', '-')}" if self.targets else "")

    @property
    def mean(self) -> float:
        return statistics.fmean(self.top1)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.top1) if len(self.top1) > 1 else 0.0


def shard_config(
    listing: str, root: str, output: Path, d: DataSettings, classes: str = "", modality: str = "video"
) -> shard.ShardConfig:
    return shard.ShardConfig(
        input=listing,
        root=root,
        classes=classes,
        output=str(output),
        modality=modality,
        frame_interval=d.frame_interval,
        short_side=d.short_side,
        samples_per_shard=32 if modality == "video" else 256,
        max_reject_rate=0.0,
        tracking=TrackingConfig("none"),
    )


def tokenize_config(shards: Path, output: Path, d: DataSettings, views: int, codebook: str) -> tokenize.TokenizeConfig:
    """``codebook``: the fitted codebook to reuse, "" to fit one on ``shards``."""
    return tokenize.TokenizeConfig(
        input=str(shards),
        output=str(output),
        tokenizer="codebook",
        codebook=codebook,
        codebook_size=d.codebook_size,
        views=views,
        crop=d.crop,
        device="cpu",
        tracking=TrackingConfig("none"),
    )


@dataclass(frozen=True)
class Pretraining:
    """One pretraining of every pretrained arm: where its data is and how it runs."""

    video: dict  # {"videos": shards, "video_tokens": tokens}
    images: dict  # {"images": shards, "image_tokens": tokens}
    work_dir: Path  # runs go to work_dir/<stage name><suffix>
    seed: int
    max_steps: int = 0
    online: bool = False
    suffix: str = ""
    epochs: float = 0.0  # 0: the tiny recipes'


def pretrain(p: Pretraining, arms: tuple[str, ...]) -> dict[str, TrainStageResult]:
    """The pretraining run behind each pretrained arm in ``arms``: image (the image stream), joint (both
    streams, from the image stream's weights) and video (the video stream alone, from a random init).
    Stops at the first failed run."""

    def stage(extra: dict, name: str) -> dict:
        return {
            "preset": "tiny",
            **extra,
            "targets": "online" if p.online else "stored",
            "run": {"work_dir": str(p.work_dir / f"{name}{p.suffix}"), "seed": p.seed},
            "schedule": {"max_steps": p.max_steps} | ({"epochs": p.epochs} if p.epochs else {}),
            "tracking": UNTRACKED,
        }

    runs: dict[str, TrainStageResult] = {}
    if {"image", "joint"} & set(arms):
        runs["image"] = pretrain_image.run(
            from_dict(pretrain_image.PretrainImageConfig, stage(p.images, "pretrain-image"))
        )
        if runs["image"].failed:
            return runs
    if "joint" in arms:
        runs["joint"] = pretrain_joint.run(
            from_dict(
                pretrain_joint.PretrainJointConfig,
                stage({**p.video, **p.images, "init": runs["image"].weights}, "pretrain-joint"),
            )
        )
        if runs["joint"].failed:
            return runs
    if "video" in arms:
        runs["video"] = pretrain_joint.run(
            from_dict(pretrain_joint.PretrainJointConfig, stage(p.video, "pretrain-video"))
        )
    return runs


def finetune_run(
    task: str,
    train: Path,
    val: Path,
    init: TrainStageResult | None,
    work_dir: Path,
    seed: int,
    max_steps: int,
    settings: dict | None = None,
) -> TrainStageResult:
    """Finetune ``task``'s preset on the ``train`` shards from ``init`` (None: scratch), validated on ``val``;
    ``settings``: finetune settings in place of the preset's (a section's given keys replace its own)."""
    config = {
        "preset": TASKS[task],
        "train": str(train),
        "val": str(val),
        "init": init.weights if init else "",
        "run": {"work_dir": str(work_dir), "seed": seed},
        "schedule": {"max_steps": max_steps},
        "tracking": UNTRACKED,
    }
    for key, value in (settings or {}).items():
        config[key] = config.get(key, {}) | value if isinstance(value, dict) else value
    return finetune.run(from_dict(finetune.FinetuneConfig, config))


def record(cell: Cell, tuned: TrainStageResult, chance: dict[str, float], run_name: str) -> None:
    """A finished finetune's top-1 (on what it was evaluated on) into its cell, the task's chance into
    ``chance``, and a line to follow."""
    cell.top1.append(tuned.val["top1"])
    chance[cell.task] = tuned.val["chance"]
    print(f"{run_name}: top-1 {tuned.val['top1']:.1%}", flush=True)


def save(out: Path, record: dict, title: str, summary: str, plot: Callable[[Path], None]) -> None:
    """A study's files: ``record`` as study.json, ``summary`` under ``title`` as study.md, the plot as study.png."""
    (out / "study.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "study.md").write_text(f"# {title}\n\n{summary}\n")
    plot(out / "study.png")
