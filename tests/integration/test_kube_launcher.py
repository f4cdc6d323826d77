"""The launcher against a fake Kubernetes API server (real HTTP on loopback, scripted answers).

The whole client path runs for real: kubeflow-training's TrainingClient, the kubernetes client,
serialisation, HTTP. The fake records every request, so the test sees the object the launcher
created (it must equal the rendered manifest), the polling, and the delete that cleans up on
success, failure and timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from bevt_core.kube import backends, launcher
from bevt_core.kube import pytorchjob as pj
from tests.services import free_port

JOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/(?P<ns>[^/]+)/pytorchjobs(?:/(?P<name>[^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<pod>[^/]+)/log)?$")
EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$")
GROUP_VERSION = re.compile(r"^/apis/(?P<gv>[^/]+/[^/]+)/?$")


def condition(kind: str, message: str = "") -> dict:
    return {
        "type": kind,
        "status": "True",
        "reason": f"PyTorchJob{kind}",
        "message": message,
        "lastTransitionTime": "2026-11-24T04:00:00Z",
        "lastUpdateTime": "2026-11-24T04:00:00Z",
    }


class FakeKube:
    """Answers the PyTorchJob and pod endpoints; GET of the job walks through ``statuses``."""

    def __init__(
        self, statuses: list[dict], master_log: str = "", failing_gets: int = 0, pods: list[dict] | None = None
    ):
        self.statuses, self.master_log, self.failing_gets = statuses, master_log, failing_gets
        self.pods = pods  # the job's pods; default: its master, Failed
        self.logs: dict[str, str] = {}  # by pod; default: master_log
        self.served = {"kubeflow.org/v1": ("PyTorchJob", "pytorchjobs")}  # discovery: group/version -> kind
        self.requests: list[tuple[str, str, dict | None]] = []
        self.jobs: dict[str, dict] = {}
        self.events: list[dict] = []
        self.gets = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body, content_type="application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((self.command, self.path, body))
                m, p = JOBS.match(url.path), PODS.match(url.path)
                if m and self.command == "POST":
                    fake.jobs[body["metadata"]["name"]] = body
                    return self._reply(201, body)
                if m and m["name"] not in fake.jobs:
                    return self._reply(
                        404,
                        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404},
                    )
                if m and self.command == "GET" and fake.failing_gets:
                    fake.failing_gets -= 1
                    return self._reply(503, {"kind": "Status", "code": 503, "message": "apiserver restarting"})
                if m and self.command == "GET":
                    status = fake.statuses[min(fake.gets, len(fake.statuses) - 1)]
                    fake.gets += 1
                    return self._reply(200, fake.jobs[m["name"]] | {"status": status})
                if m and self.command == "DELETE":
                    return self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                gv = GROUP_VERSION.match(url.path)
                if gv and gv["gv"] not in fake.served:
                    return self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})
                if gv:
                    kind, plural = fake.served[gv["gv"]]
                    resource = {"name": plural, "singularName": "", "namespaced": True, "kind": kind, "verbs": ["get"]}
                    return self._reply(
                        200, {"kind": "APIResourceList", "groupVersion": gv["gv"], "resources": [resource]}
                    )
                if EVENTS.match(url.path):
                    return self._reply(200, {"kind": "EventList", "apiVersion": "v1", "items": fake.events})
                if p and p["pod"] is None:
                    selector = parse_qs(url.query)["labelSelector"][0]
                    name = selector.split(",")[0].split("=")[1]
                    pod = {"metadata": {"name": pj.pod_name(name, "Master", 0)}, "status": {"phase": "Failed"}}
                    items = fake.pods if fake.pods is not None else [pod]
                    return self._reply(200, {"kind": "PodList", "apiVersion": "v1", "items": items})
                if p:
                    return self._reply(200, fake.logs.get(p["pod"], fake.master_log), "text/plain")
                return self._reply(404, {"kind": "Status", "code": 404})

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKube:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def configuration(self):
        from kubernetes import client

        config = client.Configuration()
        config.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return config

    def methods(self) -> list[str]:
        """The requests on PyTorchJobs (not the pods and events the launcher also reads)."""
        return [
            f"{m} {urlparse(p).path.rsplit('/', 1)[-1]}" for m, p, _ in self.requests if JOBS.match(urlparse(p).path)
        ]


def job_spec(**kw) -> pj.JobSpec:
    return pj.JobSpec(
        **(
            {
                "name": "bevt-joint-abc",
                "image": "registry.example/bevt-cuda:1",
                "workers": 2,
                "args": pj.entrypoint("pretrain-joint", "s3://b/cfg.yaml"),
                "secret_env": (pj.SecretEnv("AWS_SECRET_ACCESS_KEY", "bevt-s3", "secret-key"),),
            }
            | kw
        )
    )


RUNNING = {
    "conditions": [condition("Created"), condition("Running")],
    "replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 2}},
}


def run(fake: FakeKube, timeout_s: float = 30, namespace: str = "ml", **kw) -> tuple[launcher.LaunchResult, list[str]]:
    said: list[str] = []
    result = launcher.launch(
        pj.manifest(job_spec()),
        namespace,
        timeout_s=timeout_s,
        poll_s=0.05,
        client_configuration=fake.configuration(),
        say=said.append,
        **kw,
    )
    return result, said


def test_success_creates_exactly_the_rendered_job_reports_states_and_cleans_up():
    statuses = [
        {},
        RUNNING,
        RUNNING,
        {
            "conditions": [condition("Created"), condition("Running"), condition("Succeeded", "done")],
            "replicaStatuses": {"Master": {"succeeded": 1}, "Worker": {"succeeded": 2}},
        },
    ]
    with FakeKube(statuses) as fake:
        result, said = run(fake)
    (post,) = [body for m, _, body in fake.requests if m == "POST"]
    rendered = pj.manifest(job_spec())
    assert post == rendered | {"metadata": rendered["metadata"] | {"namespace": "ml"}}
    assert fake.requests[0][1] == "/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs"
    assert fake.methods() == ["POST pytorchjobs"] + ["GET bevt-joint-abc"] * 4 + ["DELETE bevt-joint-abc"]
    assert result.states == [
        "Pending",
        "Running (Master: 1 active, 0 succeeded, 0 failed, Worker: 2 active, 0 succeeded, 0 failed)",
        "Succeeded (Master: 0 active, 1 succeeded, 0 failed, Worker: 0 active, 2 succeeded, 0 failed)",
    ]
    assert said[0] == "PyTorchJob ml/bevt-joint-abc created" and said[-1] == "PyTorchJob ml/bevt-joint-abc deleted"


def test_failure_raises_with_the_operator_message_and_the_master_log_and_cleans_up():
    log = "\n".join(f"line {i}" for i in range(100)) + "\nRuntimeError: CUDA out of memory\n"
    statuses = [
        RUNNING,
        {
            "conditions": [
                condition("Created"),
                condition("Running"),
                condition("Failed", "PyTorchJob bevt-joint-abc is failed because 1 Master replica(s) failed."),
            ],
            "replicaStatuses": {"Master": {"failed": 1}, "Worker": {"active": 2}},
        },
    ]
    with FakeKube(statuses, master_log=log) as fake, pytest.raises(launcher.JobFailed) as err:
        run(fake)
    text = str(err.value)
    assert "is failed because 1 Master replica(s) failed." in text
    assert "RuntimeError: CUDA out of memory" in text and "line 61" in text and "line 60\n" not in text
    assert fake.methods()[-1] == "DELETE bevt-joint-abc"
    pods = [p for m, p, _ in fake.requests if "/pods" in p]
    assert "labelSelector=training.kubeflow.org%2Fjob-name%3Dbevt-joint-abc" in pods[0]
    assert pods[-1].startswith("/api/v1/namespaces/ml/pods/bevt-joint-abc-master-0/log?container=pytorch")


def test_a_failure_quotes_the_log_of_the_replica_that_failed():
    def pod(name: str, phase: str, exit_code: int = 0, restarts: int = 0) -> dict:
        terminated = {"terminated": {"exitCode": exit_code}} if exit_code else {"running": {}}
        status = {"name": "pytorch", "ready": False, "restartCount": restarts, "image": "i", "imageID": ""}
        return {
            "metadata": {"name": name},
            "status": {"phase": phase, "containerStatuses": [status | {"lastState": terminated}]},
        }

    failed = {"conditions": [condition("Failed", "1 Worker replica(s) failed.")]}
    pods = [
        pod("bevt-joint-abc-master-0", "Running"),
        pod("bevt-joint-abc-worker-0", "Running"),
        pod("bevt-joint-abc-worker-1", "Running", exit_code=137, restarts=2),  # OOM-killed, restarting
    ]
    with (
        FakeKube([failed], master_log="master: waiting for peers", pods=pods) as fake,
        pytest.raises(launcher.JobFailed) as err,
    ):
        fake.logs["bevt-joint-abc-worker-1"] = "worker 1: Killed"
        run(fake)
    assert "log of bevt-joint-abc-worker-1 (last 40 lines):\nworker 1: Killed" in str(err.value)
    assert "waiting for peers" not in str(err.value)


def test_timeout_deletes_the_job_and_raises():
    with (
        FakeKube([RUNNING]) as fake,
        pytest.raises(launcher.JobTimeout, match="not finished after 0 s .last state: Running"),
    ):
        run(fake, timeout_s=0.3)
    assert fake.gets >= 3 and fake.methods()[-1] == "DELETE bevt-joint-abc"


def test_a_job_whose_pods_cannot_be_created_fails_after_the_stall_limit_and_is_deleted():
    """The operator's FailedCreatePod event (here: a quota) is the stall; the real cluster test
    covers the unschedulable pod (test_kube_cluster.py)."""
    quota = 'pods "bevt-joint-abc-master-0" is forbidden: exceeded quota: gpus, requested: nvidia.com/gpu=8'
    with FakeKube([{"conditions": [condition("Created")]}]) as fake:
        fake.events = [
            {
                "metadata": {"name": "bevt-joint-abc.1"},
                "involvedObject": {"kind": "PyTorchJob", "name": "bevt-joint-abc"},
                "reason": "FailedCreatePod",
                "message": quota,
            }
        ]
        start = time.monotonic()
        with pytest.raises(launcher.JobStalled, match=r"cannot start: FailedCreatePod for \d+ s .limit 0 s.: pods"):
            run(fake, timeout_s=60, stall_limit_s=0.3)
        assert time.monotonic() - start < 10
    assert fake.methods()[-1] == "DELETE bevt-joint-abc"
    events = [p for m, p, _ in fake.requests if p.startswith("/api/v1/namespaces/ml/events")]
    assert "fieldSelector=involvedObject.kind%3DPyTorchJob%2CinvolvedObject.name%3Dbevt-joint-abc" in events[0]


def test_the_backend_is_what_the_cluster_serves_or_a_clear_error_before_anything_starts():
    pytorchjobs = {"kubeflow.org/v1": ("PyTorchJob", "pytorchjobs")}
    trainjobs = {"trainer.kubeflow.org/v1alpha1": ("TrainJob", "trainjobs")}
    with FakeKube([]) as fake:
        api = launcher.api_client(fake.configuration())
        fake.served = pytorchjobs | trainjobs
        assert backends.detect(api) is backends.PYTORCHJOB
        assert backends.detect(api, "trainjob") is backends.TRAINJOB
        fake.served = trainjobs  # a Kubeflow 1.11+ install: Trainer v2 only
        assert backends.detect(api, "auto") is backends.TRAINJOB
        with pytest.raises(backends.BackendMissing, match=r"no PyTorchJob \(kubeflow.org/v1\): install the Kubeflow"):
            backends.detect(api, "pytorchjob")
        fake.served = pytorchjobs
        with pytest.raises(
            backends.BackendMissing, match=r"install Kubeflow Trainer v2 .*, or choose backend pytorchjob"
        ):
            backends.detect(api, "trainjob")
        fake.served = {}
        with pytest.raises(backends.BackendMissing, match="neither PyTorchJob .* nor TrainJob"):
            backends.detect(api)
        with pytest.raises(ValueError, match="backend: must be one of auto, pytorchjob, trainjob"):
            backends.detect(api, "mpijob")
    assert not [m for m, _, _ in fake.requests if m != "GET"]


def test_status_read_errors_are_survived_then_given_up_on():
    done = {"conditions": [condition("Succeeded")]}
    with FakeKube([RUNNING, done], failing_gets=3) as fake:
        result, said = run(fake)
    assert result.states[-1] == "Succeeded" and sum("status read failed" in s for s in said) == 3
    with FakeKube([RUNNING], failing_gets=1000) as fake, pytest.raises(RuntimeError, match="Failed to get PyTorchJob"):
        run(fake)
    assert fake.methods()[-1] == "DELETE bevt-joint-abc" and fake.methods().count("GET bevt-joint-abc") == 10


def test_keep_leaves_the_job_for_inspection():
    with FakeKube([{"conditions": [condition("Succeeded")]}]) as fake:
        job = pj.manifest(job_spec())
        launcher.launch(
            job,
            "ml",
            timeout_s=5,
            poll_s=0.05,
            keep=True,
            client_configuration=fake.configuration(),
            say=lambda s: None,
        )
    assert "DELETE bevt-joint-abc" not in fake.methods()


def test_an_invalid_job_never_reaches_the_api():
    job = pj.manifest(job_spec())
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    with FakeKube([RUNNING]) as fake, pytest.raises(pj.InvalidJob, match="Master.replicas: must be 1"):
        launcher.launch(job, "ml", timeout_s=5, client_configuration=fake.configuration(), say=lambda s: None)
    assert fake.requests == []


def test_a_refused_create_is_an_error_and_nothing_is_polled():
    with FakeKube([RUNNING]) as fake:
        fake.jobs["bevt-joint-abc"] = {}
        handler = fake.server.RequestHandlerClass
        original = handler.do_POST

        def conflict(self):
            fake.requests.append(("POST", self.path, None))
            self._reply(
                409, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409}
            )

        handler.do_POST = conflict
        try:
            with pytest.raises(RuntimeError, match="Failed to create PyTorchJob ml/bevt-joint-abc: 409"):
                run(fake)
        finally:
            handler.do_POST = original
    assert fake.methods() == ["POST pytorchjobs"]


RANK_SCRIPT = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
(out / f"rank{os.environ['RANK']}").write_text(f"{os.environ['WORLD_SIZE']} {os.getpid()}")
if sys.argv[2] == "fail" and os.environ["RANK"] == "1":
    sys.exit(3)
if sys.argv[2] == "hang":
    time.sleep(120)
"""


