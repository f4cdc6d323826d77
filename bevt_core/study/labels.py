"""The ``label-efficiency`` design: a large unlabelled pool, few labels.

Per seed, every pretrained arm (image, video, joint) pretrains once on the unlabelled pool
(bevt_core/samples/pool.py: clips with random camera motion from the training sources only) and the
images; then each task is finetuned from each arm on ``k`` labelled clips per class, for every ``k``
of ``--shots`` (0: all of the task's training clips), and evaluated on the task's val set. The k
clips of a class are drawn per seed, the same for every arm, so arms differ only in their start.

``--selection`` replaces the val sets by a held-out part of the training data, for choosing settings
without looking at val: camera-motion evaluates on the clips of the pool's held-out training
sources (which neither the pool nor the finetuning then sees: the same relation val has to them);
scene, whose labels are its sources, on its training clips from the later frames of each source's
training span, finetuning on the clips that end before them (no frame shared, as with val).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bevt_core.config import to_dict
from bevt_core.recipes import FINETUNE
from bevt_core.samples import Pool, SampleData, VideoTask, prepare_pool
from bevt_core.samples.command import run as fetch_samples
from bevt_core.stages import shard, tokenize
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

SCENE_SELECTION_FROM = 0.5  # --selection: scene evaluates on training clips starting at or after this share


@dataclass
class LabelResult:
    work_dir: str
    seeds: tuple[int, ...]
    shots: tuple[int, ...]
    cells: list[Cell]
    evaluated_on: str  # "val" or "selection"
    chance: dict[str, float] = field(default_factory=dict)
    train_clips: dict[str, dict[int, int]] = field(default_factory=dict)  # task -> shots -> labelled clips
    pretraining: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)  # seed -> arm -> last losses
    failed: str = ""

    def shots_label(self, task: str, shots: int) -> str:
        n = self.train_clips.get(task, {}).get(shots, 0)
        return f"all ({n} clips)" if shots == 0 else f"k={shots} ({n} clips)"

    def table(self, task: str) -> str:
        lines = [
            f"| {task} | " + " | ".join(self.shots_label(task, k) for k in self.shots) + " |",
            "|---" * (len(self.shots) + 1) + "|",
        ]
        for arm in dict.fromkeys(c.arm for c in self.cells):
            row = {c.shots: c for c in self.cells if c.arm == arm and c.task == task}
            values = [
                f"{row[k].mean:.1%} ± {row[k].spread:.1%} ({', '.join(f'{v:.1%}' for v in row[k].top1)})"
                for k in self.shots
            ]
            lines.append(f"| {arm} | " + " | ".join(values) + " |")
        lines.append(
            "| chance | " + " | ".join(f"{self.chance.get(task, float('nan')):.1%}" for _ in self.shots) + " |"
        )
        return "\n".join(lines)

    def summary(self) -> str:
        tables = "\n\n".join(self.table(t) for t in TASKS)
        return (
            f"BEVT-mini, label efficiency: single-view {self.evaluated_on} top-1, mean ± std over seeds "
            f"{list(self.seeds)} (per seed in brackets)\n\n{tables}\n\n"
            f"written to {self.work_dir}/study.md, study.json, study.png"
        )


def _clips(task: VideoTask) -> list[dict]:
    return json.loads(task.params.read_text())["clips"]


def labelled_splits(cfg: StudyConfig, data: SampleData, pool: Pool, lists: Path) -> dict[str, tuple[Path, Path]]:
    """Per task, its (training list, evaluation list): the task's own train and val, or with
    ``--selection`` the held-out split of its training clips (module docstring)."""
    if not cfg.selection:
        return {t.name: (t.train_list, t.val_list) for t in (data.camera_motion, data.scene)}
    lists.mkdir(parents=True, exist_ok=True)
    held = set(pool.selection_sources)
    out = {}
    for task in (data.camera_motion, data.scene):
        train = [c for c in _clips(task) if c["split"] == "train"]
        if task is data.camera_motion:
            fit = [c for c in train if c["source"] not in held]
            evaluate = [c for c in train if c["source"] in held]
        else:
            cut = _scene_selection_cuts(data, train)
            fit = [c for c in train if max(c["frames"]) < cut[c["source"]]]
            evaluate = [c for c in train if min(c["frames"]) >= cut[c["source"]]]
        paths = (lists / f"{task.name}-train.txt", lists / f"{task.name}-selection.txt")
        for path, chosen in zip(paths, (fit, evaluate)):
            path.write_text("".join(f"{c['path']} {c['label']}\n" for c in chosen))
        out[task.name] = paths
    return out


def _scene_selection_cuts(data: SampleData, train: list[dict]) -> dict[str, int]:
    """Per scene source, the first frame of its selection part: SCENE_SELECTION_FROM of its training span."""
    spans: dict[str, int] = {}
    for c in train:
        spans[c["source"]] = max(spans.get(c["source"], 0), max(c["frames"]) + 1)
    return {source: int(end * SCENE_SELECTION_FROM) for source, end in spans.items()}


def few_shot(listing: Path, shots: int, seed: int) -> list[str]:
    """``shots`` lines per class of a K400 list (all with 0), drawn with ``seed``, in list order."""
    lines = [line for line in listing.read_text().splitlines() if line.strip()]
    if shots == 0:
        return lines
    by_class: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        by_class.setdefault(line.rsplit(maxsplit=1)[1], []).append(i)
    rng = np.random.default_rng([seed, shots, 19])
    keep = {i for rows in by_class.values() for i in rng.choice(rows, size=min(shots, len(rows)), replace=False)}
    return [line for i, line in enumerate(lines) if i in keep]


def finetune_settings(cfg: StudyConfig, task: str, clips: int, all_clips: int) -> dict:
    """The settings of a finetune on ``clips`` of the task's ``all_clips`` labelled clips: the recipe's epochs
    and warmup times ``finetune_length``, with ``few_shot_steps=matched`` stretched by all/k clips to the
    all-labels run's steps; validated once, at the end (the study reports the last weights). Few-shot epochs
    last a few steps, less than starting the loader's worker processes (done every epoch) costs: no workers."""
    recipe = FINETUNE[TASKS[task]].schedule
    stretch = cfg.finetune_length * (all_clips / clips if cfg.few_shot_steps == "matched" else 1.0)
    settings: dict = {
        "validate_every": 0,
        "schedule": {"epochs": recipe.epochs * stretch, "warmup_epochs": recipe.warmup_epochs * stretch},
    }
    if clips < all_clips:
        settings["run"] = {"workers": 0}
    return settings


