"""The two set-ups k8s/README.md documents for running the pipeline on Kubeflow, on the local
control plane (tests/cluster.py), with RBAC deciding: the account KFP runs the steps as may do
what the launcher step does (create, get, delete a PyTorchJob and a TrainJob; list pods and
events; read pods' logs), first asked with ``kubectl auth can-i --as``, then done with a token the
API server issued to that account, then the launcher itself runs a PyTorchJob and a TrainJob to
success as that account; and is refused outside its namespace.

- multi-user Kubeflow: a profile namespace, its ``default-editor`` account bound to ``kubeflow-edit``
  as Kubeflow's profile controller binds it (roles: kubeflow_roles.yaml), and k8s/overlays/profile;
- standalone KFP: namespace ``kubeflow``, its ``pipeline-runner`` account and k8s/overlays/standalone-kfp
  (KFP's own pipeline-runner Role is left out: ours alone must be enough for the launcher).
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from bevt_core.kube import launcher, manifests, step
from bevt_core.kube import pytorchjob as pj
from bevt_core.kube import trainjob as tj
from tests.cluster import Cluster, kubectl_binary
from tests.integration.test_kube_cluster import wait_for
from tests.integration.test_kube_manifests import K8S, render

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
PROFILE = "kubeflow-user-example-com"  # the namespace of k8s/overlays/profile
STANDALONE = "kubeflow"  # of k8s/overlays/standalone-kfp
ELSEWHERE = "default"
# What the launcher step asks of the API server: (verb, resource, subresource).
LAUNCHER_CALLS = [
    *((v, "pytorchjobs.kubeflow.org", "") for v in ("create", "get", "list", "watch", "delete")),
    ("get", "pytorchjobs.kubeflow.org", "status"),
    *((v, "trainjobs.trainer.kubeflow.org", "") for v in ("create", "get", "list", "watch", "delete")),
    ("get", "trainjobs.trainer.kubeflow.org", "status"),
    *((v, "pods", "") for v in ("get", "list", "watch")),
    ("get", "pods", "log"),
    ("list", "events", ""),
    ("watch", "events", ""),
]


def can_i(cluster: Cluster, ns: str, account: str, verb: str, resource: str, sub: str = "", where: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{ns}:{account}", "-n", where or ns]
    proc = cluster.kubectl(*args, *([f"--subresource={sub}"] if sub else []), check=False)
    return proc.stdout.strip() == "yes"


class Account:
    """kubectl with nothing but a token the API server issued to ``account`` (no admin certificate)."""

    def __init__(self, cluster: Cluster, ns: str, account: str, tmp_path: Path):
        token = cluster.kubectl("-n", ns, "create", "token", account, "--duration=1h").stdout.strip()
        self.kubeconfig = tmp_path / f"{account}.kubeconfig"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "local",
                            "cluster": {
                                "server": cluster.server,
                                "certificate-authority": str(cluster.work_dir / "pki" / "ca.crt"),
                            },
                        }
                    ],
                    "users": [{"name": account, "user": {"token": token}}],
                    "contexts": [{"name": account, "context": {"cluster": "local", "user": account, "namespace": ns}}],
                    "current-context": account,
                }
            )
        )

    def configuration(self):
        """The same identity for the kubernetes client (what the launcher step uses)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig)).configuration

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        cmd = [str(kubectl_binary()), "--kubeconfig", str(self.kubeconfig), *args]
        return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60)

    def ok(self, *args: str, input: str | None = None) -> str:
        proc = self.kubectl(*args, input=input)
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout


def pytorchjob(ns: str) -> dict:
    """The pretraining job of k8s/jobs, in ``ns``, its pods running until deleted."""
    (job,) = render("jobs/pretrain-joint")
    job["metadata"]["namespace"] = ns
    for r in job["spec"]["pytorchReplicaSpecs"].values():
        r["template"]["metadata"].setdefault("annotations", {})["kwok.bevt.dev/outcome"] = "Running"
    return job


def trainjob(ns: str) -> dict:
    (job,) = render("jobs/pretrain-joint")
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "bevt-rbac-trainjob", "namespace": ns},
        "spec": {
            "runtimeRef": {"name": "torch-distributed"},
            "suspend": True,  # admitted and stored; no pods
            "trainer": {"numNodes": 2, "image": container["image"], "command": ["torchrun"], "args": container["args"]},
        },
    }


