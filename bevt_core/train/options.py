"""The config sections every training stage shares: model, optimizer, schedule, and how the run executes.

Fields marked ``preset=True`` are left ``None`` here and filled from the stage's recipe
(:mod:`bevt_core.recipes`), so a YAML file or a command-line option overrides the recipe and
``--print-config`` shows the resolved values.
"""

from __future__ import annotations

from dataclasses import dataclass

from bevt_core.config import ConfigError, at_least, between, option

PRECISIONS = ("bf16", "fp16", "fp32")
PARAM_GROUPS = ("pretrain", "layer_decay", "backbone_mult")


@dataclass
class ModelOptions:
    name: str | None = option(
        help="Model preset of bevt_core.models (e.g. bevt-swin-b, k400-swin-b, recognizer-tiny).", preset=True
    )
    drop_path_rate: float | None = option(
        help="Stochastic depth rate (the recipe's, else the model preset's).", preset=True
    )
    window_size: tuple[int, int, int] | None = option(
        help="Attention window (T, H, W) (the recipe's, else the model preset's).", preset=True
    )
    head_dropout: float | None = option(
        None,
        help="Classifier dropout of a recognizer (None: its model preset's, "
        "0.5); pretraining models have no classifier.",
    )


@dataclass
class OptimConfig:
    lr: float | None = option(
        help="Peak learning rate (AdamW; not scaled by batch size).", check=at_least(0.0), preset=True
    )
    weight_decay: float | None = option(help="AdamW weight decay.", check=at_least(0.0), preset=True)
    betas: tuple[float, float] = option((0.9, 0.999), help="AdamW betas.")
    eps: float = option(1e-8, help="AdamW eps.")
    groups: str | None = option(
        help="Per-parameter groups, with mmcv custom_keys precedence "
        "(docs/official-behaviour.md §7.3): 'pretrain' (no decay on norms and rel-pos "
        "tables), 'layer_decay' (K400: lr x layer_decay^depth), 'backbone_mult' (SSv2: "
        "backbone lr x backbone_lr_mult).",
        choices=PARAM_GROUPS,
        preset=True,
    )
    layer_decay: float = option(0.9, help="Per-layer lr decay for groups=layer_decay.", check=between(0.0, 1.0))
    backbone_lr_mult: float = option(0.1, help="Backbone lr multiplier for groups=backbone_mult.", check=at_least(0.0))
    clip_grad: float | None = option(
        help="Clip the global grad L2 norm to this (0: no clipping).", check=at_least(0.0), preset=True
    )


@dataclass
class ScheduleConfig:
    epochs: float | None = option(
        help="Training length in epochs of the main loader.", check=at_least(0.0), preset=True
    )
    warmup_epochs: float | None = option(
        help="Linear warmup from 0.1x, per iteration.", check=at_least(0.0), preset=True
    )
    cosine_by_epoch: bool | None = option(
        help="Cosine decay once per epoch (finetune recipes) instead of per iteration (pretraining).", preset=True
    )
    max_steps: int = option(
        0,
        help="Stop after this many optimizer steps (0: run all epochs; the schedule still spans all epochs).",
        check=at_least(0),
    )


@dataclass
class RunConfig:
    """How the run executes: batches, precision, distribution, checkpoints, logging. Model-independent."""

    work_dir: str = option(
        help="Directory or s3:// prefix for checkpoints, the final weights and the run's "
        "records (and the MLflow SQLite file when local)."
    )
    batch_size: int | None = option(help="Micro-batch per rank (main stream).", check=at_least(1), preset=True)
    global_batch: int | None = option(
        help="Samples (clips) per optimizer step across all ranks, as the recipe's: the accumulation is computed "
        "from it for the job's world size (global_batch / (batch_size x ranks)).",
        check=at_least(1),
        preset=True,
    )
    accum_steps: int | None = option(
        None,
        help="Micro-steps per optimizer step. None: from global_batch; given, the global batch follows from it.",
        check=at_least(1),
    )
    scale_lr: bool = option(
        False, help="When the job's global batch differs from the recipe's, scale the peak lr by their ratio."
    )
    precision: str | None = option(
        help="Autocast dtype: bf16, or fp16 with a GradScaler (the official apex O1 "
        "analogue), or fp32. CPU runs use fp32 whatever is set.",
        choices=PRECISIONS,
        preset=True,
    )
    compile: bool = option(False, help="torch.compile the model.")
    activation_checkpointing: bool = option(False, help="Recompute each Swin block in backward (less memory).")
    attn_impl: str = option(
        "auto",
        help="Window attention: reference math, fused SDPA, or auto (SDPA on CUDA).",
        choices=("reference", "sdpa", "auto"),
    )
    workers: int = option(2, help="Dataloader worker processes per rank.", check=at_least(0))
    seed: int = option(0, help="Seed of the model init, the data order and every per-sample random draw.")
    checkpoint_every: int = option(
        0, help="Save the training state every N optimizer steps (0: once per epoch).", check=at_least(0)
    )
    keep_last: int = option(2, help="Keep this many training-state checkpoints.", check=at_least(1))
    resume: str = option(
        "auto",
        help="auto: continue from the newest checkpoint in work_dir if there is one; "
        "never: start over; or a checkpoint URI.",
    )
    log_every: int = option(
        1, help="Log metrics every N optimizer steps (and, without a terminal, print a line).", check=at_least(1)
    )
    timeout_s: float = option(
        600.0,
        help="A rank that makes no progress for this long (a peer died or hangs) exits every rank with an error.",
        check=at_least(1.0),
    )
    peak_tflops: float = option(
        0.0,
        help="Accelerator peak dense TFLOP/s for MFU (0: known GPUs are detected; no MFU on CPU).",
        check=at_least(0.0),
    )


@dataclass(frozen=True)
class Batching:
    """How one optimizer step's samples are split: ``micro_batch`` per rank x ``accum_steps`` x ``world`` ranks."""

    micro_batch: int
    accum_steps: int
    world: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accum_steps * self.world

    def describe(self) -> str:
        return (
            f"{self.global_batch} samples per optimizer step = {self.micro_batch} per rank x "
            f"{self.accum_steps} micro-steps x {self.world} ranks"
        )


def batching(run: RunConfig, world: int) -> Batching:
    """The split of ``run.global_batch`` for ``world`` ranks (or the one ``run.accum_steps`` gives)."""
    if run.accum_steps:
        return Batching(run.batch_size, run.accum_steps, world)
    per_micro_step = run.batch_size * world
    if run.global_batch % per_micro_step:
        raise ConfigError(
            f"run.global_batch: {run.global_batch} samples per step do not split into micro-batches of "
            f"{run.batch_size} on {world} ranks; give --run.batch-size or --run.accum-steps"
        )
    return Batching(run.batch_size, run.global_batch // per_micro_step, world)
