"""Our Kubernetes objects on a real control plane (tests/cluster.py): the real kube-apiserver with
RBAC and service-account tokens, the scheduler, the controller-manager's garbage collector, kwok's
fake 8-GPU nodes and the Kubeflow training operator v1.9 with its validating webhook.

kwok runs no containers: a pod "runs" for a while and then ends as its annotations say
(``kwok.bevt.dev/outcome``, k8s/cluster/kwok-pod-stages.yaml). So this checks everything up to
the container (admission, the operator's pods, services and environment, scheduling, the job's
life and the launcher's view of it); what runs inside is tested by test_kube_contract.py.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bevt_core.kube import backends, launcher, manifests, step, trainjob
from bevt_core.kube import pytorchjob as pj
from tests.cluster import KWOK_EXIT_CODE, KWOK_OUTCOME, KWOK_REASON, KWOK_RUN_DURATION, Cluster
from tests.unit.test_kube_pytorchjob import SCHEMA_CASES, WEBHOOK_CASES, mutated

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ARGS = pj.entrypoint("pretrain-joint", "s3://bevt/cfg.yaml")
S3_KEYS = {"access-key": "AK", "secret-key": "SK"}
ENV = {"AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": "http://bevt-mlflow:5000"}


def wait_for(check: Callable[[], object], what: str, timeout_s: float = 90, every_s: float = 0.5):
    """Poll ``check`` until it returns something truthy (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s:.0f} s: {what} (last: {value!r})")
        time.sleep(every_s)


def get(cluster: Cluster, *args: str):
    """``kubectl get ... -o json`` as the admin, parsed; None when it is not there."""
    proc = cluster.kubectl("get", *args, "-o", "json", check=False)
    if proc.returncode and "NotFound" in proc.stderr:
        return None
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def apply(cluster: Cluster, objects: list[dict], *args: str):
    return cluster.kubectl("apply", "--server-side", *args, "-f", "-", input=yaml.safe_dump_all(objects))


@pytest.fixture
def namespace(kube_cluster) -> str:
    """A fresh namespace with what the rendered jobs reference: the bevt-s3 Secret, the bevt-env
    ConfigMap, the launcher's Role and account, the trainer's account (k8s/base's RBAC)."""
    ns = f"t-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", ns)
    kube_cluster.kubectl(
        "-n", ns, "create", "secret", "generic", "bevt-s3", *(f"--from-literal={k}={v}" for k, v in S3_KEYS.items())
    )
    kube_cluster.kubectl(
        "-n", ns, "create", "configmap", "bevt-env", *(f"--from-literal={k}={v}" for k, v in ENV.items())
    )
    for rbac in ("-k", "launcher-role"), ("-k", "trainer-account"), ("-f", "base/rbac.yaml"):
        kube_cluster.kubectl("-n", ns, "apply", "--server-side", rbac[0], str(REPO / "k8s" / rbac[1]))
    yield ns
    kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def job_status(cluster: Cluster, ns: str, name: str, kind: str = "pytorchjob") -> str:
    """The job's newest true condition, or "" before it has one."""
    job = get(cluster, "-n", ns, kind, name)
    conditions = [c for c in ((job or {}).get("status") or {}).get("conditions") or [] if c["status"] == "True"]
    return conditions[-1]["type"] if conditions else ""


def job_pods(cluster: Cluster, ns: str, name: str) -> dict[str, dict]:
    pods = get(cluster, "-n", ns, "pods", "-l", f"{pj.JOB_NAME_LABEL}={name}")["items"]
    return {p["metadata"]["name"]: p for p in pods if not p["metadata"].get("deletionTimestamp")}


