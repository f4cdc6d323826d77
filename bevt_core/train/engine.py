"""The one training loop, used by pretrain-image, pretrain-joint and finetune.

A stage describes what to train as a :class:`Task` (model, parameter groups, batches, a loss
function); :func:`train` owns everything else: DDP, autocast, accumulation, clipping, the lr
schedule, EMA, checkpoints and resume, the non-finite stop, the hang watchdog and logging.

It reads in three levels, as torchtitan's trainer does: :meth:`Trainer.train` walks the schedule
(log, checkpoint, stop), :meth:`Trainer.train_step` is one optimizer step over its micro-batches,
and :meth:`Trainer.forward_backward` is one micro-batch.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from bevt_core.config import to_dict
from bevt_core.train.distributed import EXIT_PEER_LOST, Dist, Watchdog, all_reduce_mean
from bevt_core.train.optim import Schedule, adamw
from bevt_core.train.options import OptimConfig, RunConfig, ScheduleConfig
from bevt_core.train.progress import Progress
from bevt_core.train.state import CheckpointStore, Position, load_state

# Dense bf16 peak TFLOP/s of GPUs we know, for MFU when --run.peak-tflops is not given.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}

LogMetrics = Callable[[dict[str, float], int], None]
Say = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """How to train: a stage config's run, optimizer and schedule sections, and the whole resolved config
    (kept in every checkpoint)."""

    run: RunConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    record: dict

    @classmethod
    def of(cls, stage_config: Any) -> Settings:
        return cls(stage_config.run, stage_config.optim, stage_config.schedule, to_dict(stage_config))


@dataclass
class Task:
    """What a stage trains. ``batches(epoch, start)`` yields this rank's micro-batches of ``epoch``
    from micro-batch ``start`` on; ``loss(net, batch)`` returns a dict with ``loss`` (and any
    other scalars to log), calling ``net`` (the model, possibly DDP-wrapped or compiled)."""

    model: nn.Module
    param_groups: list[dict]
    micro_steps_per_epoch: int
    samples_per_micro: int  # per rank
    batches: Callable[[int, int], Iterator[Any]]
    loss: Callable[[nn.Module, Any], dict[str, torch.Tensor]]
    find_unused_parameters: bool = False
    ema_decay: float = 0.0  # per optimizer step; 0 = no EMA
    # Scores of the weights the stage exports (the EMA ones when kept), called on every rank; every
    # ``validate_every`` epochs and at the end. The best by ``best_by`` are kept beside the checkpoints.
    validate: Callable[[nn.Module], dict[str, float]] | None = None
    validate_every: int = 0
    best_by: str = "top1"


@dataclass
class TrainResult:
    steps: int
    micro_steps: int
    samples: int
    seconds: float
    checkpoint: str  # the last training-state file written
    history: list[dict] = field(default_factory=list)  # logged metrics per logged step
    samples_per_s: float = 0.0
    mfu: float | None = None
    peak_memory_gb: float = 0.0
    stopped: str = ""  # why the run stopped early (non-finite loss); the checkpoint is the last good one
    resumed_from: str = ""
    ema_model: nn.Module | None = None  # the weight average, when the task keeps one
    best: dict = field(default_factory=dict)  # the best validation: step, epoch and its scores
    best_weights: str = ""  # their weights file

    def mean(self, key: str, first: bool, n: int = 3) -> float:
        values = [h[key] for h in self.history if key in h]
        part = values[:n] if first else values[-n:]
        return sum(part) / len(part) if part else float("nan")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def known_peak_tflops(gpu_name: str) -> float:
    """Dense bf16 peak of a GPU we know by its name (0: unknown)."""
    return next((tflops for gpu, tflops in PEAK_TFLOPS.items() if gpu in gpu_name), 0.0)


def peak_flops(run: RunConfig, device: torch.device) -> float:
    if run.peak_tflops:
        return run.peak_tflops * 1e12
    if device.type == "cuda":
        return known_peak_tflops(torch.cuda.get_device_name(device)) * 1e12
    return 0.0


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return psutil.Process().memory_info().rss / 2**30


class Trainer:
    """The live state of one training run (model, optimizer, position, ...) and the loop over it."""

    def __init__(self, task: Task, settings: Settings, env: Dist, log_metrics: LogMetrics, say: Say):
        run, optim, sched = settings.run, settings.optim, settings.schedule
        self.task, self.run, self.sched, self.env = task, run, sched, env
        self.log_metrics, self.config, self.say = log_metrics, settings.record, say
        self.device = env.device
        self.model = task.model.to(self.device)
        per_epoch = task.micro_steps_per_epoch
        self.total_micro = max(1, round(sched.epochs * per_epoch))
        self.schedule = Schedule(
            optim.lr, self.total_micro, round(sched.warmup_epochs * per_epoch), per_epoch, sched.cosine_by_epoch
        )
        self.optimizer = adamw(task.param_groups, optim.lr, optim.betas, optim.eps)
        cuda = self.device.type == "cuda"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.precision) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None
        self.ema = None
        if task.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=task.ema_decay)
        self.store = CheckpointStore(run.work_dir, run.keep_last)
        self.params = [p for g in task.param_groups for p in g["params"]]
        self.clip = optim.clip_grad if optim.clip_grad else math.inf
        self.peak = peak_flops(run, self.device)
        self.flops_per_micro: float | None = None
        self.position, history, best, self.resumed_from = self._resume()
        self.last_saved = self.position.step if self.resumed_from else -1
        self.result = TrainResult(
            0,
            0,
            0,
            0.0,
            self.resumed_from,
            resumed_from=self.resumed_from,
            history=history,
            best=best,
            best_weights=self.store.best_path if best else "",
        )
        self.net = self._wrap(self.model)
        self.window_start, self.window_samples = time.perf_counter(), 0

    @property
    def averaged(self) -> nn.Module | None:
        """The EMA weights' module, when the task keeps one."""
        return self.ema.module if self.ema is not None else None

    def _resume(self) -> tuple[Position, list[dict], dict, str]:
        resume = {"auto": self.store.latest(), "never": None}.get(self.run.resume, self.run.resume)
        if not resume:
            return Position(), [], {}, ""
        position, history, best = load_state(resume, self.model, self.optimizer, self.scaler, self.averaged)
        self.say(
            f"resumed from {resume} at step {position.step} (epoch {position.epoch}, "
            f"micro-batch {position.epoch_micro}, {position.samples} samples consumed)"
        )
        return position, history, best, resume

    def _wrap(self, model: nn.Module) -> nn.Module:
        net = model
        if self.env.world > 1:
            net = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.task.find_unused_parameters,
                broadcast_buffers=False,
            )
        return torch.compile(net) if self.run.compile else net

    @property
    def total_steps(self) -> int:
        steps = math.ceil(self.total_micro / self.run.accum_steps)
        return min(steps, self.sched.max_steps) if self.sched.max_steps else steps

    def finished(self) -> bool:
        return self.position.micro >= self.total_micro or bool(
            self.sched.max_steps and self.position.step >= self.sched.max_steps
        )

    def micro_batches(self) -> Iterator[Any]:
        """This rank's micro-batches from the current position to the end of the schedule, across epochs."""
        while self.position.micro < self.total_micro:
            epoch = self.position.epoch
            empty = True
            for batch in self.task.batches(epoch, self.position.epoch_micro):
                empty = False
                yield batch
            if empty:
                raise RuntimeError(f"the task yields no micro-batch for epoch {epoch}")

    def forward_backward(self, batch: Any, sync: bool) -> dict[str, torch.Tensor]:
        """One micro-batch: loss under autocast, backward of loss / accum_steps (gradients sync across ranks
        only on the step's last micro-batch)."""
        no_sync = self.env.world > 1 and not sync
        with self.net.no_sync() if no_sync else nullcontext():
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                out = self.task.loss(self.net, batch)
            loss = out["loss"].float() / self.run.accum_steps
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        return out

    def train_step(self, batches: Iterator[Any], watchdog: Watchdog) -> tuple[dict[str, float], bool]:
        """One optimizer step over its micro-batches; returns the rank-averaged metrics and whether they
        are finite (when not, the gradients are dropped and the weights stay as they were)."""
        accum = self.run.accum_steps
        micro_steps = min(accum, self.total_micro - self.position.micro)
        sums: dict[str, torch.Tensor] = {}
        lr = 0.0
        for i in range(micro_steps):
            batch = next(batches)
            watchdog.beat()
            batch = to_device(batch, self.device)
            if self.flops_per_micro is None:
                self.flops_per_micro = self._count_train_flops(batch)
            lr = self.schedule.apply(self.optimizer, self.position.micro)
            out = self.forward_backward(batch, sync=i == micro_steps - 1)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
            samples = self.task.samples_per_micro * self.env.world
            self.position.advance(self.task.micro_steps_per_epoch, samples)
            self.window_samples += samples
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        keys = sorted(sums)
        stats = all_reduce_mean(torch.stack([sums[k] for k in keys] + [grad_norm.float()]))
        logged = dict(zip(keys, stats[:-1].tolist())) | {"grad_norm": stats[-1].item(), "lr": lr}
        finite = math.isfinite(logged["loss"]) and (self.scaler is not None or math.isfinite(logged["grad_norm"]))
        if finite:
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            if self.ema is not None:
                self.ema.update(self.model)
            self.position.step += 1
        return logged, finite

    def _count_train_flops(self, batch: Any) -> float:
        """Forward FLOPs of one micro-batch, x3 for forward + backward; the RNG stream is left untouched."""
        with torch.random.fork_rng(devices=[]), torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.task.loss(self.model, batch)
        return 3.0 * counter.get_total_flops()

    def _log(self, logged: dict[str, float]) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        rate = self.window_samples / max(now - self.window_start, 1e-9)
        per_epoch = self.task.micro_steps_per_epoch
        logged |= {
            "samples_per_s": rate,
            "epoch": self.position.epoch + self.position.epoch_micro / per_epoch,
            "memory_gb": memory_gb(self.device),
        }
        if self.peak and self.flops_per_micro:
            logged["mfu"] = rate / self.task.samples_per_micro * self.flops_per_micro / self.env.world / self.peak
        self.window_start, self.window_samples = now, 0
        self.result.history.append({"step": self.position.step} | logged)
        self.log_metrics(logged, self.position.step)
        return logged

    def _checkpoint_due(self) -> bool:
        every = self.run.checkpoint_every
        epoch_end = self.position.epoch_micro == 0 and every == 0
        return bool(every and self.position.step % every == 0) or epoch_end or self.finished()

    def _validation_due(self) -> bool:
        if self.task.validate is None:
            return False
        every = self.task.validate_every
        epoch_end = self.position.epoch_micro == 0 and every and self.position.epoch % every == 0
        return bool(epoch_end) or self.finished()

    def validate(self, watchdog: Watchdog) -> None:
        """Score the weights to export; keep them when they are the best so far (rank 0 writes, all wait)."""
        model = self.averaged or self.model
        with watchdog.paused():
            scores = self.task.validate(model)
        self.log_metrics({f"val_{k}": v for k, v in scores.items()}, self.position.step)
        record = {"step": self.position.step, "epoch": self.position.epoch} | scores
        self.result.history.append({"step": self.position.step} | {f"val_{k}": v for k, v in scores.items()})
        if not self.result.best or scores[self.task.best_by] > self.result.best[self.task.best_by]:
            self.result.best = record
            if self.env.main:
                self.store.save_best(model, record)
            if self.env.world > 1:
                dist.barrier()
            self.result.best_weights = self.store.best_path

    def save(self) -> None:
        """Rank 0 writes; every rank waits so nobody runs ahead of (or deletes under) the writer."""
        self.result.checkpoint = self.store.path(self.position.step)
        if self.env.main:
            self.store.save(
                self.model,
                self.optimizer,
                self.position,
                self.scaler,
                self.averaged,
                self.config,
                self.result.history,
                self.result.best,
            )
        if self.env.world > 1:
            dist.barrier()
        self.last_saved = self.position.step

    def _stop(self, logged: dict[str, float]) -> None:
        self.result.stopped = (
            f"non-finite loss {logged['loss']} / grad norm {logged['grad_norm']} at step "
            f"{self.position.step + 1}; stopped without saving, the last good checkpoint is "
            f"{self.store.latest() or '(none yet)'}"
        )
        self.say(f"ERROR: {self.result.stopped}")
        self.result.checkpoint = self.store.latest() or ""

    def train(self) -> TrainResult:
        start = time.perf_counter()
        batches = self.micro_batches()
        progress = Progress(self.total_steps, self.position.step, self.say, enabled=self.env.main)
        with Watchdog(self.run.timeout_s, self.env.rank) as watchdog, progress:
            while not self.finished():
                logged, finite = self.train_step(batches, watchdog)
                if not finite:
                    self._stop(logged)
                    break
                due = self.position.step % self.run.log_every == 0 or self.finished()
                progress.update(self.position.step, self._log(logged) if due else None)
                if self._validation_due():
                    self.validate(watchdog)
                if self._checkpoint_due():
                    self.save()
            if not self.result.stopped and self.last_saved != self.position.step:
                self.save()
        return self._summary(time.perf_counter() - start)

    def _summary(self, seconds: float) -> TrainResult:
        r = self.result
        r.steps, r.micro_steps, r.samples = self.position.step, self.position.micro, self.position.samples
        r.seconds = seconds
        steps = [h for h in r.history if "samples_per_s" in h]  # not the validations
        rates = [h["samples_per_s"] for h in steps[1:]] or [h["samples_per_s"] for h in steps]
        r.samples_per_s = sum(rates) / len(rates) if rates else 0.0
        mfus = [h["mfu"] for h in steps[1:] if "mfu" in h]
        r.mfu = sum(mfus) / len(mfus) if mfus else None
        r.peak_memory_gb = memory_gb(self.device)
        r.ema_model = self.averaged
        return r


def train(task: Task, settings: Settings, env: Dist, log_metrics: LogMetrics, say: Say = print) -> TrainResult:
    """Run the task; in a job of several ranks, a rank that fails leaves at once (see :func:`leave_the_job`)."""
    try:
        return Trainer(task, settings, env, log_metrics, say).train()
    except Exception as error:
        if env.world > 1:
            leave_the_job(env.rank, error)
        raise


def leave_the_job(rank: int, error: Exception) -> None:
    """Exit this rank without a clean shutdown of the process group: a peer that died can hang one. gloo
    reports a lost peer as a plain RuntimeError, so a failure is not told apart by its type, except
    torch.distributed's own errors; the traceback goes to the log either way."""
    first_line = (str(error).splitlines() or [type(error).__name__])[0]
    if isinstance(error, dist.DistError):
        cause = f"distributed communication failed; a peer rank probably died or hangs: {first_line}"
    else:
        traceback.print_exception(error, file=sys.stderr)
        cause = f"training failed ({type(error).__name__}: {first_line}); when a peer rank died, this is how it shows"
    print(f"bevt: rank {rank}: {cause}; exiting so the whole job stops", file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_LOST)
