"""MLflow tracking from rank 0: the whole config as params, per-step metrics, artifacts, lineage.

``auto`` means ``$MLFLOW_TRACKING_URI`` when set (what the k8s ConfigMap and a user's shell set),
else a SQLite file in the (local) work directory, browsable with
``mlflow ui --backend-store-uri sqlite:///<work_dir>/mlflow.db``. Other ranks get a tracker that
does nothing, so call sites need no rank checks.

A stage run can be nested under a pipeline run (``parent_run_id``: MLflow's ``mlflow.parentRunId``
tag); it then goes in the parent's experiment so the UI shows them together. :func:`stage_run`
wraps a whole stage: the run, its lineage tags (:mod:`bevt_core.tracking.lineage`), its final status and
the producer record beside the outputs that lets the next stage name this run as its upstream.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bevt_core import storage

PARENT_TAG = "mlflow.parentRunId"
# Short enough that a one-minute CPU run records a handful of points, long enough to cost nothing.
SYSTEM_METRICS_INTERVAL_S = 2.0


def resolve_uri(setting: str, work_dir: str | None) -> str:
    """The tracking URI of ``setting`` ('' = tracking off). ``work_dir`` None: no SQLite fallback
    (data stages must not put a database among their outputs)."""
    if setting.lower() == "none":
        return ""
    if setting != "auto":
        return setting
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if work_dir is None or storage.is_s3(work_dir):
        return ""  # no local file to put SQLite in; give a tracking URI for a server
    os.makedirs(work_dir, exist_ok=True)
    return "sqlite:///" + os.path.abspath(os.path.join(work_dir, "mlflow.db"))


def sqlite_artifacts(uri: str) -> str | None:
    """Artifact root for a SQLite store: beside the database (MLflow's default is ./mlruns of
    whatever the working directory is). A server keeps its own artifact root: None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :]).parent.joinpath("mlartifacts").resolve().as_uri()


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


class Tracker:
    """A no-op unless enabled; :func:`start` makes the real one."""

    run_id: str = ""
    failed: str = ""  # why the stage failed without raising (e.g. too many rejects): the run ends FAILED

    def mark_failed(self, reason: str) -> None:
        self.failed = reason

    @property
    def history(self) -> list[dict[str, float]]:
        """Every :meth:`metrics` call as ``{'step': step, **values}``, in order."""
        return []

    def metrics(self, values: dict[str, float], step: int) -> None:
        pass

    def artifact(self, path: str, folder: str | None = None) -> None:
        pass

    def artifact_bytes(self, name: str, data: bytes) -> None:
        pass

    def artifact_text(self, name: str, text: str) -> None:
        pass

    def tags(self, values: dict[str, str]) -> None:
        pass

    def datasets(self, inputs: list) -> None:
        """Log MLflow ``DatasetInput``s (:mod:`bevt_core.tracking.datasets`)."""

    def finish(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker(Tracker):
    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        params: dict[str, Any],
        artifact_location: str | None = None,
        parent_run_id: str = "",
        system_metrics: bool = False,
    ):
        import mlflow
        from mlflow.entities import Param

        self.uri = uri
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        if parent_run_id:
            exp_id = self.client.get_run(parent_run_id).info.experiment_id
        else:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment, artifact_location)
        tags = {PARENT_TAG: parent_run_id} if parent_run_id else None
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        self._history: list[dict[str, float]] = []
        flat = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):  # the backend's batch limit
            self.client.log_batch(self.run_id, params=flat[i : i + 100])
        self._monitor = None
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # The client API has no log_system_metrics switch (that is fluent start_run's); the
            # monitor it would start takes a run id and a URI, so it works with ours.
            self._monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, samples_before_logging=1, tracking_uri=uri
            )
            self._monitor.start()

    @property
    def history(self) -> list[dict[str, float]]:
        return self._history

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        kept = {k: float(v) for k, v in values.items() if v is not None}
        if kept:
            self._history.append({"step": step, **kept})
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in kept.items()])

    def artifact(self, path: str, folder: str | None = None) -> None:
        if storage.is_s3(path):
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, os.path.basename(path))
                with open(local, "wb") as f:
                    f.write(storage.read_bytes(path))
                self.client.log_artifact(self.run_id, local, folder)
        else:
            self.client.log_artifact(self.run_id, path, folder)

    def artifact_bytes(self, name: str, data: bytes) -> None:
        folder, _, base = name.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, base)
            with open(local, "wb") as f:
                f.write(data)
            self.client.log_artifact(self.run_id, local, folder or None)

    def artifact_text(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def tags(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            self.client.set_tag(self.run_id, k, v)

    def datasets(self, inputs: list) -> None:
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)

    def finish(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            self._monitor.finish()
        self.client.set_terminated(self.run_id, status=status)


def start(
    setting: str,
    work_dir: str | None,
    experiment: str,
    run_name: str,
    params: dict,
    main: bool,
    parent_run_id: str = "",
    system_metrics: bool = False,
) -> Tracker:
    uri = resolve_uri(setting, work_dir) if main else ""
    if not uri:
        return Tracker()
    return MlflowTracker(uri, experiment, run_name, params, sqlite_artifacts(uri), parent_run_id, system_metrics)
