"""Run a distributed stage: as a training job on the cluster, or as ``torchrun`` on this machine.

Both run the same command, ``torchrun -m bevt_core.cli STAGE --config URI``, and torchrun is told
the topology only through ``PET_*`` variables: on the cluster the training operator (PyTorchJob)
or Trainer's torch plugin (TrainJob) sets them (see :func:`bevt_core.kube.pytorchjob.replica_env`
and :mod:`bevt_core.kube.trainjob`), locally :func:`run_local` does.

:func:`launch` creates the job (a PyTorchJob or TrainJob manifest) through the API server, reports
each change of its state and replica counts, returns on success, raises :class:`JobFailed` (with
the job's message and the tail of the failing replica's log) on failure, raises
:class:`JobStalled` when a pod cannot be scheduled, or cannot be created, for longer than the
stall limit (with the scheduler's or controller's message), raises :class:`JobTimeout` past its
deadline, and deletes the job in every case (pods go with it) unless asked to keep it. Run inside
a pod (a KFP launcher step), it makes that pod the job's owner, so a launcher killed without a
chance to clean up still takes its job, and the GPUs, with it. The Kubernetes client is only
constructed inside, so importing this needs no cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bevt_core.kube import backends
from bevt_core.kube.pytorchjob import validate

LOG_TAIL = 40  # lines of the failing replica's log quoted in a failure
STOP_GRACE_S = 30.0  # a timed-out local torchrun gets this long to stop its ranks
MAX_POLL_ERRORS = 10  # consecutive failed status reads before the launcher gives up on the API server
# How long a pod may stay unschedulable (or uncreatable) before the launcher gives up: long enough
# for a cluster autoscaler to add a GPU node, short enough that a job asking for what the cluster
# does not have fails the same hour, not after the days-long training timeout.
STALL_LIMIT_S = 20 * 60.0
# Events that say a controller could not create a pod or service: the training operator's on its
# PyTorchJob, the Job controller's on a TrainJob's Jobs.
STALL_REASONS = ("FailedCreate", "FailedCreatePod", "FailedCreateService")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class JobFailed(RuntimeError):
    """The training job (or the local torchrun) ended in failure."""


class JobTimeout(TimeoutError):
    """The job did not finish within the launcher's timeout; it has been deleted."""


class JobStalled(JobFailed):
    """A pod of the job could not be scheduled, or created, for longer than the stall limit."""


@dataclass
class LaunchResult:
    name: str
    namespace: str
    seconds: float
    states: list[str] = field(default_factory=list)  # every reported state, in order


@dataclass(frozen=True)
class _Api:
    """The clients one launch uses, and the job it watches."""

    kind: backends.Kind
    name: str
    namespace: str
    objects: Any  # kubernetes CustomObjectsApi
    core: Any  # kubernetes CoreV1Api

    @property
    def where(self) -> str:
        return f"{self.kind.kind} {self.namespace}/{self.name}"

    def create(self, job: dict[str, Any]) -> None:
        k = self.kind
        self.objects.create_namespaced_custom_object(k.group, k.version, self.namespace, k.plural, job)

    def get(self) -> dict[str, Any]:
        k = self.kind
        return self.objects.get_namespaced_custom_object(k.group, k.version, self.namespace, k.plural, self.name)

    def delete(self) -> None:
        k = self.kind
        self.objects.delete_namespaced_custom_object(k.group, k.version, self.namespace, k.plural, self.name)

    def pods(self) -> list[Any]:
        selector = f"{self.kind.pod_label}={self.name}"
        return self.core.list_namespaced_pod(self.namespace, label_selector=selector).items


def api_client(configuration: Any = None):
    """A kubernetes ApiClient: ``configuration`` if given, else the pod's service account, else
    the kubeconfig."""
    from kubernetes import client, config

    if configuration is not None:
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def default_namespace() -> str:
    """The launcher pod's own namespace, else the kubeconfig context's, else ``default``."""
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    from kubernetes import config

    with contextlib.suppress(config.ConfigException, KeyError, TypeError):
        _, context = config.list_kube_config_contexts()
        return context["context"].get("namespace") or "default"
    return "default"


def own_pod(core, namespace: str, say: Callable[[str], None]) -> dict[str, Any] | None:
    """An ownerReference to the pod this runs in (KFP's launcher step), when it runs in one in
    ``namespace``: deleting that pod then garbage-collects the job. None elsewhere."""
    from kubernetes.client.rest import ApiException

    if not SERVICE_ACCOUNT_NAMESPACE.exists():
        return None
    if SERVICE_ACCOUNT_NAMESPACE.read_text().strip() != namespace:
        say(f"the job runs in {namespace}, not in this pod's namespace: it cannot be this pod's dependent")
        return None
    name = os.environ.get("BEVT_POD_NAME") or socket.gethostname()
    try:
        pod = core.read_namespaced_pod(name, namespace)
    except ApiException as e:
        say(f"cannot read this pod ({name}: {e.status} {e.reason}): the job will not be owned by it")
        return None
    return pod_owner(name, pod.metadata.uid)


