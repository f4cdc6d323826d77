"""A ``kubeflow.org/v1`` PyTorchJob from a typed spec, its validation, and the operator's env.

:func:`render` builds the job with the kubeflow-training SDK model classes (one Master, N
Workers, ``nprocPerNode``, optional ``elasticPolicy``, restart/backoff policy, resources incl.
GPUs, volumes incl. a memory-backed ``/dev/shm``, env from Secrets by reference, non-root
security context); :func:`manifest` is the plain dict ``kubectl apply`` and the API server take.

:func:`validate` checks a manifest dict the way the cluster would: the CRD's structure (derived
from the SDK's model classes, which are generated from the same OpenAPI schema: unknown fields,
types, required fields, enums) and the training operator's validating-webhook rules. The CRD
schema does not carry the webhook rules, so a job that passes the schema can still be refused.

:func:`replica_env` computes what the operator injects into each replica's container, from the
manifest alone. The container runs ``torchrun`` with no node arguments: torchrun reads the
``PET_*`` variables as its defaults, so one image runs under the v1 operator, Trainer v2, or a
plain ``torchrun`` on one machine (the local launcher) with the same entrypoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the webhook requires this container name
# Kubeflow profile namespaces inject an Istio sidecar into every pod; a sidecar never exits, so a
# training pod with one never completes and its job never finishes (the operator's docs say so).
POD_ANNOTATIONS = (("sidecar.istio.io/inject", "false"),)
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # the operator labels the job's pods and services with it
PORT_NAME = "pytorchjob-port"  # the operator reads MASTER_PORT from the container port of this name
DEFAULT_PORT = 23456
MASTER, WORKER = "Master", "Worker"
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
CLEAN_POD_POLICIES = ("All", "Running", "None")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Kubernetes limits the names the operator derives (<job>-worker-<i> as a Service name) to 63 chars.
MAX_NAME = 63 - len("-worker-") - 4


class InvalidJob(ValueError):
    """The manifest would be refused by the CRD schema or the operator's webhook."""


@dataclass(frozen=True)
class SecretEnv:
    """One env var taken from a Secret key at pod start; the value never appears in the manifest."""

    env: str
    secret: str
    key: str


@dataclass(frozen=True)
class Volume:
    """A volume mounted into the training container: a PVC, a ConfigMap or an emptyDir."""

    name: str
    mount_path: str
    claim: str = ""  # PersistentVolumeClaim name
    config_map: str = ""
    read_only: bool = False

    def volume(self):
        from kubernetes import client as k

        if self.claim and self.config_map:
            raise ValueError(f"volume {self.name}: give claim or config_map, not both")
        if self.claim:
            return k.V1Volume(
                name=self.name,
                persistent_volume_claim=k.V1PersistentVolumeClaimVolumeSource(
                    claim_name=self.claim, read_only=self.read_only or None
                ),
            )
        if self.config_map:
            return k.V1Volume(name=self.name, config_map=k.V1ConfigMapVolumeSource(name=self.config_map))
        return k.V1Volume(name=self.name, empty_dir=k.V1EmptyDirVolumeSource())


@dataclass(frozen=True)
class Resources:
    """Per-replica container resources. Requests equal limits for memory and GPUs (GPUs cannot
    be overcommitted; memory overcommit gets a training pod OOM-killed mid-run)."""

    cpu: str = "4"
    memory: str = "32Gi"
    gpus: int = 0
    gpu_resource: str = "nvidia.com/gpu"

    def requirements(self) -> dict[str, dict[str, str]]:
        requests = {"cpu": self.cpu, "memory": self.memory}
        limits = {"memory": self.memory}
        if self.gpus:
            requests[self.gpu_resource] = limits[self.gpu_resource] = str(self.gpus)
        return {"requests": requests, "limits": limits}


@dataclass(frozen=True)
class Elastic:
    """torchrun elastic training: the job runs with any node count in [min_nodes, max_nodes] and
    restarts the worker group up to ``max_restarts`` times (PET_MAX_RESTARTS)."""

    min_nodes: int
    max_nodes: int
    max_restarts: int = 3
    rdzv_backend: str = "c10d"