def annotate(job: dict, replica_type: str, **annotations: str) -> dict:
    """The pods of ``replica_type`` end as ``annotations`` tell kwok (outcome, run-duration...)."""
    keys = {
        "outcome": KWOK_OUTCOME,
        "run_duration": KWOK_RUN_DURATION,
        "exit_code": KWOK_EXIT_CODE,
        "reason": KWOK_REASON,
    }
    template = job["spec"]["pytorchReplicaSpecs"][replica_type]["template"]
    template.setdefault("metadata", {}).setdefault("annotations", {}).update(
        {keys[k]: v for k, v in annotations.items()}
    )
    return job


def cpu_job(name: str, ns: str, **kw) -> dict:
    """A job as the pipeline's launcher renders it (bevt_core.kube.step), CPU, Master + 2 Workers."""
    placement = step.Placement(mode="kubernetes", nodes=3, namespace=ns, cpu="1", memory="1Gi", shm_size="1Gi")
    spec = step.job_spec("pretrain-joint", ARGS, placement)
    return pj.manifest(pj.JobSpec(**(vars(spec) | {"name": name} | kw)))


# --- admission ---------------------------------------------------------------------------------------


def test_the_dev_overlay_applies_and_its_pretraining_job_succeeds(kube_cluster):
    """k8s/README.md's steps, as a user runs them: namespace and Secrets, the services, then one job."""
    k = kube_cluster
    k.kubectl("create", "namespace", "bevt-dev")
    for name, data in {"bevt-s3": S3_KEYS, "bevt-postgres": {"username": "mlflow", "password": "p"}}.items():
        k.kubectl(
            "-n", "bevt-dev", "create", "secret", "generic", name, *(f"--from-literal={a}={b}" for a, b in data.items())
        )
    k.kubectl("-n", "bevt-dev", "create", "secret", "generic", "bevt-seaweedfs", "--from-literal=s3.json={}")
    overlay = REPO / "k8s" / "overlays" / "dev"
    # As README says: the overlay (services and ConfigMaps; it starts no job), then the pretraining job.
    k.kubectl("apply", "--server-side", "-k", str(overlay))
    assert not get(k, "-n", "bevt-dev", "pytorchjobs")["items"]
    k.kubectl("apply", "--server-side", "-k", str(overlay / "pretrain-joint"))
    # The finetuning job is admitted (the webhook sees it) but waits for pretraining to finish.
    k.kubectl("apply", "--server-side", "--dry-run=server", "-k", str(overlay / "finetune"))
    wait_for(lambda: job_status(k, "bevt-dev", "bevt-pretrain-joint") == "Succeeded", "bevt-pretrain-joint Succeeded")
    assert get(k, "-n", "bevt-dev", "pytorchjob", "bevt-finetune") is None
    # The same on Trainer v2: the TrainJob kustomizations, in the same order.
    k.kubectl("apply", "--server-side", "-k", str(overlay / "trainjobs" / "pretrain-joint"))
    k.kubectl("apply", "--server-side", "--dry-run=server", "-k", str(overlay / "trainjobs" / "finetune"))
    wait_for(
        lambda: job_status(k, "bevt-dev", "bevt-pretrain-joint", "trainjob") == "Complete",
        "TrainJob bevt-pretrain-joint Complete",
    )
    # The servers' Deployments come up on the CPU node; the GPU nodes' taint keeps them off those.
    k.kubectl("-n", "bevt-dev", "wait", "deployment", "--all", "--for=condition=Available", "--timeout=90s")
    pods = get(k, "-n", "bevt-dev", "pods", "-l", "!training.kubeflow.org/job-name")["items"]
    assert {p["spec"]["nodeName"] for p in pods} == set(k.cpu_nodes)


def test_the_gpu_overlay_is_admitted(kube_cluster):
    kube_cluster.kubectl("create", "namespace", "bevt")
    overlay = REPO / "k8s" / "overlays" / "gpu"
    jobs = [overlay / "pretrain-joint", overlay / "finetune", *(overlay / "trainjobs" / s for s in manifests.STAGES)]
    for kustomization in (overlay, *jobs):
        kube_cluster.kubectl(
            "apply", "--server-side", "--dry-run=server", "--validate=strict", "-k", str(kustomization)
        )


