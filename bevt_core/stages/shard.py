"""Stage ``shard``: videos or images -> WebDataset tar shards + Parquet manifest.

Input item ``i`` always goes to shard ``i // samples_per_shard``, so the plan does not depend on
parallelism or on which items get rejected, and a rerun with the same arguments finds the
shards an interrupted run finished (their part files exist) and redoes only the rest.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from bevt_core import storage
from bevt_core.config import ConfigError, at_least, between, non_empty, option
from bevt_core.data import jobs, manifest
from bevt_core.data.decode import REASONS
from bevt_core.data.inputs import IMAGE_EXTS, VIDEO_EXTS, InputItem, read_inputs, source_root
from bevt_core.data.shard_format import shard_name
from bevt_core.data.sharding import EncodeSettings, ShardReport, ShardTask, write_shard
from bevt_core.tracking import stage_report
from bevt_core.tracking.config import TrackingConfig
from bevt_core.tracking.stage_run import stage_run


@dataclass
class ShardConfig:
    input: str = option(
        help="What to shard: an annotation list ('relative/path label' per line, K400/Diving48 "
        "style), an SSv2-style JSON list, or a local folder with one subfolder per class. "
        "Local path or s3://bucket/key.",
        check=non_empty,
    )
    output: str = option(
        help="Directory or s3://bucket/prefix for the shards, manifest.parquet, rejects.parquet and classes.json.",
        check=non_empty,
    )
    root: str = option(
        "",
        help="Directory or s3:// prefix the paths in the list are relative to. Default: the folder holding the list.",
    )
    modality: str = option("video", help="What the inputs are.", choices=("video", "image"))
    classes: str = option(
        "",
        help="Class names in index order: a JSON list, a JSON {name: index} map, or one "
        "name per line. Default: integer labels name themselves, names are sorted.",
    )
    frame_interval: int = option(
        1,
        help="Keep every k-th frame (temporal stride): BEVT pretraining samples at "
        "interval 8, the K400 finetune at 2, SSv2 uses every frame.",
        check=at_least(1),
    )
    max_frames: int = option(0, help="Keep at most this many frames per video (0: no cap).", check=at_least(0))
    min_frames: int = option(2, help="Reject videos with fewer decodable frames than this.", check=at_least(1))
    short_side: int = option(
        320,
        help="Cap the short side of stored frames at this many pixels (area "
        "resampling; never upscales; 0 keeps the source size). BEVT crops 224 after "
        "rescaling to 256-320.",
        check=at_least(0),
    )
    jpeg_quality: int = option(90, help="JPEG quality of the stored frames.", check=between(1, 100))
    samples_per_shard: int = option(64, help="Input items per shard (rejected items leave gaps).", check=at_least(1))
    prefix: str = option("shard", help="Shard names are '{prefix}-{index:06d}.tar'.", check=non_empty)
    video_ext: str = option(".webm", help="File extension appended to SSv2-style JSON ids.")
    workers: int = option(0, help="Parallel worker processes (0: one per CPU core).", check=at_least(0))
    max_reject_rate: float = option(
        0.05,
        help="Fail (non-zero exit) when more than this fraction of the inputs "
        "is rejected; the outputs are still written for inspection.",
        check=between(0.0, 1.0),
    )
    progress: bool = option(True, help="Show a progress bar on stderr.")
    tracking: TrackingConfig = option(TrackingConfig, help="MLflow tracking.")

    def check(self) -> str | None:
        if any(ch in self.prefix for ch in "/.\\ "):
            return "prefix: must not contain '/', '.', '\\' or spaces"
        return None


@dataclass
class ShardResult:
    output: str
    items: int
    ok: int
    rejected: int
    frames: int
    bytes: int
    shards: int
    seconds: float
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    resumed_shards: int = 0
    failed: str = ""  # non-empty: why the stage counts as failed (reject rate over the limit)

    def summary(self) -> str:
        rate = self.items / self.seconds if self.seconds else 0.0
        lines = [
            f"shard: {self.ok}/{self.items} items in {self.shards} shards -> {self.output}",
            f"  frames {self.frames}, {self.bytes / 1e6:.1f} MB, {self.seconds:.1f} s "
            f"({rate:.1f} items/s, {self.frames / max(self.seconds, 1e-9):.0f} frames/s)"
            + (f", {self.resumed_shards} shards reused from an earlier run" if self.resumed_shards else ""),
        ]
        if self.rejected:
            lines.append(f"  rejected {self.rejected} ({self.rejected / max(self.items, 1):.1%}); see rejects.parquet:")
            for reason, n in sorted(self.rejects_by_reason.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {reason:16s} {n:6d}  {REASONS.get(reason, '')}")
        if self.failed:
            lines.append(f"  FAILED: {self.failed}")
        return "\n".join(lines)


# Only what changes the bytes written belongs in the fingerprint (not workers or progress).
_CONTENT_FIELDS = (
    "input",
    "root",
    "modality",
    "classes",
    "frame_interval",
    "max_frames",
    "min_frames",
    "short_side",
    "jpeg_quality",
    "samples_per_shard",
    "prefix",
    "video_ext",
)


def run(cfg: ShardConfig) -> ShardResult:
    with stage_run("shard", cfg, cfg.output) as tracker:
        result = _shard(cfg)
        stage_report.shard(tracker, result)
        tracker.mark_failed(result.failed)
    return result


def _read_items(cfg: ShardConfig) -> tuple[list[InputItem], list[str]]:
    """The input's items and class names, once the output is known to hold nothing made with other settings."""
    exts = VIDEO_EXTS if cfg.modality == "video" else IMAGE_EXTS
    try:
        items, classes = read_inputs(cfg.input, cfg.classes, cfg.video_ext, exts)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"input: {e}") from None
    if not items:
        raise ConfigError(f"input: {cfg.input} lists no items")
    digest = hashlib.sha256("\n".join(f"{i.source}\t{i.raw_label}" for i in items).encode()).hexdigest()
    storage.make_local_dirs(cfg.output)
    jobs.check_same_settings(cfg.output, {k: getattr(cfg, k) for k in _CONTENT_FIELDS} | {"input_items_sha256": digest})
    jobs.clean_leftovers(cfg.output)
    return items, classes


