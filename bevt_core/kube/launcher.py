"""Run a distributed stage: as a PyTorchJob on the cluster, or as ``torchrun`` on this machine.

Both run the same command, ``torchrun -m bevt_core.cli STAGE --config URI``, and torchrun is told
the topology only through ``PET_*`` variables: on the cluster the training operator sets them
(see :func:`bevt_core.kube.pytorchjob.replica_env`), locally :func:`run_local` does.

:func:`launch` creates the job through the kubeflow-training SDK, reports each change of its
state and replica counts, returns on ``Succeeded``, raises :class:`JobFailed` (with the
operator's message and the tail of the master's log) on ``Failed``, raises :class:`JobStalled`
when a pod cannot be scheduled, or the operator cannot create one, for longer than the stall limit
(with the scheduler's or operator's message), raises :class:`JobTimeout` past its deadline, and
deletes the job in every case (pods go with it) unless asked to keep it.
The Kubernetes client is only constructed inside, so importing this needs no cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bevt_core.kube.pytorchjob import JOB_NAME_LABEL, to_dict, validate

LOG_TAIL = 40  # lines of the master's log quoted in a failure
# How long a pod may stay unschedulable (or uncreatable) before the launcher gives up: long enough
# for a cluster autoscaler to add a GPU node, short enough that a job asking for what the cluster
# does not have fails the same hour, not after the days-long training timeout.
STALL_LIMIT_S = 20 * 60.0
STALL_REASONS = ("FailedCreate", "FailedCreatePod", "FailedCreateService")  # the operator's events
STOP_GRACE_S = 30.0  # a timed-out local torchrun gets this long to stop its ranks
MAX_POLL_ERRORS = 10  # consecutive failed status reads before the launcher gives up on the API server


class JobFailed(RuntimeError):
    """The PyTorchJob (or the local torchrun) ended in failure."""


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


def _state(job) -> str:
    """The job's newest true condition (Created, Running, Restarting, Succeeded, Failed) and counts."""
    status = job.status
    conditions = [c for c in (status.conditions if status else None) or [] if c.status == "True"]
    state = conditions[-1].type if conditions else "Pending"
    replicas = (status.replica_statuses if status else None) or {}
    counts = ", ".join(
        f"{t}: {r.active or 0} active, {r.succeeded or 0} succeeded, {r.failed or 0} failed"
        for t, r in sorted(replicas.items())
    )
    return f"{state}" + (f" ({counts})" if counts else "")


def _failure_message(job) -> str:
    failed = [c for c in (job.status.conditions or []) if c.type == "Failed" and c.status == "True"]
    return (failed[-1].message or failed[-1].reason or "") if failed else ""


def _master_log_tail(client, name: str, namespace: str) -> str:
    try:
        logs, _ = client.get_job_logs(name, namespace, is_master=True)
    except Exception as e:  # noqa: BLE001 -- the failure itself is what must reach the user
        return f"(master log unavailable: {e})"
    return "\n".join("\n".join(text.splitlines()[-LOG_TAIL:]) for text in logs.values())


