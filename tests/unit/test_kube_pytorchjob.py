"""PyTorchJob rendering: the manifest, the CRD-schema and webhook checks, the operator's env.

The pod templates inside the job are real Kubernetes objects: each is also checked with
kubernetes-validate --strict (as a PodTemplate), which knows the full core/v1 schema.
"""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from bevt_core import images
from bevt_core.kube import pytorchjob as pj

ARGS = ("-m", "bevt_core.cli", "pretrain-joint", "--config", "/etc/bevt/config.yaml")


def spec(**kw) -> pj.JobSpec:
    base = dict(
        name="bevt-joint",
        image=images.for_stage("pretrain-joint"),
        args=ARGS,
        namespace="ml",
        workers=3,
        nproc_per_node=8,
        resources=pj.Resources(cpu="32", memory="256Gi", gpus=8),
        volumes=(
            pj.Volume("cache", "/cache", claim="bevt-cache"),
            pj.Volume("config", "/etc/bevt", config_map="bevt-joint-config", read_only=True),
        ),
        env=(("BEVT_LOG", "info"),),
        secret_env=(
            pj.SecretEnv("AWS_ACCESS_KEY_ID", "bevt-s3", "access-key"),
            pj.SecretEnv("AWS_SECRET_ACCESS_KEY", "bevt-s3", "secret-key"),
        ),
        service_account="bevt-trainer",
        node_selector=(("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),),
        tolerations=(("nvidia.com/gpu", "", "NoSchedule"),),
        backoff_limit=2,
        active_deadline_s=86400,
    )
    return pj.JobSpec(**(base | kw))


def strict_pod_templates(job: dict) -> None:
    """kubernetes-validate --strict on every replica's pod template (wrapped as a core/v1 PodTemplate)."""
    for rtype, r in job["spec"]["pytorchReplicaSpecs"].items():
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"{job['metadata']['name']}-{rtype.lower()}"},
                "template": r["template"],
            },
            "1.37.0",
            strict=True,
        )


