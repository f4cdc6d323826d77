"""The compiled BEVT pipeline (KFP IR YAML): tasks, order, parameters, the locations handed from step to
step (and no input artifact for KFP's launcher to download), the finetune loop's parallelism, retries,
caching, resources, images, and the kfp-kubernetes settings (Secrets and ConfigMap as env, GPU node
selection and tolerations, /dev/shm, the /tmp scratch emptyDir)."""

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
from pipelines import bevt
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
# display name -> {parameter: (display name of the step whose output parameter it is, that output)}: every
# dataset and model reaches the steps that use it as a location, never as an input artifact.
LOCATIONS = {
    "tokenize videos": {"data": ("shard pretraining videos", "shards_location")},
    "tokenize images": {
        "data": ("shard images", "shards_location"),
        "codebook_from": ("tokenize videos", "tokens_location"),
    },
    "pretrain image stream": {
        "images": ("shard images", "shards_location"),
        "image_tokens": ("tokenize images", "tokens_location"),
    },
    "pretrain joint": {
        "videos": ("shard pretraining videos", "shards_location"),
        "video_tokens": ("tokenize videos", "tokens_location"),
        "images": ("shard images", "shards_location"),
        "image_tokens": ("tokenize images", "tokens_location"),
        "init": ("pretrain image stream", "weights_location"),
    },
    "finetune": {
        "train": ("shard finetune train", "shards_location"),
        "val": ("shard finetune val", "shards_location"),
    },
    "evaluate": {"weights": ("finetune", "weights_location"), "data": ("shard finetune val", "shards_location")},
}
# The only input artifact: the pretrained weights' location enters the finetune loop as a one-line file
# (KFP's local runner would hand the loop item to a loop step in place of an upstream output parameter).
ARTIFACTS = {"finetune": {"init": ("pretrain joint", "weights_location")}}
SIZES = {  # display name -> the Size it asks for
    **dict.fromkeys(
        ("shard pretraining videos", "shard images", "shard finetune train", "shard finetune val"), bevt.DATA
    ),
    **dict.fromkeys(("tokenize videos", "tokenize images"), bevt.TOKENIZE),
    "pretrain image stream": bevt.TRAIN,
    "pretrain joint": bevt.LAUNCHER,
    "finetune": bevt.LAUNCHER,
    "evaluate": bevt.EVALUATE,
}


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> tuple[dict, dict]:
    path = compile_pipeline(str(tmp_path_factory.mktemp("ir") / "bevt.yaml"), 1)
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


def handed_from(spec, value: dict, kind: str = "Parameter") -> tuple[str, str]:
    """The step (display name) and output a task's input parameter or artifact comes from; inside the loop, an
    output of a root step arrives through the loop's own inputs."""
    if f"componentInput{kind}" in value:
        value = loop(spec)[0]["inputs"][kind.lower() + "s"][value[f"componentInput{kind}"]]
    source = value[f"taskOutput{kind}"]
    return dag_tasks(spec)[source["producerTask"]]["taskInfo"]["name"], source[f"output{kind}Key"]


def test_data_reaches_each_step_as_locations_and_no_step_downloads_data(ir):
    """KFP's launcher downloads every input artifact of a step before the step runs: the steps get where the
    datasets and models are, as parameters, and the one input artifact there is holds only a location."""
    spec, _ = ir
    by_name = tasks(spec)
    for name, task in by_name.items():
        inputs = task.get("inputs", {})
        component = spec["components"][task["componentRef"]["name"]]
        artifacts = {
            param: handed_from(spec, value, "Artifact") for param, value in inputs.get("artifacts", {}).items()
        }
        assert artifacts == ARTIFACTS.get(name, {}), name
        assert set(component.get("inputDefinitions", {}).get("artifacts", {})) == set(artifacts), name
        received = {
            param: handed_from(spec, value)
            for param, value in inputs.get("parameters", {}).items()
            if "taskOutputParameter" in value or value.get("componentInputParameter", "").endswith("_location")
        }
        assert received == LOCATIONS.get(name, {}), name
    # What each producer hands over sits beside the artifact it wrote: an output parameter, or for the loop a
    # plain Artifact (not a Dataset or Model: it holds the location, not the weights).
    kinds = {"shards_location": "shards", "tokens_location": "tokens", "weights_location": "model"}
    for table, key_kind in ((LOCATIONS, "parameters"), (ARTIFACTS, "artifacts")):
        for producer, key in {source for params in table.values() for source in params.values()}:
            outputs = spec["components"][by_name[producer]["componentRef"]["name"]]["outputDefinitions"]
            expected = (
                {"parameterType": "STRING"}
                if key_kind == "parameters"
                else {"artifactType": {"schemaTitle": "system.Artifact", "schemaVersion": "0.0.1"}}
            )
            assert outputs[key_kind][key] == expected, producer
            assert kinds[key] in outputs["artifacts"], producer


def test_the_finetune_loop_runs_one_task_at_a_time_unless_told(ir, tmp_path):
    spec, _ = ir
    assert loop(spec)[0]["iteratorPolicy"] == {"parallelismLimit": 1}
    for parallelism in (3, 0):
        other = next(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "p.yaml"), parallelism)).read_text()))
        assert loop(other)[0].get("iteratorPolicy", {}).get("parallelismLimit", 0) == parallelism
    # A compile setting, not a run parameter: KFP fixes the limit in the IR.
    assert "finetune_parallelism" not in spec["root"]["inputDefinitions"]["parameters"]


def test_each_step_has_a_sized_scratch_tmp(ir):
    """KFP v2 has no ephemeral-storage request; /tmp, where the steps' temporary files go, is an emptyDir
    whose size limit is the step's scratch size."""
    spec, k8s = ir
    assert set(SIZES) == set(ORDER)
    for name, task in tasks(spec).items():
        mounts = k8s[executor(spec, task)]["emptyDirMounts"]
        assert {"volumeName": "tmp", "mountPath": "/tmp", "sizeLimit": SIZES[name].scratch} in mounts, name
    assert {size.scratch for size in SIZES.values()} == {"10Gi", "20Gi", "50Gi"}


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
        shm = {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "16Gi"}
        assert [m["volumeName"] for m in cfg["emptyDirMounts"]] == ["tmp", "dshm"] if name in GPU_STEPS else ["tmp"]
        if name in GPU_STEPS:
            assert cfg["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
            assert cfg["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            assert cfg["emptyDirMounts"][1] == shm
        else:
            assert not {"nodeSelector", "tolerations"} & set(cfg), name


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
        [sys.executable, "-c", f"from pipelines.cli import compile_pipeline; compile_pipeline({str(out)!r}, 1)"],
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
        [*bevt_cli(), "pipeline", "compile", "--output", str(out), "--finetune-parallelism", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"pipeline compile: wrote {out}" in proc.stdout
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "bevt"
    assert loop(spec)[0]["iteratorPolicy"] == {"parallelismLimit": 2}
    bad = subprocess.run([*bevt_cli(), "pipeline", "submit"], capture_output=True, text=True)
    assert bad.returncode == 2 and "params: required for submit" in bad.stderr
