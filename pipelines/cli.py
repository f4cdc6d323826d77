"""``bevt pipeline compile|submit|run-local``: the BEVT KFP pipeline from the command line.

The pipeline's parameters are :class:`~pipelines.params.PipelineParams` (``--params.recipe tiny``, a YAML
``params:`` block), the very fields of the pipeline function. ``compile`` writes the IR YAML; ``submit``
checks that the server's KFP release has what the pipeline relies on and that the cluster serves the training
job kind asked for (pipelines/backend.py), compiles, and starts a run with ``kfp.Client`` (bearer token or
session cookie); ``run-local`` runs the whole pipeline here with KFP's local runner, the distributed steps as
torchrun on this machine. The finetune loop's parallelism is fixed at compile time, so it is a setting of these
actions rather than a pipeline parameter.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bevt_core.config import at_least, option, to_dict
from pipelines.params import PipelineParams

ACTIONS = ("compile", "submit", "run-local")


@dataclass
class PipelineConfig:
    action: str = option(
        help="compile: write the IR YAML; submit: start a run on a KFP server; run-local: run "
        "the whole pipeline here with KFP's local runner.",
        choices=ACTIONS,
    )
    params: PipelineParams | None = option(None, help="Pipeline parameters (submit, run-local).")
    output: str = option("bevt-pipeline.yaml", help="compile: where to write the IR YAML.")
    host: str = option("", help="submit: KFP API endpoint, e.g. https://kubeflow.example.com/pipeline.")
    namespace: str = option("", help="submit: the profile namespace of a multi-user Kubeflow.")
    experiment: str = option(
        "bevt", help="submit: experiment name; run-local: the MLflow experiment of the pipeline's parent run."
    )
    run_name: str = option(
        "", help="submit: run name (default: KFP's); run-local: the MLflow parent run's name (default: pipeline)."
    )
    token: str = option("", help="submit: bearer token; default: $KF_PIPELINES_TOKEN or KFP's own lookup.")
    cookie: str = option(
        "",
        help="submit: session cookie ('authservice_session=...') for Dex/oauth2-proxy "
        "fronted clusters; default: $KF_PIPELINES_COOKIE.",
    )
    service_account: str = option(
        "",
        help="submit: Kubernetes service account of the run's pods (default: KFP's, e.g. a profile's "
        "default-editor; it needs the rules of k8s/launcher-role: README 'Running on Kubeflow').",
    )
    kubeconfig: str = option(
        "",
        help="submit: kubeconfig of the cluster the run goes to; submit checks that it serves "
        "params.training_backend before starting the run. Default: $KUBECONFIG or ~/.kube/config "
        "where there is one, else not checked.",
    )
    pipeline_root: str = option(
        "", help="submit / run-local: where artifacts go (s3://... / a folder; run-local default: a temporary folder)."
    )
    caching: bool = option(True, help="Reuse the outputs of steps already run with the same inputs.")
    finetune_parallelism: int = option(
        1,
        help="Finetune tasks the loop runs at a time (0: all at once). KFP fixes it when it compiles the "
        "pipeline, so it is a setting of compile, submit and run-local, not a run parameter.",
        check=at_least(0),
    )
    check_backend: bool = option(
        True,
        help="submit: refuse a KFP backend older than the pipeline needs (pipelines/backend.py), when its "
        "healthz endpoint tells the version, and a cluster without the training job kind asked for; "
        "--no-check-backend: submit anyway.",
    )

    def check(self) -> str | None:
        if self.action in ("submit", "run-local") and self.params is None:
            return "params: required for " + self.action
        if self.action == "submit" and not self.host:
            return "host: required for submit"
        return None


def compile_pipeline(output: str, finetune_parallelism: int) -> str:
    from kfp import compiler

    compiler.Compiler().compile(_pipeline(finetune_parallelism), output)
    return output


def _pipeline(finetune_parallelism: int):
    # Imported when used: `bevt pipeline --help` needs neither kfp nor the components.
    from pipelines.bevt import bevt_pipeline

    return bevt_pipeline(finetune_parallelism)


def arguments(params: PipelineParams) -> dict[str, Any]:
    return to_dict(params)


@dataclass
class Submitted:
    run_id: str
    backend: str  # what is known of the KFP backend's version


def submit(cfg: PipelineConfig) -> Submitted:
    import os

    import kfp

    from pipelines import backend

    client = kfp.Client(
        host=cfg.host,
        namespace=cfg.namespace or "kubeflow",
        existing_token=cfg.token or os.environ.get("KF_PIPELINES_TOKEN") or None,
        cookies=cfg.cookie or os.environ.get("KF_PIPELINES_COOKIE") or None,
    )
    if cfg.check_backend:
        version = backend.read_version(client)
        backend.check(version, cfg.host)
        known = f"KFP backend {version}" if version else "KFP backend version not reported, not checked"
        known += "; " + backend.check_training_jobs(cfg.kubeconfig, cfg.params.training_backend)
    else:
        known = "KFP backend and training backend not checked"
    with tempfile.TemporaryDirectory() as tmp:
        compiled = compile_pipeline(str(Path(tmp) / "bevt-pipeline.yaml"), cfg.finetune_parallelism)
        run = client.create_run_from_pipeline_package(
            set_caching(compiled, cfg.caching),
            arguments=arguments(cfg.params),
            run_name=cfg.run_name or None,
            experiment_name=cfg.experiment,
            namespace=cfg.namespace or None,
            pipeline_root=cfg.pipeline_root or None,
            service_account=cfg.service_account or None,
        )
    return Submitted(run.run_id, known)


def pipeline_dags(spec: dict) -> list[dict]:
    """The compiled pipeline's DAGs: the root one and the finetune loop's."""
    return [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]


def set_caching(package: str, enabled: bool) -> str:
    """Turn every step's cache on or off in the compiled ``package``. kfp.Client's ``enable_caching``
    reaches only the root DAG's steps and would leave the finetune loop's caching as compiled."""
    import yaml

    spec, *platform = yaml.safe_load_all(Path(package).read_text())
    for task in (t for dag in pipeline_dags(spec) for t in dag["tasks"].values() if "cachingOptions" in t):
        task["cachingOptions"]["enableCache"] = enabled
    Path(package).write_text(yaml.safe_dump_all([spec, *platform], sort_keys=False))
    return package


def _run_pipeline(finetune_parallelism: int, arguments: dict[str, Any]) -> None:
    """The pipeline on KFP's local runner. The runner swaps ``print`` for an indenting one around each task and
    puts its own back after; two tasks of a ParallelFor running at once can leave the indenting one behind."""
    import builtins

    original = builtins.print
    try:
        _pipeline(finetune_parallelism)(**arguments)
    finally:
        builtins.print = original


@dataclass
class LocalRun:
    root: str  # the pipeline root: every step's artifacts, KFP's step cache, report.html
    tracking_uri: str = ""  # empty: tracking off
    parent_run_id: str = ""
    report: str = ""  # the report's path (also logged on the parent run)


def run_local(cfg: PipelineConfig) -> LocalRun:
    """Run the pipeline here; with tracking on, inside one parent MLflow run that ends with the report.
    A given ``params.parent_run_id`` is reopened: a rerun with the same parameters and parent then finds
    every step that finished before in KFP's cache under the pipeline root, and does only the rest."""
    import os
    import time

    from kfp import local

    from bevt_core.tracking import pipeline_run as report
    from bevt_core.tracking.tracker import resolve_uri

    root = cfg.pipeline_root or tempfile.mkdtemp(prefix="bevt-kfp-")
    # The runner prints every step's log: MLflow's download bars (model registration) would fill it.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, enable_caching=cfg.caching)
    args = arguments(cfg.params) | {"distributed_mode": "local"}
    # One store for every step (auto would give each training step its own SQLite file).
    uri = resolve_uri(cfg.params.tracking_uri, root)
    if not uri:
        _run_pipeline(cfg.finetune_parallelism, args)
        return LocalRun(root)
    if cfg.params.parent_run_id:
        parent = report.reopen_run(uri, cfg.params.parent_run_id)
    else:
        parent = report.open_run(uri, cfg.experiment, cfg.run_name or "pipeline", args, "bevt pipeline run-local")
    args |= {"tracking_uri": uri, "parent_run_id": parent}
    started = time.time()
    failed = True
    try:
        _run_pipeline(cfg.finetune_parallelism, args)
        failed = False
    finally:
        page = report.close_run(uri, parent, failed, since=started)
        path = Path(root) / report.REPORT
        path.write_text(page)
    return LocalRun(root, uri, parent, str(path))


@dataclass
class PipelineResult:
    action: str
    detail: str

    def summary(self) -> str:
        return f"pipeline {self.action}: {self.detail}"


def run(cfg: PipelineConfig) -> PipelineResult:
    if cfg.action == "compile":
        return PipelineResult("compile", f"wrote {compile_pipeline(cfg.output, cfg.finetune_parallelism)}")
    if cfg.action == "submit":
        r = submit(cfg)
        return PipelineResult("submit", f"run {r.run_id} started on {cfg.host} ({r.backend})")
    done = run_local(cfg)
    if not done.tracking_uri:
        return PipelineResult("run-local", f"finished; outputs under {done.root}")
    return PipelineResult(
        "run-local",
        f"finished; outputs under {done.root}, MLflow run {done.parent_run_id} "
        f"in {done.tracking_uri}, report {done.report}",
    )
