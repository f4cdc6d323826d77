"""The parent MLflow run of a pipeline run (or a demo), and its HTML report.

:func:`open_run` creates the parent; every stage run started with its id nests under it
(``mlflow.parentRunId``). :func:`close_run` reads the stage runs back from the tracking store,
renders one HTML page (a table of stages with their status, duration, key metrics, lineage and
artifact locations, then every stage's plots embedded) and logs it on the parent as
``report.html``, then ends the parent: FAILED if the pipeline or any stage failed.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from dataclasses import dataclass, field

from bevt_core.tracking.tracker import PARENT_TAG, flatten, sqlite_artifacts

REPORT = "report.html"
# What the stage table shows, when a stage logged it (last value).
KEY_METRICS = (
    "items",
    "ok",
    "rejected",
    "samples",
    "frames",
    "vocab_size",
    "loss",
    "loss_image",
    "acc_image",
    "loss_video",
    "acc_video",
    "acc",
    "val_top1",
    "top1",
    "top5",
    "mean_class_accuracy",
    "samples_per_s",
)


def open_run(uri: str, experiment: str, name: str, params: dict, command: str) -> str:
    """Create the parent run (params: the pipeline's parameters; tags: the code revision, and the ``command``
    that started it as its MLflow source)."""
    import mlflow
    from mlflow.entities import Param

    from bevt_core.tracking import lineage

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, sqlite_artifacts(uri))
    commit, dirty = lineage.git_revision()
    run_id = client.create_run(
        exp_id,
        run_name=name,
        tags={
            "bevt.stage": "pipeline",
            "mlflow.source.name": command,
            "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": commit,
            "bevt.git_dirty": str(dirty).lower(),
        },
    ).info.run_id
    flat = [Param(k, v[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(flat), 100):
        client.log_batch(run_id, params=flat[i : i + 100])
    return run_id


def reopen_run(uri: str, run_id: str) -> str:
    """Mark an existing parent run running again (a resumed pipeline run)."""
    import mlflow

    mlflow.MlflowClient(tracking_uri=uri).update_run(run_id, status="RUNNING")
    return run_id


@dataclass
class StageRow:
    name: str  # run name and short id
    stage: str  # which stage ran (its bevt.stage tag)
    label: str  # its run label (scene, camera-motion...), "" when the stage runs once
    run_id: str
    status: str
    seconds: float
    metrics: dict[str, float]
    upstream: list[str]  # run names of the stages whose outputs it read
    artifact_uri: str
    plots: dict[str, bytes] = field(default_factory=dict)  # artifact path -> PNG
    started: float = 0.0  # epoch seconds


def _plots(client, run_id: str) -> dict[str, bytes]:
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set(False)  # a bar per PNG buries the command's own output
    out = {}
    pngs = [a.path for a in client.list_artifacts(run_id) if a.path.endswith(".png")]
    pngs += [a.path for a in client.list_artifacts(run_id, "plots") if a.path.endswith(".png")]
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(pngs):
            local = client.download_artifacts(run_id, path, tmp)
            with open(local, "rb") as f:
                out[path] = f.read()
    return out


def stage_rows(uri: str, parent_run_id: str, plots: bool = True) -> list[StageRow]:
    """The parent's stage runs in the order they started (``plots``: with their PNGs)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    # Stages of one kind share a run name (four shard runs): the short id tells them apart.
    names = {r.info.run_id: f"{r.info.run_name} ({r.info.run_id[:8]})" for r in runs}
    rows = []
    for r in runs:
        upstream = [u for u in r.data.tags.get("bevt.upstream_run_ids", "").split(",") if u]
        end = r.info.end_time or r.info.start_time
        rows.append(
            StageRow(
                names[r.info.run_id],
                r.data.tags.get("bevt.stage", ""),
                r.data.tags.get("bevt.run_label", ""),
                r.info.run_id,
                r.info.status,
                (end - r.info.start_time) / 1000,
                {k: r.data.metrics[k] for k in KEY_METRICS if k in r.data.metrics},
                [names.get(u, u[:8]) for u in upstream],
                r.info.artifact_uri,
                _plots(client, r.info.run_id) if plots else {},
                r.info.start_time / 1000,
            )
        )
    return rows


def render(title: str, rows: list[StageRow], ui: str = "") -> str:
    """The report page; ``ui``: the MLflow UI base URL to link each run (empty: no links)."""
    e = html.escape
    head = (
        "<tr><th>stage</th><th>status</th><th>seconds</th><th>key metrics</th><th>inputs from</th>"
        "<th>run / artifacts</th></tr>"
    )
    body = []
    for r in rows:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in r.metrics.items())
        run = f'<a href="{e(ui)}/#/runs/{e(r.run_id)}">{e(r.run_id)}</a>' if ui else e(r.run_id)
        body.append(
            f"<tr><td>{e(r.name)}</td><td>{e(r.status)}</td><td>{r.seconds:.1f}</td><td>{e(metrics)}</td>"
            f"<td>{e(', '.join(r.upstream))}</td><td>{run}<br><code>{e(r.artifact_uri)}</code></td></tr>"
        )
    figures = []
    for r in rows:
        for path, png in r.plots.items():
            figures.append(
                f"<figure><figcaption>{e(r.name)}: {e(path)}</figcaption>"
                f'<img alt="{e(path)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                "</figure>"
            )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:left;vertical-align:top}img{max-width:100%}figure{margin:1.5em 0}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style>"
        f"</head><body><h1>{e(title)}</h1><table>{head}{''.join(body)}</table><h2>Plots</h2>"
        f"{''.join(figures)}</body></html>"
    )


def close_run(uri: str, parent_run_id: str, failed: bool = False, since: float = 0.0) -> str:
    """Render and log the report on the parent and end it, FAILED if ``failed`` or a stage run started
    after ``since`` (epoch seconds: this attempt, when the parent was reopened) failed; returns the HTML."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    rows = stage_rows(uri, parent_run_id)
    parent = client.get_run(parent_run_id)
    ui = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ""
    page = render(f"{parent.info.run_name} {parent_run_id}", rows, ui)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, REPORT)
        with open(path, "w") as f:
            f.write(page)
        client.log_artifact(parent_run_id, path)
    failed = failed or any(r.status != "FINISHED" for r in rows if r.started >= since)
    client.set_terminated(parent_run_id, status="FAILED" if failed else "FINISHED")
    return page
