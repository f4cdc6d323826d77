"""What the training stages return."""

from __future__ import annotations

from dataclasses import dataclass, field

from bevt_core.train.engine import TrainResult


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
    val: dict[str, float] = field(default_factory=dict)
    resumed_from: str = ""
    run_id: str = ""
    registered: str = ""  # models:/NAME/VERSION when the stage registered its model
    failed: str = ""

    @classmethod
    def build(cls, stage: str, work_dir: str, weights: str, r: TrainResult, keys: tuple[str, ...], run_id: str):
        return cls(stage, work_dir, weights, r.checkpoint, r.steps, r.samples, r.seconds, r.samples_per_s, r.mfu,
                   r.peak_memory_gb, {k: r.mean(k, True) for k in keys}, {k: r.mean(k, False) for k in keys},
                   resumed_from=r.resumed_from, run_id=run_id, failed=r.stopped)

    def summary(self) -> str:
        fmt = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items())  # noqa: E731
        lines = [f"{self.stage}: {self.steps} steps, {self.samples} samples in {self.seconds:.1f} s "
                 f"({self.samples_per_s:.1f} samples/s" + (f", MFU {self.mfu:.1%}" if self.mfu else "") +
                 f", peak memory {self.peak_memory_gb:.2f} GB)",
                 f"  first steps: {fmt(self.first)}", f"  last steps:  {fmt(self.last)}"]
        if self.val:
            lines.append(f"  validation:  {fmt(self.val)}")
        lines.append(f"  weights {self.weights}; state {self.checkpoint}"
                     + (f"; resumed from {self.resumed_from}" if self.resumed_from else ""))
        if self.run_id:
            lines.append(f"  MLflow run {self.run_id}")
        if self.registered:
            lines.append(f"  registered model {self.registered}")
        if self.failed:
            lines.append(f"  FAILED: {self.failed}")
        return "\n".join(lines)
