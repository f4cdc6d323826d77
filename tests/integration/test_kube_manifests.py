"""k8s/: every kustomization renders with the venv's kubectl, passes kubernetes-validate --strict,
and its PyTorchJobs pass the CRD-schema and webhook checks with the env the operator would inject.

Applying an overlay starts no training (each job is its own kustomization); secrets are referenced,
never rendered; every pod runs as non-root; the launcher's Role grants only what it needs, in every
set-up; the generated files are exactly what bevt_core.kube renders; the stage configs in the
ConfigMaps load as the stages' typed configs; the optional Components (instance sizes, GPU
Operator label, cache) compose with the overlays as k8s/README.md says.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bevt_core import images
from bevt_core.config import from_dict
from bevt_core.kube import manifests, trainjob
from bevt_core.kube import pytorchjob as pj
from tests.unit.test_kube_pytorchjob import strict_pod_templates

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
BIN = Path(sys.executable).parent
SERVICES = {"base": "", "overlays/dev": "bevt-dev", "overlays/gpu": "bevt"}  # kustomization: namespace
KFP_NAMESPACES = {"overlays/profile": "kubeflow-user-example-com", "overlays/standalone-kfp": "kubeflow"}
# Each job kustomization, and the services kustomization whose namespace and ConfigMaps it uses.
PYTORCHJOBS = {
    f"{where}/{stage}": services
    for where, services in (("jobs", "base"), ("overlays/dev", "overlays/dev"), ("overlays/gpu", "overlays/gpu"))
    for stage in manifests.STAGES
}
TRAINJOBS = {
    f"{where}/{stage}": services
    for where, services in (
        ("trainjobs", "base"),
        ("overlays/dev/trainjobs", "overlays/dev"),
        ("overlays/gpu/trainjobs", "overlays/gpu"),
    )
    for stage in manifests.STAGES
}
JOBS = PYTORCHJOBS | TRAINJOBS
KUSTOMIZATIONS = [*SERVICES, *KFP_NAMESPACES, *JOBS]
# Placeholder values for the Secrets the user creates (k8s/README.md), to compute the pod env.
SECRETS = {"bevt-s3": {"access-key": "AK", "secret-key": "SK"}, "bevt-postgres": {"username": "u", "password": "p"}}
LAUNCHER_RULES = [
    {
        "apiGroups": ["kubeflow.org"],
        "resources": ["pytorchjobs"],
        "verbs": ["create", "get", "list", "watch", "delete"],
    },
    {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs/status"], "verbs": ["get"]},
    {
        "apiGroups": ["trainer.kubeflow.org"],
        "resources": ["trainjobs"],
        "verbs": ["create", "get", "list", "watch", "delete"],
    },
    {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs/status"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
]


def render(path: str | Path) -> list[dict]:
    """``kubectl kustomize``: ``path`` under k8s/, or a directory of its own (:func:`compose`)."""
    out = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(K8S / path)], capture_output=True, text=True, check=True
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def compose(directory: Path, resources=(), components=(), namespace: str = "", patches=()) -> Path:
    """A user's own kustomization, as k8s/README.md shows, of paths under k8s/ (kustomize takes
    relative paths only)."""
    directory.mkdir(parents=True, exist_ok=True)
    k: dict = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    k["resources"] = [os.path.relpath(K8S / r, directory) for r in resources]
    k["components"] = [os.path.relpath(K8S / c, directory) for c in components]
    if namespace:
        k["namespace"] = namespace
    if patches:
        k["patches"] = list(patches)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(k))
    return directory


def storage_class(name: str) -> dict:
    """The storage-class patch point of components/cache."""
    op = [{"op": "add", "path": "/spec/storageClassName", "value": name}]
    return {"target": {"kind": "PersistentVolumeClaim", "name": "bevt-cache"}, "patch": yaml.safe_dump(op)}


def strict_validate(docs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    f = tmp_path / "rendered.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    return subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(f)], capture_output=True, text=True)


def kinds(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def config_maps(docs) -> dict[str, dict[str, str]]:
    return {c["metadata"]["name"]: c["data"] for c in kinds(docs, "ConfigMap")}


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
        if d["kind"] == "TrainJob":
            out.append((d["metadata"]["name"], trainjob_pod(d)))
    return out


def trainjob_pod(job: dict) -> dict:
    """A TrainJob's pod spec as Trainer builds it: the runtime patch's, its container given the trainer's
    image, args and env (the runtime's template adds nothing of ours)."""
    pod, trainer = patched_pod(job), job["spec"]["trainer"]
    return pod | {"containers": [pod["containers"][0] | {k: trainer[k] for k in ("image", "args", "env")}]}


def patched_pod(job: dict) -> dict:
    """The pod spec of a TrainJob's runtime patch (itself, not a copy)."""
    (patch,) = job["spec"]["runtimePatches"]
    return patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


def pods_of(job: dict) -> list[dict]:
    return [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_strict_kubernetes_schema(rendered, tmp_path):
    _, docs = rendered
    proc = strict_validate(docs, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # kubernetes-validate skips the custom resources: they are checked by the tests below (TrainJobs
    # against the real API server: test_kube_cluster.py).
    custom = len(kinds(docs, "PyTorchJob")) + len(kinds(docs, "TrainJob"))
    assert proc.stdout.count("passed for resource") == len(docs) - custom, proc.stdout


def test_the_strict_validator_catches_an_unknown_field(tmp_path):
    docs = render("base")
    kinds(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    proc = strict_validate(docs, tmp_path)
    assert proc.returncode != 0 and "'gpus' was unexpected" in proc.stdout + proc.stderr


def test_applying_an_overlay_starts_no_job(rendered):
    """k8s/README.md applies an overlay (services, ConfigMaps), then pretrain-joint, waits for it,
    then finetune: finetuning must not start before the pretraining it loads has finished."""
    name, docs = rendered
    namespace = (SERVICES | KFP_NAMESPACES)[JOBS.get(name, name)]
    assert {d["metadata"].get("namespace", "") for d in docs} == {namespace}
    if name in JOBS:
        stage = name.rsplit("/", 1)[1]
        kind = "TrainJob" if name in TRAINJOBS else "PyTorchJob"
        assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [(kind, f"bevt-{stage}")]
        assert docs[0]["metadata"]["labels"]["bevt/stage"] == stage
    else:
        assert not kinds(docs, "PyTorchJob") and not kinds(docs, "TrainJob")


@pytest.mark.parametrize("name", TRAINJOBS)
def test_trainjobs_are_what_the_launcher_renders_for_the_same_placement(name):
    """The TrainJob kustomizations, Components applied, equal bevt_core.kube.trainjob's rendering of the
    job spec their PyTorchJob twins stand for (the gpu overlay: 4 nodes of generic-8-gpu size, tolerating
    the GPU taint); admitted and run on Trainer v2.3 in test_kube_cluster.py."""
    (job,) = render(name)
    stage = name.rsplit("/", 1)[1]
    spec = dataclasses.replace(manifests.base_spec(stage), namespace=SERVICES[TRAINJOBS[name]])
    if name.startswith("overlays/gpu/"):
        size = manifests.INSTANCES[0]
        spec = dataclasses.replace(
            spec,
            workers=3,
            nproc_per_node=8,
            resources=pj.Resources(cpu=str(size.cpu), memory=f"{size.memory_gi}Gi", gpus=size.gpus),
            shm_size=f"{size.shm_gi}Gi",
            tolerations=manifests.GPU_TOLERATIONS,
        )
    expected = trainjob.manifest(spec, manifests.ENV_KEYS)
    patched_pod(expected).setdefault("nodeSelector", {})  # base_trainjob's, for the Components to fill
    assert job == expected


@pytest.mark.parametrize("name", PYTORCHJOBS)
def test_pytorchjobs_pass_crd_schema_webhook_and_get_the_operator_env(name):
    (job,) = render(name)
    pj.validate(job)
    strict_pod_templates(job)
    gpu = name.startswith("overlays/gpu/")
    env_maps = config_maps(render(JOBS[name]))
    envs = [pj.replica_env(job, *r, secrets=SECRETS, config_maps=env_maps) for r in pj.replicas(job)]
    nodes, nproc = (4, 8) if gpu else (2, 1)
    assert len(envs) == nodes
    for rank, env in enumerate(envs):
        assert env["PET_NNODES"] == str(nodes) and env["PET_NPROC_PER_NODE"] == str(nproc)
        assert env["WORLD_SIZE"] == str(nodes * nproc) and env["PET_NODE_RANK"] == env["RANK"] == str(rank)
        assert env["PET_MASTER_ADDR"] == f"{job['metadata']['name']}-master-0"
        assert env["MLFLOW_TRACKING_URI"] == "http://bevt-mlflow:5000" and env["AWS_SECRET_ACCESS_KEY"] == "SK"
        # HOME, and TORCH_HOME under it, on the pod's emptyDir: no storage class needed.
        assert env["HOME"] == "/home/bevt" and env["TORCH_HOME"] == "/home/bevt/.cache/torch"
        if name.startswith("overlays/dev/"):
            assert env["AWS_ENDPOINT_URL"] == "http://bevt-seaweedfs:8333"
    stage = job["metadata"]["name"].removeprefix("bevt-")
    for pod in pods_of(job):
        c = pod["containers"][0]
        assert c["args"] == list(pj.entrypoint(stage, f"/etc/bevt/{stage}.yaml"))
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["home"] == {"name": "home", "emptyDir": {}} and "cache" not in volumes
        assert {"name": "home", "mountPath": "/home/bevt"} in c["volumeMounts"]
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Gi" if gpu else "2Gi"}
        if gpu:
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
            # The GPU request and the toleration place the pods; no label only the GPU Operator sets.
            assert "nodeSelector" not in pod
            assert [(t["key"], t.get("value", ""), t["effect"]) for t in pod["tolerations"]] == list(
                manifests.GPU_TOLERATIONS
            )
        else:
            assert "nvidia.com/gpu" not in c["resources"]["limits"]
            assert "tolerations" not in pod


@pytest.mark.parametrize("name", SERVICES)
def test_stage_configs_load_as_typed_configs(name):
    from bevt_core.cli import COMMANDS

    maps = config_maps(render(name))
    assert sorted(maps["bevt-config"]) == ["finetune.yaml", "pretrain-joint.yaml"]
    for file, text in maps["bevt-config"].items():
        cmd = next(c for c in COMMANDS if c.name == file.removesuffix(".yaml"))
        cls, _ = cmd.load()
        cfg = from_dict(cls, yaml.safe_load(text))
        # The tracking URI is bevt-env's, set once per namespace.
        assert cfg.tracking.uri == "auto"
    assert maps["bevt-env"]["MLFLOW_TRACKING_URI"] == "http://bevt-mlflow:5000"


def test_secrets_are_referenced_never_embedded(rendered):
    name, docs = rendered
    assert not kinds(docs, "Secret")
    text = yaml.safe_dump_all(docs)
    refs = set(re.findall(r"secretKeyRef:\n\s+key: \S+\n\s+name: (\S+)", text))
    expected = {"bevt-s3", "bevt-postgres"} if name in SERVICES else {"bevt-s3"} if name in JOBS else set()
    assert refs == expected
    for _, pod in pod_specs(docs):
        for c in pod["containers"]:
            for e in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|^PGUSER$", e["name"]):
                    assert "valueFrom" in e and "value" not in e, e


def test_every_pod_runs_as_non_root_without_privileges(rendered):
    name, docs = rendered
    pods = pod_specs(docs)
    # MLflow and Postgres (and SeaweedFS in dev); a PyTorchJob's Master and Worker, a TrainJob's one pod
    # template; nothing in a KFP namespace.
    expected = {"overlays/dev": 3}.get(name, 0 if name in KFP_NAMESPACES else 1 if name in TRAINJOBS else 2)
    assert len(pods) == expected
    for where, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in pod["containers"]:
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}, where


def test_launcher_rbac_is_exactly_what_the_launcher_does(rendered):
    """The launcher creates, watches and deletes its job (PyTorchJob or TrainJob) and reads pods,
    their logs and events: the same rules for bevt-launcher and, in standalone KFP, pipeline-runner;
    a Kubeflow profile's default-editor needs none of ours (test_kube_rbac.py)."""
    name, docs = rendered
    roles, bindings = kinds(docs, "Role"), kinds(docs, "RoleBinding")
    if name in JOBS or name == "overlays/profile":
        assert not roles and not bindings
        return
    (role,) = roles
    assert role["metadata"]["name"] == "bevt-launcher" and role["rules"] == LAUNCHER_RULES
    (binding,) = bindings
    ns = role["metadata"].get("namespace")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bevt-launcher"}
    if name == "overlays/standalone-kfp":
        # No namespace: a ServiceAccount subject of a RoleBinding defaults to the binding's.
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner"}]
    else:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "bevt-launcher"} | ({"namespace": ns} if ns else {})
        ]


def test_the_training_pods_account_is_the_same_everywhere():
    """Every namespace that runs training pods has bevt-trainer, without an API token."""
    for name in [*SERVICES, *KFP_NAMESPACES]:
        (trainer,) = [
            a for a in kinds(render(name), "ServiceAccount") if a["metadata"]["name"] == manifests.TRAINER_ACCOUNT
        ]
        assert trainer["automountServiceAccountToken"] is False, name


@pytest.mark.parametrize("name", SERVICES)
def test_mlflow_server_takes_postgres_credentials_from_the_environment(name, monkeypatch):
    """`mlflow server`'s own command line parser, on the Deployment's args and ConfigMap env: the
    backend URI carries no credentials (libpq reads PGUSER/PGPASSWORD, test_kube_mlflow_backend.py),
    the artifact bucket is a setting, and in-cluster Host headers, short or full, are allowed."""
    from mlflow.cli import server
    from mlflow.server.security_utils import is_allowed_host_header

    docs = render(name)
    (mlflow,) = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"] == "bevt-mlflow"]
    c = mlflow["spec"]["template"]["spec"]["containers"][0]
    maps = config_maps(docs)
    assert [s["configMapRef"]["name"] for s in c["envFrom"]] == ["bevt-env", "bevt-mlflow"]
    for source in c["envFrom"]:
        for k, v in maps[source["configMapRef"]["name"]].items():
            monkeypatch.setenv(k, v)
    assert c["command"] == ["mlflow", "server"]
    params = server.make_context("server", list(c["args"])).params
    assert params["backend_store_uri"] == "postgresql://bevt-postgres:5432/mlflow"
    assert params["artifacts_destination"] == maps["bevt-mlflow"]["MLFLOW_ARTIFACTS_DESTINATION"]
    assert params["artifacts_destination"].startswith("s3://") and params["serve_artifacts"]
    hosts = params["allowed_hosts"].split(",")
    for host in ("bevt-mlflow:5000", "bevt-mlflow.bevt.svc.cluster.local:5000", "localhost:5000"):
        assert is_allowed_host_header(hosts, host), host
    assert not is_allowed_host_header(hosts, "evil.example.com")
    pg = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if e["name"].startswith("PG")}
    assert pg == {
        "PGUSER": {"name": "bevt-postgres", "key": "username"},
        "PGPASSWORD": {"name": "bevt-postgres", "key": "password"},
    }
    services = {s["metadata"]["name"]: s["spec"] for s in kinds(docs, "Service")}
    assert services["bevt-mlflow"]["type"] == services["bevt-postgres"]["type"] == "ClusterIP"