@pytest.mark.parametrize("how", ["ok", "fail", "hang"])
def test_local_torchrun_ranks_failure_and_timeout(tmp_path, how):
    script, out = tmp_path / "ranks.py", tmp_path / "out"
    script.write_text(RANK_SCRIPT)
    out.mkdir()
    args = (str(script), str(out), how)
    if how == "ok":
        launcher.run_local(args, nproc=2, timeout_s=120)
    elif how == "fail":
        with pytest.raises(launcher.JobFailed, match="exited with 1"):
            launcher.run_local(args, nproc=2, timeout_s=120)
    else:
        start = time.monotonic()
        with pytest.raises(launcher.JobTimeout, match="not finished after 8 s; stopped"):
            launcher.run_local(args, nproc=2, timeout_s=8)
        assert time.monotonic() - start < 30
    ranks = {p.name: p.read_text().split() for p in out.iterdir()}
    assert sorted(ranks) == ["rank0", "rank1"] and {w for w, _ in ranks.values()} == {"2"}
    if how == "hang":  # every rank went down with the agent
        time.sleep(0.5)
        for _, pid in ranks.values():
            assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()


def test_without_a_namespace_the_launcher_uses_its_own():
    # No service-account namespace file and no kubeconfig here: TrainingClient's default is "default".
    with FakeKube([{"conditions": [condition("Succeeded")]}]) as fake:
        result, _ = run(fake, timeout_s=5, namespace="")
    assert result.namespace == "default"
    assert fake.requests[0][1] == "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs"


