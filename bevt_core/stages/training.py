"""What every training stage does around the engine: join the job, seed, track, build the model, train,
export the weights, and report the result."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from bevt_core.config import to_yaml
from bevt_core.models import build_model, save_weights
from bevt_core.recipes import Recipe
from bevt_core.tracking import stage_report
from bevt_core.tracking.stage_run import stage_run
from bevt_core.tracking.tracker import Tracker
from bevt_core.train import distributed
from bevt_core.train.engine import Settings, Task, TrainResult, train
from bevt_core.train.options import Batching, ModelOptions, RunConfig, batching
from bevt_core.train.state import seed_everything


@dataclass
class TrainStageResult:
    stage: str
    work_dir: str
    weights: str  # the exported model (what the next stage reads)
    checkpoint: str  # the last training-state file
    steps: int
    samples: int
    seconds: float
    samples_per_s: float
    mfu: float | None
    peak_memory_gb: float
    first: dict[str, float] = field(default_factory=dict)  # mean of the first logged steps
    last: dict[str, float] = field(default_factory=dict)  # mean of the last logged steps
    val: dict[str, float] = field(default_factory=dict)  # the last validation (single view), with chance
    best: dict = field(default_factory=dict)  # the best validation: step, epoch, scores
    test: dict[str, dict[str, float]] = field(default_factory=dict)  # multi-view test of the "best" and "last" weights
    resumed_from: str = ""
    run_id: str = ""
    registered: str = ""  # models:/NAME/VERSION when the stage registered its model
    failed: str = ""

    @classmethod
    def of(cls, stage: str, work_dir: str, weights: str, r: TrainResult, keys: tuple[str, ...], run_id: str):
        return cls(
            stage,
            work_dir,
            weights,
            r.checkpoint,
            r.steps,
            r.samples,
            r.seconds,
            r.samples_per_s,
            r.mfu,
            r.peak_memory_gb,
            {k: r.mean(k, True) for k in keys},
            {k: r.mean(k, False) for k in keys},
            resumed_from=r.resumed_from,
            run_id=run_id,
            failed=r.stopped,
        )

    def summary(self) -> str:
        def values(d: dict[str, float]) -> str:
            return ", ".join(f"{k} {v:.4f}" for k, v in d.items())

        speed = f"{self.samples_per_s:.1f} samples/s" + (f", MFU {self.mfu:.1%}" if self.mfu else "")
        lines = [
            f"{self.stage}: {self.steps} steps, {self.samples} samples in {self.seconds:.1f} s "
            f"({speed}, peak memory {self.peak_memory_gb:.2f} GB)",
            f"  first steps: {values(self.first)}",
            f"  last steps:  {values(self.last)}",
        ]
        if self.val:
            lines.append(f"  validation:  {values(self.val)}")
        for name, scores in self.test.items():
            lines.append(f"  test {name + ':':<6} {values(scores)}")
        lines.append(
            f"  weights {self.weights}; state {self.checkpoint}"
            + (f"; resumed from {self.resumed_from}" if self.resumed_from else "")
        )
        if self.run_id:
            lines.append(f"  MLflow run {self.run_id}")
        if self.registered:
            lines.append(f"  registered model {self.registered}")
        if self.failed:
            lines.append(f"  FAILED: {self.failed}")
        return "\n".join(lines)


def build_from(opts: ModelOptions, run: RunConfig, **overrides: Any) -> torch.nn.Module:
    """A freshly initialised model of ``opts``, with the run's attention and checkpointing switches."""
    if opts.head_dropout is not None:
        overrides["head_dropout"] = opts.head_dropout
    return build_model(
        opts.name,
        drop_path_rate=opts.drop_path_rate,
        window_size=tuple(opts.window_size),
        attn_impl=run.attn_impl,
        use_checkpoint=run.activation_checkpointing,
        **overrides,
    )


@dataclass
class Session:
    stage: str
    cfg: Any
    env: distributed.Dist
    tracker: Tracker

    def say(self, text: str) -> None:
        if self.env.main:
            print(text, flush=True)

    def train(self, task: Task) -> TrainResult:
        """The engine over ``task`` with this run's settings; a run stopped by a non-finite loss ends FAILED."""
        result = train(task, Settings.of(self.cfg), self.env, self.tracker.metrics, self.say)
        if result.stopped:
            self.tracker.mark_failed(result.stopped)
        return result

    def export(self, result: TrainResult, weights: str, state: dict[str, torch.Tensor], meta: dict) -> bool:
        """On rank 0 of a run that was not stopped: write the weights, log the config and tag the run with
        the files. Returns whether it did."""
        if not self.env.main or result.stopped:
            return False
        save_weights(state, weights, meta)
        self.tracker.artifact_text("config.yaml", to_yaml(self.cfg))
        self.tracker.tags({"weights": weights, "checkpoint": result.checkpoint, "init": getattr(self.cfg, "init", "")})
        return True

    def model_ready(self) -> None:
        """After the model is built (the same initial weights on every rank): a different random stream per
        rank for dropout and drop path."""
        torch.manual_seed(self.cfg.run.seed * 1000 + self.env.rank)


def fix_batching(cfg: Any, world: int, recipe: Recipe) -> tuple[Batching, str]:
    """Resolve the job's accumulation from the recipe's global batch (in ``cfg``); returns the split and a note
    when the global batch differs from the recipe's (the lr then scaled by their ratio with ``run.scale_lr``)."""
    split = batching(cfg.run, world)
    cfg.run.accum_steps = split.accum_steps
    if split.global_batch == recipe.run.global_batch:
        return split, ""
    note = f"the global batch {split.global_batch} differs from the recipe's {recipe.run.global_batch}: "
    if cfg.run.scale_lr:
        cfg.optim.lr *= split.global_batch / recipe.run.global_batch
        return split, note + f"the peak lr is scaled to {cfg.optim.lr:.3g}"
    return split, note + "the lr is the recipe's (--run.scale-lr scales it)"


@contextmanager
def session(cfg: Any, stage: str, recipes: dict[str, Recipe]) -> Iterator[Session]:
    """Join the job (torchrun / PyTorchJob env), seed, resolve the batching, start MLflow on rank 0; clean up
    after."""
    env = distributed.from_env(cfg.run.timeout_s)
    seed_everything(cfg.run.seed)  # same on every rank: identical initial weights, as the official set_random_seed
    split, note = fix_batching(cfg, env.world, recipes[cfg.preset])
    try:
        with stage_run(
            stage, cfg, cfg.run.work_dir, sqlite_dir=cfg.run.work_dir, main=env.main, system_metrics=True
        ) as tracker:
            tracker.tags({"stage": stage, "world_size": str(env.world), "global_batch": str(split.global_batch)})
            job = Session(stage, cfg, env, tracker)
            job.say(f"batch: {split.describe()}" + (f"; NOTE: {note}" if note else ""))
            yield job
            stage_report.training_curves(tracker)
    finally:
        distributed.shutdown()