# 8 GPUs per node, placed as the gpu overlay places them.
GPU = {
    "resources": pj.Resources(cpu="8", memory="64Gi", gpus=8),
    "node_selector": (("nvidia.com/gpu.present", "true"),),
    "tolerations": (("nvidia.com/gpu", "", "NoSchedule"),),
    "nproc_per_node": 8,
}


@pytest.mark.parametrize(
    "kw",
    [
        {},
        GPU,
        {"elastic": pj.Elastic(min_nodes=2, max_nodes=3)},
        {"queue_name": "gpu-team", "volcano_queue": "training"},
    ],
    ids=["cpu", "gpu", "elastic", "gang"],
)
def test_every_rendered_job_is_admitted(kube_cluster, namespace, kw):
    job = cpu_job("bevt-admitted", namespace, **kw)
    out = kube_cluster.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-o", "json", "-f", "-", input=json.dumps(job)
    )
    stored = json.loads(out.stdout)
    # Nothing of ours was dropped or defaulted away by the CRD's structural schema.
    assert (
        stored["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["env"]
        == (job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["env"])
    )


# What our own validation refuses that the real webhook lets through, and why ours is stricter.
STRICTER_THAN_THE_WEBHOOK = {
    # The operator names each replica's pod and Service "<job>-worker-<i>"; a Service name must be a
    # DNS-1035 label of at most 63 characters, so a 60-character job can never get its Workers.
    "b" * 60: "the Services of its replicas would exceed 63 characters"
}


@pytest.mark.parametrize("change, message", WEBHOOK_CASES)
def test_the_operator_webhook_refuses_what_our_check_refuses(kube_cluster, namespace, change, message):
    job = mutated(change)
    job["metadata"]["namespace"] = namespace
    assert pj.webhook_problems(job)  # ours refuses it (tests/unit/test_kube_pytorchjob.py)
    proc = kube_cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(job), check=False)
    if job["metadata"]["name"] in STRICTER_THAN_THE_WEBHOOK:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode != 0, f"admitted: {message}"
    assert "denied the request" in proc.stderr or "is invalid" in proc.stderr, proc.stderr


# What the CRD's schema lets through and only our check refuses, and what the operator then does
# with it (test_what_only_our_schema_check_refuses_breaks_the_job shows both on the cluster).
ADMITTED_BY_THE_SCHEMA = {
    "restartPolicy: must be one of Always, OnFailure": "copied into the pod, which the API server refuses",
    "cleanPodPolicy: must be one of": "treated as All: even the finished master's pod is deleted",
}


@pytest.mark.parametrize("change, message", SCHEMA_CASES)
def test_the_api_server_refuses_what_our_schema_check_refuses(kube_cluster, namespace, change, message):
    job = mutated(change)
    job["metadata"]["namespace"] = namespace
    assert pj.schema_problems(job)
    proc = kube_cluster.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(job), check=False
    )
    if message in ADMITTED_BY_THE_SCHEMA:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode != 0, f"admitted: {message}"
    assert re.search(r"unknown field|Invalid value|Required value|no matches for kind", proc.stderr), proc.stderr


def events(cluster: Cluster, ns: str, name: str) -> list[dict]:
    selector = f"involvedObject.kind=PyTorchJob,involvedObject.name={name}"
    return get(cluster, "-n", ns, "events", "--field-selector", selector)["items"]


def test_what_only_our_schema_check_refuses_breaks_the_job(kube_cluster, namespace):
    k = kube_cluster
    stuck = cpu_job("bevt-bad-restart", namespace)
    stuck["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolicy"] = "Sometimes"
    apply(k, [stuck])
    refused = wait_for(
        lambda: [e for e in events(k, namespace, "bevt-bad-restart") if e["reason"] == "FailedCreatePod"],
        "FailedCreatePod for the master",
    )
    assert 'spec.restartPolicy: Unsupported value: "Sometimes"' in refused[0]["message"]
    assert job_status(k, namespace, "bevt-bad-restart") in ("", "Created")  # it never starts, nor fails

    cleaned = annotate(cpu_job("bevt-bad-clean", namespace), "Worker", outcome="Running")
    cleaned["spec"]["runPolicy"]["cleanPodPolicy"] = "Some"
    apply(k, [cleaned])
    wait_for(lambda: job_status(k, namespace, "bevt-bad-clean") == "Succeeded", "bevt-bad-clean Succeeded")
    wait_for(lambda: not job_pods(k, namespace, "bevt-bad-clean"), "every pod deleted, the master's too")