@dataclass(frozen=True)
class JobSpec:
    """Everything that differs between our PyTorchJobs. ``args`` follow ``torchrun`` in the container:
    e.g. ``("-m", "bevt_core.cli", "pretrain-joint", "--config", "s3://.../config.yaml")``."""

    name: str
    image: str
    args: tuple[str, ...]
    namespace: str = ""  # empty: left to kubectl / kustomize
    workers: int = 1  # Worker replicas besides the single Master
    nproc_per_node: int = 1
    elastic: Elastic | None = None
    restart_policy: str = "OnFailure"
    backoff_limit: int = 3
    active_deadline_s: int | None = None
    ttl_after_finished_s: int | None = 3600
    clean_pod_policy: str = "Running"
    resources: Resources = field(default_factory=Resources)
    shm_size: str = "8Gi"  # DataLoader workers pass batches through /dev/shm; the runtime default is 64 MiB
    volumes: tuple[Volume, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    secret_env: tuple[SecretEnv, ...] = ()
    env_config_map: str = ""  # every key of this ConfigMap becomes an env var (endpoints, tracking URI)
    service_account: str = ""
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[tuple[str, str, str], ...] = ()  # (key, value or "" for Exists, effect)
    labels: tuple[tuple[str, str], ...] = ()
    # Gang scheduling, so that a Master cannot hold its GPUs while its Workers wait for theirs:
    # a Kueue LocalQueue (Kueue admits the whole job or nothing), or a Volcano queue (a PodGroup of
    # every replica; the operator must run with --gang-scheduler-name=volcano).
    queue_name: str = ""
    volcano_queue: str = ""
    port: int = DEFAULT_PORT
    run_as_user: int = 1000


def entrypoint(stage: str, config_uri: str) -> tuple[str, ...]:
    """What follows ``torchrun`` in a replica and in the local run: the stage CLI with its config."""
    return ("-m", "bevt_core.cli", stage, "--config", config_uri)


def pod_name(job: str, replica_type: str, index: int) -> str:
    """The operator names pods (and their headless Services, hence the hostnames) like this."""
    return f"{job}-{replica_type.lower()}-{index}"


def _container(spec: JobSpec):
    from kubernetes import client as k

    env = [k.V1EnvVar(name=n, value=v) for n, v in spec.env]
    env += [
        k.V1EnvVar(
            name=s.env, value_from=k.V1EnvVarSource(secret_key_ref=k.V1SecretKeySelector(name=s.secret, key=s.key))
        )
        for s in spec.secret_env
    ]
    mounts = [k.V1VolumeMount(name="dshm", mount_path="/dev/shm")]
    mounts += [
        k.V1VolumeMount(name=v.name, mount_path=v.mount_path, read_only=v.read_only or None) for v in spec.volumes
    ]
    env_from = [k.V1EnvFromSource(config_map_ref=k.V1ConfigMapEnvSource(name=spec.env_config_map))]
    return k.V1Container(
        name=CONTAINER,
        image=spec.image,
        command=["torchrun"],
        args=list(spec.args),
        env=env or None,
        env_from=env_from if spec.env_config_map else None,
        ports=[k.V1ContainerPort(name=PORT_NAME, container_port=spec.port, protocol="TCP")],
        resources=k.V1ResourceRequirements(**spec.resources.requirements()),
        volume_mounts=mounts,
        security_context=k.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=k.V1Capabilities(drop=["ALL"])
        ),
    )


def pod_template(spec: JobSpec, replica_type: str):
    """The pod of one replica type (a kubernetes client model): also what a TrainJob patches in."""
    from kubernetes import client as k

    volumes = [k.V1Volume(name="dshm", empty_dir=k.V1EmptyDirVolumeSource(medium="Memory", size_limit=spec.shm_size))]
    volumes += [v.volume() for v in spec.volumes]
    tolerations = [
        k.V1Toleration(key=key, operator="Equal" if value else "Exists", value=value or None, effect=effect or None)
        for key, value, effect in spec.tolerations
    ]
    labels = dict(spec.labels) | {"app.kubernetes.io/part-of": "bevt", "bevt/replica-type": replica_type.lower()}
    return k.V1PodTemplateSpec(
        metadata=k.V1ObjectMeta(labels=labels, annotations=dict(POD_ANNOTATIONS)),
        spec=k.V1PodSpec(
            containers=[_container(spec)],
            volumes=volumes,
            node_selector=dict(spec.node_selector) or None,
            tolerations=tolerations or None,
            service_account_name=spec.service_account or None,
            security_context=k.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=spec.run_as_user,
                run_as_group=spec.run_as_user,
                fs_group=spec.run_as_user,
                seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"),
            ),
        ),
    )