def check_the_launcher_can_work(cluster: Cluster, ns: str, account: str, tmp_path: Path, refused: set = frozenset()):
    """Every call of LAUNCHER_CALLS but ``refused`` allowed in ``ns``, asked and then done; creating
    a job in another namespace refused."""
    answers = {(v, r, s): can_i(cluster, ns, account, v, r, s) for v, r, s in LAUNCHER_CALLS}
    assert {call for call, yes in answers.items() if not yes} == set(refused), answers
    assert not can_i(cluster, ns, account, "create", "pytorchjobs.kubeflow.org", where=ELSEWHERE)

    me = Account(cluster, ns, account, tmp_path)
    me.ok("create", "-f", "-", input=yaml.safe_dump(pytorchjob(ns)))
    me.ok("create", "-f", "-", input=yaml.safe_dump(trainjob(ns)))
    assert (
        me.ok("get", "pytorchjob", "bevt-pretrain-joint", "-o", "name")
        == "pytorchjob.kubeflow.org/bevt-pretrain-joint\n"
    )
    assert "bevt-rbac-trainjob" in me.ok("get", "trainjobs.trainer.kubeflow.org", "-o", "name")
    master = "bevt-pretrain-joint-master-0"
    wait_for(lambda: master in me.ok("get", "pods", "-o", "name"), f"{master} listed")
    assert "bevt-pretrain-joint" in me.ok("get", "events", "-o", "jsonpath={.items[*].involvedObject.name}")
    # kwok serves no container logs: past RBAC, the kubelet's side answers instead of a 403.
    logs = me.kubectl("logs", master)
    assert "forbidden" not in logs.stderr.lower(), logs.stderr
    me.ok("delete", "pytorchjob", "bevt-pretrain-joint", "--wait=false")
    me.ok("delete", "trainjobs.trainer.kubeflow.org", "bevt-rbac-trainjob", "--wait=false")

    # The launcher itself, as this account: each kind of job, rendered as the pipeline renders it,
    # created, watched to success and deleted.
    placement = step.Placement(mode="kubernetes", nodes=2, namespace=ns, cpu="1", memory="1Gi", shm_size="1Gi")
    spec = step.job_spec("pretrain-joint", pj.entrypoint("pretrain-joint", "s3://bevt/cfg.yaml"), placement)
    for job, done in (
        (pj.manifest(spec), "Succeeded"),
        (tj.manifest(replace(spec, name=spec.name + "-v2"), manifests.ENV_KEYS), "Complete"),
    ):
        said: list[str] = []
        result = launcher.launch(
            job, ns, timeout_s=120, poll_s=0.5, client_configuration=me.configuration(), say=said.append
        )
        assert result.states[-1].startswith(done), result.states
        assert said[-1] == f"{job['kind']} {ns}/{job['metadata']['name']} deleted"

    elsewhere = me.kubectl("create", "-f", "-", input=yaml.safe_dump(pytorchjob(ELSEWHERE)))
    assert elsewhere.returncode != 0
    assert (
        f'User "system:serviceaccount:{ns}:{account}" cannot create resource "pytorchjobs" in API group '
        f'"kubeflow.org" in the namespace "{ELSEWHERE}"' in elsewhere.stderr
    ), elsewhere.stderr


def test_a_kubeflow_profile_runs_the_launcher_as_default_editor(kube_cluster, tmp_path):
    k = kube_cluster
    k.kubectl("apply", "--server-side", "-f", str(HERE / "kubeflow_roles.yaml"))
    k.kubectl("create", "namespace", PROFILE)
    try:
        # What Kubeflow's profile controller creates in every profile namespace.
        k.kubectl("-n", PROFILE, "create", "serviceaccount", "default-editor")
        k.kubectl(
            "-n", PROFILE, "create", "rolebinding", "default-editor", "--clusterrole=kubeflow-edit",
            f"--serviceaccount={PROFILE}:default-editor",
        )  # fmt: skip
        k.kubectl("apply", "--server-side", "-k", str(K8S / "overlays" / "profile"))
        wait_for(
            lambda: can_i(k, PROFILE, "default-editor", "create", "trainjobs.trainer.kubeflow.org"),
            "kubeflow-edit aggregated",
        )
        # Trainer >= 2.2 grants trainjobs but not trainjobs/status: the launcher reads the status
        # from the object it gets, never from the status subresource.
        refused = {("get", "trainjobs.trainer.kubeflow.org", "status")}
        check_the_launcher_can_work(k, PROFILE, "default-editor", tmp_path, refused)
        # What overlays/profile put there, for the steps and the training pods.
        env = k.kubectl("-n", PROFILE, "get", "configmap", "bevt-env", "-o", "jsonpath={.data.MLFLOW_TRACKING_URI}")
        assert env.stdout == "http://bevt-mlflow.bevt.svc.cluster.local:5000"
        k.kubectl("-n", PROFILE, "get", "serviceaccount", "bevt-trainer")
    finally:
        k.kubectl("delete", "namespace", PROFILE, "--wait=false", check=False)


def test_standalone_kfp_runs_the_launcher_as_pipeline_runner(kube_cluster, tmp_path):
    k = kube_cluster
    overlay = str(K8S / "overlays" / "standalone-kfp")
    # KFP's install creates the account; its Role is not ours and not needed for the launcher.
    k.kubectl("-n", STANDALONE, "create", "serviceaccount", "pipeline-runner")
    try:
        assert not can_i(k, STANDALONE, "pipeline-runner", "create", "pytorchjobs.kubeflow.org")
        k.kubectl("apply", "--server-side", "-k", overlay)
        check_the_launcher_can_work(k, STANDALONE, "pipeline-runner", tmp_path)
        # Only what the launcher does: not the Secrets of the namespace.
        assert not can_i(k, STANDALONE, "pipeline-runner", "get", "secrets")
    finally:
        k.kubectl("delete", "-k", overlay, "--wait=false", check=False)
        k.kubectl("-n", STANDALONE, "delete", "serviceaccount", "pipeline-runner", check=False)