def _plan(cfg: ShardConfig, items: list[InputItem]) -> list[ShardTask]:
    """Item i goes to shard i // samples_per_shard, whatever is rejected; a source seen before is a duplicate."""
    seen, duplicates = set(), set()
    for item in (i for i in items if not i.problem):
        if item.source in seen:
            duplicates.add(item.index)
        seen.add(item.source)
    settings = EncodeSettings(
        cfg.modality,
        source_root(cfg.input, cfg.root),
        cfg.frame_interval,
        cfg.max_frames,
        cfg.min_frames,
        cfg.short_side,
        cfg.jpeg_quality,
    )
    n = cfg.samples_per_shard
    return [
        ShardTask(
            i,
            cfg.prefix,
            cfg.output,
            items[i * n : (i + 1) * n],
            settings,
            frozenset(d for d in duplicates if i * n <= d < (i + 1) * n),
        )
        for i in range((len(items) + n - 1) // n)
    ]


def _summary(cfg: ShardConfig, items: int, reports: list[ShardReport], seconds: float) -> ShardResult:
    rejects = Counter()
    for report in reports:
        rejects.update(report.rejects)
    result = ShardResult(
        output=cfg.output,
        items=items,
        ok=sum(r.ok for r in reports),
        rejected=sum(rejects.values()),
        frames=sum(r.frames for r in reports),
        bytes=sum(r.bytes for r in reports),
        shards=sum(1 for r in reports if r.ok),
        seconds=seconds,
        rejects_by_reason=dict(rejects),
        resumed_shards=sum(r.skipped for r in reports),
    )
    if result.rejected / result.items > cfg.max_reject_rate:
        result.failed = (
            f"{result.rejected} of {result.items} inputs rejected "
            f"({result.rejected / result.items:.1%} > max_reject_rate {cfg.max_reject_rate:.1%})"
        )
    return result


def _shard(cfg: ShardConfig) -> ShardResult:
    start = time.perf_counter()
    items, classes = _read_items(cfg)
    tasks = _plan(cfg, items)
    reports = jobs.run_parallel(
        tasks,
        write_shard,
        cfg.workers or os.cpu_count() or 1,
        cfg.progress,
        "shard",
        weight=lambda t: len(t.items),
        init=_worker_init,
        postfix=lambda done: {"ok": sum(r.ok for r in done), "rejected": sum(sum(r.rejects.values()) for r in done)},
    )
    rows = []
    for task in tasks:
        name = shard_name(cfg.prefix, task.index)[: -len(".tar")]
        rows.extend(manifest.read_table(jobs.part_uri(cfg.output, name)).to_pylist())
    rows.sort(key=lambda r: r["index"])
    manifest.write_final(cfg.output, rows, classes)
    return _summary(cfg, len(items), reports, time.perf_counter() - start)


def _worker_init() -> None:
    # One process per core already: threads inside OpenCV would only oversubscribe.
    import cv2

    cv2.setNumThreads(1)