def test_manifest_has_master_workers_resources_volumes_and_secret_refs():
    job = pj.manifest(spec())
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert job["metadata"] == {"name": "bevt-joint", "namespace": "ml", "labels": {"app.kubernetes.io/part-of": "bevt"}}
    s = job["spec"]
    assert s["nprocPerNode"] == "8" and "elasticPolicy" not in s
    assert s["runPolicy"] == {
        "backoffLimit": 2,
        "activeDeadlineSeconds": 86400,
        "ttlSecondsAfterFinished": 3600,
        "cleanPodPolicy": "Running",
    }
    assert {t: r["replicas"] for t, r in s["pytorchReplicaSpecs"].items()} == {"Master": 1, "Worker": 3}
    for r in s["pytorchReplicaSpecs"].values():
        assert r["restartPolicy"] == "OnFailure"
        # Istio's sidecar (Kubeflow profile namespaces) would keep every pod, and so the job, running.
        assert r["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        pod = r["template"]["spec"]
        (c,) = pod["containers"]
        assert c["name"] == "pytorch" and c["command"] == ["torchrun"] and c["args"] == list(ARGS)
        assert c["image"] == f"{images.DEFAULT_REGISTRY}/bevt-cuda:{images.DEFAULT_TAG}"
        assert c["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}]
        assert c["resources"] == {
            "requests": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"},
            "limits": {"memory": "256Gi", "nvidia.com/gpu": "8"},
        }
        assert {"mountPath": "/dev/shm", "name": "dshm"} in c["volumeMounts"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
        assert {"name": "cache", "persistentVolumeClaim": {"claimName": "bevt-cache"}} in pod["volumes"]
        assert {"name": "config", "configMap": {"name": "bevt-joint-config"}} in pod["volumes"]
        # Secrets by reference only: the manifest names the Secret and key, never a value.
        assert {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "bevt-s3", "key": "secret-key"}},
        } in c["env"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        assert pod["serviceAccountName"] == "bevt-trainer"
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    strict_pod_templates(job)


def test_image_registry_and_tag_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("BEVT_IMAGE_REGISTRY", "registry.example.com/ml/")
    monkeypatch.setenv("BEVT_IMAGE_TAG", "2026.11")
    assert images.for_stage("shard") == "registry.example.com/ml/bevt-cpu:2026.11"
    assert images.for_stage("finetune") == "registry.example.com/ml/bevt-cuda:2026.11"
    with pytest.raises(ValueError, match="image kind"):
        images.image("tpu")


def test_operator_env_for_every_replica():
    job = pj.manifest(spec())
    secrets = {"bevt-s3": {"access-key": "AK", "secret-key": "SK"}}
    envs = {r: pj.replica_env(job, *r, secrets=secrets) for r in pj.replicas(job)}
    assert list(envs) == [("Master", 0), ("Worker", 0), ("Worker", 1), ("Worker", 2)]
    for (rtype, i), env in envs.items():
        rank = i + (rtype == "Worker")
        assert env == {
            "BEVT_LOG": "info",
            "AWS_ACCESS_KEY_ID": "AK",
            "AWS_SECRET_ACCESS_KEY": "SK",
            "PYTHONUNBUFFERED": "1",
            "MASTER_ADDR": "bevt-joint-master-0",
            "PET_MASTER_ADDR": "bevt-joint-master-0",
            "MASTER_PORT": "23456",
            "PET_MASTER_PORT": "23456",
            "WORLD_SIZE": "32",
            "RANK": str(rank),
            "PET_NODE_RANK": str(rank),
            "PET_NNODES": "4",
            "PET_NPROC_PER_NODE": "8",
        }
    with pytest.raises(ValueError, match="secret bevt-s3/access-key not given"):
        pj.replica_env(job, "Master", 0)
    with pytest.raises(ValueError, match="no replica Worker 3"):
        pj.replica_env(job, "Worker", 3, secrets)


def test_master_port_comes_from_the_named_container_port():
    job = pj.manifest(spec(port=31111, workers=0, nproc_per_node=1))
    assert pj.replicas(job) == [("Master", 0)]
    env = pj.replica_env(job, "Master", 0, {"bevt-s3": {"access-key": "", "secret-key": ""}})
    assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "31111"
    assert env["WORLD_SIZE"] == "1" and env["PET_NNODES"] == "1"


def test_elastic_policy_env():
    job = pj.manifest(spec(elastic=pj.Elastic(min_nodes=2, max_nodes=6, max_restarts=5)))
    assert job["spec"]["elasticPolicy"] == {
        "minReplicas": 2,
        "maxReplicas": 6,
        "maxRestarts": 5,
        "rdzvBackend": "c10d",
        "rdzvHost": "bevt-joint-master-0",
        "rdzvPort": 23456,
    }
    env = pj.replica_env(job, "Worker", 1, {"bevt-s3": {"access-key": "a", "secret-key": "b"}})
    assert env["PET_RDZV_ENDPOINT"] == "bevt-joint-master-0:23456" and env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_NNODES"] == "2:6" and env["PET_MAX_RESTARTS"] == "5" and env["PET_NPROC_PER_NODE"] == "8"
    # Without an explicit host the operator rendezvouses at the first worker, on the worker's port.
    del job["spec"]["elasticPolicy"]["rdzvHost"], job["spec"]["elasticPolicy"]["rdzvPort"]
    env = pj.replica_env(job, "Master", 0, {"bevt-s3": {"access-key": "a", "secret-key": "b"}})
    assert env["PET_RDZV_ENDPOINT"] == "bevt-joint-worker-0:23456"


def mutated(change) -> dict:
    job = copy.deepcopy(pj.manifest(spec()))
    change(job)
    return job


def master(job) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]


# The training operator's webhook rules (pkg/webhooks/pytorch/pytorchjob_webhook.go, v1.9.4); the
# cluster test (tests/integration/test_kube_cluster.py) sends each to the real webhook.
WEBHOOK_CASES = [
    (lambda j: j["metadata"].update(name="BEVT_joint"), "metadata.name: 'BEVT_joint' must be a DNS-1035 label"),
    (lambda j: j["metadata"].update(name="1bevt"), "must be a DNS-1035 label"),
    (lambda j: j["metadata"].update(name="b" * 60), "must be a DNS-1035 label"),
    (lambda j: master(j).update(replicas=2), "Master.replicas: must be 1; got 2"),
    (lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas=0), "Worker.replicas: must be at least 1"),
    (
        lambda j: j["spec"]["pytorchReplicaSpecs"].update(Chief=master(j)),
        "Chief: replica type must be Master or Worker",
    ),
    (lambda j: master(j)["template"]["spec"]["containers"][0].update(name="main"), "needs a container named 'pytorch'"),
    (lambda j: master(j)["template"]["spec"]["containers"][0].pop("image"), "container 'pytorch' needs an image"),
    (lambda j: j["spec"].pop("pytorchReplicaSpecs"), "spec.pytorchReplicaSpecs: required"),
    (
        lambda j: j["spec"].update(elasticPolicy={"minReplicas": 1, "maxReplicas": 2, "nProcPerNode": 8}),
        "nProcPerNode: cannot be set together with spec.nprocPerNode",
    ),
    (
        lambda j: (j["spec"].update(elasticPolicy={"minReplicas": 1}), j["spec"]["pytorchReplicaSpecs"].pop("Worker")),
        "spec.elasticPolicy: needs a Worker replica spec",
    ),
]


