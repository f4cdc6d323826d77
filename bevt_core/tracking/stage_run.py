"""One stage's MLflow run around the stage's work: its params, lineage tags, the datasets it read and wrote,
its final status, and the producer record beside its outputs that lets the next stage name this run as its upstream
(:mod:`bevt_core.tracking.lineage`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bevt_core.config import to_dict
from bevt_core.tracking import datasets, lineage
from bevt_core.tracking.tracker import Tracker, start


@contextmanager
def stage_run(
    stage: str,
    cfg: Any,
    outputs: str | None,
    *,
    sqlite_dir: str | None = None,
    main: bool = True,
    system_metrics: bool = False,
) -> Iterator[Tracker]:
    """The run of ``stage`` with config ``cfg`` (its ``tracking`` section says where and how it is named)
    around the ``with`` block. Its inputs are checked first (a missing one is a ConfigError naming the
    field, before any run exists). ``sqlite_dir``: where ``tracking.uri: auto`` may put a SQLite store
    when no server is set (None: nowhere, no run). The run ends FINISHED, or FAILED when the block raises
    or marks it failed; on success the producer record goes into ``outputs``."""
    config = to_dict(cfg)
    lineage.check_inputs(stage, config)
    settings = cfg.tracking
    name = f"{stage} {settings.run_label}" if settings.run_label else stage
    tracker = start(
        settings.uri, sqlite_dir, settings.experiment, name, config, main, settings.parent_run_id, system_metrics
    )
    if tracker.run_id:
        tracker.tags(lineage.stage_tags(stage, config))
        tracker.datasets(datasets.stage_inputs(stage, config))
    status = "FAILED"
    try:
        yield tracker
        if not tracker.failed:
            status = "FINISHED"
            if tracker.run_id and outputs:
                name = datasets.output_name(stage, config)
                lineage.write_record(outputs, lineage.Record(tracker.run_id, stage, name))
                # MLflow logs datasets as a run's inputs only: what the stage wrote goes in as context "output".
                tracker.datasets(datasets.stage_outputs(outputs))
    finally:
        if tracker.failed:
            tracker.tags({"bevt.failed": tracker.failed[:5000]})
        tracker.finish(status)
