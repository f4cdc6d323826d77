"""Training-state checkpoints: everything needed to continue a run exactly where it stopped.

A state file holds the weights under ``state_dict`` (the official layout, so it also loads as a
plain checkpoint), the optimizer, the step counters, the GradScaler, the EMA weights, every RNG,
the data position and the metrics logged so far (so a resumed run still reports its first steps,
and one resumed after its end its last). Files are written atomically (temp + rename, or one
completed upload to S3) as ``checkpoints/state-<step>.pt``; then ``checkpoints/latest.json`` is
rewritten to list the ones kept. A reader trusts only files the index lists, so a kill at any
moment leaves either the previous or the new checkpoint current, never a partial one. Loading is
``weights_only``.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from bevt_core import storage
from bevt_core.models.checkpoint import save_checkpoint, save_weights, unwrap_model

INDEX = "latest.json"


@dataclass
class Position:
    """Where the run is: optimizer steps and micro-steps done, and the next micro-batch to read."""

    step: int = 0
    micro: int = 0  # micro-steps done in total (the lr schedule's clock)
    epoch: int = 0
    epoch_micro: int = 0  # micro-batches of ``epoch`` already consumed
    samples: int = 0  # samples consumed in total, all ranks

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def advance(self, micro_steps_per_epoch: int, samples: int) -> None:
        """One micro-batch of ``samples`` (all ranks) consumed."""
        self.micro += 1
        self.epoch_micro += 1
        self.samples += samples
        if self.epoch_micro == micro_steps_per_epoch:
            self.epoch, self.epoch_micro = self.epoch + 1, 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    def __init__(self, work_dir: str, keep_last: int):
        self.dir = storage.join(work_dir, "checkpoints")
        self.keep_last = keep_last

    def kept(self) -> list[str]:
        uri = storage.join(self.dir, INDEX)
        return json.loads(storage.read_bytes(uri))["checkpoints"] if storage.exists(uri) else []

    def latest(self) -> str | None:
        kept = self.kept()
        return storage.join(self.dir, kept[-1]) if kept else None

    def path(self, step: int) -> str:
        return storage.join(self.dir, f"state-{step:08d}.pt")

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        position: Position,
        scaler: torch.amp.GradScaler | None,
        ema: nn.Module | None,
        config: dict,
        history: Sequence[dict] = (),
        best: dict | None = None,
    ) -> str:
        name = self.path(position.step).rsplit("/", 1)[-1]
        extra = {
            "optimizer": optimizer.state_dict(),
            "position": position.to_dict(),
            "rng": rng_state(),
            "config": json.dumps(config, default=str),
            "history": json.dumps(list(history)),
            "best": json.dumps(best or {}),
        }
        if scaler is not None:
            extra["scaler"] = scaler.state_dict()
        if ema is not None:
            extra["ema"] = {k: v.detach().cpu() for k, v in ema.state_dict().items()}
        save_checkpoint(model, self.path(position.step), extra=extra)
        kept = [n for n in self.kept() if n != name] + [name]
        dropped, kept = kept[: -self.keep_last], kept[-self.keep_last :]
        storage.write_bytes(storage.join(self.dir, INDEX), json.dumps({"checkpoints": kept}).encode())
        for old in dropped:
            storage.delete(storage.join(self.dir, old))
        return self.path(position.step)

    @property
    def best_path(self) -> str:
        return storage.join(self.dir, "best.pt")

    def save_best(self, model: nn.Module, record: dict) -> str:
        """The weights of the best validation so far, ``record`` (step, epoch, scores) as their meta."""
        save_weights(unwrap_model(model).state_dict(), self.best_path, {"best": record})
        return self.best_path


def load_state(
    uri: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    ema: nn.Module | None,
) -> tuple[Position, list[dict], dict]:
    """Restore a state file into the live objects (and the process RNGs); returns the position, the
    metrics logged up to it and the best validation so far (empty: none)."""
    payload = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    unwrap_model(model).load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    if scaler is not None and "scaler" in payload:
        scaler.load_state_dict(payload["scaler"])
    if ema is not None and "ema" in payload:
        ema.load_state_dict(payload["ema"])
    set_rng_state(payload["rng"])
    return (
        Position(**payload["position"]),
        json.loads(payload.get("history", "[]")),
        json.loads(payload.get("best", "{}")),
    )
