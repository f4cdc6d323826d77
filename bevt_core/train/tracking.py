"""MLflow tracking from rank 0: the whole config as params, per-step metrics, artifacts.

The default store is a SQLite file in the (local) work directory, browsable with
``mlflow ui --backend-store-uri sqlite:///<work_dir>/mlflow.db``. Other ranks get a tracker
that does nothing, so call sites need no rank checks.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bevt_core.data import storage


def resolve_uri(setting: str, work_dir: str) -> str:
    if setting.lower() == "none":
        return ""
    if setting != "auto":
        return setting
    if storage.is_s3(work_dir):
        return ""  # no local file to put SQLite in; give --run.tracking-uri for a server
    os.makedirs(work_dir, exist_ok=True)
    return "sqlite:///" + os.path.abspath(os.path.join(work_dir, "mlflow.db"))


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

    def metrics(self, values: dict[str, float], step: int) -> None:
        pass

    def artifact(self, path: str) -> None:
        pass

    def artifact_text(self, name: str, text: str) -> None:
        pass

    def tags(self, values: dict[str, str]) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker(Tracker):
    def __init__(self, uri: str, experiment: str, run_name: str, params: dict[str, Any],
                 artifact_location: str | None = None):
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment, artifact_location)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        from mlflow.entities import Param

        flat = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):  # the backend's batch limit
            self.client.log_batch(self.run_id, params=flat[i:i + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def artifact(self, path: str) -> None:
        if storage.is_s3(path):
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, os.path.basename(path))
                with open(local, "wb") as f:
                    f.write(storage.read_bytes(path))
                self.client.log_artifact(self.run_id, local)
        else:
            self.client.log_artifact(self.run_id, path)

    def artifact_text(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def tags(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            self.client.set_tag(self.run_id, k, v)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def start(setting: str, work_dir: str, experiment: str, run_name: str, params: dict, main: bool) -> Tracker:
    uri = resolve_uri(setting, work_dir) if main else ""
    if not uri:
        return Tracker()
    # With a SQLite store MLflow would put artifacts under ./mlruns of whatever the working directory
    # is; keep them beside the database instead. A server keeps its own artifact root.
    artifacts = None
    if uri.startswith("sqlite:///"):
        artifacts = Path(uri[len("sqlite:///"):]).parent.joinpath("mlartifacts").resolve().as_uri()
    return MlflowTracker(uri, experiment, run_name, params, artifacts)
