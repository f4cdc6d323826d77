"""What every KFP component does around its stage call: locate artifacts, hand locations on, publish the result.

Data moves between steps by location, not through KFP. KFP's launcher downloads every input artifact of a
step into the pod before the step's code runs, whether the code reads it or not (backend/src/v2/component/
launcher_v2.go, ``downloadArtifacts``: "TODO: Selectively copy artifacts for which .path was actually
specified"; kubeflow/pipelines#5672), and uploads an output artifact from the pod's disk only after the step
ends. For a corpus that is the whole dataset through a 1-CPU launcher pod's ephemeral storage, and a retried
step starting over on an empty disk. So a step writes its Dataset or Model straight to the artifact's
object-store URI (:func:`uri`; the launcher finds no local copy and uploads nothing, which it allows:
"We allow components to not produce output files"), and hands that location to the next steps as an output
*parameter* (:func:`hand_over`); a consumer takes locations as ``str`` parameters and has no input artifact
for KFP to copy. The one exception is a one-line location artifact (:func:`handed_over`), where KFP's local
runner cannot pass a parameter. The stages read and write ``s3://`` themselves (bevt_core.storage). Under
KFP's local runner an artifact's URI is its local folder (``.uri`` and ``.path`` are the same string), so
there nothing changes.

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


def uri(artifact: Any) -> str:
    """Where ``artifact``'s contents live: its object-store URI (KFP on MinIO/SeaweedFS names it
    ``minio://bucket/key``: the same object over the S3 API); under KFP's local runner, its local folder."""
    where = artifact.uri
    return "s3://" + where[len("minio://") :] if where.startswith("minio://") else where


def location(artifact: Any, mode: str = "local") -> str:
    """Where a distributed stage writes ``artifact``: torchrun in this pod writes its local path (the KFP
    launcher uploads it afterwards), a PyTorchJob's pods, which cannot see this pod's files, the URI itself."""
    return artifact.path if mode == "local" else uri(artifact)


def hand_over(path: str, location: str) -> None:
    """Write ``location`` into ``path``: a component's ``dsl.OutputPath(str)`` file, the output parameter that
    tells the next steps where the data is (module docstring), or a location artifact's file
    (:func:`handed_over`). KFP's executor has made its folder."""
    with open(path, "w") as f:
        f.write(location)


def weights_uri(model: Any) -> str:
    """The weights file of a Model artifact whose weights :func:`record_weights` noted, where it is once the
    step has ended (a local copy is uploaded to the URI by then)."""
    return storage.join(uri(model), model.metadata[WEIGHTS])


def handed_over(artifact: Any) -> str:
    """The location a one-line location artifact holds: how a location enters the finetune loop, because KFP's
    local runner (kfp 2.17) gives a ParallelFor body the loop item in place of every upstream output
    parameter (kfp/local/orchestrator/task_spec_utils.py, ``create_parameter_loop_iteration_task_spec``).
    KFP downloads this artifact, a few bytes, and nothing else."""
    with open(artifact.path) as f:
        return f.read()


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