def pod_owner(name: str, uid: str) -> dict[str, Any]:
    # Not a controller reference: the job's own controller (the operator, Trainer) is that.
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "blockOwnerDeletion": False}


class _Stalls:
    """Since when each obstacle to starting the job has been seen: a pod the scheduler cannot place
    (its PodScheduled condition is False with reason Unschedulable) or an event saying a pod or
    service could not be created. An obstacle that goes away is forgotten."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.since: dict[str, float] = {}

    def check(self, api: _Api, now: float, say: Callable[[str], None]) -> str | None:
        """The message of an obstacle older than the limit, else None. A failed read (an API
        server blip, a Role without pods or events) is said and skipped: the job's own status
        still decides."""
        from kubernetes.client.rest import ApiException

        try:
            seen = dict(_unschedulable_pods(api)) | dict(_failed_creates(api))
        except ApiException as e:
            say(f"{api.where}: cannot read its pods and events ({e.status} {e.reason})")
            return None
        self.since = {what: self.since.get(what, now) for what in seen}
        for what, first in self.since.items():
            if now - first >= self.limit_s:
                return f"{what} for {now - first:.0f} s (limit {self.limit_s:.0f} s): {seen[what]}"
        return None


def _unschedulable_pods(api: _Api) -> Iterator[tuple[str, str]]:
    for pod in api.pods():
        for c in (pod.status.conditions if pod.status else None) or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                yield f"pod {pod.metadata.name} unschedulable", c.message or c.reason


def _failed_creates(api: _Api) -> Iterator[tuple[str, str]]:
    # PyTorchJob: the operator's events on the job. TrainJob: the Job controller's on its Jobs,
    # which the JobSet names "<trainjob>-<replicated job>-<index>".
    kind = "Job" if api.kind is backends.TRAINJOB else api.kind.kind
    selector = f"involvedObject.kind={kind}" + (f",involvedObject.name={api.name}" if kind != "Job" else "")
    for e in api.core.list_namespaced_event(api.namespace, field_selector=selector).items:
        if e.reason in STALL_REASONS and (kind != "Job" or e.involved_object.name.startswith(f"{api.name}-")):
            yield f"{e.reason}", e.message or e.reason


def _failing_pod(pods: list[Any]) -> Any | None:
    """The pod whose log explains a failure: a failed one, else one whose container exited
    non-zero or restarted most, else the first (the master, node 0)."""

    def badness(pod) -> tuple[int, int]:
        statuses = (pod.status.container_statuses if pod.status else None) or []
        exited = any(
            (s.state and s.state.terminated and s.state.terminated.exit_code)
            or (s.last_state and s.last_state.terminated and s.last_state.terminated.exit_code)
            for s in statuses
        )
        failed = pod.status is not None and pod.status.phase == "Failed"
        return (2 if failed else 1 if exited else 0, max((s.restart_count or 0 for s in statuses), default=0))

    if not pods:
        return None
    pods = sorted(pods, key=lambda p: p.metadata.name)
    return max(pods, key=badness)


def _log_tail(api: _Api) -> str:
    from kubernetes.client.rest import ApiException

    try:
        pod = _failing_pod(api.pods())
    except ApiException as e:
        return f"(pods unavailable: {e.status} {e.reason})"
    if pod is None:
        return "(no pod left to read a log from)"
    name = pod.metadata.name
    try:
        log = api.core.read_namespaced_pod_log(name, api.namespace, container=api.kind.container, tail_lines=LOG_TAIL)
    except ApiException as e:
        return f"log of {name}: unavailable ({e.status} {e.reason})"
    return f"log of {name} (last {LOG_TAIL} lines):\n" + "\n".join(str(log).splitlines()[-LOG_TAIL:])


def launch(
    job: dict[str, Any],
    namespace: str,
    timeout_s: float,
    poll_s: float = 10.0,
    keep: bool = False,
    client_configuration: Any = None,
    say: Callable[[str], None] = print,
    stall_limit_s: float = STALL_LIMIT_S,
    owner: dict[str, Any] | None = None,
) -> LaunchResult:
    """Create ``job`` (a PyTorchJob or TrainJob manifest) and wait for its end.

    ``namespace`` empty: the launcher pod's own (or the kubeconfig context's).
    ``client_configuration``: a ``kubernetes.client.Configuration``; None uses the in-cluster
    service account or ~/.kube/config. ``stall_limit_s``: how long a pod may stay unschedulable,
    or uncreatable, before the job is given up (:class:`JobStalled`). ``owner``: an ownerReference
    for the job; None makes the launcher's own pod the owner when it runs in one."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError  # the API server unreachable (after the client's retries)

    kind = backends.BY_KIND[job["kind"]]
    if kind is backends.PYTORCHJOB:
        validate(job)  # refuse locally what the API server or webhook would refuse
    namespace = namespace or default_namespace()
    api_client_ = api_client(client_configuration)
    api = _Api(
        kind, job["metadata"]["name"], namespace, client.CustomObjectsApi(api_client_), client.CoreV1Api(api_client_)
    )
    owner = owner or own_pod(api.core, namespace, say)
    metadata = job["metadata"] | {"namespace": namespace}
    if owner:
        metadata["ownerReferences"] = [owner]
    start = time.monotonic()
    result = LaunchResult(api.name, namespace, 0.0)
    try:
        api.create(job | {"metadata": metadata})
    except ApiException as e:
        raise RuntimeError(f"Failed to create {api.where}: {e.status} {e.reason}: {_message(e)}") from None
    say(f"{api.where} created" + (f", owned by pod {owner['name']}" if owner else ""))
    stalls = _Stalls(stall_limit_s)
    errors = 0
    previous = _raise_on_sigterm()
    try:
        while True:
            try:
                current = api.get()
                errors = 0
            except (ApiException, OSError, HTTPError) as e:
                # An API server restart or network blip must not kill a days-long job: keep polling.
                errors += 1
                say(f"{api.where}: status read failed ({errors}/{MAX_POLL_ERRORS}): {e}")
                if errors >= MAX_POLL_ERRORS:
                    raise RuntimeError(f"Failed to get {api.where}: {e}") from None
                time.sleep(poll_s)
                continue
            state = backends.state(current)
            if not result.states or state != result.states[-1]:
                result.states.append(state)
                say(f"{api.where}: {state} after {time.monotonic() - start:.0f} s")
            done = backends.outcome(current)
            if done == "succeeded":
                result.seconds = time.monotonic() - start
                return result
            if done == "failed":
                raise JobFailed(f"{api.where} failed: {backends.failure_message(current)}\n{_log_tail(api)}")
            # Also while Running: the Master may run while a Worker waits for a node.
            stalled = stalls.check(api, time.monotonic(), say)
            if stalled:
                raise JobStalled(f"{api.where} cannot start: {stalled}")
            if time.monotonic() - start > timeout_s:
                raise JobTimeout(f"{api.where} not finished after {timeout_s:.0f} s (last state: {state}); deleted")
            time.sleep(poll_s)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if not keep:
            try:
                api.delete()
                say(f"{api.where} deleted")
            except ApiException as e:  # already gone (e.g. deleted by a user): nothing left to clean
                say(f"{api.where}: delete failed: {e.status} {e.reason}")


