"""``bevt demo``: the whole pipeline run on the real sample footage, on this machine.

The demo is ``bevt pipeline run-local`` on the two sample tasks: KFP's local runner runs every step
as its own process (shard, tokenize with the weight-free codebook, pretrain-image, pretrain-joint as
a 2-process torchrun, then finetune and evaluate per task in the pipeline's ParallelFor), all nested
under one MLflow run in a SQLite store in the work dir. A rerun resumes: it reopens that run and KFP's
cache hands back every step that finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from bevt_core.config import at_least, from_dict, option, to_dict
from bevt_core.samples import SampleData
from bevt_core.samples.command import DataSettings, SamplesConfig
from bevt_core.samples.command import run as fetch_samples
from bevt_core.tracking import pipeline_run as report
from bevt_core.tracking.pipeline_run import StageRow
from pipelines.cli import PipelineConfig, run_local


@dataclass
class DemoConfig:
    work_dir: str = option(
        "work/demo",
        help="Where the demo writes: the pipeline root (kfp/: every step's "
        "outputs and the step cache), the MLflow store (mlflow.db, mlartifacts/), report.html.",
    )
    samples: SamplesConfig = option(SamplesConfig, help="The sample data.")
    data: DataSettings = option(DataSettings, help="Sharding and tokenizing.")
    processes: int = option(
        2,
        help="torchrun processes of pretrain-joint (each task's finetune runs as one "
        "process, the two tasks side by side).",
        check=at_least(1),
    )
    workers: int = option(
        0, help="DataLoader workers per training process (0: load in the process).", check=at_least(0)
    )
    max_steps: int = option(
        0,
        help="Cut every training stage to this many steps (0: the tiny presets' epochs); "
        "for a quick check of the plumbing, not for accuracy.",
        check=at_least(0),
    )


@dataclass
class DemoResult:
    work_dir: str
    mlflow: str  # the tracking URI of every step's run
    parent_run_id: str = ""
    rows: list[StageRow] = field(default_factory=list)  # in start order
    chance: dict[str, float] = field(default_factory=dict)  # task -> chance accuracy
    val_clips: dict[str, int] = field(default_factory=dict)  # task -> clips in its val set
    failed: str = ""

    def summary(self) -> str:
        lines = [
            f"demo {'FAILED' if self.failed else 'finished'}: pipeline root {self.work_dir}/kfp, "
            f"MLflow run {self.parent_run_id}"
        ]
        width = max([len(r.name) for r in self.rows] + [4])
        lines.append(f"  {'step':<{width}}  {'status':<8}  {'seconds':>7}  result")
        for r in self.rows:
            lines.append(f"  {r.name:<{width}}  {r.status:<8}  {r.seconds:>7.1f}  {outcome(r, self.chance)}")
        if self.val_clips:
            lines.append(caveat(self.val_clips))
        lines.append(f"report of this run (also on its MLflow parent run): {self.work_dir}/kfp/report.html")
        lines.append(f"browse the runs: .venv/bin/mlflow ui --backend-store-uri {self.mlflow}")
        return "\n".join(lines)


def outcome(row: StageRow, chance: dict[str, float]) -> str:
    """One line of what a step's run measured."""
    metrics = row.metrics
    nan = float("nan")
    if row.stage == "evaluate":
        extra = f" (chance {chance[row.label]:.1%})" if row.label in chance else ""
        return f"top-1 {metrics.get('top1', nan):.1%}, top-5 {metrics.get('top5', nan):.1%}{extra}"
    if row.stage == "finetune":
        extra = f" (chance {chance[row.label]:.1%})" if row.label in chance else ""
        return f"loss {metrics.get('loss', nan):.3f}, single-view val top-1 {metrics.get('val_top1', nan):.1%}{extra}"
    if row.stage == "pretrain-joint":
        return f"loss_video {metrics.get('loss_video', nan):.3f}, acc_video {metrics.get('acc_video', nan):.1%}" + (
            f", loss_image {metrics['loss_image']:.3f}" if "loss_image" in metrics else ""
        )
    if row.stage == "pretrain-image":
        return f"loss {metrics.get('loss', nan):.3f}"
    if row.stage == "tokenize":
        return f"{metrics.get('samples', 0):.0f} samples, vocab {metrics.get('vocab_size', 0):.0f}"
    if row.stage == "shard":
        return f"{metrics.get('ok', 0):.0f}/{metrics.get('items', 0):.0f} items"
    return ""


