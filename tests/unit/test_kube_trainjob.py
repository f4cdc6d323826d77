"""The TrainJob rendering (Kubeflow Trainer v2): the same JobSpec as the PyTorchJob, its pod
settings moved into a runtime patch. The cluster test admits and runs it on Trainer v2.3."""

from __future__ import annotations

import pytest

from bevt_core.kube import pytorchjob as pj
from bevt_core.kube import trainjob
from tests.unit.test_kube_pytorchjob import spec


def test_trainer_fields_and_the_runtime_patch_carry_what_the_pytorchjob_does():
    job = trainjob.manifest(spec(env_config_map="bevt-env"), ("MLFLOW_TRACKING_URI",))
    pytorch = pj.manifest(spec(env_config_map="bevt-env"))
    master = pytorch["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    container = master["spec"]["containers"][0]
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8  # an int since Trainer v2.2
    assert trainer["command"] == ["torchrun"] and trainer["args"] == list(spec().args)
    assert trainer["resourcesPerNode"] == container["resources"]
    # envFrom has no place in a TrainJob: the ConfigMap's keys one by one, optional like envFrom.
    assert trainer["env"] == container["env"] + [
        {
            "name": "MLFLOW_TRACKING_URI",
            "valueFrom": {"configMapKeyRef": {"name": "bevt-env", "key": "MLFLOW_TRACKING_URI", "optional": True}},
        }
    ]
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"
    pod = replicated["template"]["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    for key in ("serviceAccountName", "securityContext", "volumes", "nodeSelector", "tolerations"):
        assert pod["spec"][key] == master["spec"][key], key
    assert pod["spec"]["containers"] == [
        {"name": "node", "volumeMounts": container["volumeMounts"], "securityContext": container["securityContext"]}
    ]
    assert job["spec"]["activeDeadlineSeconds"] == 86400


def test_what_trainer_v2_cannot_do_is_refused_before_anything_is_created():
    with pytest.raises(pj.InvalidJob, match="elastic training .min_nodes. is not available with Kubeflow Trainer v2"):
        trainjob.manifest(spec(elastic=pj.Elastic(2, 4)))
    with pytest.raises(pj.InvalidJob, match="PET_NNODES are set by Trainer's torch plugin"):
        trainjob.manifest(spec(env=(("PET_NNODES", "3"),)))


def test_kueue_queues_a_trainjob_and_volcano_is_the_runtimes_business():
    assert (
        trainjob.manifest(spec(queue_name="gpu-team"))["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-team"
    )
    with pytest.raises(pj.InvalidJob, match="volcano_queue: a TrainJob takes its gang scheduling from its runtime"):
        trainjob.manifest(spec(volcano_queue="training"))