Splits = dict[str, tuple[Path, Path]]  # task -> (training list, evaluation list)


def prepare(cfg: StudyConfig, data: SampleData, pool: Pool, splits: Splits, work: Path) -> str:
    """Shard the pool, the images and each task's evaluation set; tokenize the pool with a codebook fitted
    on it and the images with the same one. Returns what failed, or ""; done work is skipped."""
    d = cfg.data
    tasks = {t.name: t for t in (data.camera_motion, data.scene)}
    jobs = [
        ("shard pool", shard_config(str(pool.train_list), str(pool.root), work / "shards" / "pool", d)),
        (
            "shard images",
            shard_config(str(data.images_list), str(data.images_root), work / "shards" / "images", d, modality="image"),
        ),
        *(
            (
                f"shard {name}/eval",
                shard_config(
                    str(evaluate), str(tasks[name].root), _labelled(work, cfg) / name / "eval", d, _classes(tasks[name])
                ),
            )
            for name, (_, evaluate) in splits.items()
        ),
    ]
    for name, stage_cfg in jobs:
        out = shard.run(stage_cfg)
        if out.failed:
            return f"{name}: {out.failed}"
    fitted = work / "tokens" / "pool" / CODEBOOK_FILE
    for name, codebook in (("pool", ""), ("images", str(fitted))):
        tokenize.run(tokenize_config(work / "shards" / name, work / "tokens" / name, d, d.views, codebook))
    return ""


def _classes(task: VideoTask) -> str:
    return str(task.root / "classes.txt")


def _labelled(work: Path, cfg: StudyConfig) -> Path:
    """Where the labelled shards and lists go: apart for --selection, whose lists differ."""
    return work / ("selection" if cfg.selection else "val")


def finetune_shards(
    cfg: StudyConfig, data: SampleData, splits: Splits, work: Path, seed: int, result: LabelResult
) -> dict[tuple[str, int], Path] | str:
    """Per (task, shots), the shards of this seed's labelled training clips; or what failed."""
    out: dict[tuple[str, int], Path] = {}
    for task in (data.camera_motion, data.scene):
        for shots in cfg.shots:
            chosen = few_shot(splits[task.name][0], shots, seed)
            name = "train-all" if shots == 0 else f"train-k{shots}-seed{seed}"
            listing = _labelled(work, cfg) / "lists" / f"{task.name}-{name}.txt"
            listing.parent.mkdir(parents=True, exist_ok=True)
            listing.write_text("".join(f"{line}\n" for line in chosen))
            shards = _labelled(work, cfg) / task.name / name
            done = shard.run(shard_config(str(listing), str(task.root), shards, cfg.data, _classes(task)))
            if done.failed:
                return f"shard {task.name}/{name}: {done.failed}"
            result.train_clips.setdefault(task.name, {})[shots] = len(chosen)
            out[task.name, shots] = shards
    return out