class _Stalls:
    """Since when each obstacle to starting the job has been seen: a pod the scheduler cannot place
    (its PodScheduled condition is False with reason Unschedulable) or an operator event saying it
    could not create a pod or service. An obstacle that goes away is forgotten."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.since: dict[str, float] = {}

    def check(self, client, name: str, namespace: str, now: float, say: Callable[[str], None]) -> str | None:
        """The message of an obstacle older than the limit, else None. A failed read (an API
        server blip, a Role without pods or events) is said and skipped: the job's own status
        still decides."""
        from kubernetes.client.rest import ApiException

        try:
            seen = dict(_unschedulable_pods(client, name, namespace)) | dict(_failed_creates(client, name, namespace))
        except ApiException as e:
            say(f"PyTorchJob {namespace}/{name}: cannot read its pods and events ({e.status} {e.reason})")
            return None
        self.since = {what: self.since.get(what, now) for what in seen}
        for what, first in self.since.items():
            if now - first >= self.limit_s:
                return f"{what} for {now - first:.0f} s (limit {self.limit_s:.0f} s): {seen[what]}"
        return None


def _unschedulable_pods(client, name: str, namespace: str):
    pods = client.core_api.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={name}")
    for pod in pods.items:
        for c in (pod.status.conditions if pod.status else None) or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                yield f"pod {pod.metadata.name} unschedulable", c.message or c.reason


def _failed_creates(client, name: str, namespace: str):
    events = client.core_api.list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind=PyTorchJob,involvedObject.name={name}"
    )
    for e in events.items:
        if e.reason in STALL_REASONS:
            yield f"{e.reason}", e.message or e.reason


def launch(
    job,
    namespace: str,
    timeout_s: float,
    poll_s: float = 10.0,
    keep: bool = False,
    client_configuration: Any = None,
    say: Callable[[str], None] = print,
    stall_limit_s: float = STALL_LIMIT_S,
) -> LaunchResult:
    """Create ``job`` (a kubeflow-training ``KubeflowOrgV1PyTorchJob``) and wait for its end.

    ``namespace`` empty: the launcher pod's own (or the kubeconfig context's), as ``TrainingClient``
    picks it. ``client_configuration``: a ``kubernetes.client.Configuration``; None uses the
    in-cluster service account or ~/.kube/config. ``stall_limit_s``: how long a pod may stay
    unschedulable, or uncreatable, before the job is given up (:class:`JobStalled`)."""
    from kubeflow.training import TrainingClient

    validate(to_dict(job))  # refuse locally what the API server or webhook would refuse
    name = job.metadata.name
    client = TrainingClient(
        client_configuration=client_configuration, **({"namespace": namespace} if namespace else {})
    )
    namespace = client.namespace
    start = time.monotonic()
    result = LaunchResult(name, namespace, 0.0)
    client.create_job(job=job, namespace=namespace)
    say(f"PyTorchJob {namespace}/{name} created")
    stalls = _Stalls(stall_limit_s)
    errors = 0
    previous = _raise_on_sigterm()
    try:
        while True:
            try:
                current = client.get_job(name, namespace)
                errors = 0
            except (RuntimeError, TimeoutError) as e:
                # An API server restart or network blip must not kill a days-long job: keep polling.
                errors += 1
                say(f"PyTorchJob {namespace}/{name}: status read failed ({errors}/{MAX_POLL_ERRORS}): {e}")
                if errors >= MAX_POLL_ERRORS:
                    raise
                time.sleep(poll_s)
                continue
            state = _state(current)
            if not result.states or state != result.states[-1]:
                result.states.append(state)
                say(f"PyTorchJob {namespace}/{name}: {state} after {time.monotonic() - start:.0f} s")
            if state.startswith("Succeeded"):
                result.seconds = time.monotonic() - start
                return result
            if state.startswith("Failed"):
                raise JobFailed(
                    f"PyTorchJob {namespace}/{name} failed: {_failure_message(current)}\n"
                    f"master log (last {LOG_TAIL} lines):\n{_master_log_tail(client, name, namespace)}"
                )
            # Also while Running: the Master may run while a Worker waits for a node.
            stalled = stalls.check(client, name, namespace, time.monotonic(), say)
            if stalled:
                raise JobStalled(f"PyTorchJob {namespace}/{name} cannot start: {stalled}")
            if time.monotonic() - start > timeout_s:
                raise JobTimeout(
                    f"PyTorchJob {namespace}/{name} not finished after {timeout_s:.0f} s (last state: {state}); deleted"
                )
            time.sleep(poll_s)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if not keep:
            try:
                client.delete_job(name, namespace)
                say(f"PyTorchJob {namespace}/{name} deleted")
            except RuntimeError as e:  # already gone (e.g. deleted by a user): nothing left to clean
                say(f"PyTorchJob {namespace}/{name}: delete failed: {e}")


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