# --- what the operator creates ----------------------------------------------------------------------


def resolved_env(cluster: Cluster, ns: str, container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it, references read from the cluster."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env |= get(cluster, "-n", ns, "configmap", source["configMapRef"]["name"])["data"]
    names = [e["name"] for e in container.get("env") or []]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    for e in container.get("env") or []:
        source = e.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[e["name"]] = base64.b64decode(
                get(cluster, "-n", ns, "secret", ref["name"])["data"][ref["key"]]
            ).decode()
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = get(cluster, "-n", ns, "configmap", ref["name"])["data"]
            if ref["key"] in data or not ref.get("optional"):  # an optional key that is not there: no variable
                env[e["name"]] = data[ref["key"]]
        elif "fieldRef" in source:  # set per pod by the kubelet: the field it names
            env[e["name"]] = source["fieldRef"]["fieldPath"]
        else:
            env[e["name"]] = e.get("value", "")
    return env


@pytest.mark.parametrize(
    "elastic", [None, pj.Elastic(min_nodes=2, max_nodes=3, max_restarts=1)], ids=["static", "elastic"]
)
def test_the_operator_gives_each_pod_exactly_the_env_replica_env_predicts(kube_cluster, namespace, elastic):
    k, name = kube_cluster, "bevt-env-check"
    job = cpu_job(name, namespace, elastic=elastic)
    for rtype in ("Master", "Worker"):
        annotate(job, rtype, outcome="Running")
    apply(k, [job])
    pods = wait_for(lambda: len(p := job_pods(k, namespace, name)) == 3 and p, "the job's 3 pods")
    secrets = {"bevt-s3": S3_KEYS}
    for rtype, index in pj.replicas(job):
        pod = pods[pj.pod_name(name, rtype, index)]
        (container,) = [c for c in pod["spec"]["containers"] if c["name"] == pj.CONTAINER]
        assert resolved_env(k, namespace, container) == pj.replica_env(
            job, rtype, index, secrets=secrets, config_maps={"bevt-env": ENV}
        ), pod["metadata"]["name"]
    # MASTER_ADDR and the rendezvous endpoint name these: one headless Service per replica.
    services = get(k, "-n", namespace, "services", "-l", f"{pj.JOB_NAME_LABEL}={name}")["items"]
    assert {s["metadata"]["name"] for s in services} == {pj.pod_name(name, *r) for r in pj.replicas(job)}
    for s in services:
        assert s["spec"]["clusterIP"] == "None"
        assert [(p["name"], p["port"]) for p in s["spec"]["ports"]] == [(pj.PORT_NAME, pj.DEFAULT_PORT)]


# --- the job's life ----------------------------------------------------------------------------------


def test_success_cleans_running_pods_then_the_ttl_deletes_the_job(kube_cluster, namespace):
    k, name = kube_cluster, "bevt-ttl"
    job = cpu_job(name, namespace, ttl_after_finished_s=8, clean_pod_policy="Running")
    annotate(job, "Master", outcome="Succeeded", run_duration="4s")
    annotate(job, "Worker", outcome="Running")  # a worker still busy when the master is done
    apply(k, [job])
    wait_for(lambda: job_status(k, namespace, name) == "Succeeded", f"{name} Succeeded")
    # cleanPodPolicy Running: the still-running workers go, the finished master stays to be read.
    pods = wait_for(
        lambda: set(p := job_pods(k, namespace, name)) == {f"{name}-master-0"} and p, "only the master left"
    )
    assert pods[f"{name}-master-0"]["status"]["phase"] == "Succeeded"
    # ttlSecondsAfterFinished: the job goes, and the garbage collector takes its pods and services.
    wait_for(lambda: get(k, "-n", namespace, "pytorchjob", name) is None, f"{name} deleted by its TTL", 60)
    wait_for(lambda: not job_pods(k, namespace, name), f"{name}'s pods garbage-collected", 60)


@pytest.mark.parametrize("restart_policy", ["OnFailure", "Never"])
def test_a_failing_replica_fails_the_job_after_its_restarts(kube_cluster, namespace, restart_policy):
    k, name = kube_cluster, f"bevt-fail-{restart_policy.lower()}"
    job = cpu_job(name, namespace, restart_policy=restart_policy, backoff_limit=2, clean_pod_policy="All")
    annotate(job, "Master", outcome="Running")
    annotate(job, "Worker", outcome="Failed", run_duration="1s", exit_code="1", reason="Error")
    apply(k, [job])
    wait_for(lambda: job_status(k, namespace, name) == "Failed", f"{name} Failed", 120)
    job_now = get(k, "-n", namespace, "pytorchjob", name)
    failed = [c for c in job_now["status"]["conditions"] if c["type"] == "Failed"][-1]
    if restart_policy == "OnFailure":
        # The kubelet (here kwok) restarts the container; past backoffLimit restarts the job fails.
        assert failed["reason"] == "PyTorchJobFailed" and "backoff" in failed["message"].lower(), failed
    else:
        assert "Worker replica(s) failed" in failed["message"], failed
    # cleanPodPolicy All: nothing of the failed job keeps running.
    wait_for(lambda: not job_pods(k, namespace, name), f"{name}'s pods cleaned", 60)


# --- the launcher, as the bevt-launcher ServiceAccount -----------------------------------------------


def launcher_config(cluster: Cluster, ns: str):
    """A client configuration with a token the API server issued to bevt-launcher (real RBAC)."""
    from kubernetes import client

    token = cluster.kubectl("-n", ns, "create", "token", "bevt-launcher", "--duration=1h").stdout.strip()
    config = client.Configuration()
    config.host = cluster.server
    config.ssl_ca_cert = str(cluster.work_dir / "pki" / "ca.crt")
    config.api_key = {"authorization": f"Bearer {token}"}
    return config


def launch(cluster: Cluster, ns: str, job: dict, said: list[str], **kw) -> launcher.LaunchResult:
    return launcher.launch(
        job,
        ns,
        timeout_s=kw.pop("timeout_s", 120),
        poll_s=0.5,
        client_configuration=launcher_config(cluster, ns),
        say=said.append,
        **kw,
    )


def test_the_launcher_runs_a_job_to_success_and_deletes_it(kube_cluster, namespace):
    job = annotate(cpu_job("bevt-launch-ok", namespace), "Master", run_duration="6s")
    annotate(job, "Worker", run_duration="6s")
    said: list[str] = []
    result = launch(kube_cluster, namespace, job, said)
    assert result.states[0] in ("Pending", "Created") and result.states[-1].startswith("Succeeded"), result.states
    assert any(s.startswith("Running (Master: 1 active") for s in result.states), result.states
    assert said[-1] == f"PyTorchJob {namespace}/bevt-launch-ok deleted"
    wait_for(lambda: get(kube_cluster, "-n", namespace, "pytorchjob", "bevt-launch-ok") is None, "the job deleted")


def test_the_launcher_fails_with_the_operator_message_and_names_the_failed_replica(kube_cluster, namespace):
    job = cpu_job("bevt-launch-fail", namespace, restart_policy="Never")
    annotate(job, "Master", outcome="Running")
    annotate(job, "Worker", outcome="Failed", exit_code="3", reason="Error")
    said: list[str] = []
    with pytest.raises(launcher.JobFailed, match="bevt-launch-fail failed: .*Worker replica") as failed:
        launch(kube_cluster, namespace, job, said)
    # kwok serves no container logs; which pod's log was asked for is what this can show.
    assert re.search(r"log of bevt-launch-fail-worker-\d: unavailable", str(failed.value)), str(failed.value)
    wait_for(lambda: get(kube_cluster, "-n", namespace, "pytorchjob", "bevt-launch-fail") is None, "the job deleted")


def test_an_unschedulable_job_fails_the_launcher_within_the_stall_limit(kube_cluster, namespace):
    """16 GPUs per pod: no node has them. Without the stall limit this waited for the 7-day timeout."""
    job = cpu_job(
        "bevt-launch-stuck",
        namespace,
        resources=pj.Resources(cpu="8", memory="64Gi", gpus=16),
        tolerations=(("nvidia.com/gpu", "", "NoSchedule"),),
    )
    said: list[str] = []
    start = time.monotonic()
    with pytest.raises(
        launcher.JobStalled,
        match=r"pod bevt-launch-stuck-\w+-0 unschedulable for \d+ s .limit 5 s.: "
        r"0/9 nodes are available.*Insufficient nvidia.com/gpu",
    ):
        launch(kube_cluster, namespace, job, said, timeout_s=3600, stall_limit_s=5)
    assert time.monotonic() - start < 60
    wait_for(lambda: get(kube_cluster, "-n", namespace, "pytorchjob", "bevt-launch-stuck") is None, "the job deleted")


def test_the_launcher_account_cannot_do_what_it_does_not_need(kube_cluster, namespace):
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.ApiClient(launcher_config(kube_cluster, namespace))
    core = client.CoreV1Api(api)
    core.list_namespaced_pod(namespace)  # what it needs works ...
    with pytest.raises(ApiException) as denied:  # ... reading the S3 credentials does not
        core.read_namespaced_secret("bevt-s3", namespace)
    assert denied.value.status == 403
    message = json.loads(denied.value.body)["message"]
    assert f'User "system:serviceaccount:{namespace}:bevt-launcher" cannot get resource "secrets"' in message
    with pytest.raises(ApiException) as elsewhere:  # nor creating jobs outside its namespace
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "kubeflow.org", "v1", "default", "pytorchjobs", cpu_job("bevt-elsewhere", "default")
        )
    assert elsewhere.value.status == 403


