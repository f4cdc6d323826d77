"""What each stage logs to its MLflow run beyond params: its numbers, its key files, its plots.

Called by the stages with their tracker; with tracking off (a no-op tracker) nothing is computed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from bevt_core import storage
from bevt_core.data.manifest import CLASSES, MANIFEST, REJECTS
from bevt_core.tracking import plots
from bevt_core.tracking.tracker import Tracker


def numbers(result: Any) -> dict[str, float]:
    """The finite int/float fields of a result dataclass (not nested, not booleans)."""
    out = {}
    for f in dataclasses.fields(result):
        v = getattr(result, f.name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f.name] = float(v)
    return out


def _files(tracker: Tracker, folder: str, names: tuple[str, ...], where: str) -> None:
    for name in names:
        uri = storage.join(where, name)
        if storage.exists(uri):
            tracker.artifact(uri, folder)


def shard(tracker: Tracker, result: Any) -> None:
    """Counts, the manifest / rejects / classes files, a rejects summary and its histogram."""
    if not tracker.run_id:
        return
    tracker.metrics(numbers(result), 0)
    _files(tracker, "data", (MANIFEST, REJECTS, CLASSES), result.output)
    summary = {
        "items": result.items,
        "rejected": result.rejected,
        "reject_rate": result.rejected / max(result.items, 1),
        "by_reason": result.rejects_by_reason,
        "failed": result.failed,
    }
    tracker.artifact_text("rejects_summary.json", json.dumps(summary, indent=1, sort_keys=True))
    tracker.artifact_bytes("plots/rejects.png", plots.rejects_histogram(result.rejects_by_reason, result.items))


def tokenize(tracker: Tracker, result: Any) -> None:
    """Counts and the tokenizer: its record (identity, views, grid) and the fitted codebook."""
    from bevt_core.data.token_format import RECORD
    from bevt_core.tokenizers import CODEBOOK_FILE

    if not tracker.run_id:
        return
    tracker.metrics(numbers(result), 0)
    tracker.tags({"tokenizer": result.tokenizer, "tokenizer_sha256": result.sha256})
    _files(tracker, "tokenizer", (RECORD, CODEBOOK_FILE), result.output)
    _files(tracker, "data", (MANIFEST,), result.output)


def training_curves(tracker: Tracker) -> None:
    png = plots.training_curves(tracker.history) if tracker.run_id else None
    if png:
        tracker.artifact_bytes("plots/curves.png", png)


def evaluation(tracker: Tracker, result: Any, per_class: list[float | None], classes: list[str]) -> None:
    if not tracker.run_id:
        return
    tracker.metrics({k: v for k, v in numbers(result).items() if isinstance(getattr(result, k), float)}, 0)
    # MLflow metric names allow word characters, - . / and space only.
    tracker.metrics(
        {"class_acc/" + re.sub(r"[^\w\-. /]", "_", c): a for c, a in zip(classes, per_class) if a is not None}, 0
    )
    for uri in result.files.values():
        tracker.artifact(uri)
    tracker.artifact_bytes("plots/per_class_accuracy.png", plots.per_class_accuracy(per_class, classes))
