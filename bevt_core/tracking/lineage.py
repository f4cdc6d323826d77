"""What a stage run is made of, as MLflow tags: code, config, input data, upstream runs, image.

Every stage run carries

- ``mlflow.source.name`` (``bevt STAGE``, or ``pipeline step STAGE`` for a KFP step) and
  ``mlflow.source.type`` (LOCAL, JOB): MLflow's Source column;
- ``mlflow.source.git.commit`` (and ``bevt.git_dirty``): ``$BEVT_GIT_REVISION`` (set in the
  images at build time), else ``git rev-parse HEAD`` of the checkout this package runs from,
  else ``unknown``;
- ``bevt.config_sha256``: sha256 of the resolved config (canonical JSON, without the parent run
  id, which differs per pipeline run and says nothing about what was computed);
- per input field ``F``: ``bevt.input.F`` (its URI), ``bevt.input.F.manifest_sha256`` for a data
  directory (its ``manifest.parquet``), ``bevt.input.F.sha256`` for an input list, and
  ``bevt.upstream.F``: the run id of the stage that produced it;
- ``bevt.upstream_run_ids`` (all of them, comma-separated) and ``bevt.image``.

Upstream ids come from the producer record (``lineage.json``) that :func:`write_record` puts
beside a stage's outputs when its run finishes: the consumer reads it from the input directory
(or, for a file such as a checkpoint, from the directory holding it). No tracking-server query is
needed, so this works the same with a SQLite store, a server, or across KFP steps and pods.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bevt_core import images, storage
from bevt_core.config import ConfigError

RECORD_FILE = "lineage.json"
MANIFEST = "manifest.parquet"
GIT_ENV = "BEVT_GIT_REVISION"
REPO = Path(__file__).resolve().parents[2]  # the checkout, when running from one


@dataclass(frozen=True)
class Input:
    """One input field of a stage. ``kind``: "data" (a directory with a manifest.parquet written by another
    stage), "list" (an input listing: hashed as a file) or "file" (a file another stage wrote, e.g. a
    checkpoint or a codebook: traced to its producer, not hashed; it can be GBs). ``context``: what the run
    does with a data or list input, as MLflow's dataset context (a file is not a dataset: "")."""

    kind: str
    context: str = ""


PRODUCED_FILE = Input("file")
STAGE_INPUTS: dict[str, dict[str, Input]] = {
    "shard": {"input": Input("list", "source")},
    "tokenize": {"input": Input("data", "source"), "codebook": PRODUCED_FILE, "weights": PRODUCED_FILE},
    "pretrain-image": {"images": Input("data", "training"), "image_tokens": Input("data", "tokens")},
    "pretrain-joint": {
        "videos": Input("data", "training"),
        "video_tokens": Input("data", "tokens"),
        "images": Input("data", "training"),
        "image_tokens": Input("data", "tokens"),
        "init": PRODUCED_FILE,
    },
    "finetune": {"train": Input("data", "training"), "val": Input("data", "validation"), "init": PRODUCED_FILE},
    "evaluate": {"weights": PRODUCED_FILE, "data": Input("data", "validation")},
}


@dataclass(frozen=True)
class Record:
    """Which MLflow run produced a stage's outputs, and the name of the dataset they are (shard, tokenize)."""

    run_id: str
    stage: str
    dataset: str = ""


def write_record(outputs: str, record: Record) -> None:
    storage.write_bytes(storage.join(outputs, RECORD_FILE), json.dumps(asdict(record), indent=1).encode())


def producer(uri: str, is_file: bool = False) -> Record | None:
    """The record of the run that wrote ``uri``: a stage's output directory, or with ``is_file`` a
    file in one (a checkpoint, a codebook)."""
    uri = uri.rstrip("/")
    folder = (uri.rsplit("/", 1)[0] if "/" in uri else ".") if is_file else uri
    record = storage.join(folder, RECORD_FILE)
    if not storage.exists(record):
        return None
    return Record(**json.loads(storage.read_bytes(record)))


def sha256(uri: str) -> str:
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


@functools.lru_cache(maxsize=1)
def git_revision() -> tuple[str, bool]:
    """(commit, dirty) of the code that runs; dirty means tracked files differ from the commit."""
    if os.environ.get(GIT_ENV):
        return os.environ[GIT_ENV], False
    if not (REPO / ".git").exists():
        return "unknown", False
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
            != ""
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit, dirty


def _without_parent(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_parent(v) for k, v in value.items() if k != "parent_run_id"}
    return value


def config_sha256(config: dict) -> str:
    canonical = json.dumps(_without_parent(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def input_tags(name: str, kind: str, uri: str) -> dict[str, str]:
    tags = {f"bevt.input.{name}": uri}
    if kind == "data" and storage.exists(storage.join(uri, MANIFEST)):
        tags[f"bevt.input.{name}.manifest_sha256"] = sha256(storage.join(uri, MANIFEST))
    elif kind == "list" and (os.path.isfile(uri) or (storage.is_s3(uri) and storage.exists(uri))):
        tags[f"bevt.input.{name}.sha256"] = sha256(uri)
    if kind != "list":
        record = producer(uri, is_file=kind == "file")
        if record is not None:
            tags[f"bevt.upstream.{name}"] = record.run_id
    return tags


def stage_tags(stage: str, config: dict) -> dict[str, str]:
    """Every lineage tag of a ``stage`` run with the resolved ``config`` (a dict, as logged)."""

    commit, dirty = git_revision()
    source = config.get("tracking", {}).get("source", "cli")
    tags = {
        "bevt.stage": stage,
        "mlflow.source.name": f"bevt {stage}" if source == "cli" else f"pipeline step {stage}",
        "mlflow.source.type": "LOCAL" if source == "cli" else "JOB",
        "bevt.run_label": config.get("tracking", {}).get("run_label", ""),
        "mlflow.source.git.commit": commit,
        "bevt.git_dirty": str(dirty).lower(),
        "bevt.config_sha256": config_sha256(config),
        "bevt.image": images.for_stage(stage),
    }
    for name, field in STAGE_INPUTS[stage].items():
        if config.get(name):
            tags |= input_tags(name, field.kind, str(config[name]))
    upstream = sorted({v for k, v in tags.items() if k.startswith("bevt.upstream.")})
    tags["bevt.upstream_run_ids"] = ",".join(upstream)
    return tags


def _input_problem(kind: str, uri: str) -> str | None:
    if kind == "data":
        if not storage.exists(storage.join(uri, MANIFEST)):
            return (
                f"{uri} holds no {MANIFEST}: not the output of a bevt stage, or that stage has not finished "
                "(rerun it to resume)"
            )
        return None
    if not storage.exists(uri):
        return f"{uri} does not exist"
    return None


def check_inputs(stage: str, config: dict) -> None:
    """Every input a ``stage`` run reads must be there before it starts: a ConfigError names the first that is not."""
    for name, field in STAGE_INPUTS.get(stage, {}).items():
        if config.get(name):
            problem = _input_problem(field.kind, str(config[name]))
            if problem:
                raise ConfigError(f"{name}: {problem}")