def test_dev_overlay_adds_the_object_store():
    docs = render("overlays/dev")
    (weed,) = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"] == "bevt-seaweedfs"]
    pod = weed["spec"]["template"]["spec"]
    assert "-s3" in pod["containers"][0]["args"]
    assert {"name": "s3-config", "secret": {"secretName": "bevt-seaweedfs"}} in pod["volumes"]


def test_the_gpu_overlay_and_the_kfp_namespaces_share_the_object_store_settings():
    """The training pods in a KFP namespace write where the services in bevt read; only the tracking
    URI differs: the full name of the MLflow Service in bevt."""
    gpu = config_maps(render("overlays/gpu"))["bevt-env"]
    assert gpu["AWS_ENDPOINT_URL"] == gpu["MLFLOW_S3_ENDPOINT_URL"] == "https://s3.us-east-1.amazonaws.com"
    for name in KFP_NAMESPACES:
        env = config_maps(render(name))["bevt-env"]
        assert env["MLFLOW_TRACKING_URI"] == "http://bevt-mlflow.bevt.svc.cluster.local:5000"
        assert env | {"MLFLOW_TRACKING_URI": gpu["MLFLOW_TRACKING_URI"]} == gpu


def test_committed_generated_files_are_current():
    generated = manifests.render_all()
    for name, text in generated.items():
        assert (K8S / name).read_text() == text, f"k8s/{name} is stale: run `{manifests.COMMAND}`"
    committed = {str(p.relative_to(K8S)) for p in (K8S / "components" / "instances").rglob("*") if p.is_file()}
    assert committed == {n for n in generated if n.startswith("components/instances/")}