def job_labels(spec: JobSpec) -> dict[str, str]:
    """The job object's labels (PyTorchJob or TrainJob)."""
    queue = {KUEUE_QUEUE_LABEL: spec.queue_name} if spec.queue_name else {}
    return dict(spec.labels) | {"app.kubernetes.io/part-of": "bevt"} | queue


def render(spec: JobSpec):
    """The job as a kubeflow-training SDK object (what ``TrainingClient.create_job`` takes)."""
    from kubeflow.training import models as m
    from kubernetes import client as k

    replicas = {
        MASTER: m.KubeflowOrgV1ReplicaSpec(
            replicas=1, restart_policy=spec.restart_policy, template=pod_template(spec, MASTER)
        )
    }
    if spec.workers:
        replicas[WORKER] = m.KubeflowOrgV1ReplicaSpec(
            replicas=spec.workers, restart_policy=spec.restart_policy, template=pod_template(spec, WORKER)
        )
    elastic = None
    if spec.elastic is not None:
        e = spec.elastic
        # Rendezvous at the master pod: it always exists, and its Service is what MASTER_ADDR names.
        elastic = m.KubeflowOrgV1ElasticPolicy(
            min_replicas=e.min_nodes,
            max_replicas=e.max_nodes,
            max_restarts=e.max_restarts,
            rdzv_backend=e.rdzv_backend,
            rdzv_host=pod_name(spec.name, MASTER, 0),
            rdzv_port=spec.port,
        )
    job = m.KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=k.V1ObjectMeta(name=spec.name, namespace=spec.namespace or None, labels=job_labels(spec)),
        spec=m.KubeflowOrgV1PyTorchJobSpec(
            pytorch_replica_specs=replicas,
            nproc_per_node=str(spec.nproc_per_node),
            elastic_policy=elastic,
            run_policy=m.KubeflowOrgV1RunPolicy(
                backoff_limit=spec.backoff_limit,
                active_deadline_seconds=spec.active_deadline_s,
                ttl_seconds_after_finished=spec.ttl_after_finished_s,
                clean_pod_policy=spec.clean_pod_policy,
                scheduling_policy=m.KubeflowOrgV1SchedulingPolicy(
                    min_available=spec.workers + 1, queue=spec.volcano_queue
                )
                if spec.volcano_queue
                else None,
            ),
        ),
    )
    validate(to_dict(job))
    return job


def to_dict(job) -> dict[str, Any]:
    from kubeflow.training import ApiClient

    return ApiClient().sanitize_for_serialization(job)


def manifest(spec: JobSpec) -> dict[str, Any]:
    """The job as the plain dict ``kubectl apply`` / the API server take (validated)."""
    return to_dict(render(spec))


# --- validation -----------------------------------------------------------------------------------

_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "datetime": (str,),
    "date": (str,),
}
# Enums the CRD declares that the generated model classes do not encode.
_ENUMS = {
    ("KubeflowOrgV1ReplicaSpec", "restartPolicy"): RESTART_POLICIES,
    ("KubeflowOrgV1RunPolicy", "cleanPodPolicy"): CLEAN_POD_POLICIES,
}


@cache
def _model(name: str):
    from kubeflow.training import models as m
    from kubernetes import client as k

    cls = getattr(m, name, None) or getattr(k, name, None)
    if cls is None:
        raise KeyError(f"no model class {name}")
    return cls


def _refuses_none(cls: type, attribute: str) -> bool:
    from kubernetes.client import Configuration

    blank = cls.__new__(cls)  # no __init__: it would run every setter
    blank.local_vars_configuration = Configuration()  # client_side_validation on
    try:
        setattr(blank, attribute, None)
    except ValueError:
        return True
    return False


