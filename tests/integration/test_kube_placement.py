"""Where the jobs of k8s/ land, on the local control plane (tests/cluster.py): the gpu overlay's
jobs on the GPU nodes through their GPU request and toleration alone; every instance-size Component
admitted; the optional cache claimed, bound and mounted. kwok runs no containers (test_kube_cluster.py)."""

from __future__ import annotations

import json
import uuid

import pytest

from bevt_core.kube import manifests
from bevt_core.kube import pytorchjob as pj
from tests.cluster import KWOK_RUN_DURATION
from tests.integration.test_kube_cluster import get, job_status, wait_for
from tests.integration.test_kube_manifests import compose, storage_class

pytestmark = pytest.mark.slow


@pytest.fixture
def namespace(kube_cluster):
    """A namespace with the training pods' account (what the overlays put there)."""
    ns = f"t-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", ns)
    kube_cluster.kubectl("-n", ns, "create", "serviceaccount", manifests.TRAINER_ACCOUNT)
    yield ns
    kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def pods(cluster, ns: str, job: str) -> list[dict]:
    return get(cluster, "-n", ns, "pods", "-l", f"{pj.JOB_NAME_LABEL}={job}")["items"]


def test_the_gpu_jobs_land_on_gpu_nodes_without_a_node_selector(kube_cluster, namespace, tmp_path):
    k = kube_cluster
    # Long enough for every pod to be seen scheduled before the job ends and cleans up its Workers.
    key = KWOK_RUN_DURATION.replace("/", "~1")  # JSON pointer escaping
    ops = [
        {"op": "add", "path": f"/spec/pytorchReplicaSpecs/{r}/template/metadata/annotations/{key}", "value": "10s"}
        for r in (pj.MASTER, pj.WORKER)
    ]
    patch = {"target": {"kind": "PyTorchJob"}, "patch": json.dumps(ops)}
    where = compose(tmp_path, ["overlays/gpu/pretrain-joint"], namespace=namespace, patches=[patch])
    k.kubectl("apply", "--server-side", "-k", str(where))

    def scheduled() -> list[str]:
        nodes = [p["spec"].get("nodeName") for p in pods(k, namespace, "bevt-pretrain-joint")]
        return nodes if len(nodes) == 4 and all(nodes) else []

    nodes = wait_for(scheduled, "Master and 3 Workers scheduled")
    # One 8-GPU node each.
    assert len(set(nodes)) == 4 and set(nodes) <= set(k.gpu_nodes), nodes
    wait_for(lambda: job_status(k, namespace, "bevt-pretrain-joint") == "Succeeded", "bevt-pretrain-joint Succeeded")


@pytest.mark.parametrize("instance", manifests.INSTANCES, ids=lambda i: i.component)
def test_every_instance_size_is_admitted(kube_cluster, namespace, tmp_path, instance):
    where = compose(
        tmp_path,
        ["jobs/finetune"],
        ["overlays/gpu/jobs", f"components/instances/{instance.component}", "components/nvidia-gpu-operator"],
        namespace,
    )
    out = kube_cluster.kubectl("apply", "--server-side", "--dry-run=server", "-o", "json", "-k", str(where))
    stored = json.loads(out.stdout)
    requests = stored["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]
    assert requests["requests"]["memory"] == f"{instance.memory_gi}Gi"


def test_the_cache_is_bound_and_mounted(kube_cluster, namespace, tmp_path):
    k = kube_cluster
    cache = compose(tmp_path / "cache", components=["components/cache"], namespace=namespace,
                    patches=[storage_class("kwok-volume")])  # fmt: skip
    k.kubectl("apply", "--server-side", "-k", str(cache))
    job = compose(tmp_path / "job", ["jobs/pretrain-joint"], ["overlays/dev/jobs", "components/cache-mount"], namespace)
    k.kubectl("apply", "--server-side", "-k", str(job))
    wait_for(lambda: job_status(k, namespace, "bevt-pretrain-joint") == "Succeeded", "bevt-pretrain-joint Succeeded")
    pvc = get(k, "-n", namespace, "pvc", "bevt-cache")
    assert pvc["status"]["phase"] == "Bound" and pvc["spec"]["storageClassName"] == "kwok-volume"
    for pod in pods(k, namespace, "bevt-pretrain-joint"):
        assert {"name": "cache", "persistentVolumeClaim": {"claimName": "bevt-cache"}} in pod["spec"]["volumes"]
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["TORCH_HOME"] == "/cache/torch"
