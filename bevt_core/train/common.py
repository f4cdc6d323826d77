"""What every training stage does around the engine: join the job, seed, track, build the model."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from bevt_core.config import option
from bevt_core.models import build_model
from bevt_core.reports import stage as report
from bevt_core.train import distributed, tracking
from bevt_core.train.engine import seed_everything
from bevt_core.train.options import RunConfig


@dataclass
class ModelOptions:
    name: str | None = option(None, help="Model preset of bevt_core.models (e.g. bevt-swin-b, k400-swin-b, "
                              "recognizer-tiny). Default: from the preset.")
    drop_path_rate: float | None = option(None, help="Stochastic depth rate. Default: from the preset.")
    window_size: tuple[int, int, int] | None = option(None, help="Attention window (T, H, W). Default: from the preset.")
    head_dropout: float | None = option(None, help="Classifier dropout of a recognizer (its model preset: 0.5); "
                                        "unused in pretraining.")


def build(opts: ModelOptions, run: RunConfig, **overrides: Any) -> torch.nn.Module:
    if opts.head_dropout is not None and opts.name.startswith(("bevt-",)):
        raise ValueError("model.head_dropout: pretraining models have no classifier head")
    if opts.head_dropout is not None:
        overrides["head_dropout"] = opts.head_dropout
    return build_model(opts.name, drop_path_rate=opts.drop_path_rate, window_size=tuple(opts.window_size),
                       attn_impl=run.attn_impl, use_checkpoint=run.activation_checkpointing, **overrides)


@dataclass
class Session:
    env: distributed.Dist
    tracker: tracking.Tracker

    def say(self, text: str) -> None:
        if self.env.main:
            print(text, flush=True)


@contextmanager
def session(cfg: Any, stage: str) -> Iterator[Session]:
    """Join the job (torchrun / PyTorchJob env), seed, start MLflow on rank 0; clean up after."""
    run: RunConfig = cfg.run
    env = distributed.from_env(run.timeout_s)
    seed_everything(run.seed)  # same on every rank: identical initial weights, as the official set_random_seed
    try:
        with tracking.stage_run(stage, cfg, run.tracking_uri, run.work_dir, run.experiment, run.parent_run_id,
                                run.work_dir, env.main, system_metrics=True, label=run.run_label) as tracker:
            tracker.tags({"stage": stage, "world_size": str(env.world)})
            yield Session(env, tracker)
            report.training_curves(tracker)
    finally:
        distributed.shutdown()


def rank_seed(run: RunConfig, env: distributed.Dist) -> None:
    """After the model is built: a different stream per rank for dropout / drop path."""
    torch.manual_seed(run.seed * 1000 + env.rank)


def save_weights(state: dict[str, torch.Tensor], uri: str, meta: dict) -> None:
    """Atomically write ``{'state_dict', 'meta'}`` (mmcv's layout, loadable with weights_only)."""
    import io

    from bevt_core.data.storage import write_bytes

    buf = io.BytesIO()
    torch.save({"state_dict": state, "meta": meta}, buf)
    write_bytes(uri, buf.getvalue())


