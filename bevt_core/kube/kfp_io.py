"""What every KFP component does around its stage call: locate artifacts, publish the result.

Duck-typed over KFP's artifact objects (``.path``, ``.uri``, ``.metadata``, ``log_metric``), so
this module imports nothing from kfp and the components stay a few lines each.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
from typing import Any

from bevt_core import storage

WEIGHTS = "weights"  # Model artifact metadata: the weights file, relative to the artifact
PLAIN = (str, int, float, bool, list, dict)  # the types of a component's parameters (KFP's, not artifacts)


def location(artifact: Any, mode: str = "local") -> str:
    """Where a stage reads or writes ``artifact``: its local path (the KFP launcher moves the bytes),
    or, for a PyTorchJob whose pods cannot see this pod's files, the object-store URI itself
    (KFP on MinIO/SeaweedFS names it ``minio://bucket/key``: the same object over the S3 API)."""
    if mode == "local":
        return artifact.path
    uri = artifact.uri
    return "s3://" + uri[len("minio://") :] if uri.startswith("minio://") else uri


def tracking_section(parameters: dict[str, Any]) -> dict[str, str]:
    """The stage config's ``tracking`` section from a component's parameters (``tracking_uri``,
    ``parent_run_id``, ``run_label``), its run marked as a pipeline step. KFP passes them one by one: a
    mapping built from pipeline parameters is left unresolved by most KFP backends (kubeflow/pipelines#12204)."""
    return {
        "uri": parameters["tracking_uri"],
        "parent_run_id": parameters["parent_run_id"],
        "run_label": parameters.get("run_label", ""),
        "source": "pipeline",
    }


def training_sections(parameters: dict[str, Any], work_dir: str) -> dict[str, dict]:
    """A training stage's ``schedule`` and ``run`` sections from a component's parameters (``epochs``,
    ``max_steps``, ``batch_size``, ``workers``, ``log_every``; 0 epochs or batch size: the preset's)."""
    return {
        "schedule": {"epochs": parameters["epochs"] or None, "max_steps": parameters["max_steps"]},
        "run": {
            "work_dir": work_dir,
            "batch_size": parameters["batch_size"] or None,
            "workers": parameters["workers"],
            "log_every": parameters["log_every"],
        },
    }


def stage_config(cls: type, parameters: dict[str, Any], **fields: Any) -> Any:
    """Stage config ``cls`` from a component's parameters (its ``locals()``): those named like a field of
    ``cls``, the tracking ones as its tracking section, then ``fields`` (artifact locations, sections)."""
    from bevt_core.config import from_dict

    names = {f.name for f in dataclasses.fields(cls)}
    # Artifacts (a step's `model` output, its `data` input) are objects: only plain parameters are config values.
    values = {name: value for name, value in parameters.items() if name in names and isinstance(value, PLAIN)}
    return from_dict(cls, values | {"tracking": tracking_section(parameters)} | fields)


def weights(model: Any, mode: str = "local") -> str:
    """The weights file inside a Model artifact a training component wrote."""
    return storage.join(location(model, mode), model.metadata[WEIGHTS])


def record_weights(model: Any, weights_uri: str) -> None:
    """Note which file of a Model artifact holds the weights (stages write it into their work dir)."""
    model.metadata[WEIGHTS] = weights_uri.rstrip("/").rsplit("/", 1)[-1]


def write_metadata(artifact: Any) -> None:
    """Also write a metrics-type artifact's values into its file. KFP keeps them in the metadata only, and
    the local runner's step cache counts an output with no file as missing: a rerun would redo the step."""
    os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
    with open(artifact.path, "w") as f:
        json.dump(artifact.metadata, f, indent=1, sort_keys=True)


def _numbers(prefix: str, value: Any):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(f"{prefix}{k}_", v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        yield prefix.rstrip("_"), float(value)


def publish(result: Any, metrics: Any, report: Any, title: str) -> dict[str, Any]:
    """Log the result's numbers as KFP metrics, write its summary as the report (Markdown or HTML by
    the artifact's schema), and fail the component when the stage says it failed."""
    data = result if isinstance(result, dict) else dataclasses.asdict(result)
    for name, value in _numbers("", data):
        metrics.log_metric(name, value)
    write_metadata(metrics)
    summary = result.summary() if hasattr(result, "summary") else "\n".join(f"{k}: {v}" for k, v in data.items())
    if getattr(report, "schema_title", "") == "system.HTML":
        text = f"<h2>{html.escape(title)}</h2><pre>{html.escape(summary)}</pre>"
    else:
        text = f"## {title}\n\n```\n{summary}\n```\n"
    with open(report.path, "w") as f:
        f.write(text)
    if data.get("failed"):
        raise RuntimeError(f"{title} failed: {data['failed']}")
    return data