LAUNCH_SCRIPT = """
import sys
from kubernetes import client
from bevt_core.kube import launcher, pytorchjob as pj
config = client.Configuration()
config.host = sys.argv[1]
job = pj.manifest(pj.JobSpec(name="bevt-joint-abc", image="i", args=("-m", "x")))
launcher.launch(job, "ml", timeout_s=300, poll_s=0.1, client_configuration=config)
"""


def test_a_terminated_launcher_deletes_its_job():
    """Kubernetes stops the launcher's pod with SIGTERM when the KFP run is terminated."""
    with FakeKube([RUNNING]) as fake:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH_SCRIPT, fake.configuration().host],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while fake.gets < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert fake.methods()[-1] == "DELETE bevt-joint-abc" and "deleted" in out


def test_a_terminated_local_run_stops_its_ranks(tmp_path):
    script, out = tmp_path / "ranks.py", tmp_path / "out"
    script.write_text(RANK_SCRIPT)
    out.mkdir()
    code = (
        f"from bevt_core.kube import launcher; "
        f"launcher.run_local(({str(script)!r}, {str(out)!r}, 'hang'), nproc=2, timeout_s=300)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(out.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    time.sleep(0.5)
    for rank in out.iterdir():
        pid = rank.read_text().split()[1]
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()
