"""The distributed step's job, the KFP artifact helpers and the pipeline command's config."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bevt_core.config import ConfigError, from_dict
from bevt_core.kube import kfp_io, step
from bevt_core.kube import pytorchjob as pj
from bevt_core.kube.launcher import local_env
from pipelines.cli import PipelineConfig


def test_placement_becomes_a_valid_pytorchjob():
    p = step.Placement(
        mode="kubernetes",
        nodes=4,
        gpus_per_node=8,
        namespace="ml",
        elastic_min_nodes=2,
        node_selector=(("pool", "h100"),),
    )
    spec = step.job_spec("pretrain-joint", pj.entrypoint("pretrain-joint", "s3://b/c.yaml"), p)
    job = pj.manifest(spec)
    assert job["metadata"]["name"].startswith("bevt-pretrain-joint-") and job["metadata"]["namespace"] == "ml"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3 and job["spec"]["nprocPerNode"] == "8"
    assert job["spec"]["elasticPolicy"]["minReplicas"] == 2 and job["spec"]["elasticPolicy"]["maxReplicas"] == 4
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod["containers"][0]["envFrom"] == [{"configMapRef": {"name": "bevt-env"}}]
    assert pod["serviceAccountName"] == "bevt-trainer" and pod["nodeSelector"] == {"pool": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cpu = pj.manifest(step.job_spec("finetune", (), step.Placement(mode="kubernetes", procs_per_node=4)))
    cpu_pod = cpu["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "nodeSelector" not in cpu_pod and "tolerations" not in cpu_pod and cpu["spec"]["nprocPerNode"] == "4"
    env = pj.replica_env(
        job,
        "Worker",
        2,
        secrets={"bevt-s3": {"access-key": "a", "secret-key": "s"}},
        config_maps={"bevt-env": {"AWS_ENDPOINT_URL": "http://s3:8333"}},
    )
    assert env["AWS_ENDPOINT_URL"] == "http://s3:8333" and env["RANK"] == "3" and env["WORLD_SIZE"] == "32"
    assert env["PET_NNODES"] == "2:4"
    with pytest.raises(ValueError, match="configMapRef bevt-env not given"):
        pj.replica_env(job, "Master", 0, secrets={"bevt-s3": {"access-key": "a", "secret-key": "s"}})
    # Two launches of the same stage never collide.
    assert step.job_spec("finetune", (), p).name != step.job_spec("finetune", (), p).name


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"mode": "slurm"}, "mode: must be one of local, kubernetes"),
        ({"nodes": 0}, "nodes and procs_per_node must be >= 1"),
        ({"nodes": 2, "elastic_min_nodes": 3}, "elastic_min_nodes: must be <= nodes"),
    ],
)
def test_placement_checks(kw, message):
    with pytest.raises(ValueError, match=message):
        step.Placement(**kw)


def test_a_bad_stage_config_fails_before_any_job_or_file(tmp_path):
    with pytest.raises(ConfigError, match="preset: must be one of"):
        step.run_stage(
            "finetune",
            {"train": str(tmp_path / "t"), "preset": "k400-huge", "run": {"work_dir": str(tmp_path / "w")}},
            step.Placement(mode="kubernetes"),
        )
    assert not (tmp_path / "w").exists()


def test_local_env_is_a_one_node_job_on_loopback():
    env = local_env(3, port=29999)
    assert env == {
        "PET_NNODES": "1",
        "PET_NODE_RANK": "0",
        "PET_NPROC_PER_NODE": "3",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": "29999",
    }


class FakeArtifact(SimpleNamespace):
    def log_metric(self, name, value):
        self.metadata[name] = value


def test_artifact_locations():
    a = FakeArtifact(
        path="/minio/mlpipeline/v2/a/model",
        uri="minio://mlpipeline/v2/a/model",
        metadata={kfp_io.WEIGHTS: "bevt_pretrain.pt"},
    )
    assert kfp_io.location(a) == "/minio/mlpipeline/v2/a/model"
    assert kfp_io.location(a, "kubernetes") == "s3://mlpipeline/v2/a/model"
    assert kfp_io.weights_uri(a) == "s3://mlpipeline/v2/a/model/bevt_pretrain.pt"
    assert kfp_io.location(FakeArtifact(path="/p", uri="s3://b/k"), "kubernetes") == "s3://b/k"
    kfp_io.record_weights(a, "s3://mlpipeline/v2/a/model/recognizer.pt")
    assert kfp_io.weights_uri(a) == "s3://mlpipeline/v2/a/model/recognizer.pt"


def test_a_component_config_takes_its_plain_parameters_and_the_tracking_and_training_sections():
    from bevt_core.stages.pretrain_image import PretrainImageConfig

    # A component's locals(): its parameters, among them an output artifact named like a config section.
    parameters = {
        "preset": "tiny",
        "model": FakeArtifact(path="/out/model", uri="", metadata={}),
        "epochs": 0.0,
        "max_steps": 3,
        "batch_size": 0,
        "workers": 1,
        "log_every": 5,
        "tracking_uri": "none",
        "parent_run_id": "parent",
    }
    cfg = kfp_io.stage_config(
        PretrainImageConfig,
        parameters,
        images="I",
        image_tokens="T",
        **kfp_io.training_sections(parameters, "/out/model"),
    )
    assert cfg.preset == "tiny" and cfg.model.name == "bevt-tiny" and cfg.images == "I"
    assert (cfg.schedule.max_steps, cfg.schedule.epochs) == (3, 8)  # epochs 0: the recipe's
    assert (cfg.run.work_dir, cfg.run.batch_size, cfg.run.workers, cfg.run.log_every) == ("/out/model", 16, 1, 5)
    assert (cfg.tracking.uri, cfg.tracking.parent_run_id, cfg.tracking.run_label) == ("none", "parent", "")


def test_publish_logs_numbers_writes_the_report_and_fails_on_failure(tmp_path):
    metrics = FakeArtifact(path=str(tmp_path / "metrics"), metadata={})
    md = FakeArtifact(path=str(tmp_path / "r.md"), schema_title="system.Markdown")
    result = {"steps": 3, "last": {"loss": 1.5, "acc": float("nan")}, "weights": "w.pt", "failed": ""}
    assert kfp_io.publish(result, metrics, md, "finetune") == result
    assert metrics.metadata == {"steps": 3.0, "last_loss": 1.5}
    # The metrics are in the artifact's file too: the local runner's cache needs every output to exist.
    assert json.loads((tmp_path / "metrics").read_text()) == metrics.metadata
    assert (tmp_path / "r.md").read_text().startswith("## finetune\n") and "weights: w.pt" in (
        tmp_path / "r.md"
    ).read_text()
    page = FakeArtifact(path=str(tmp_path / "r.html"), schema_title="system.HTML")
    with pytest.raises(RuntimeError, match="shard failed: 9 of 10 inputs rejected"):
        kfp_io.publish(
            {"ok": 1, "failed": "9 of 10 inputs rejected"},
            FakeArtifact(path=str(tmp_path / "m2"), metadata={}),
            page,
            "shard",
        )
    assert (tmp_path / "r.html").read_text().startswith("<h2>shard</h2><pre>")


TASKS = [{"run_label": "t", "train_list": "c", "val_list": "d"}]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"action": "deploy"}, "action: must be one of compile, submit, run-local"),
        (
            {"action": "submit", "params": {"pretrain_videos": "a", "images": "b", "finetune_tasks": TASKS}},
            "host: required for submit",
        ),
        ({"action": "run-local"}, "params: required for run-local"),
        ({"action": "run-local", "params": {"images": "b"}}, "params.pretrain_videos: is required"),
        (
            {
                "action": "run-local",
                "params": {"pretrain_videos": "a", "images": "b", "finetune_tasks": TASKS, "distributed_mode": "mpi"},
            },
            "params.distributed_mode: must be one of",
        ),
        (
            {"action": "run-local", "params": {"pretrain_videos": "a", "images": "b", "finetune_tasks": []}},
            "params.finetune_tasks: give at least one task",
        ),
        (
            {"action": "run-local", "params": {"pretrain_videos": "a", "images": "b", "finetune_tasks": TASKS * 2}},
            "params.finetune_tasks: run_label must differ between tasks",
        ),
        (
            {
                "action": "run-local",
                "params": {
                    "pretrain_videos": "a",
                    "images": "b",
                    "finetune_tasks": [{"run_label": "t", "train_list": "c"}],
                },
            },
            r"params.finetune_tasks.val_list: is required",
        ),
    ],
)
def test_pipeline_command_config_errors_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(PipelineConfig, data)


def test_pipeline_arguments_are_the_params():
    from pipelines.cli import arguments

    cfg = from_dict(
        PipelineConfig,
        {
            "action": "run-local",
            "params": {"pretrain_videos": "a", "images": "b", "finetune_tasks": TASKS, "recipe": "tiny", "nodes": 2},
        },
    )
    args = arguments(cfg.params)
    assert args["recipe"] == "tiny" and args["nodes"] == 2 and args["gpus_per_node"] == 8
    assert json.loads(json.dumps(args)) == args  # plain values only: what kfp.Client sends
