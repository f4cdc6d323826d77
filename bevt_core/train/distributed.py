"""Process-group setup from the torchrun / PyTorchJob environment, and the hang watchdog.

torchrun (which reads the operator's ``PET_*`` variables) and a bare PyTorchJob replica both
export MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK; LOCAL_RANK picks the GPU. NCCL on GPUs,
gloo on CPU.

A rank whose peer died blocks inside a collective; gloo may notice the closed socket, or may
wait for the process-group timeout. The watchdog makes the outcome certain: every step beats
it, and a rank that has not beaten for ``timeout_s`` prints why and exits non-zero. Every rank
therefore leaves within the timeout, and the launcher (torchrun, the operator) sees the failure.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

EXIT_PEER_LOST = 3


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env(timeout_s: float) -> Dist:
    """Join the job the environment describes (a 1-process job when WORLD_SIZE is unset or 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun or a PyTorchJob")
        dist.init_process_group(
            "nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
        )
    return Dist(rank, world, local_rank, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Watchdog:
    """Exit the process when :meth:`beat` has not been called for ``timeout_s`` seconds."""

    def __init__(self, timeout_s: float, rank: int, what: str = "training step"):
        self.timeout_s, self.rank, self.what = timeout_s, rank, what
        self._last = time.monotonic()
        self._paused = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bevt-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        # Wait for the thread to be gone: a DataLoader that forks its workers while this thread is
        # still tearing down can fork CPython's thread-state lock held, and the worker hangs forever.
        self._thread.join()

    def beat(self) -> None:
        self._last = time.monotonic()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No step is expected inside (a validation pass): the clock restarts after it."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False
            self.beat()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 10)):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s and not self._paused:
                print(
                    f"bevt: rank {self.rank}: no {self.what} completed for {idle:.0f} s "
                    f"(timeout {self.timeout_s:.0f} s): "
                    "a peer rank died or hangs, or a collective is stuck; exiting so the whole job stops",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(EXIT_PEER_LOST)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values
