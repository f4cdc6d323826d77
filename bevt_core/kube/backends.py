"""The two kinds of training job a cluster may offer, and how to read each one's state.

- ``PyTorchJob`` (``kubeflow.org/v1``): the Kubeflow training operator v1, installed by
  kubeflow/manifests up to 1.10. Conditions Created, Running, Restarting, Succeeded, Failed;
  ``status.replicaStatuses`` per replica type.
- ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``): Kubeflow Trainer v2, installed by
  kubeflow/manifests 1.11 and later instead. Conditions Complete, Failed, Suspended;
  ``status.jobsStatus`` per replicated job of its JobSet.

:func:`detect` asks the API server which of them it serves (discovery needs no RBAC beyond what
every authenticated account has) and picks one, or checks the one asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bevt_core.kube import pytorchjob, trainjob

CHOICES = ("auto", "pytorchjob", "trainjob")


class BackendMissing(RuntimeError):
    """The cluster does not serve the job kind asked for (or neither kind, with ``auto``)."""


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str
    version: str
    plural: str
    pod_label: str  # the label its pods carry with the job's name
    container: str  # the training container in its pods
    succeeded: str  # the condition type of success
    install: str  # what provides it

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


PYTORCHJOB = Kind(
    "PyTorchJob",
    "kubeflow.org",
    "v1",
    "pytorchjobs",
    pytorchjob.JOB_NAME_LABEL,
    pytorchjob.CONTAINER,
    "Succeeded",
    "the Kubeflow training operator v1 (kubeflow/training-operator v1.9: manifests/overlays/standalone)",
)
TRAINJOB = Kind(
    "TrainJob",
    trainjob.GROUP,
    trainjob.VERSION,
    trainjob.PLURAL,
    trainjob.JOB_NAME_LABEL,
    trainjob.NODE,
    "Complete",
    "Kubeflow Trainer v2 (kubeflow/trainer v2.3: manifests/overlays/manager, and manifests/overlays/runtimes "
    "for the torch-distributed ClusterTrainingRuntime)",
)
KINDS = {"pytorchjob": PYTORCHJOB, "trainjob": TRAINJOB}
BY_KIND = {k.kind: k for k in KINDS.values()}


def served(api_client, kind: Kind) -> bool:
    """Whether the API server serves ``kind`` (its group/version lists the resource)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        resources = client.CustomObjectsApi(api_client).get_api_resources(kind.group, kind.version)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return any(r.name == kind.plural for r in resources.resources)


def detect(api_client, choice: str = "auto") -> Kind:
    """The job kind to use. ``auto``: PyTorchJob where the cluster has it (it also does elastic
    training), else TrainJob. An explicit choice the cluster lacks, or neither kind, fails here,
    before anything is created, saying what to install."""
    if choice not in CHOICES:
        raise ValueError(f"backend: must be one of {', '.join(CHOICES)}; got {choice!r}")
    candidates = [KINDS[choice]] if choice != "auto" else [PYTORCHJOB, TRAINJOB]
    for kind in candidates:
        if served(api_client, kind):
            return kind
    if choice != "auto":
        kind = KINDS[choice]
        other = next(name for name in KINDS if name != choice)
        raise BackendMissing(
            f"this cluster has no {kind.kind} ({kind.api_version}): install {kind.install}, or choose backend {other}"
        )
    raise BackendMissing(
        f"this cluster has neither {PYTORCHJOB.kind} ({PYTORCHJOB.api_version}) nor {TRAINJOB.kind} "
        f"({TRAINJOB.api_version}): install {PYTORCHJOB.install} or {TRAINJOB.install}"
    )


def _true_conditions(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]


def _counts(job: dict[str, Any]) -> dict[str, dict[str, int]]:
    status = job.get("status") or {}
    if job["kind"] == TRAINJOB.kind:
        return {j["name"]: j for j in status.get("jobsStatus") or []}
    return status.get("replicaStatuses") or {}


def state(job: dict[str, Any]) -> str:
    """The job's newest true condition, or Running / Pending before it has one, and its counts:
    ``Running (Master: 1 active, 0 succeeded, 0 failed, Worker: ...)``."""
    conditions = _true_conditions(job)
    counts = _counts(job)
    if conditions:
        name = conditions[-1]["type"]
    else:
        name = "Running" if any(c.get("active") for c in counts.values()) else "Pending"
    text = ", ".join(
        f"{t}: {c.get('active') or 0} active, {c.get('succeeded') or 0} succeeded, {c.get('failed') or 0} failed"
        for t, c in sorted(counts.items())
    )
    return name + (f" ({text})" if text else "")


def outcome(job: dict[str, Any]) -> str | None:
    """ "succeeded", "failed", or None while it runs."""
    kind = BY_KIND[job["kind"]]
    types = {c["type"] for c in _true_conditions(job)}
    if kind.succeeded in types:
        return "succeeded"
    if "Failed" in types:
        return "failed"
    return None


def failure_message(job: dict[str, Any]) -> str:
    failed = [c for c in _true_conditions(job) if c["type"] == "Failed"]
    return (failed[-1].get("message") or failed[-1].get("reason") or "") if failed else ""
