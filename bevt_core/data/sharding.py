"""Turn one planned shard's input items into a finished tar plus its part of the manifest
(done-ness and atomicity: :mod:`bevt_core.data.jobs`)."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bevt_core import storage
from bevt_core.data import jobs, manifest
from bevt_core.data.decode import RejectedInput, check_file, decode_image, decode_video, encode_jpeg, resize_short_side
from bevt_core.data.inputs import InputItem
from bevt_core.data.shard_format import Sample, ShardWriter, sample_members, shard_name


@dataclass(frozen=True)
class EncodeSettings:
    modality: str  # "video" | "image"
    root: str  # where relative sources live (local dir or s3 prefix)
    frame_interval: int
    max_frames: int
    min_frames: int
    short_side: int
    jpeg_quality: int


@dataclass
class ShardTask:
    index: int
    prefix: str
    output: str
    items: list[InputItem]
    settings: EncodeSettings
    duplicates: frozenset[int] = frozenset()  # item indices whose source appeared earlier in the input


@dataclass
class ShardReport:
    index: int
    items: int = 0
    ok: int = 0
    frames: int = 0
    bytes: int = 0
    rejects: Counter = field(default_factory=Counter)
    decode_seconds: float = 0.0
    skipped: bool = False  # already complete from an earlier run


def sample_key(source: str) -> str:
    """A tar-safe key (no dots: WebDataset splits names at the first dot) unique per source."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(source)[0]).strip("_")[-48:]
    return f"{stem}_{hashlib.sha1(source.encode()).hexdigest()[:10]}"


def source_uri(root: str, source: str) -> str:
    """Where an input item's ``source`` lives: itself when absolute or s3://, else under ``root``."""
    if os.path.isabs(source) or storage.is_s3(source):
        return source
    return storage.join(root, source)


def _load_source(settings: EncodeSettings, source: str) -> Path | bytes:
    uri = source_uri(settings.root, source)
    if storage.is_s3(uri):
        try:
            data = storage.read_bytes(uri)
        except Exception as e:  # noqa: BLE001 -- botocore signals a missing key many ways
            if "NoSuchKey" in str(e) or "404" in str(e) or "Not Found" in str(e):
                raise RejectedInput("missing", uri) from None
            raise RejectedInput("unreadable", f"{uri}: {e}") from None
        if not data:
            raise RejectedInput("empty", uri)
        return data
    path = Path(uri)
    check_file(path)
    return path


def encode_item(item: InputItem, settings: EncodeSettings) -> tuple[Sample, dict]:
    """Decode + resize + JPEG one item; returns the sample and its manifest columns. ``bevt predict``
    prepares a video with this too, so a prediction sees exactly the pixels evaluation reads from shards."""
    source = _load_source(settings, item.source)
    key = sample_key(item.source)
    if settings.modality == "video":
        video = decode_video(source, settings.frame_interval, settings.max_frames, settings.min_frames)
        frames = resize_short_side(video.frames, settings.short_side)
        jpegs = [encode_jpeg(f, settings.jpeg_quality) for f in frames]
        info = dict(
            frames=len(jpegs),
            frame_indices=video.indices,
            num_frames=video.num_frames,
            fps=video.fps,
            width=video.width,
            height=video.height,
            decoder=video.decoder,
        )
    else:
        image = decode_image(source if isinstance(source, bytes) else Path(source).read_bytes())
        frames = resize_short_side(image, settings.short_side)[None]
        jpegs = [encode_jpeg(frames[0], settings.jpeg_quality)]
        info = dict(
            frames=1,
            frame_indices=[0],
            num_frames=1,
            fps=0.0,
            width=image.shape[1],
            height=image.shape[0],
            decoder="opencv",
        )
    info.update(stored_height=int(frames.shape[1]), stored_width=int(frames.shape[2]))
    meta = dict(source=item.source, label=item.label, **info)
    return Sample(key, item.label, meta, jpegs), info


def write_shard(task: ShardTask) -> ShardReport:
    """Encode the task's items into ``<prefix>-<index>.tar`` and its part file; skip if done."""
    report = ShardReport(task.index, items=len(task.items))
    name = shard_name(task.prefix, task.index)
    part = jobs.part_uri(task.output, name[: -len(".tar")])
    if storage.exists(part):
        report.skipped = True
        _count(report, manifest.read_table(part).to_pylist())
        return report
    rows = []
    with jobs.atomic_tar(task.output, name) as f:
        writer = ShardWriter(f)
        for item in task.items:
            base = dict(index=item.index, source=item.source, label=item.label, raw_label=item.raw_label)
            start = time.perf_counter()
            try:
                if item.problem:
                    raise RejectedInput("bad_label", item.problem)
                if item.index in task.duplicates:
                    raise RejectedInput("duplicate", f"{item.source} appears earlier in the input")
                sample, info = encode_item(item, task.settings)
            except RejectedInput as e:
                rows.append(dict(base, status="rejected", reason=e.reason, detail=e.detail))
                continue
            finally:
                report.decode_seconds += time.perf_counter() - start
            offset, nbytes = writer.write(sample.key, sample_members(sample, task.settings.modality == "video"))
            rows.append(
                dict(
                    base,
                    **info,
                    key=sample.key,
                    shard=name,
                    offset=offset,
                    bytes=nbytes,
                    status="ok",
                    reason="",
                    detail="",
                )
            )
        writer.close()
        f.keep = any(r["status"] == "ok" for r in rows)
    storage.write_bytes(part, manifest.rows_to_parquet(rows))
    _count(report, rows)
    return report


def _count(report: ShardReport, rows: list[dict]) -> None:
    for r in rows:
        if r["status"] == "ok":
            report.ok += 1
            report.frames += r["frames"]
            report.bytes += r["bytes"]
        else:
            report.rejects[r["reason"]] += 1
