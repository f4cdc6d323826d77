"""The one training loop, used by pretrain-image, pretrain-joint and finetune.

A stage describes what to train as a :class:`Task` (model, parameter groups, batches, a loss
function); :func:`train` owns everything else: DDP, autocast, accumulation, clipping, the lr
schedule, EMA, checkpoints and resume, the non-finite stop, the hang watchdog and logging.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import psutil
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.flop_counter import FlopCounterMode

from bevt_core.train.distributed import EXIT_PEER_LOST, Dist, Watchdog, all_reduce_mean
from bevt_core.train.optim import Schedule, adamw
from bevt_core.train.options import OptimConfig, RunConfig, ScheduleConfig
from bevt_core.train.state import CheckpointStore, Position, load_state
from bevt_core.train.tracking import Tracker

# Dense bf16 peak TFLOP/s of GPUs we know, for MFU when --run.peak-tflops is not given.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


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
    ema: Any = None  # set by train(): the timm ModelEmaV3 when ema_decay


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

    def mean(self, key: str, first: bool, n: int = 3) -> float:
        values = [h[key] for h in self.history if key in h]
        part = values[:n] if first else values[-n:]
        return sum(part) / len(part) if part else float("nan")


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _peak_flops(run: RunConfig, device: torch.device) -> float:
    if run.peak_tflops:
        return run.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for gpu, tflops in PEAK_TFLOPS.items():
            if gpu in name:
                return tflops * 1e12
    return 0.0


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return psutil.Process().memory_info().rss / 2**30


def _count_train_flops(task: Task, model: nn.Module, batch: Any) -> float:
    """Forward FLOPs of one micro-batch, x3 for forward + backward; the RNG stream is left untouched."""
    with torch.random.fork_rng(devices=[]), torch.no_grad(), FlopCounterMode(display=False) as counter:
        task.loss(model, batch)
    return 3.0 * counter.get_total_flops()


def _is_comm_error(e: BaseException) -> bool:
    return isinstance(e, dist.DistError) or any(
        w in str(e) for w in ("gloo", "Gloo", "NCCL", "Connection", "connection", "peer", "Timed out", "timed out"))


def train(task: Task, run: RunConfig, optim: OptimConfig, sched: ScheduleConfig, env: Dist,
          tracker: Tracker, config: dict, say: Callable[[str], None] = print) -> TrainResult:
    try:
        return _train(task, run, optim, sched, env, tracker, config, say)
    except (RuntimeError, dist.DistError) as e:
        if env.world > 1 and _is_comm_error(e):
            print(f"bevt: rank {env.rank}: distributed communication failed; a peer rank probably died "
                  f"or hangs: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr, flush=True)
            os._exit(EXIT_PEER_LOST)  # a dead peer can hang a clean shutdown of the process group
        raise


def _train(task: Task, run: RunConfig, optim: OptimConfig, sched: ScheduleConfig, env: Dist,
           tracker: Tracker, config: dict, say: Callable[[str], None]) -> TrainResult:
    device = env.device
    model = task.model.to(device)
    accum = run.accum_steps
    per_epoch = task.micro_steps_per_epoch
    total = max(1, round(sched.epochs * per_epoch))
    schedule = Schedule(optim.lr, total, round(sched.warmup_epochs * per_epoch), per_epoch, sched.cosine_by_epoch)
    optimizer = adamw(task.param_groups, optim.lr, optim.betas, optim.eps)
    cuda = device.type == "cuda"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.precision) if cuda else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None
    ema = None
    if task.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=task.ema_decay)
    store = CheckpointStore(run.work_dir, run.keep_last)

    resume = {"auto": store.latest(), "never": None}.get(run.resume, run.resume)
    position, history = Position(), []
    if resume:
        position, history = load_state(resume, model, optimizer, scaler, ema.module if ema is not None else None)
        say(f"resumed from {resume} at step {position.step} (epoch {position.epoch}, "
            f"micro-batch {position.epoch_micro}, {position.samples} samples consumed)")

    net: nn.Module = model
    if env.world > 1:
        net = DDP(model, device_ids=[device.index] if cuda else None,
                  find_unused_parameters=task.find_unused_parameters, broadcast_buffers=False)
    if run.compile:
        net = torch.compile(net)
    params = [p for g in task.param_groups for p in g["params"]]
    clip = optim.clip_grad if optim.clip_grad else math.inf
    peak = _peak_flops(run, device)
    flops_per_micro: float | None = None

    result = TrainResult(0, 0, 0, 0.0, resume or "", resumed_from=resume or "", history=history)
    sums: dict[str, torch.Tensor] = {}
    window_start, window_samples = time.perf_counter(), 0
    start_time = time.perf_counter()
    last_saved = position.step if resume else -1
    done = lambda: position.micro >= total or (sched.max_steps and position.step >= sched.max_steps)  # noqa: E731

    with Watchdog(run.timeout_s, env.rank) as watchdog:
        while not done():
            for batch in task.batches(position.epoch, position.epoch_micro):
                watchdog.beat()
                batch = to_device(batch, device)
                if flops_per_micro is None:
                    flops_per_micro = _count_train_flops(task, model, batch)
                lr = schedule.apply(optimizer, position.micro)
                boundary = (position.micro + 1) % accum == 0 or position.micro + 1 == total
                sync = nullcontext() if boundary or env.world == 1 else net.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        out = task.loss(net, batch)
                    loss = out["loss"].float() / accum
                    (scaler.scale(loss) if scaler else loss).backward()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
                position.micro += 1
                position.epoch_micro += 1
                position.samples += task.samples_per_micro * env.world
                window_samples += task.samples_per_micro * env.world
                if position.epoch_micro == per_epoch:
                    position.epoch, position.epoch_micro = position.epoch + 1, 0
                if not boundary:
                    continue

                if scaler:
                    scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
                keys = sorted(sums)
                stats = all_reduce_mean(torch.stack([sums[k] for k in keys] + [grad_norm.float()]))
                logged = dict(zip(keys, stats[:-1].tolist())) | {"grad_norm": stats[-1].item(), "lr": lr}
                sums = {}
                if not math.isfinite(logged["loss"]) or (scaler is None and not math.isfinite(logged["grad_norm"])):
                    optimizer.zero_grad(set_to_none=True)
                    result.stopped = (f"non-finite loss {logged['loss']} / grad norm {logged['grad_norm']} at step "
                                      f"{position.step + 1}; stopped without saving, the last good checkpoint is "
                                      f"{store.latest() or '(none yet)'}")
                    say(f"ERROR: {result.stopped}")
                    tracker.mark_failed(result.stopped)  # the MLflow run ends FAILED, its outputs unrecorded
                    result.checkpoint = store.latest() or ""
                    break
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
                position.step += 1

                if position.step % run.log_every == 0 or done():
                    if cuda:
                        torch.cuda.synchronize(device)
                    now = time.perf_counter()
                    rate = window_samples / max(now - window_start, 1e-9)
                    logged |= {"samples_per_s": rate, "epoch": position.epoch + position.epoch_micro / per_epoch,
                               "memory_gb": _memory_gb(device)}
                    if peak and flops_per_micro:
                        logged["mfu"] = rate / task.samples_per_micro * flops_per_micro / env.world / peak
                    window_start, window_samples = now, 0
                    result.history.append({"step": position.step} | logged)
                    tracker.metrics(logged, position.step)
                    say(f"step {position.step} " + " ".join(
                        f"{k} {v:.4g}" for k, v in logged.items() if k not in ("epoch",)))
                epoch_end = position.epoch_micro == 0 and run.checkpoint_every == 0
                if (run.checkpoint_every and position.step % run.checkpoint_every == 0) or epoch_end or done():
                    result.checkpoint = _save(store, model, optimizer, position, scaler, ema, config, env, result.history)
                    last_saved = position.step
                if done():
                    break
            if result.stopped:
                break
        if not result.stopped and last_saved != position.step:
            result.checkpoint = _save(store, model, optimizer, position, scaler, ema, config, env, result.history)

    result.steps, result.micro_steps, result.samples = position.step, position.micro, position.samples
    result.seconds = time.perf_counter() - start_time
    rates = [h["samples_per_s"] for h in result.history[1:]] or [h["samples_per_s"] for h in result.history]
    result.samples_per_s = sum(rates) / len(rates) if rates else 0.0
    mfus = [h["mfu"] for h in result.history[1:] if "mfu" in h]
    result.mfu = sum(mfus) / len(mfus) if mfus else None
    result.peak_memory_gb = _memory_gb(device)
    task.ema = ema  # for the stage to export
    return result


def _save(store: CheckpointStore, model, optimizer, position, scaler, ema, config, env: Dist, history: list[dict]) -> str:
    """Rank 0 writes; every rank waits so nobody runs ahead of (or deletes under) the writer."""
    uri = store.path(position.step)
    if env.main:
        store.save(model, optimizer, position, scaler, ema.module if ema is not None else None, config, history)
    if env.world > 1:
        dist.barrier()
    return uri