def test_a_killed_launcher_pod_takes_its_job_with_it(kube_cluster, namespace):
    """The launcher step's pod owns the job: when that pod goes (a terminated KFP run, a deleted
    workflow) without the launcher deleting the job, the garbage collector deletes it."""
    k = kube_cluster
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "launcher-step", "namespace": namespace},
        "spec": {"containers": [{"name": "main", "image": "launcher"}]},
    }
    apply(k, [pod])
    uid = get(k, "-n", namespace, "pod", "launcher-step")["metadata"]["uid"]
    job = annotate(cpu_job("bevt-owned", namespace), "Master", outcome="Running")
    said: list[str] = []
    with pytest.raises(launcher.JobTimeout):  # the launcher "dies" here, leaving its job (keep)
        launch(k, namespace, job, said, timeout_s=3, keep=True, owner=launcher.pod_owner("launcher-step", uid))
    assert get(k, "-n", namespace, "pytorchjob", "bevt-owned")["metadata"]["ownerReferences"][0]["uid"] == uid
    k.kubectl("-n", namespace, "delete", "pod", "launcher-step", "--wait=false")
    wait_for(lambda: get(k, "-n", namespace, "pytorchjob", "bevt-owned") is None, "the orphaned job collected", 90)
    wait_for(lambda: not job_pods(k, namespace, "bevt-owned"), "and its pods", 90)