@cache
def _required(name: str) -> frozenset[str]:
    """Attributes the generated model refuses as None (its setter raises): the schema's ``required`` list."""
    cls = _model(name)
    return frozenset(a for a in cls.openapi_types if _refuses_none(cls, a))


def _schema_problems(value: Any, tp: str, path: str) -> Iterator[str]:
    if value is None:
        return
    if tp.startswith("list["):
        if not isinstance(value, list):
            yield f"{path}: expected a list, got {type(value).__name__}"
            return
        for i, v in enumerate(value):
            yield from _schema_problems(v, tp[5:-1], f"{path}[{i}]")
        return
    if tp.startswith("dict("):
        if not isinstance(value, dict):
            yield f"{path}: expected a mapping, got {type(value).__name__}"
            return
        inner = tp[len("dict(str, ") : -1]
        for k, v in value.items():
            yield from _schema_problems(v, inner, f"{path}.{k}")
        return
    if tp == "object":
        return
    if tp in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[tp]) and not (tp in ("int", "float") and isinstance(value, bool))
        if not ok:
            yield f"{path}: expected {tp}, got {value!r}"
        return
    if not isinstance(value, dict):
        yield f"{path}: expected an object ({tp}), got {value!r}"
        return
    cls = _model(tp)
    by_json = {j: a for a, j in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in by_json:
            yield f"{path}.{key}: unknown field"
            continue
        allowed = _ENUMS.get((tp, key))
        if allowed and v not in allowed:
            yield f"{path}.{key}: must be one of {', '.join(allowed)}; got {v!r}"
        yield from _schema_problems(v, cls.openapi_types[by_json[key]], f"{path}.{key}")
    for attr in sorted(_required(tp)):
        if value.get(cls.attribute_map[attr]) is None:
            yield f"{path}.{cls.attribute_map[attr]}: required"


def schema_problems(job: Mapping[str, Any]) -> list[str]:
    """Where ``job`` breaks the PyTorchJob v1 schema (the SDK classes mirror the CRD's OpenAPI)."""
    problems = list(_schema_problems(dict(job), "KubeflowOrgV1PyTorchJob", "PyTorchJob"))
    if job.get("apiVersion") != API_VERSION or job.get("kind") != KIND:
        problems.insert(0, f"apiVersion/kind: expected {API_VERSION} {KIND}")
    return problems


def webhook_problems(job: Mapping[str, Any]) -> list[str]:
    """The training operator's validating-webhook rules, which the CRD schema does not express."""
    problems = []
    name = (job.get("metadata") or {}).get("name") or ""
    if not _DNS1035.match(name) or len(name) > MAX_NAME:
        problems.append(
            f"metadata.name: {name!r} must be a DNS-1035 label (lower-case letters, digits, '-', "
            f"starting with a letter) of at most {MAX_NAME} characters"
        )
    spec = job.get("spec") or {}
    replicas = spec.get("pytorchReplicaSpecs")
    if not replicas:
        return problems + ["spec.pytorchReplicaSpecs: required"]
    for rtype, r in replicas.items():
        where = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in (MASTER, WORKER):
            problems.append(f"{where}: replica type must be {MASTER} or {WORKER}")
        count = (r or {}).get("replicas")
        if rtype == MASTER and count != 1:
            problems.append(f"{where}.replicas: must be 1; got {count!r}")
        elif count is not None and count < 1:
            problems.append(f"{where}.replicas: must be at least 1; got {count!r}")
        containers = (((r or {}).get("template") or {}).get("spec") or {}).get("containers") or []
        main = [c for c in containers if c.get("name") == CONTAINER]
        if not main:
            problems.append(f"{where}: needs a container named {CONTAINER!r}")
        elif not main[0].get("image"):
            problems.append(f"{where}: container {CONTAINER!r} needs an image")
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        if WORKER not in replicas:
            problems.append("spec.elasticPolicy: needs a Worker replica spec")
        if spec.get("nprocPerNode") is not None and elastic.get("nProcPerNode") is not None:
            problems.append("spec.elasticPolicy.nProcPerNode: cannot be set together with spec.nprocPerNode")
    return problems


def validate(job: Mapping[str, Any]) -> None:
    problems = schema_problems(job) + webhook_problems(job)
    if problems:
        raise InvalidJob("PyTorchJob would be refused:\n  " + "\n  ".join(problems))


# --- the operator's environment ---------------------------------------------------------------------


def _port(job: Mapping[str, Any], replica_type: str) -> int:
    """The container port named ``pytorchjob-port`` of that replica type (the operator's default 23456)."""
    template = job["spec"]["pytorchReplicaSpecs"][replica_type]["template"]
    for c in template["spec"]["containers"]:
        if c["name"] == CONTAINER:
            for p in c.get("ports") or []:
                if p.get("name") == PORT_NAME:
                    return int(p["containerPort"])
    return DEFAULT_PORT


def _nproc_int(spec: Mapping[str, Any]) -> int:
    # The operator counts WORLD_SIZE with an integer nprocPerNode and 1 for auto/cpu/gpu or unset.
    value = spec.get("nprocPerNode")
    return int(value) if value is not None and str(value).isdigit() else 1


def replica_env(
    job: Mapping[str, Any],
    replica_type: str,
    index: int,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    config_maps: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, str]:
    """The environment of replica ``replica_type``/``index``'s ``pytorch`` container, as the
    kubelet and the training operator (v1) build it: ``envFrom`` sources, the container's own env
    (references resolved from ``secrets`` / ``config_maps``: {name: {key: value}}), then what the
    operator appends (later entries win)."""
    spec = job["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    name = job["metadata"]["name"]
    if replica_type not in replicas or not 0 <= index < replicas[replica_type].get("replicas", 1):
        raise ValueError(f"{name} has no replica {replica_type} {index}")
    container = next(c for c in replicas[replica_type]["template"]["spec"]["containers"] if c["name"] == CONTAINER)
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for kind, store in (("configMapRef", config_maps), ("secretRef", secrets)):
            if kind in source:
                ref = source[kind]["name"]
                if ref not in (store or {}):
                    raise ValueError(f"envFrom: {kind} {ref} not given")
                env |= {source.get("prefix", "") + k: v for k, v in store[ref].items()}
    for e in container.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref is not None:
            try:
                env[e["name"]] = (secrets or {})[ref["name"]][ref["key"]]
            except KeyError:
                raise ValueError(f"env {e['name']}: secret {ref['name']}/{ref['key']} not given") from None
        else:
            env[e["name"]] = e.get("value", "")

    env["PYTHONUNBUFFERED"] = "1"
    nnodes = sum(r.get("replicas", 1) for r in replicas.values())
    if MASTER in replicas:
        port = str(_port(job, MASTER))
        rank = index + 1 if replica_type == WORKER else index
        env |= {
            "MASTER_PORT": port,
            "PET_MASTER_PORT": port,
            "MASTER_ADDR": pod_name(name, MASTER, 0),
            "PET_MASTER_ADDR": pod_name(name, MASTER, 0),
            "WORLD_SIZE": str(nnodes * _nproc_int(spec)),
            "RANK": str(rank),
            "PET_NODE_RANK": str(rank),
        }
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        host = elastic.get("rdzvHost") or pod_name(name, WORKER, 0)
        port = elastic.get("rdzvPort") or _port(job, WORKER)
        env |= {
            "PET_RDZV_ENDPOINT": f"{host}:{port}",
            "PET_RDZV_BACKEND": elastic.get("rdzvBackend") or "c10d",
            "PET_NNODES": f"{elastic.get('minReplicas', nnodes)}:{elastic.get('maxReplicas', nnodes)}",
        }
        if elastic.get("maxRestarts") is not None:
            env["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
        if elastic.get("nProcPerNode") is not None:
            env["PET_NPROC_PER_NODE"] = str(elastic["nProcPerNode"])
    else:
        env["PET_NNODES"] = str(nnodes)
    if spec.get("nprocPerNode") is not None:
        env["PET_NPROC_PER_NODE"] = str(spec["nprocPerNode"])
    return env


def replicas(job: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Every (replica type, index) of the job, the Master first."""
    specs = job["spec"]["pytorchReplicaSpecs"]
    return [(t, i) for t in (MASTER, WORKER) if t in specs for i in range(specs[t].get("replicas", 1))]
