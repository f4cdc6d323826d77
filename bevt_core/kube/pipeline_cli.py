"""``bevt pipeline compile|submit|run-local``: the BEVT KFP pipeline from the command line.

:class:`PipelineParams` are the pipeline's run-time parameters (``pipelines/bevt.py`` declares
the same names and defaults; a test keeps them equal), so ``--params.recipe tiny`` and a YAML
``params:`` block work like any stage option. ``compile`` writes the IR YAML; ``submit`` compiles
and starts a run on a KFP server with ``kfp.Client`` (bearer token or session cookie);
``run-local`` runs the whole pipeline here with KFP's local runner, the distributed steps as
torchrun on this machine.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bevt_core.config import at_least, non_empty, option, to_dict

ACTIONS = ("compile", "submit", "run-local")
REPO = Path(__file__).resolve().parents[2]  # pipelines/ and components/ sit beside bevt_core/


@dataclass
class FinetuneTask:
    """One downstream task: its videos are sharded, the pretrained model finetuned on them, evaluated and
    optionally registered. The pipeline runs every task in a ParallelFor."""

    run_label: str = option(help="Short name of the task (scene, ssv2...): labels its steps' MLflow runs "
                            "('finetune scene').", check=non_empty)
    train_list: str = option(help="Training video list (K400-style 'path label' lines; local or s3://).",
                             check=non_empty)
    val_list: str = option(help="Validation video list (also evaluated).", check=non_empty)
    root: str = option("", help="Folder or s3:// prefix both lists are relative to (default: each list's folder).")
    classes: str = option("", help="Class names in label order (one per line, or JSON; local or s3://): what the "
                          "evaluation and the registered model report. Default: the labels themselves.")
    preset: str = option("k400-swin-b", help="Finetune and evaluate preset (bevt finetune --help).")
    frame_interval: int = option(2, help="Frame stride of this task's shards (K400: 2, SSv2: 1).",
                                 check=at_least(1))
    register_as: str = option("", help="Register the finetuned model in the MLflow model registry under this name "
                              "(`bevt predict --model models:/NAME/VERSION`). Empty: don't register.")


@dataclass
class PipelineParams:
    pretrain_videos: str = option(help="Pretraining video list (K400-style 'path label' lines; local or s3://).",
                                  check=non_empty)
    images: str = option(help="Image list for the image stream.", check=non_empty)
    finetune_tasks: list[FinetuneTask] = option(help="The downstream tasks, each a mapping of the FinetuneTask "
                                                "fields (bevt_core/kube/pipeline_cli.py); give them in --config.")
    videos_root: str = option("", help="Folder or s3:// prefix the pretraining video list is relative to (default: "
                              "the list's folder).")
    images_root: str = option("", help="Folder or s3:// prefix the image list is relative to.")
    recipe: str = option("swin-b", help="Pretraining preset of pretrain-image and pretrain-joint (swin-b, tiny).",
                         choices=("swin-b", "tiny"))
    tokenizer: str = option("dalle", help="dalle (needs tokenizer_weights) or codebook (fitted on the data).",
                            choices=("dalle", "codebook"))
    tokenizer_weights: str = option("", help="DALL-E encoder.pkl URI.")
    tokenizer_sha256: str = option("", help="Pin the SHA-256 of tokenizer_weights.")
    views: int = option(4, help="Augmentation views tokenized per sample.", check=at_least(1))
    crop: int = option(224, help="Training crop in pixels (the tokenizer grid follows it; tiny: 64).",
                       check=at_least(16))
    codebook_size: int = option(1024, help="Codebook entries when tokenizer=codebook.", check=at_least(2))
    pretrain_frame_interval: int = option(8, help="Frame stride of the pretraining shards.", check=at_least(1))
    short_side: int = option(320, help="Short side of stored frames.", check=at_least(0))
    image_epochs: float = option(0.0, help="pretrain-image epochs (0: the preset's).", check=at_least(0.0))
    joint_epochs: float = option(0.0, help="pretrain-joint epochs (0: the preset's).", check=at_least(0.0))
    finetune_epochs: float = option(0.0, help="finetune epochs (0: the preset's).", check=at_least(0.0))
    max_steps: int = option(0, help="Stop every training stage after this many steps (0: all epochs).",
                            check=at_least(0))
    nodes: int = option(1, help="Nodes of the pretrain-joint PyTorchJob.", check=at_least(1))
    min_nodes: int = option(0, help="> 0: pretrain-joint is elastic (torchrun c10d rendezvous) between this many "
                            "nodes and `nodes`.", check=at_least(0))
    finetune_nodes: int = option(1, help="Nodes of the finetune PyTorchJob.", check=at_least(1))
    gpus_per_node: int = option(8, help="GPUs per node of the PyTorchJobs (one rank each).", check=at_least(0))
    procs_per_node: int = option(1, help="Ranks per node of pretrain-joint without GPUs (run-local: processes).",
                                 check=at_least(1))
    finetune_procs_per_node: int = option(1, help="Ranks per node of each finetune step without GPUs (run-local: "
                                          "processes; the tasks' finetunes already run side by side).",
                                          check=at_least(1))
    distributed_mode: str = option("kubernetes", help="How the distributed steps run: a PyTorchJob, or torchrun "
                                   "in the step's own container.", choices=("kubernetes", "local"))
    namespace: str = option("", help="Namespace of the PyTorchJobs (default: the launcher's).")
    trainer_image: str = option("", help="Image of the PyTorchJobs (default: bevt_core.kube.images).")
    tracking_uri: str = option("auto", help="MLflow tracking URI of every stage (k8s: http://bevt-mlflow:5000; "
                               "run-local: auto is $MLFLOW_TRACKING_URI, else a sqlite file in the pipeline root).")
    parent_run_id: str = option("", help="MLflow run every stage run nests under. run-local creates one when "
                                "tracking is on; given, run-local reopens it, and a rerun with the same parameters "
                                "and parent resumes: the steps done before come from the cache.")
    workers: int = option(2, help="DataLoader workers per rank.", check=at_least(0))

    def check(self) -> str | None:
        if not self.finetune_tasks:
            return "finetune_tasks: give at least one task"
        labels = [t.run_label for t in self.finetune_tasks]
        if len(set(labels)) != len(labels):
            return f"finetune_tasks: run_label must differ between tasks; got {labels}"
        return None


@dataclass
class PipelineConfig:
    action: str = option(help="compile: write the IR YAML; submit: start a run on a KFP server; run-local: run "
                         "the whole pipeline here with KFP's local runner.", choices=ACTIONS)
    params: PipelineParams | None = option(None, help="Pipeline parameters (submit, run-local).")
    output: str = option("bevt-pipeline.yaml", help="compile: where to write the IR YAML.")
    host: str = option("", help="submit: KFP API endpoint, e.g. https://kubeflow.example.com/pipeline.")
    namespace: str = option("", help="submit: the profile namespace of a multi-user Kubeflow.")
    experiment: str = option("bevt", help="submit: experiment name; run-local: the MLflow experiment of the "
                             "pipeline's parent run.")
    run_name: str = option("", help="submit: run name (default: KFP's); run-local: the MLflow parent run's name "
                           "(default: pipeline).")
    token: str = option("", help="submit: bearer token; default: $KF_PIPELINES_TOKEN or KFP's own lookup.")
    cookie: str = option("", help="submit: session cookie ('authservice_session=...') for Dex/oauth2-proxy "
                         "fronted clusters; default: $KF_PIPELINES_COOKIE.")
    service_account: str = option("", help="submit: Kubernetes service account of the run's pods (bind it to "
                                  "k8s/base's bevt-launcher Role).")
    pipeline_root: str = option("", help="submit / run-local: where artifacts go (s3://... / a folder; "
                                "run-local default: a temporary folder).")
    caching: bool = option(True, help="Reuse the outputs of steps already run with the same inputs.")

    def check(self) -> str | None:
        if self.action in ("submit", "run-local") and self.params is None:
            return "params: required for " + self.action
        if self.action == "submit" and not self.host:
            return "host: required for submit"
        return None


def compile_pipeline(output: str) -> str:
    from kfp import compiler

    compiler.Compiler().compile(_pipeline(), output)
    return output


def _pipeline():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from pipelines.bevt import bevt_pipeline

    return bevt_pipeline


def arguments(params: PipelineParams) -> dict[str, Any]:
    return to_dict(params)


def submit(cfg: PipelineConfig) -> Any:
    import os

    import kfp

    client = kfp.Client(host=cfg.host, namespace=cfg.namespace or "kubeflow",
                        existing_token=cfg.token or os.environ.get("KF_PIPELINES_TOKEN") or None,
                        cookies=cfg.cookie or os.environ.get("KF_PIPELINES_COOKIE") or None)
    with tempfile.TemporaryDirectory() as tmp:
        package = set_caching(compile_pipeline(str(Path(tmp) / "bevt-pipeline.yaml")), cfg.caching)
        return client.create_run_from_pipeline_package(
            package, arguments=arguments(cfg.params), run_name=cfg.run_name or None,
            experiment_name=cfg.experiment, namespace=cfg.namespace or None, pipeline_root=cfg.pipeline_root or None,
            service_account=cfg.service_account or None)


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

    from bevt_core.reports import pipeline as report
    from bevt_core.train.tracking import resolve_uri

    root = cfg.pipeline_root or tempfile.mkdtemp(prefix="bevt-kfp-")
    # The runner prints every step's log: MLflow's download bars (model registration) would fill it.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, enable_caching=cfg.caching)
    args = arguments(cfg.params) | {"distributed_mode": "local"}
    # One store for every step (auto would give each training step its own SQLite file).
    uri = resolve_uri(cfg.params.tracking_uri, root)
    if not uri:
        _pipeline()(**args)
        return LocalRun(root)
    if cfg.params.parent_run_id:
        parent = report.reopen_run(uri, cfg.params.parent_run_id)
    else:
        parent = report.open_run(uri, cfg.experiment, cfg.run_name or "pipeline", args)
    args |= {"tracking_uri": uri, "parent_run_id": parent}
    started = time.time()
    failed = True
    try:
        _pipeline()(**args)
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
        return PipelineResult("compile", f"wrote {compile_pipeline(cfg.output)}")
    if cfg.action == "submit":
        r = submit(cfg)
        return PipelineResult("submit", f"run {r.run_id} started on {cfg.host}")
    done = run_local(cfg)
    if not done.tracking_uri:
        return PipelineResult("run-local", f"finished; outputs under {done.root}")
    return PipelineResult("run-local", f"finished; outputs under {done.root}, MLflow run {done.parent_run_id} "
                          f"in {done.tracking_uri}, report {done.report}")