def test_an_overlay_retags_both_kinds_of_job(tmp_path):
    """k8s/README.md: `images:` in a kustomization retags the jobs; the TrainJob's image, outside any
    containers list, through the configuration generated beside it."""
    k = compose(tmp_path, ["overlays/gpu/pretrain-joint", "overlays/gpu/trainjobs/pretrain-joint"])
    text = yaml.safe_load((k / "kustomization.yaml").read_text())
    repo = images.image("cuda", default=True).rsplit(":", 1)[0]
    text["images"] = [{"name": repo, "newName": "registry.example.com/bevt-cuda", "newTag": "v9"}]
    (k / "kustomization.yaml").write_text(yaml.safe_dump(text))
    seen = [c["image"] for _, pod in pod_specs(render(k)) for c in pod["containers"]]
    assert seen == ["registry.example.com/bevt-cuda:v9"] * 3  # Master, Worker, the TrainJob's nodes


def test_images_are_pinned_from_one_place():
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    for entry in kustomization["images"]:
        kind = next(k for k, n in images.NAMES.items() if entry["name"].endswith("/" + n))
        assert f"{entry['name']}:{entry['newTag']}" == images.image(kind, default=True)
    ours = {
        c["image"]
        for d in [*SERVICES, *JOBS]
        for _, pod in pod_specs(render(d))
        for c in pod["containers"]
        if "/bevt-" in c["image"]
    }
    assert ours == {images.image("cuda", default=True), images.image("mlflow", default=True)}