@pytest.mark.parametrize("change, message", WEBHOOK_CASES)
def test_webhook_rules(change, message):
    job = mutated(change)
    assert any(message in p for p in pj.webhook_problems(job)), pj.webhook_problems(job)
    with pytest.raises(pj.InvalidJob, match="would be refused"):
        pj.validate(job)


# Breaks of the PyTorchJob CRD's schema; the cluster test sends each to the real API server.
SCHEMA_CASES = [
    (lambda j: j["spec"].update(nprocPerNodes="8"), "spec.nprocPerNodes: unknown field"),
    (lambda j: master(j)["template"]["spec"]["containers"][0].update(gpu=1), "containers[0].gpu: unknown field"),
    (lambda j: master(j).update(replicas="1"), "Master.replicas: expected int"),
    (lambda j: master(j).update(restartPolicy="Sometimes"), "restartPolicy: must be one of Always, OnFailure"),
    (lambda j: j["spec"]["runPolicy"].update(cleanPodPolicy="Some"), "cleanPodPolicy: must be one of"),
    (lambda j: j["spec"]["runPolicy"].update(backoffLimit=True), "backoffLimit: expected int"),
    (lambda j: master(j)["template"]["spec"]["containers"][0]["env"].append({"value": "x"}), "env[3].name: required"),
    (lambda j: master(j)["template"]["spec"].update(volumes={"dshm": {}}), "spec.volumes: expected a list"),
    (lambda j: j.update(apiVersion="kubeflow.org/v2"), "apiVersion/kind"),
]


@pytest.mark.parametrize("change, message", SCHEMA_CASES)
def test_crd_schema(change, message):
    problems = pj.schema_problems(mutated(change))
    assert any(message in p for p in problems), problems


def test_render_refuses_an_invalid_spec_before_anything_reaches_a_cluster():
    with pytest.raises(pj.InvalidJob, match="DNS-1035"):
        pj.render(spec(name="Joint"))
    with pytest.raises(pj.InvalidJob, match="restartPolicy: must be one of"):
        pj.render(spec(restart_policy="Sometimes"))
    with pytest.raises(ValueError, match="give claim or config_map"):
        pj.render(spec(volumes=(pj.Volume("v", "/v", claim="c", config_map="m"),)))


def test_a_valid_manifest_has_no_problems_and_no_values_of_secrets():
    job = pj.manifest(spec(elastic=pj.Elastic(1, 4)))
    assert pj.schema_problems(job) == [] and pj.webhook_problems(job) == []
    assert "SK" not in repr(job) and "valueFrom" in repr(job)


def test_gang_scheduling_options():
    job = pj.manifest(spec(queue_name="gpu-team", volcano_queue="training"))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-team"
    # Volcano's PodGroup: all four nodes or none, so a Master cannot sit on 8 GPUs waiting for Workers.
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 4, "queue": "training"}
    assert "schedulingPolicy" not in pj.manifest(spec())["spec"]["runPolicy"]