# --- Kubeflow Trainer v2 -----------------------------------------------------------------------------


def train_job(name: str, ns: str, **kw) -> dict:
    placement = step.Placement(mode="kubernetes", nodes=2, namespace=ns, cpu="1", memory="1Gi", shm_size="1Gi")
    spec = step.job_spec("pretrain-joint", ARGS, placement)
    return trainjob.manifest(pj.JobSpec(**(vars(spec) | {"name": name} | kw)), manifests.ENV_KEYS)


@pytest.mark.parametrize("kw", [{}, GPU], ids=["cpu", "gpu"])
def test_every_rendered_trainjob_is_admitted_whole(kube_cluster, namespace, kw):
    job = train_job("bevt-tj-admitted", namespace, **kw)
    out = kube_cluster.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-o", "json", "-f", "-", input=json.dumps(job)
    )
    stored = json.loads(out.stdout)
    assert stored["spec"]["trainer"] == job["spec"]["trainer"]
    patch = stored["spec"]["runtimePatches"][0]
    assert patch["manager"] == trainjob.PATCH_MANAGER
    assert patch["trainingRuntimeSpec"] == job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]


def test_the_launcher_runs_a_trainjob_whose_pods_get_the_topology_torchrun_reads(kube_cluster, namespace):
    k = kube_cluster
    api = launcher.api_client(launcher_config(k, namespace))
    assert backends.detect(api) is backends.PYTORCHJOB  # both installed here: PyTorchJob first
    assert backends.detect(api, "trainjob") is backends.TRAINJOB
    job = train_job("bevt-tj", namespace)
    said: list[str] = []
    result = launch(k, namespace, job, said, keep=True)
    assert result.states[-1].startswith("Complete (node: 0 active, 1 succeeded, 0 failed)"), result.states
    pods = get(k, "-n", namespace, "pods", "-l", f"{trainjob.JOB_NAME_LABEL}=bevt-tj")["items"]
    assert len(pods) == 2 and {p["spec"]["nodeName"] for p in pods} <= set(k.cpu_nodes)
    for pod in pods:
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        assert pod["spec"]["serviceAccountName"] == "bevt-trainer"
        (container,) = pod["spec"]["containers"]
        env = resolved_env(k, namespace, container)
        # Everything torchrun is told here (launcher.local_env) comes from Trainer's torch plugin.
        assert set(launcher.local_env(1)) <= set(env)
        assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "1"
        assert env["PET_MASTER_ADDR"] == "bevt-tj-node-0-0.bevt-tj"
        assert env["PET_NODE_RANK"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        assert env["AWS_SECRET_ACCESS_KEY"] == "SK" and env["MLFLOW_TRACKING_URI"] == ENV["MLFLOW_TRACKING_URI"]
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/dev/shm"}


def test_a_failing_trainjob_fails_the_launcher(kube_cluster, namespace):
    job = train_job("bevt-tj-fail", namespace)
    template = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    template["template"]["spec"]["template"]["metadata"]["annotations"] |= {KWOK_OUTCOME: "Failed"}
    with pytest.raises(launcher.JobFailed, match="TrainJob .*/bevt-tj-fail failed: "):
        launch(kube_cluster, namespace, job, [])
    wait_for(lambda: get(kube_cluster, "-n", namespace, "trainjob", "bevt-tj-fail") is None, "the TrainJob deleted")


@pytest.mark.parametrize("choice", ["auto", "pytorchjob", "trainjob"])
def test_submit_checks_the_training_backend_on_the_cluster(kube_cluster, choice):
    from tests.integration.test_pipeline_submit import PARAMS, FakeKfp, submit

    fake = FakeKfp()
    try:
        result = submit(fake, kubeconfig=str(kube_cluster.kubeconfig), params=PARAMS | {"training_backend": choice})
    finally:
        fake.close()
    kind = backends.TRAINJOB if choice == "trainjob" else backends.PYTORCHJOB
    assert result.detail.endswith(f"; training jobs: {kind.kind} ({kind.api_version}))")
    assert fake.calls()[-1][3]["runtime_config"]["parameters"]["training_backend"] == choice