# --- the optional Components -----------------------------------------------------------------------


def test_every_instance_size_leaves_the_node_its_share():
    """Requests below what the node can give: the kubelet's reservation (GKE's formula, the largest
    of the three clouds: about 2% of memory above 128 GiB plus 9 GiB below), the eviction threshold
    and some DaemonSets; /dev/shm counts against the memory."""
    generic, *typed = manifests.INSTANCES
    for i in manifests.INSTANCES:
        reserved = 9.4 + 0.02 * max(i.memory_gib - 128, 0)
        assert i.memory_gi <= i.memory_gib - reserved - 16, i
        assert i.cpu <= i.vcpus - 8 and i.shm_gi <= i.memory_gi / 4, i
    assert generic.cpu <= min(i.cpu for i in typed) and generic.memory_gi <= min(i.memory_gi for i in typed)
    assert not generic.label and all(i.label == i.component for i in typed)


@pytest.mark.parametrize("instance", manifests.INSTANCES, ids=lambda i: i.component)
def test_an_instance_component_sizes_the_gpu_jobs(instance, tmp_path):
    """A user's kustomization: the gpu overlay's jobs, PyTorchJob and TrainJob, resized for an instance
    type, on nodes of the GPU Operator (both node selectors add up)."""
    components = ["overlays/gpu/jobs", f"components/instances/{instance.component}", "components/nvidia-gpu-operator"]
    (job,) = render(compose(tmp_path / "job", resources=["jobs/pretrain-joint"], components=components))
    pj.validate(job)
    strict_pod_templates(job)
    assert job["spec"]["nprocPerNode"] == "8" and job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    selector = dict(manifests.GPU_NODE_SELECTOR) | (
        {manifests.INSTANCE_LABEL: instance.label} if instance.label else {}
    )
    (train,) = render(compose(tmp_path / "trainjob", ["trainjobs/pretrain-joint"], components))
    assert train["spec"]["trainer"]["numNodes"] == 4 and train["spec"]["trainer"]["numProcPerNode"] == 8
    resources = train["spec"]["trainer"]["resourcesPerNode"]
    for pod in [*pods_of(job), trainjob_pod(train) | {"containers": [{"resources": resources}]}]:
        assert pod["containers"][0]["resources"] == {
            "requests": {"cpu": str(instance.cpu), "memory": f"{instance.memory_gi}Gi", "nvidia.com/gpu": "8"},
            "limits": {"memory": f"{instance.memory_gi}Gi", "nvidia.com/gpu": "8"},
        }
        assert pod["nodeSelector"] == selector
        assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == f"{instance.shm_gi}Gi"


