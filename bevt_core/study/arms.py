"""The ``arms`` design: what each kind of pretraining buys on the sample tasks.

The paper's ablation at small scale: the same finetune recipe started from four initialisations,
on the temporal task (camera-motion, SSv2-like) and the appearance task (scene, K400-like):

``scratch``  no pretraining;
``image``    the image stream alone (``pretrain-image``, the 2D checkpoint inflated to 3D: BEVT-I);
``video``    the video stream alone, from a random init (``pretrain-joint`` without images: BEVT-V);
``joint``    BEVT: image stream, then both streams initialised from it.

Pretraining uses the camera-motion training videos and the images. Every pretraining and
finetuning run is repeated per seed; the table gives the mean and the spread (sample standard
deviation) of single-view validation top-1. The data is sharded and tokenized with the demo's
settings into the study's work dir (idempotent: a rerun reuses it).

``--views`` and ``--online`` add a second factor, the pretraining targets: each pretraining arm is
run once per count of stored augmentation views (each count tokenized into its own directory with
the same fitted codebook) and, with ``--online``, with a fresh augmentation drawn on every read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bevt_core.config import to_dict
from bevt_core.samples import SampleData
from bevt_core.samples.command import run as fetch_samples
from bevt_core.stages import shard, tokenize
from bevt_core.stages.training import TrainStageResult
from bevt_core.study import StudyConfig
from bevt_core.study.common import (
    TASKS,
    Cell,
    Pretraining,
    finetune_run,
    pretrain,
    record,
    save,
    shard_config,
    tokenize_config,
)
from bevt_core.tokenizers import CODEBOOK_FILE


@dataclass(frozen=True)
class Targets:
    """The pretraining targets of one variant: ids of ``views`` stored views, or a fresh view per read."""

    views: int
    online: bool = False

    @property
    def label(self) -> str:
        return "online" if self.online else f"{self.views} view{'s' if self.views > 1 else ''}"


def target_variants(cfg: StudyConfig) -> list[Targets]:
    stored = [Targets(v) for v in cfg.views or (cfg.data.views,)]
    return stored + ([Targets(cfg.data.views, online=True)] if cfg.online else [])


def is_plain(cfg: StudyConfig) -> bool:
    """Only the data's own stored views: cells and runs keep the plain arm names."""
    return target_variants(cfg) == [Targets(cfg.data.views)]


@dataclass
class StudyResult:
    work_dir: str
    seeds: tuple[int, ...]
    cells: list[Cell]
    chance: dict[str, float]
    pretraining: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)  # seed -> arm -> last losses
    failed: str = ""

    def table(self) -> str:
        tasks = list(self.chance)
        lines = [
            "| initialisation | " + " | ".join(f"{t} top-1" for t in tasks) + " |",
            "|---" * (len(tasks) + 1) + "|",
        ]
        for name in dict.fromkeys(c.name for c in self.cells):
            row = {c.task: c for c in self.cells if c.name == name}
            lines.append(f"| {name} | " + " | ".join(f"{row[t].mean:.1%} ± {row[t].spread:.1%}" for t in tasks) + " |")
        lines.append("| chance | " + " | ".join(f"{self.chance[t]:.1%}" for t in tasks) + " |")
        return "\n".join(lines)

    def summary(self) -> str:
        return (
            f"BEVT-mini: single-view val top-1, mean ± std over seeds {list(self.seeds)}\n{self.table()}\n"
            f"written to {self.work_dir}/study.md, study.json, study.png"
        )


def tokens_dir(cfg: StudyConfig, prepared: Path, views: int) -> Path:
    return prepared / ("tokens" if views == cfg.data.views else f"tokens-{views}views")


def _pretrain(cfg: StudyConfig, prepared: Path, seed: int, targets: Targets) -> dict[str, TrainStageResult]:
    """The pretraining run behind each pretrained arm for one seed and one kind of targets."""
    shards, tokens = prepared / "shards", tokens_dir(cfg, prepared, targets.views)
    plan = Pretraining(
        video={
            "videos": str(shards / "camera-motion" / "train"),
            "video_tokens": str(tokens / "camera-motion" / "train"),
        },
        images={"images": str(shards / "images"), "image_tokens": str(tokens / "images")},
        work_dir=Path(cfg.work_dir) / f"seed{seed}",
        seed=seed,
        max_steps=cfg.max_steps,
        online=targets.online,
        suffix="" if is_plain(cfg) or targets == Targets(cfg.data.views) else f"-{targets.label.replace(' ', '-')}",
    )
    return pretrain(plan, cfg.arms)


