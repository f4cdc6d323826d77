"""The distributed pipeline step: one training stage as a PyTorchJob, or as torchrun here.

The stage config is validated first (a bad field fails the step before anything is created),
written as YAML beside the stage's outputs (``run.work_dir``), and the stage runs as
``torchrun -m bevt_core.cli STAGE --config URI --result-json URI``, so the pods, the local run
and a user at a shell all run the very same command. The stage's result comes back through the
result file, whichever way it ran.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bevt_core import images, stages, storage
from bevt_core.config import from_dict, to_yaml
from bevt_core.kube import backends, kfp_io, launcher, pytorchjob, trainjob
from bevt_core.kube.manifests import (
    ENV_CONFIG_MAP,
    ENV_KEYS,
    GPU_NODE_SELECTOR,
    GPU_TOLERATIONS,
    TRAINER_ACCOUNT,
    s3_env,
)
from bevt_core.kube.pytorchjob import Elastic, JobSpec, Resources, entrypoint

MODES = ("local", "kubernetes")


@dataclass(frozen=True)
class Placement:
    """Where and how big the distributed step runs."""

    mode: str = "local"  # local: torchrun on this machine; kubernetes: a PyTorchJob or TrainJob
    backend: str = "auto"  # kubernetes: pytorchjob, trainjob, or auto (what the cluster has; PyTorchJob first)
    nodes: int = 1  # kubernetes: Master + (nodes - 1) Workers
    gpus_per_node: int = 0  # kubernetes: GPUs per replica; torchrun starts one rank per GPU
    procs_per_node: int = 1  # ranks per node without GPUs; local mode: always the processes started here
    namespace: str = ""
    image: str = ""  # default: the stage's image from bevt_core.images
    timeout_s: float = 7 * 24 * 3600.0
    stall_timeout_s: float = launcher.STALL_LIMIT_S  # a pod unschedulable (or uncreatable) this long fails the step
    cpu: str = "8"
    memory: str = "64Gi"
    shm_size: str = "16Gi"
    elastic_min_nodes: int = 0  # > 0: elastic between this and `nodes`
    backoff_limit: int = 3
    # Where GPU replicas may run (ignored without GPUs).
    node_selector: tuple[tuple[str, str], ...] = GPU_NODE_SELECTOR
    tolerations: tuple[tuple[str, str, str], ...] = GPU_TOLERATIONS
    extra_env: tuple[tuple[str, str], ...] = ()
    queue_name: str = ""  # Kueue LocalQueue (gang admission)
    volcano_queue: str = ""  # Volcano queue (gang scheduling; PyTorchJob only)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.backend not in backends.CHOICES:
            raise ValueError(f"backend: must be one of {', '.join(backends.CHOICES)}; got {self.backend!r}")
        if self.nodes < 1 or self.procs_per_node < 1 or self.gpus_per_node < 0:
            raise ValueError("nodes and procs_per_node must be >= 1, gpus_per_node >= 0")
        if self.elastic_min_nodes > self.nodes:
            raise ValueError(f"elastic_min_nodes: must be <= nodes ({self.nodes}); got {self.elastic_min_nodes}")

    @property
    def nproc(self) -> int:
        """Ranks per node of the PyTorchJob."""
        return self.gpus_per_node or self.procs_per_node


def job_spec(stage: str, args: tuple[str, ...], p: Placement) -> JobSpec:
    return JobSpec(
        name=f"bevt-{stage}-{uuid.uuid4().hex[:8]}",
        image=p.image or images.for_stage(stage),
        args=args,
        namespace=p.namespace,
        workers=p.nodes - 1,
        nproc_per_node=p.nproc,
        elastic=Elastic(p.elastic_min_nodes, p.nodes) if p.elastic_min_nodes else None,
        backoff_limit=p.backoff_limit,
        resources=Resources(cpu=p.cpu, memory=p.memory, gpus=p.gpus_per_node),
        shm_size=p.shm_size,
        env=p.extra_env,
        secret_env=s3_env(),
        env_config_map=ENV_CONFIG_MAP,
        service_account=TRAINER_ACCOUNT,
        node_selector=p.node_selector if p.gpus_per_node else (),
        tolerations=p.tolerations if p.gpus_per_node else (),
        queue_name=p.queue_name,
        volcano_queue=p.volcano_queue,
    )


def run_stage(
    stage: str, config: dict[str, Any], placement: Placement, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run training stage ``stage`` (a ``bevt`` command) with ``config``; return its result as a dict."""
    cls, _ = stages.command(stage).load()
    cfg = from_dict(cls, config)
    work = cfg.run.work_dir
    config_uri, result_uri = storage.join(work, f"{stage}-config.yaml"), storage.join(work, f"{stage}-result.json")
    storage.make_local_dirs(work)
    storage.write_bytes(config_uri, to_yaml(cfg).encode())
    args = (*entrypoint(stage, config_uri), "--result-json", result_uri)
    if placement.mode == "local":
        launcher.run_local(args, placement.procs_per_node, placement.timeout_s)
    else:
        kind = backends.detect(launcher.api_client(), placement.backend)
        spec = job_spec(stage, args, placement)
        job = pytorchjob.manifest(spec) if kind is backends.PYTORCHJOB else trainjob.manifest(spec, ENV_KEYS)
        launcher.launch(job, placement.namespace, placement.timeout_s, say=say, stall_limit_s=placement.stall_timeout_s)
    return json.loads(storage.read_bytes(result_uri))


@dataclass(frozen=True)
class TrainStep:
    """The settings every distributed training component takes, and what it does with them: run the
    stage where ``mode`` says, note the weights file in the Model artifact, publish the result."""

    mode: str
    epochs: float
    max_steps: int
    batch_size: int
    workers: int
    log_every: int
    tracking_uri: str
    parent_run_id: str
    run_label: str  # the MLflow run is named "STAGE LABEL"
    nodes: int
    min_nodes: int
    gpus_per_node: int
    procs_per_node: int
    namespace: str
    image: str
    timeout_s: float
    stall_timeout_s: float
    backend: str
    queue_name: str
    volcano_queue: str

    @classmethod
    def pick(cls, arguments: dict[str, Any]) -> TrainStep:
        """From a component's ``locals()``: its parameters of these names."""
        return cls(**{f: arguments[f] for f in cls.__dataclass_fields__})

    def location(self, artifact: Any) -> str:
        return kfp_io.location(artifact, self.mode)

    def run(self, stage: str, inputs: dict[str, Any], model: Any, metrics: Any, report: Any) -> None:
        """``inputs``: the stage's data and init fields; the model artifact is its work directory."""
        parameters = vars(self)
        result = run_stage(
            stage,
            inputs
            | kfp_io.training_sections(parameters, self.location(model))
            | {"tracking": kfp_io.tracking_section(parameters)},
            Placement(
                mode=self.mode,
                nodes=self.nodes,
                elastic_min_nodes=self.min_nodes,
                gpus_per_node=self.gpus_per_node,
                procs_per_node=self.procs_per_node,
                namespace=self.namespace,
                image=self.image,
                timeout_s=self.timeout_s,
                stall_timeout_s=self.stall_timeout_s,
                backend=self.backend,
                queue_name=self.queue_name,
                volcano_queue=self.volcano_queue,
            ),
        )
        kfp_io.record_weights(model, result["weights"])
        kfp_io.publish(result, metrics, report, stage)