def run_seed(cfg: StudyConfig, data: SampleData, splits: Splits, work: Path, seed: int, result: LabelResult) -> str:
    """Every pretraining and finetuning run of one seed into ``result``; returns what failed, or ""."""
    shards = finetune_shards(cfg, data, splits, work, seed, result)
    if isinstance(shards, str):
        return shards
    plan = Pretraining(
        video={"videos": str(work / "shards" / "pool"), "video_tokens": str(work / "tokens" / "pool")},
        images={"images": str(work / "shards" / "images"), "image_tokens": str(work / "tokens" / "images")},
        work_dir=Path(cfg.work_dir) / f"seed{seed}",
        seed=seed,
        max_steps=cfg.max_steps,
        epochs=cfg.pretrain_epochs,
    )
    inits = {"scratch": None} | pretrain(plan, cfg.arms)
    for arm, run in inits.items():
        if run is not None and run.failed:
            return f"pretraining {arm}, seed {seed}: {run.failed}"
    result.pretraining[seed] = {arm: r.last for arm, r in inits.items() if r}
    all_clips = {task: len(few_shot(train, 0, seed)) for task, (train, _) in splits.items()}
    for cell in result.cells:
        where = (
            Path(cfg.work_dir) / f"seed{seed}" / f"finetune-{result.evaluated_on}-{cell.task}-k{cell.shots}-{cell.arm}"
        )
        evaluate = _labelled(work, cfg) / cell.task / "eval"
        settings = finetune_settings(cfg, cell.task, result.train_clips[cell.task][cell.shots], all_clips[cell.task])
        tuned = finetune_run(
            cell.task, shards[cell.task, cell.shots], evaluate, inits[cell.arm], where, seed, cfg.max_steps, settings
        )
        if tuned.failed:
            return f"finetune {cell.task} (k={cell.shots}) from {cell.arm}, seed {seed}: {tuned.failed}"
        record(cell, tuned, result.chance, f"seed {seed}: {cell.task}, k={cell.shots}, from {cell.arm}")
    return ""


def _plot(result: LabelResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(TASKS)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.8), squeeze=False)
    x = list(range(len(result.shots)))
    for ax, task in zip(axes[0], tasks):
        for arm in dict.fromkeys(c.arm for c in result.cells):
            row = {c.shots: c for c in result.cells if c.arm == arm and c.task == task}
            means = [row[k].mean for k in result.shots]
            ax.errorbar(x, means, yerr=[row[k].spread for k in result.shots], marker="o", capsize=3, label=arm)
        ax.axhline(result.chance[task], color="#888888", linestyle="--", label="chance")
        ax.set_xticks(x, [result.shots_label(task, k).replace(" (", "\n(") for k in result.shots])
        ax.set_title(task)
        ax.set_xlabel("labelled clips per class")
        ax.set_ylabel(f"{result.evaluated_on} top-1")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
    fig.suptitle(f"BEVT-mini: top-1 against labels, pretrained on the unlabelled pool ({len(result.seeds)} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: LabelResult, cfg: StudyConfig, pool: Pool, out: Path, seconds: float) -> None:
    cells = [
        {"arm": c.arm, "task": c.task, "shots": c.shots, "top1": c.top1, "mean": c.mean, "std": c.spread}
        for c in result.cells
    ]
    record = {
        "design": "label-efficiency",
        "config": to_dict(cfg),
        "evaluated_on": result.evaluated_on,
        "chance": result.chance,
        "train_clips": result.train_clips,
        "pool": {
            "clips": cfg.pool_clips,
            "list": str(pool.train_list),
            "held_out_selection_sources": list(pool.selection_sources),
        },
        "pretraining_last_losses": result.pretraining,
        "cells": cells,
        "seconds": round(seconds, 1),  # this invocation's wall time; runs a rerun reused cost it nothing
    }
    save(out, record, "BEVT-mini: label efficiency", result.summary(), lambda path: _plot(result, path))


def run(cfg: StudyConfig) -> LabelResult:
    started = time.monotonic()
    data = fetch_samples(cfg.samples).data
    s = cfg.samples
    pool = prepare_pool(s.cache_dir or None, seed=s.seed, profile=s.profile, clips=cfg.pool_clips)
    out = Path(cfg.work_dir)
    work = out / "data"
    out.mkdir(parents=True, exist_ok=True)
    cells = [Cell(arm, task, shots=k) for task in TASKS for k in cfg.shots for arm in cfg.arms]
    result = LabelResult(str(out), tuple(cfg.seeds), tuple(cfg.shots), cells, "selection" if cfg.selection else "val")
    splits = labelled_splits(cfg, data, pool, _labelled(work, cfg) / "lists")
    result.failed = prepare(cfg, data, pool, splits, work)
    for seed in cfg.seeds:
        if result.failed:
            return result
        result.failed = run_seed(cfg, data, splits, work, seed, result)
    if not result.failed:
        write(result, cfg, pool, out, time.monotonic() - started)
    return result