def _plot(result: StudyResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, names = list(result.chance), list(dict.fromkeys(c.name for c in result.cells))
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.5, 1.1 * len(names)) * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        cells = [next(c for c in result.cells if c.name == n and c.task == task) for n in names]
        ax.bar(names, [c.mean for c in cells], yerr=[c.spread for c in cells], capsize=4, color="#4c72b0")
        ax.tick_params(axis="x", labelrotation=20 if len(names) > 4 else 0)
        ax.axhline(result.chance[task], color="#c44e52", linestyle="--", label="chance")
        ax.set_title(task)
        ax.set_ylabel("val top-1")
        ax.set_ylim(0, 1.15)  # headroom for the legend above full-accuracy bars
        ax.legend(loc="upper right")
    fig.suptitle(f"BEVT-mini: finetune accuracy by initialisation ({len(result.seeds)} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def prepare(cfg: StudyConfig, data: SampleData, work: Path) -> str:
    """Shard both sample tasks and the images, then tokenize the pretraining sets with one codebook,
    fitted on the camera-motion videos (the video and image streams share the lm_head, so they must
    share the tokenizer), once per count of stored views; returns what failed, or "". Both stages
    skip what is already done."""
    d = cfg.data
    jobs = [
        (
            f"shard {task.name}/{split}",
            shard_config(
                str(listing), str(task.root), work / "shards" / task.name / split, d, str(task.root / "classes.txt")
            ),
        )
        for task in (data.camera_motion, data.scene)
        for split, listing in (("train", task.train_list), ("val", task.val_list))
    ]
    images = shard_config(str(data.images_list), str(data.images_root), work / "shards" / "images", d, modality="image")
    for name, stage_cfg in [*jobs, ("shard images", images)]:
        out = shard.run(stage_cfg)
        if out.failed:
            return f"{name}: {out.failed}"
    sets = ["camera-motion/train", "images"]
    fitted = work / "tokens" / sets[0] / CODEBOOK_FILE
    counts = [d.views] + [v for v in dict.fromkeys(cfg.views) if v != d.views]
    for views, name in ((v, n) for v in counts for n in sets):
        codebook = "" if (views, name) == (d.views, sets[0]) else str(fitted)
        tokenize.run(tokenize_config(work / "shards" / name, tokens_dir(cfg, work, views) / name, d, views, codebook))
    return ""


def finetune_cell(
    cfg: StudyConfig, prepared: Path, seed: int, cell: Cell, init: TrainStageResult | None
) -> TrainStageResult:
    shards = prepared / "shards" / cell.task
    work = Path(cfg.work_dir) / f"seed{seed}" / f"finetune-{cell.task}-{cell.slug}"
    return finetune_run(cell.task, shards / "train", shards / "val", init, work, seed, cfg.max_steps)


def run_seed(cfg: StudyConfig, prepared: Path, seed: int, result: StudyResult) -> str:
    """Every pretraining and finetuning run of one seed into ``result``; returns what failed, or ""."""
    inits: dict[str, TrainStageResult | None] = {"scratch": None}  # cell name -> its pretraining
    for targets in target_variants(cfg):
        for arm, run in _pretrain(cfg, prepared, seed, targets).items():
            name = Cell(arm, "", "" if is_plain(cfg) else targets.label).name
            if run.failed:
                return f"pretraining {name}, seed {seed}: {run.failed}"
            inits[name] = run
    result.pretraining[seed] = {name: r.last for name, r in inits.items() if r}
    for cell in result.cells:
        tuned = finetune_cell(cfg, prepared, seed, cell, inits[cell.name])
        if tuned.failed:
            return f"finetune {cell.task} from {cell.name}, seed {seed}: {tuned.failed}"
        record(cell, tuned, result.chance, f"seed {seed}: {cell.task} from {cell.name}")
    return ""


def study_cells(cfg: StudyConfig) -> list[Cell]:
    labels = [""] if is_plain(cfg) else [t.label for t in target_variants(cfg)]
    return [
        Cell(arm, task, targets)
        for arm in cfg.arms
        for targets in ([""] if arm == "scratch" else labels)
        for task in TASKS
    ]


def write(result: StudyResult, cfg: StudyConfig, out: Path) -> None:
    cells = [
        {"arm": c.arm, "targets": c.targets, "task": c.task, "top1": c.top1, "mean": c.mean, "std": c.spread}
        for c in result.cells
    ]
    record = {
        "config": to_dict(cfg),
        "chance": result.chance,
        "pretraining_last_losses": result.pretraining,
        "cells": cells,
    }
    save(out, record, "BEVT-mini", result.summary(), lambda path: _plot(result, path))


def run(cfg: StudyConfig) -> StudyResult:
    data = fetch_samples(cfg.samples).data
    out = Path(cfg.work_dir)
    prepared = out / "data"
    out.mkdir(parents=True, exist_ok=True)
    result = StudyResult(str(out), tuple(cfg.seeds), study_cells(cfg), {})
    result.failed = prepare(cfg, data, prepared)
    for seed in cfg.seeds:
        if result.failed:
            return result
        result.failed = run_seed(cfg, prepared, seed, result)
    if not result.failed:
        write(result, cfg, out)
    return result
