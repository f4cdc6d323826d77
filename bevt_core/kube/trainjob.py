"""The same job as a Kubeflow Trainer v2 ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``).

kubeflow/manifests 1.11 and later install Trainer v2 and no training-operator v1, so there is no
PyTorchJob kind on such a cluster. A :class:`~bevt_core.kube.pytorchjob.JobSpec` renders to either.
The TrainJob runs on the ``torch-distributed`` ClusterTrainingRuntime: one JobSet whose
replicated job ``node`` has ``numNodes`` pods, each with the container ``node``. What the
runtime's template does not take from ``spec.trainer`` (volumes, /dev/shm, the service account,
node selection, tolerations, security contexts, the Istio opt-out) goes in a ``runtimePatches``
entry on that pod template (trainer v2.3.0, pkg/apis/trainer/v1alpha1/trainjob_types.go).

Topology: the runtime's torch plugin injects ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
``PET_NODE_RANK`` (the Job's completion index), ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``
(pkg/runtime/framework/plugins/torch/torch.go), the only variables our ``torchrun`` reads, and it
refuses a TrainJob that sets them itself. Differences from the PyTorchJob: no elastic training
(the plugin has none yet), no backoffLimit, TTL or cleanPodPolicy (restarts follow the runtime's
JobSet failure policy), and the master port is the runtime's (29500), not ``JobSpec.port``.
"""

from __future__ import annotations

from typing import Any

from bevt_core.kube.pytorchjob import MASTER, InvalidJob, JobSpec, job_labels, pod_template, to_dict

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Trainer v2 installs for torchrun
NODE = "node"  # the runtime's replicated job and its trainer container
PATCH_MANAGER = "bevt.dev/launcher"  # who owns our runtimePatches entry
JOB_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # the TrainJob's JobSet (same name) labels its pods with it
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")


# What the runtime's pod template takes from ours: everything but the container itself, which
# Trainer builds from spec.trainer (image, command, args, env, resources).
PATCHED_POD_FIELDS = ("serviceAccountName", "securityContext", "volumes", "nodeSelector", "tolerations")
PATCHED_CONTAINER_FIELDS = ("volumeMounts", "securityContext")


def _pod_patch(pod: dict[str, Any]) -> dict[str, Any]:
    """The PyTorchJob's pod template cut to what a runtime patch may set (trainer's PodSpecPatch)."""
    container = pod["spec"]["containers"][0]
    labels = {k: v for k, v in pod["metadata"]["labels"].items() if k != "bevt/replica-type"}
    return {
        "metadata": {"labels": labels, "annotations": pod["metadata"]["annotations"]},
        "spec": {k: pod["spec"][k] for k in PATCHED_POD_FIELDS if k in pod["spec"]}
        | {"containers": [{"name": NODE} | {k: container[k] for k in PATCHED_CONTAINER_FIELDS if k in container}]},
    }


def manifest(spec: JobSpec, config_map_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """``spec`` as a TrainJob. ``config_map_keys``: the keys of ``spec.env_config_map`` to pass on."""
    if spec.elastic is not None:
        raise InvalidJob(
            "elastic training (min_nodes) is not available with Kubeflow Trainer v2 (TrainJob): its torch "
            "plugin has no elastic policy yet; use the PyTorchJob backend (training-operator v1) or a fixed node count"
        )
    if spec.volcano_queue:
        raise InvalidJob(
            "volcano_queue: a TrainJob takes its gang scheduling from its runtime (the ClusterTrainingRuntime's "
            "podGroupPolicy), not from the job; use queue_name (Kueue) or the PyTorchJob backend"
        )
    taken = sorted({n for n, _ in spec.env} & set(RESERVED_ENV))
    if taken:
        raise InvalidJob(f"env: {', '.join(taken)} are set by Trainer's torch plugin and refused in a TrainJob")
    pod = to_dict(pod_template(spec, MASTER))
    container = pod["spec"]["containers"][0]
    # The trainer takes no envFrom: each key of the ConfigMap by reference, optional as envFrom is.
    env = container.get("env", []) + [
        {"name": k, "valueFrom": {"configMapKeyRef": {"name": spec.env_config_map, "key": k, "optional": True}}}
        for k in (config_map_keys if spec.env_config_map else ())
    ]
    labels = job_labels(spec)
    job: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": spec.name, "labels": labels} | ({"namespace": spec.namespace} if spec.namespace else {}),
        "spec": {
            "runtimeRef": {"name": RUNTIME},
            "trainer": {
                "image": spec.image,
                "command": ["torchrun"],
                "args": list(spec.args),
                "numNodes": spec.workers + 1,
                "numProcPerNode": spec.nproc_per_node,
                "resourcesPerNode": container["resources"],
                "env": env,
            },
            "runtimePatches": [
                {
                    "manager": PATCH_MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [{"name": NODE, "template": {"spec": {"template": _pod_patch(pod)}}}]
                            }
                        }
                    },
                }
            ],
        },
    }
    if spec.active_deadline_s:
        job["spec"]["activeDeadlineSeconds"] = spec.active_deadline_s
    return job
