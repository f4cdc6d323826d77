"""Config pieces every training stage shares, and the preset mechanism.

A stage config has a ``preset`` field naming a recipe (a nested dict of values). Fields left at
``None`` are filled from the recipe when the config is built, so a YAML file or a command-line
option overrides the recipe and ``--print-config`` shows the fully resolved values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bevt_core.config import ConfigError, at_least, between, option

PRECISIONS = ("bf16", "fp16", "fp32")


def one_of(*values):
    """A choices check for preset-filled fields (``choices=`` would reject the ``None`` placeholder)."""
    return lambda v: None if v in values else f"must be one of {', '.join(map(str, values))}"


@dataclass
class OptimConfig:
    lr: float | None = option(None, help="Peak learning rate (AdamW; not scaled by batch size). Default: from the preset.",
                              check=at_least(0.0))
    weight_decay: float | None = option(None, help="AdamW weight decay. Default: from the preset.", check=at_least(0.0))
    betas: tuple[float, float] = option((0.9, 0.999), help="AdamW betas.")
    eps: float = option(1e-8, help="AdamW eps.")
    groups: str | None = option(None, help="Per-parameter groups (mmcv custom_keys, spec §7.3): 'pretrain' (no decay "
                                "on norms and rel-pos tables), 'layer_decay' (K400: lr x layer_decay^depth), "
                                "'backbone_mult' (SSv2: backbone lr x backbone_lr_mult). Default: from the preset.",
                                check=one_of("pretrain", "layer_decay", "backbone_mult"))
    layer_decay: float = option(0.9, help="Per-layer lr decay for groups=layer_decay.", check=between(0.0, 1.0))
    backbone_lr_mult: float = option(0.1, help="Backbone lr multiplier for groups=backbone_mult.", check=at_least(0.0))
    clip_grad: float | None = option(None, help="Clip the global grad L2 norm to this (0: no clipping). "
                                     "Default: from the preset.", check=at_least(0.0))


@dataclass
class ScheduleConfig:
    epochs: float | None = option(None, help="Training length in epochs of the main loader. Default: from the preset.",
                                  check=at_least(0.0))
    warmup_epochs: float | None = option(None, help="Linear warmup from 0.1x, per iteration. Default: from the preset.",
                                         check=at_least(0.0))
    cosine_by_epoch: bool | None = option(None, help="Cosine decay once per epoch (finetune recipes) instead of per "
                                          "iteration (pretraining). Default: from the preset.")
    max_steps: int = option(0, help="Stop after this many optimizer steps (0: run all epochs; the schedule still "
                            "spans all epochs).", check=at_least(0))


@dataclass
class RunConfig:
    """How the run executes: batches, precision, distribution, checkpoints, logging. Model-independent."""

    work_dir: str = option(help="Directory or s3:// prefix for checkpoints, the final weights and the run's "
                           "records (and the MLflow SQLite file when local).")
    batch_size: int | None = option(None, help="Micro-batch per rank (main stream). Default: from the preset.",
                                    check=at_least(1))
    accum_steps: int | None = option(None, help="Micro-steps per optimizer step (gradient accumulation). "
                                     "Default: from the preset.", check=at_least(1))
    precision: str | None = option(None, help="Autocast dtype: bf16, or fp16 with a GradScaler (the official apex "
                                   "O1 analogue), or fp32. CPU runs use fp32 whatever is set. Default: from the preset.",
                                   check=one_of(*PRECISIONS))
    compile: bool = option(False, help="torch.compile the model.")
    activation_checkpointing: bool = option(False, help="Recompute each Swin block in backward (less memory).")
    attn_impl: str = option("auto", help="Window attention: reference math, fused SDPA, or auto (SDPA on CUDA).",
                            choices=("reference", "sdpa", "auto"))
    workers: int = option(2, help="Dataloader worker processes per rank.", check=at_least(0))
    seed: int = option(0, help="Seed of the model init, the data order and every per-sample random draw.")
    checkpoint_every: int = option(0, help="Save the training state every N optimizer steps (0: once per epoch).",
                                   check=at_least(0))
    keep_last: int = option(2, help="Keep this many training-state checkpoints.", check=at_least(1))
    resume: str = option("auto", help="auto: continue from the newest checkpoint in work_dir if there is one; "
                         "never: start over; or a checkpoint URI.")
    log_every: int = option(1, help="Log metrics every N optimizer steps.", check=at_least(1))
    tracking_uri: str = option("auto", help="MLflow tracking URI; auto: $MLFLOW_TRACKING_URI when set, else a "
                               "sqlite file in work_dir when it is local; 'none' disables tracking.")
    experiment: str = option("bevt", help="MLflow experiment name (a nested run goes in its parent's).")
    parent_run_id: str = option("", help="MLflow run (a pipeline run) this stage's run is nested under.")
    run_label: str = option("", help="Added to the MLflow run's name ('finetune scene'): tells apart the runs of one "
                            "stage in a pipeline run.")
    timeout_s: float = option(600.0, help="A rank that makes no progress for this long (a peer died or hangs) "
                              "exits every rank with an error.", check=at_least(1.0))
    peak_tflops: float = option(0.0, help="Accelerator peak dense TFLOP/s for MFU (0: known GPUs are detected; "
                                "no MFU on CPU).", check=at_least(0.0))


def fill(cfg: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Set every ``None`` field of ``cfg`` (recursing into nested configs) from ``values``."""
    for f in dataclasses.fields(cfg):
        current = getattr(cfg, f.name)
        if dataclasses.is_dataclass(current):
            fill(current, values.get(f.name, {}), f"{prefix}{f.name}.")
        elif current is None and f.name in values:
            setattr(cfg, f.name, values[f.name])


def missing(cfg: Any, prefix: str = "") -> str | None:
    """The first field still ``None`` whose type does not allow it after the preset filled it."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            problem = missing(value, f"{prefix}{f.name}.")
            if problem:
                return problem
        elif value is None and "Default: from the preset" in f.metadata.get("help", ""):
            return f"{prefix}{f.name}"
    return None


def apply_preset(cfg: Any, presets: dict[str, dict]) -> None:
    """``__post_init__`` helper: resolve ``cfg.preset`` or raise naming the field."""
    if cfg.preset not in presets:
        raise ConfigError(f"preset: must be one of {', '.join(presets)}; got {cfg.preset!r}")
    fill(cfg, presets[cfg.preset])
    name = missing(cfg)
    if name:
        raise ConfigError(f"{name}: the preset {cfg.preset!r} sets no value; give one")
