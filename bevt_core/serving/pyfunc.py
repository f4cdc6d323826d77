"""The finetuned recognizer as an MLflow pyfunc model, and its registration.

Input: a DataFrame with a ``video`` column of video files (paths as the serving process sees them, or
s3:// URIs). Output: ``top_k`` rows per video (a param, default 5): video, rank, class, probability.
``mlflow models serve -m models:/NAME/VERSION --env-manager local`` serves it:
``POST /invocations {"dataframe_records": [{"video": "/data/clip.mp4"}], "params": {"top_k": 3}}``.
The model holds ``recognizer.pt`` (weights, classes, preprocessing recipe), its code as a file
(:mod:`bevt_core.serving.model_code`: nothing is pickled) and a copy of ``bevt_core`` (``code_paths``),
so a registered version keeps running the code it was registered with.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import bevt_core
from bevt_core import storage
from bevt_core.config import ConfigError
from bevt_core.serving.predictor import Predictor
from bevt_core.tracking.datasets import CONTEXT_TAG

TOP_K = 5
COLUMNS = ("video", "rank", "class", "probability")


class VideoClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.predictor = Predictor.load(context.artifacts["weights"], "weights")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("top_k", TOP_K))
        try:
            rows = [
                (video, rank, name, p)
                for video in model_input["video"]
                for rank, (name, p) in enumerate(self.predictor.top_k(video, k), 1)
            ]
        except ConfigError as e:  # a missing or undecodable video: the caller's error (HTTP 400), saying why
            raise MlflowException(str(e), INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame(rows, columns=list(COLUMNS))


def signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", "video")]),
        outputs=Schema(
            [
                ColSpec("string", "video"),
                ColSpec("long", "rank"),
                ColSpec("string", "class"),
                ColSpec("double", "probability"),
            ]
        ),
        params=ParamSchema([ParamSpec("top_k", "long", TOP_K)]),
    )


def requirements() -> list[str]:
    """Pins, as installed here, of what the model's code imports: bevt's dependencies and mlflow."""
    names = [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in metadata.requires("bevt") or []]
    return [f"{name}=={metadata.version(name)}" for name in [*names, "mlflow"]]


TRACKING_ENV = "MLFLOW_TRACKING_URI"


def _run_link(run) -> str:
    """A Markdown link to ``run`` that the MLflow UI resolves (the description is rendered inside the UI)."""
    return f"[{run.info.run_name}](#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}) ({run.info.run_id})"


def version_description(client: mlflow.MlflowClient, run_id: str) -> str:
    """Where a version comes from, read from its finetune run: the run, the pretraining run whose weights it
    started from (the ``bevt.upstream.init`` tag), and the datasets it trained and validated on."""
    run = client.get_run(run_id)
    tags = run.data.tags
    lines = [f"Finetuned in run {_run_link(run)}."]
    if tags.get("bevt.upstream.init"):
        producer = client.get_run(tags["bevt.upstream.init"])
        lines.append(f"Initialised from `{tags['bevt.input.init']}`, written by run {_run_link(producer)}.")
    elif tags.get("bevt.input.init"):
        lines.append(f"Initialised from `{tags['bevt.input.init']}` (no bevt run recorded as its producer).")
    else:
        lines.append("Trained from scratch (no pretrained weights).")
    data = []
    for used in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in used.tags}.get(CONTEXT_TAG, "")
        uri = json.loads(used.dataset.source).get("uri", used.dataset.source)
        data.append(f"- {context}: dataset `{used.dataset.name}` (digest {used.dataset.digest}): `{uri}`")
    return " ".join(lines) + ("\n\nData:\n\n" + "\n".join(data) if data else "")


def register(tracking_uri: str, run_id: str, weights: str, name: str, example_video: str) -> str:
    """Log the model to run ``run_id`` and register it as a new version of ``name``: ``models:/name/version``,
    described by :func:`version_description` (the version's page links to the run through its ``run_id``, too).

    MLflow validates the input example (``example_video``) by loading the logged model and predicting.
    """
    previous, exported = mlflow.get_tracking_uri(), os.environ.get(TRACKING_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        local = weights
        if storage.is_s3(weights):
            local = os.path.join(tmp, "recognizer.pt")
            Path(local).write_bytes(storage.read_bytes(weights))
        mlflow.set_tracking_uri(tracking_uri)  # the fluent API is the only one that logs a model to a run
        try:
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(Path(__file__).with_name("model_code.py")),
                    artifacts={"weights": local},
                    code_paths=[str(Path(bevt_core.__file__).parent)],
                    signature=signature(),
                    input_example=pd.DataFrame({"video": [example_video]}),
                    pip_requirements=requirements(),
                    registered_model_name=name,
                )
            client = mlflow.MlflowClient(tracking_uri)
            client.update_model_version(name, info.registered_model_version, version_description(client, run_id))
        finally:
            mlflow.set_tracking_uri(previous)
            # set_tracking_uri also exports the URI to the environment (for subprocesses): put it back,
            # or every later `tracking_uri: auto` in this process would log to this server.
            if exported is None:
                os.environ.pop(TRACKING_ENV, None)
            else:
                os.environ[TRACKING_ENV] = exported
    return f"models:/{name}/{info.registered_model_version}"