def test_the_cache_components_add_the_claim_and_move_torch_home(tmp_path):
    # Components take no namespace from the overlay below them: a user's kustomization names it.
    services = render(
        compose(tmp_path / "svc", ["overlays/gpu"], ["components/cache"], "bevt", [storage_class("efs-sc")])
    )
    (pvc,) = kinds(services, "PersistentVolumeClaim")
    assert pvc["metadata"]["namespace"] == "bevt" and pvc["spec"]["storageClassName"] == "efs-sc"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    (job,) = render(compose(tmp_path / "job", ["jobs/finetune"], ["overlays/gpu/jobs", "components/cache-mount"]))
    pj.validate(job)
    env = pj.replica_env(job, "Worker", 0, secrets=SECRETS, config_maps=config_maps(services))
    assert env["TORCH_HOME"] == "/cache/torch" and env["HOME"] == "/home/bevt"
    (train,) = render(
        compose(tmp_path / "trainjob", ["trainjobs/finetune"], ["overlays/gpu/jobs", "components/cache-mount"])
    )
    assert {e["name"]: e.get("value") for e in train["spec"]["trainer"]["env"]}["TORCH_HOME"] == "/cache/torch"
    for pod in [*pods_of(job), patched_pod(train)]:
        assert {"name": "cache", "persistentVolumeClaim": {"claimName": "bevt-cache"}} in pod["volumes"]
        assert {"name": "cache", "mountPath": "/cache"} in pod["containers"][0]["volumeMounts"]


def test_the_cache_mount_refuses_a_job_whose_env_moved(tmp_path):
    """components/cache-mount patches env/1 by position; a job rendered differently fails to build
    rather than getting the wrong variable replaced."""
    job = pj.manifest(manifests.base_spec("finetune"))
    for r in job["spec"]["pytorchReplicaSpecs"].values():
        r["template"]["spec"]["containers"][0]["env"].reverse()
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.yaml").write_text(yaml.safe_dump(job))
    k = compose(tmp_path / "job", components=["components/cache-mount"])
    text = yaml.safe_load((k / "kustomization.yaml").read_text()) | {"resources": ["job.yaml"]}
    (k / "kustomization.yaml").write_text(yaml.safe_dump(text))
    proc = subprocess.run([str(BIN / "kubectl"), "kustomize", str(k)], capture_output=True, text=True)
    assert proc.returncode != 0 and "env/1/name failed: test failed" in proc.stderr, proc.stderr
