"""The compiled BEVT pipeline (KFP IR YAML): tasks, order, parameters, retries, caching, resources,
images, and the kfp-kubernetes settings (Secrets and ConfigMap as env, GPU node selection and
tolerations, /dev/shm)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from bevt_core import images
from bevt_core.config import is_required
from pipelines.cli import PipelineParams, compile_pipeline

REPO = Path(__file__).resolve().parents[2]
ORDER = {  # display name -> display names it consumes (in the loop: the loop's own steps)
    "shard pretraining videos": set(),
    "shard images": set(),
    "shard finetune train": set(),
    "shard finetune val": set(),
    "tokenize videos": {"shard pretraining videos"},
    "tokenize images": {"shard images", "tokenize videos"},
    "pretrain image stream": {"shard images", "tokenize images"},
    "pretrain joint": {
        "shard pretraining videos",
        "tokenize videos",
        "shard images",
        "tokenize images",
        "pretrain image stream",
    },
    "finetune": {"shard finetune train", "shard finetune val"},  # and the joint model, through the loop
    "evaluate": {"finetune", "shard finetune val"},
}
GPU_STEPS = {"tokenize videos", "tokenize images", "pretrain image stream", "evaluate"}
LAUNCHERS = {"pretrain joint", "finetune"}
PER_TASK = {"shard finetune train", "shard finetune val", "finetune", "evaluate"}  # in the ParallelFor
LOOP_ITEM = "pipelinechannel--finetune_tasks-loop-item"


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> tuple[dict, dict]:
    path = compile_pipeline(str(tmp_path_factory.mktemp("ir") / "bevt.yaml"))
    spec, platform = yaml.safe_load_all(Path(path).read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def loop(spec) -> tuple[dict, dict]:
    """The ParallelFor over the finetune tasks: its task in the root DAG, and its component."""
    (task,) = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    return task, spec["components"][task["componentRef"]["name"]]


def dag_tasks(spec) -> dict[str, dict]:
    """Task id -> task, the root DAG's steps and the loop's."""
    return {k: t for k, t in spec["root"]["dag"]["tasks"].items() if "parameterIterator" not in t} | loop(spec)[1][
        "dag"
    ]["tasks"]


def tasks(spec) -> dict[str, dict]:
    return {t["taskInfo"]["name"]: t for t in dag_tasks(spec).values()}


def executor(spec, task) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def test_tasks_and_their_order(ir):
    spec, _ = ir
    by_name = tasks(spec)
    assert set(by_name) == set(ORDER)
    ids = {t_id: t["taskInfo"]["name"] for t_id, t in dag_tasks(spec).items()}
    for name, task in by_name.items():
        assert {ids[d] for d in task.get("dependentTasks", [])} == ORDER[name], name
    joint = by_name["pretrain joint"]["inputs"]
    assert ids[joint["artifacts"]["init"]["taskOutputArtifact"]["producerTask"]] == "pretrain image stream"
    assert joint["parameters"]["mode"] == {"componentInputParameter": "distributed_mode"}
    assert joint["parameters"]["nodes"] == {"componentInputParameter": "nodes"}
    assert joint["parameters"]["gpus_per_node"] == {"componentInputParameter": "gpus_per_node"}
    assert joint["parameters"]["min_nodes"] == {"componentInputParameter": "min_nodes"}
    # Every finetune task starts from the joint model: the loop waits for it and hands its model in.
    loop_task, loop_comp = loop(spec)
    assert loop_task["dependentTasks"] == ["pretrain-joint"]
    assert loop_task["parameterIterator"] == {
        "itemInput": LOOP_ITEM,
        "items": {"inputParameter": "pipelinechannel--finetune_tasks"},
    }
    assert {t["taskInfo"]["name"] for t in loop_comp["dag"]["tasks"].values()} == PER_TASK
    finetune = by_name["finetune"]["inputs"]
    assert finetune["artifacts"]["init"] == {"componentInputArtifact": "pipelinechannel--pretrain-joint-model"}
    assert finetune["parameters"]["nodes"] == {"componentInputParameter": "pipelinechannel--finetune_nodes"}
    assert finetune["parameters"]["procs_per_node"] == {
        "componentInputParameter": "pipelinechannel--finetune_procs_per_node"
    }
    assert joint["parameters"]["procs_per_node"] == {"componentInputParameter": "procs_per_node"}
    # The task's own fields come from the loop item.
    for name, param, field in (
        ("finetune", "preset", "preset"),
        ("finetune", "register_as", "register_as"),
        ("evaluate", "run_label", "run_label"),
        ("shard finetune val", "input_list", "val_list"),
        ("shard finetune train", "frame_interval", "frame_interval"),
    ):
        assert by_name[name]["inputs"]["parameters"][param] == {
            "componentInputParameter": LOOP_ITEM,
            "parameterExpressionSelector": f'parseJson(string_value)["{field}"]',
        }


def test_pipeline_parameters_are_the_cli_params(ir):
    spec, _ = ir
    declared = spec["root"]["inputDefinitions"]["parameters"]
    kinds = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", list: "LIST"}
    hints = typing.get_type_hints(PipelineParams)
    fields = {f.name: f for f in dataclasses.fields(PipelineParams)}
    assert set(declared) == set(fields)
    for name, f in fields.items():
        assert declared[name]["parameterType"] == kinds[typing.get_origin(hints[name]) or hints[name]], name
        if is_required(f):
            assert "defaultValue" not in declared[name], name
        else:
            assert declared[name]["defaultValue"] == f.default and declared[name].get("isOptional"), name


def test_retries_caching_and_resources(ir):
    spec, _ = ir
    executors = spec["deploymentSpec"]["executors"]
    for name, task in tasks(spec).items():
        assert task["cachingOptions"] == {"enableCache": True}
        retries = 1 if name in LAUNCHERS or name == "pretrain image stream" else 2
        assert task["retryPolicy"]["maxRetryCount"] == retries and task["retryPolicy"]["backoffDuration"] == "60s"
        res = executors[executor(spec, task)]["container"]["resources"]
        assert res["resourceCpuRequest"] == res["resourceCpuLimit"]
        assert res["resourceMemoryRequest"] == res["resourceMemoryLimit"]
        if name in GPU_STEPS:
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "1"
        else:
            assert "accelerator" not in res
        if name in LAUNCHERS:  # they only watch a PyTorchJob
            assert res["resourceCpuLimit"] == "1" and res["resourceMemoryLimit"] == "2Gi"


def test_kfp_kubernetes_settings(ir):
    spec, k8s = ir
    for name, task in tasks(spec).items():
        cfg = k8s[executor(spec, task)]
        assert cfg["secretAsEnv"] == [
            {
                "secretName": "bevt-s3",
                "secretNameParameter": {"runtimeValue": {"constant": "bevt-s3"}},
                "keyToEnv": [
                    {"secretKey": "access-key", "envVar": "AWS_ACCESS_KEY_ID"},
                    {"secretKey": "secret-key", "envVar": "AWS_SECRET_ACCESS_KEY"},
                ],
                "optional": False,
            }
        ]
        (env_map,) = cfg["configMapAsEnv"]
        assert env_map["configMapName"] == "bevt-env" and env_map["optional"] is True
        assert {e["envVar"] for e in env_map["keyToEnv"]} >= {"AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"}
        if name in GPU_STEPS:
            assert cfg["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
            assert cfg["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            assert cfg["emptyDirMounts"] == [
                {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "16Gi"}
            ]
        else:
            assert not {"nodeSelector", "tolerations", "emptyDirMounts"} & set(cfg), name


def test_images_and_no_install_at_start(ir):
    spec, _ = ir
    executors = spec["deploymentSpec"]["executors"]
    for name, task in tasks(spec).items():
        stage = (
            "shard"
            if name.startswith("shard")
            else "tokenize"
            if name.startswith("tokenize")
            else "pretrain-image"
            if name == "pretrain image stream"
            else "launcher"
            if name in LAUNCHERS
            else name
        )
        container = executors[executor(spec, task)]["container"]
        assert container["image"] == images.for_stage(stage), name
        assert "pip install" not in " ".join(container["command"]), name


def test_image_registry_and_tag_come_from_one_place(tmp_path):
    env = os.environ | {"BEVT_IMAGE_REGISTRY": "registry.example.com/ml", "BEVT_IMAGE_TAG": "v7"}
    out = tmp_path / "p.yaml"
    subprocess.run(
        [sys.executable, "-c", f"from pipelines.cli import compile_pipeline; compile_pipeline({str(out)!r})"],
        env=env,
        check=True,
        cwd=tmp_path,
    )
    spec = next(yaml.safe_load_all(out.read_text()))
    used = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert used == {"registry.example.com/ml/bevt-cpu:v7", "registry.example.com/ml/bevt-cuda:v7"}


def test_bevt_pipeline_compile_command(tmp_path):
    """The user's command (the `pipeline` entry of bevt_core.cli.COMMANDS)."""
    from tests.conftest import bevt_cli

    out = tmp_path / "ir.yaml"
    proc = subprocess.run(
        [*bevt_cli(), "pipeline", "compile", "--output", str(out)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert f"pipeline compile: wrote {out}" in proc.stdout
    assert next(yaml.safe_load_all(out.read_text()))["pipelineInfo"]["name"] == "bevt"
    bad = subprocess.run([*bevt_cli(), "pipeline", "submit"], capture_output=True, text=True)
    assert bad.returncode == 2 and "params: required for submit" in bad.stderr
