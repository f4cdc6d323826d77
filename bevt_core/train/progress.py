"""Training progress as a person reads it: a bar with ETA and the latest metrics on a terminal, and
otherwise (a log file, a pod's log, KFP's step log) one line per logged step."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

# What the bar's postfix shows of the logged metrics (the rest stay in the log and MLflow).
SHOWN = ("loss", "loss_video", "loss_image", "acc", "lr", "samples_per_s")


def _line(step: int, total: int, logged: dict[str, float], eta_s: float | None) -> str:
    values = " ".join(f"{k} {v:.4g}" for k, v in logged.items() if k != "epoch")
    eta = f" eta {eta_s / 60:.1f} min" if eta_s is not None else ""
    return f"step {step}/{total}{eta} {values}"


class Progress:
    """Call :meth:`update` after every optimizer step, with the logged metrics on the steps that log."""

    def __init__(
        self,
        total_steps: int,
        done_steps: int,
        say: Callable[[str], None],
        enabled: bool = True,
        terminal: bool | None = None,
    ):
        self.total, self.start_step, self.say, self.enabled = total_steps, done_steps, say, enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.started = time.monotonic()
        self.bar = None
        if enabled and self.terminal:
            self.bar = tqdm(total=total_steps, initial=done_steps, unit="step", file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def eta_s(self, step: int) -> float | None:
        done = step - self.start_step
        if done <= 0:
            return None
        return (time.monotonic() - self.started) / done * max(self.total - step, 0)

    def update(self, step: int, logged: dict[str, float] | None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if logged:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in logged.items() if k in SHOWN}, refresh=False)
        elif logged is not None:
            self.say(_line(step, self.total, logged, self.eta_s(step)))