def caveat(val_clips: dict[str, int]) -> str:
    """What the demo's accuracies can and cannot carry."""
    grain = ", ".join(f"{task} {n} ({1 / n:.1%} each)" for task, n in val_clips.items())
    return (
        "what this run shows: every stage runs and hands on to the next; not what pretraining buys. "
        f"Its pretraining set is small and its val sets are {grain} clips, so a top-1 difference of a "
        "few clips is noise. What pretraining buys is measured by `bevt study --design label-efficiency` "
        "(README: BEVT-mini)."
    )


EXPERIMENT = "bevt-demo"
REGISTERED = "bevt-demo-{task}"  # the registered model of each task


def pipeline_config(cfg: DemoConfig, data: SampleData, work: Path, tracking_uri: str) -> PipelineConfig:
    """The pipeline run of the demo: the tiny recipes on the sample tasks, every step on this machine."""
    settings = cfg.data
    tasks = [
        {
            "run_label": task.name,
            "train_list": str(task.train_list),
            "val_list": str(task.val_list),
            "root": str(task.root),
            "classes": str(task.root / "classes.txt"),
            "preset": preset,
            "frame_interval": settings.frame_interval,
            "register_as": REGISTERED.format(task=task.name),
        }
        for task, preset in ((data.scene, "k400-tiny"), (data.camera_motion, "ssv2-tiny"))
    ]
    params = {
        "pretrain_videos": str(data.camera_motion.train_list),
        "videos_root": str(data.camera_motion.root),
        "images": str(data.images_list),
        "images_root": str(data.images_root),
        "finetune_tasks": tasks,
        "recipe": "tiny",
        "tokenizer": "codebook",
        "views": settings.views,
        "crop": settings.crop,
        "codebook_size": settings.codebook_size,
        "pretrain_frame_interval": settings.frame_interval,
        "short_side": settings.short_side,
        "max_steps": cfg.max_steps,
        "procs_per_node": cfg.processes,
        "workers": cfg.workers,
        "tracking_uri": tracking_uri,
    }
    return from_dict(
        PipelineConfig,
        {
            "action": "run-local",
            "params": params,
            "pipeline_root": str(work / "kfp"),
            "experiment": EXPERIMENT,
            "run_name": "demo",
            "finetune_parallelism": 0,  # the two tasks side by side (see `processes`)
        },
    )


def run(cfg: DemoConfig) -> DemoResult:
    """Fetch the samples, run the pipeline locally (resuming an unfinished or identical earlier run), and
    tabulate the steps' runs."""
    # The runner runs up to two steps at once (the tasks' finetunes side by side) and torchrun gives a
    # lone rank every core: without one thread per process, two finetunes on 2 cores crawl.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = fetch_samples(cfg.samples).data
    work = Path(cfg.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    result = DemoResult(str(work), f"sqlite:///{work / 'mlflow.db'}")
    pipeline = pipeline_config(cfg, data, work, result.mlflow)
    result.parent_run_id = pipeline.params.parent_run_id = _resumable(work, pipeline.params, result.mlflow)
    try:
        run_local(pipeline)
    except Exception as e:  # noqa: BLE001 -- a failed step: its run, the report and the rerun say the rest
        result.failed = f"{type(e).__name__}: {e}"
    result.rows = report.stage_rows(result.mlflow, result.parent_run_id, plots=False)
    result.chance = {t.name: 1 / len(t.classes) for t in (data.scene, data.camera_motion)}
    result.val_clips = {t.name: len(t.val_list.read_text().splitlines()) for t in (data.scene, data.camera_motion)}
    return result


STATE = "demo-run.json"  # which parent run the pipeline's parameters belong to


def _resumable(work: Path, params, uri: str) -> str:
    """The parent run of an earlier demo with the same parameters (the step cache holds its steps), or
    a new one recorded for the next rerun."""
    key = hashlib.sha256(json.dumps(to_dict(params), sort_keys=True).encode()).hexdigest()
    state = work / STATE
    if state.exists():
        earlier = json.loads(state.read_text())
        if earlier.get("params_sha256") == key and _exists(uri, earlier["parent_run_id"]):
            return earlier["parent_run_id"]
    parent = report.open_run(uri, EXPERIMENT, "demo", to_dict(params), "bevt demo")
    state.write_text(json.dumps({"parent_run_id": parent, "params_sha256": key}) + "\n")
    return parent


def _exists(uri: str, run_id: str) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
        return True
    except MlflowException:
        return False