def _message(e) -> str:
    """The API server's message from an ApiException's JSON body (the body itself otherwise)."""
    with contextlib.suppress(ValueError, TypeError, KeyError):
        return json.loads(e.body)["message"]
    return str(e.body or e.reason)


def _raise_on_sigterm():
    """Make SIGTERM (what Kubernetes sends the launcher's pod when a KFP run is terminated) unwind
    through ``finally``, so the job and its GPUs are released instead of left running. Returns the
    previous handler, or None off the main thread (where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_env(nproc: int, port: int | None = None) -> dict[str, str]:
    """What the operator would inject for a one-node job, pointed at this machine."""
    port = str(port or _free_port())
    return {
        "PET_NNODES": "1",
        "PET_NODE_RANK": "0",
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": port,
    }


def torchrun_command(args: tuple[str, ...]) -> list[str]:
    """``torchrun ARGS`` with this interpreter (the venv's torchrun, whatever PATH says)."""
    return [sys.executable, "-m", "torch.distributed.run", *args]


def run_local(args: tuple[str, ...], nproc: int = 1, timeout_s: float | None = None) -> float:
    """Run ``torchrun ARGS`` here with ``nproc`` processes; returns seconds, raises on failure."""
    # A launcher that itself runs under torchrun must not pass its own topology down.
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PET_", "MASTER_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    start = time.monotonic()
    proc = subprocess.Popen(torchrun_command(args), env=inherited | local_env(nproc), start_new_session=True)
    previous = _raise_on_sigterm()
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise JobTimeout(f"torchrun {' '.join(args)} not finished after {timeout_s:.0f} s; stopped") from None
    except BaseException:  # terminated or interrupted: the ranks (own session) must not outlive us
        _stop(proc)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if code:
        raise JobFailed(f"torchrun {' '.join(args)} exited with {code}")
    return time.monotonic() - start


def _stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the torchrun agent, which stops its ranks (they run in their own process groups,
    out of reach of a group kill), then SIGKILL whatever is left of the agent's group."""
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
