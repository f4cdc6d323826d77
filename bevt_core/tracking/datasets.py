"""The data a stage run read and wrote, as MLflow datasets: what the UI's Dataset column and Datasets
filter show.

A dataset is named by what it holds (:func:`output_name`, kept in its producer record) or else where it
lives. Its digest is the start of the sha256 that the ``bevt.input.*`` tags hold in full
(:mod:`bevt_core.tracking.lineage`): of the shard or token directory's ``manifest.parquet``, or of an input
list. So the directory one stage wrote and the next one read is one dataset in MLflow, and the Datasets
filter finds every run that used it. The context says what the run did with it (``lineage.STAGE_INPUTS``:
source, training, validation, tokens; what a stage wrote: output); the profile holds a few counts read from
the manifest or the list.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

from bevt_core import storage
from bevt_core.tracking import lineage

OUTPUT = "output"
DIGEST_CHARS = 16  # MLflow stores at most 36 characters of a digest
CONTEXT_TAG = "mlflow.data.context"
CLASSES = "classes.json"


def name_of(uri: str) -> str:
    """A dataset's name: the one its producer recorded, else the last two parts of its URI."""
    record = lineage.producer(uri)
    if record is not None and record.dataset:
        return record.dataset
    return "/".join(uri.rstrip("/").split("/")[-2:])


def output_name(stage: str, config: dict) -> str:
    """What a stage's output directory is called in MLflow: shards after their input list (``scene/train.txt``:
    ``scene/train``), tokens after the shards they hold targets for (``scene/train tokens``); "" for the other
    stages, whose outputs are no dataset. Pipeline outputs live under task-named folders (``shard-3/shards``),
    which say nothing to a person."""
    if stage == "shard":
        return name_of(str(config["input"])).rsplit(".", 1)[0]
    if stage == "tokenize":
        return f"{name_of(str(config['input']))} tokens"
    return ""


def _manifest_profile(root: str) -> dict[str, int]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(root, lineage.MANIFEST))))
    columns = set(table.column_names)
    statuses = table.column("status").to_pylist() if "status" in columns else ["ok"] * table.num_rows
    profile = {"samples": statuses.count("ok"), "rejected": table.num_rows - statuses.count("ok")}
    if "frames" in columns:
        frames = [f for f, s in zip(table.column("frames").to_pylist(), statuses) if s == "ok"]
        profile["frames"] = sum(f or 0 for f in frames)
    if storage.exists(storage.join(root, CLASSES)):
        profile["classes"] = len(json.loads(storage.read_bytes(storage.join(root, CLASSES))))
    return profile


def dataset(uri: str, kind: str) -> Any | None:
    """The MLflow dataset entity of a data directory or an input list; None when there is nothing to name
    (a directory without a manifest, a list that does not exist)."""
    from mlflow.entities import Dataset

    if kind == "data":
        manifest = storage.join(uri, lineage.MANIFEST)
        if not storage.exists(manifest):
            return None
        digest, profile = lineage.sha256(manifest), _manifest_profile(uri)
    elif kind == "list":
        if not storage.exists(uri):
            return None
        text = storage.read_bytes(uri)
        digest, profile = (
            hashlib.sha256(text).hexdigest(),
            {"items": sum(1 for line in text.splitlines() if line.strip())},
        )
    else:
        return None
    return Dataset(
        name=name_of(uri),
        digest=digest[:DIGEST_CHARS],
        source_type="s3" if storage.is_s3(uri) else "local",
        source=json.dumps({"uri": uri}),
        profile=json.dumps(profile),
    )


def _input(entity: Any, context: str) -> Any:
    from mlflow.entities import DatasetInput, InputTag

    return DatasetInput(entity, tags=[InputTag(CONTEXT_TAG, context)])


def stage_inputs(stage: str, config: dict) -> list:
    """The datasets a ``stage`` run with the resolved ``config`` reads, each with its context."""
    inputs = []
    for name, field in lineage.STAGE_INPUTS[stage].items():
        entity = dataset(str(config[name]), field.kind) if config.get(name) and field.context else None
        if entity is not None:
            inputs.append(_input(entity, field.context))
    return inputs


def stage_outputs(outputs: str) -> list:
    """The dataset a stage wrote (a shard or token directory, its producer record already written), with context
    ``output``; [] for other outputs."""
    entity = dataset(outputs, "data")
    return [] if entity is None else [_input(entity, OUTPUT)]
