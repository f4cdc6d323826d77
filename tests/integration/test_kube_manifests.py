"""k8s/: every kustomization renders with the venv's kubectl, passes kubernetes-validate --strict,
and its PyTorchJobs pass the CRD-schema and webhook checks with the env the operator would inject.

Secrets are referenced, never rendered; every pod runs as non-root; the launcher's Role grants
only what it needs; the static PyTorchJobs are exactly what bevt_core.kube renders; the stage
configs in the ConfigMaps load as the stages' typed configs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bevt_core import images
from bevt_core.config import from_dict
from bevt_core.kube import manifests
from bevt_core.kube import pytorchjob as pj
from tests.unit.test_kube_pytorchjob import strict_pod_templates

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/gpu"]
# Placeholder values for the Secrets the user creates (k8s/README.md), to compute the pod env.
SECRETS = {"bevt-s3": {"access-key": "AK", "secret-key": "SK"}, "bevt-postgres": {"username": "u", "password": "p"}}


def render(path: str) -> list[dict]:
    out = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(REPO / "k8s" / path)], capture_output=True, text=True, check=True
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def strict_validate(docs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    f = tmp_path / "rendered.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    return subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(f)], capture_output=True, text=True)


def kinds(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs) -> list[tuple[str, dict]]:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            out.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
        if d["kind"] == "PyTorchJob":
            out += [
                (f"{d['metadata']['name']}/{t}", r["template"]["spec"])
                for t, r in d["spec"]["pytorchReplicaSpecs"].items()
            ]
    return out


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_strict_kubernetes_schema(rendered, tmp_path):
    _, docs = rendered
    proc = strict_validate(docs, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # kubernetes-validate skips the custom resources: they are checked by the tests below.
    assert proc.stdout.count("passed for resource") == len(docs) - 2, proc.stdout
    assert sorted(j["metadata"]["name"] for j in kinds(docs, "PyTorchJob")) == ["bevt-finetune", "bevt-pretrain-joint"]


def test_the_strict_validator_catches_an_unknown_field(tmp_path):
    docs = render("base")
    kinds(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    proc = strict_validate(docs, tmp_path)
    assert proc.returncode != 0 and "'gpus' was unexpected" in proc.stdout + proc.stderr


def test_pytorchjobs_pass_crd_schema_webhook_and_get_the_operator_env(rendered):
    name, docs = rendered
    config_maps = {c["metadata"]["name"]: c["data"] for c in kinds(docs, "ConfigMap")}
    for job in kinds(docs, "PyTorchJob"):
        pj.validate(job)
        strict_pod_templates(job)
        envs = [pj.replica_env(job, *r, secrets=SECRETS, config_maps=config_maps) for r in pj.replicas(job)]
        nodes, nproc = (4, 8) if name == "overlays/gpu" else (2, 1)
        assert len(envs) == nodes
        for rank, env in enumerate(envs):
            assert env["PET_NNODES"] == str(nodes) and env["PET_NPROC_PER_NODE"] == str(nproc)
            assert env["WORLD_SIZE"] == str(nodes * nproc) and env["PET_NODE_RANK"] == env["RANK"] == str(rank)
            assert env["PET_MASTER_ADDR"] == f"{job['metadata']['name']}-master-0"
            assert env["MLFLOW_TRACKING_URI"] == "http://bevt-mlflow:5000" and env["AWS_SECRET_ACCESS_KEY"] == "SK"
            if name == "overlays/dev":
                assert env["AWS_ENDPOINT_URL"] == "http://bevt-seaweedfs:8333"
        stage = job["metadata"]["name"].removeprefix("bevt-")
        for r in job["spec"]["pytorchReplicaSpecs"].values():
            pod = r["template"]["spec"]
            c = pod["containers"][0]
            assert c["args"] == list(pj.entrypoint(stage, f"/etc/bevt/{stage}.yaml"))
            shm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]
            assert shm == {"medium": "Memory", "sizeLimit": "128Gi" if name == "overlays/gpu" else "2Gi"}
            if name == "overlays/gpu":
                assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
                # The same GPU scheduling the launcher's jobs and the pipeline's GPU steps use.
                assert pod["nodeSelector"] == dict(manifests.GPU_NODE_SELECTOR)
                assert [(t["key"], t.get("value", ""), t["effect"]) for t in pod["tolerations"]] == list(
                    manifests.GPU_TOLERATIONS
                )
            else:
                assert "nvidia.com/gpu" not in c["resources"]["limits"]


def test_stage_configs_load_as_typed_configs(rendered):
    from bevt_core.cli import COMMANDS

    _, docs = rendered
    (config,) = [c for c in kinds(docs, "ConfigMap") if c["metadata"]["name"] == "bevt-config"]
    assert sorted(config["data"]) == ["finetune.yaml", "pretrain-joint.yaml"]
    for file, text in config["data"].items():
        cmd = next(c for c in COMMANDS if c.name == file.removesuffix(".yaml"))
        cls, _ = cmd.load()
        cfg = from_dict(cls, yaml.safe_load(text))
        assert cfg.tracking.uri == "http://bevt-mlflow:5000"


def test_only_the_training_jobs_carry_the_stage_label(rendered):
    """The README applies the services with `-l '!bevt/stage'`, then one job at a time with
    `-l bevt/stage=STAGE`: finetuning must not start before the pretraining it loads has finished."""
    _, docs = rendered
    staged = {
        d["metadata"]["name"]: d["metadata"]["labels"]["bevt/stage"]
        for d in docs
        if "bevt/stage" in d["metadata"].get("labels", {})
    }
    assert staged == {"bevt-pretrain-joint": "pretrain-joint", "bevt-finetune": "finetune"}
    assert {d["kind"] for d in docs if d["metadata"]["name"] in staged} == {"PyTorchJob"}


def test_secrets_are_referenced_never_embedded(rendered):
    _, docs = rendered
    assert not kinds(docs, "Secret")
    text = yaml.safe_dump_all(docs)
    refs = set(re.findall(r"secretKeyRef:\n\s+key: \S+\n\s+name: (\S+)", text))
    assert refs == {"bevt-s3", "bevt-postgres"}
    for _, pod in pod_specs(docs):
        for c in pod["containers"]:
            for e in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|^PGUSER$", e["name"]):
                    assert "valueFrom" in e and "value" not in e, e


def test_every_pod_runs_as_non_root_without_privileges(rendered):
    _, docs = rendered
    pods = pod_specs(docs)
    assert len(pods) >= 6
    for where, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in pod["containers"]:
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}, where


def test_launcher_rbac_is_exactly_what_the_launcher_does(rendered):
    _, docs = rendered
    (role,) = kinds(docs, "Role")
    jobs = [r for r in role["rules"] if r["resources"] == ["pytorchjobs"]]
    assert jobs == [
        {
            "apiGroups": ["kubeflow.org"],
            "resources": ["pytorchjobs"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        }
    ]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in role["rules"] if r is not jobs[0])
    (binding,) = kinds(docs, "RoleBinding")
    ns = role["metadata"].get("namespace")
    assert binding["roleRef"]["name"] == "bevt-launcher"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "bevt-launcher"} | ({"namespace": ns} if ns else {})
    ]


def test_mlflow_server_uses_postgres_s3_and_a_cluster_ip_service(rendered):
    _, docs = rendered
    (mlflow,) = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"] == "bevt-mlflow"]
    args = mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--backend-store-uri=postgresql://$(PGUSER):$(PGPASSWORD)@bevt-postgres:5432/mlflow" in args
    assert any(a.startswith("--artifacts-destination=s3://") for a in args) and "--serve-artifacts" in args
    services = {s["metadata"]["name"]: s["spec"] for s in kinds(docs, "Service")}
    assert services["bevt-mlflow"]["type"] == services["bevt-postgres"]["type"] == "ClusterIP"


def test_dev_overlay_adds_the_object_store():
    docs = render("overlays/dev")
    assert {d["metadata"]["namespace"] for d in docs} == {"bevt-dev"}
    (weed,) = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"] == "bevt-seaweedfs"]
    pod = weed["spec"]["template"]["spec"]
    assert "-s3" in pod["containers"][0]["args"]
    assert {"name": "s3-config", "secret": {"secretName": "bevt-seaweedfs"}} in pod["volumes"]


def test_committed_pytorchjobs_are_what_the_launcher_renders():
    for name, text in manifests.render_base().items():
        assert (REPO / "k8s" / "base" / name).read_text() == text, (
            f"k8s/base/{name} is stale: run `python -m bevt_core.kube.manifests k8s/base`"
        )


def test_images_are_pinned_from_one_place():
    kustomization = yaml.safe_load((REPO / "k8s" / "base" / "kustomization.yaml").read_text())
    for entry in kustomization["images"]:
        kind = next(k for k, n in images.NAMES.items() if entry["name"].endswith("/" + n))
        assert f"{entry['name']}:{entry['newTag']}" == images.image(kind, default=True)
    ours = {
        c["image"]
        for d in ["base", "overlays/dev", "overlays/gpu"]
        for _, pod in pod_specs(render(d))
        for c in pod["containers"]
        if "/bevt-" in c["image"]
    }
    assert ours == {images.image("cuda", default=True), images.image("mlflow", default=True)}
