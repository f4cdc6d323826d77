"""`bevt pipeline run-local` against a real `mlflow server` (SQLite, artifacts on SeaweedFS S3).

One parent run per pipeline run, a nested run per step, each with its params, metrics, lineage
tags (code, config hash, input manifest hashes, the run ids of the steps whose outputs it read:
checked against the runs that really produced them) and artifacts, which must be in the S3
bucket; the parent holds the pipeline report.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import PIPELINE_MODEL, PIPELINE_STEPS

pytestmark = pytest.mark.slow


def test_pipeline_lineage_on_a_tracking_server(tracked_pipeline, mlflow_server, s3_server, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    parent = client.get_run(tracked_pipeline.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["recipe"] == "tiny"
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = [r.info.run_name for r in children]
    assert {n: names.count(n) for n in set(names)} == PIPELINE_STEPS
    by_id = {r.info.run_id: r for r in children}
    for r in children:
        tags = r.data.tags
        assert r.info.status == "FINISHED", r.info.run_name
        assert tags["mlflow.source.git.commit"] == "0123abc"
        assert len(tags["bevt.config_sha256"]) == 64 and tags["bevt.image"].startswith("ghcr.io/bevt/bevt-")
        # Every upstream id is a stage run of this pipeline, of the stage kind that makes that input.
        for key, run_id in tags.items():
            if key.startswith("bevt.upstream."):
                assert run_id in by_id, (r.info.run_name, key)
    one = {r.info.run_name: r for r in children}

    def upstream(run, field: str) -> str:
        return by_id[run.data.tags[f"bevt.upstream.{field}"]].info.run_name

    joint = one["pretrain-joint"]
    assert upstream(joint, "init") == "pretrain-image"
    assert [upstream(joint, f) for f in ("videos", "images")] == ["shard pretraining videos", "shard images"]
    assert [upstream(joint, f) for f in ("video_tokens", "image_tokens")] == ["tokenize videos", "tokenize images"]
    # The finetune loop's runs carry the task's label; its shard runs read the task's lists.
    assert upstream(one["finetune scene"], "init") == "pretrain-joint"
    assert {upstream(one["finetune scene"], f) for f in ("train", "val")} == {"shard scene"}
    assert upstream(one["evaluate scene"], "weights") == "finetune scene"
    # The finetuned model, registered from the finetune run: traceable from the registry back to its data.
    (version,) = client.search_model_versions(f"name = '{PIPELINE_MODEL}'")
    assert version.run_id == one["finetune scene"].info.run_id and version.status == "READY"
    # The upstream ids are exactly the runs that wrote those outputs: the tokenize run that read the
    # image shards is the image tokens' producer, and its own input traces to a shard run.
    image_tokens = by_id[joint.data.tags["bevt.upstream.image_tokens"]]
    assert image_tokens.data.tags["bevt.input.input"] == joint.data.tags["bevt.input.images"]
    assert image_tokens.data.tags["bevt.upstream.input"] == joint.data.tags["bevt.upstream.images"]
    assert upstream(image_tokens, "codebook") == "tokenize videos"  # the codebook fitted on the videos
    assert (
        image_tokens.data.tags["bevt.input.input.manifest_sha256"]
        == joint.data.tags["bevt.input.images.manifest_sha256"]
    )

    # The same lineage as MLflow datasets and source tags (the UI's Dataset and Source columns): the shard run
    # shows its list as source and its shards as output, the finetune run those shards as training and validation
    # data: one dataset (name, digest) whichever run logged it.
    def used(run) -> dict[str, set[tuple[str, str]]]:
        out: dict[str, set[tuple[str, str]]] = {}
        for i in client.get_run(run.info.run_id).inputs.dataset_inputs:
            context = {t.key: t.value for t in i.tags}["mlflow.data.context"]
            out.setdefault(context, set()).add((i.dataset.name, i.dataset.digest))
        return out

    shard_scene = [used(r) for r in children if r.info.run_name == "shard scene"]
    finetune_scene = used(one["finetune scene"])
    assert all(set(u) == {"source", "output"} for u in shard_scene) and set(finetune_scene) == {
        "training",
        "validation",
    }
    assert finetune_scene["training"] | finetune_scene["validation"] == set().union(*(u["output"] for u in shard_scene))
    ((_, digest),) = finetune_scene["training"]
    assert one["finetune scene"].data.tags["bevt.input.train.manifest_sha256"].startswith(digest)
    assert set(used(joint)) == {"training", "tokens"} and set(used(one["evaluate scene"])) == {"validation"}
    for r in children:
        assert r.data.tags["mlflow.source.type"] == "JOB", r.info.run_name
        assert r.data.tags["mlflow.source.name"] == f"pipeline step {r.data.tags['bevt.stage']}", r.info.run_name
    # The model version says where it comes from: its finetune run, the pretraining run, the data.
    description = client.get_model_version(PIPELINE_MODEL, version.version).description
    assert one["finetune scene"].info.run_id in description and joint.info.run_id in description, description
    assert all(name in description for name, _ in finetune_scene["training"] | finetune_scene["validation"])

    # Params and metrics.
    assert joint.data.params["preset"] == "tiny" and joint.data.params["schedule.max_steps"] == "2"
    assert {"loss_video", "acc_video", "lr", "samples_per_s", "memory_gb"} <= set(joint.data.metrics)
    assert any(k.startswith("system/cpu_utilization") for k in one["finetune scene"].data.metrics), "system metrics"
    assert {"top1", "top5", "mean_class_accuracy"} <= set(one["evaluate scene"].data.metrics)
    assert {"items", "ok", "rejected"} <= set(one["shard images"].data.metrics)

    # Artifacts: listed by the server and stored in the S3 bucket under its artifact root.
    def listed(run, folder=None) -> set[str]:
        return {a.path for a in client.list_artifacts(run.info.run_id, folder)}

    for name in ("pretrain-image", "pretrain-joint"):
        assert {"plots/curves.png", "plots/masked_prediction.png"} <= listed(one[name], "plots"), name
    assert "plots/curves.png" in listed(one["finetune scene"], "plots")
    assert {"plots/per_class_accuracy.png"} <= listed(one["evaluate scene"], "plots")
    assert {"confusion.png", "metrics.json"} <= listed(one["evaluate scene"])
    for r in children:
        if r.info.run_name.startswith("shard"):
            assert "plots/rejects.png" in listed(r, "plots") and "data/manifest.parquet" in listed(r, "data")
            assert "rejects_summary.json" in listed(r)
        if r.info.run_name.startswith("tokenize"):
            assert {"tokenizer/codebook.npz", "tokenizer/tokenizer.json"} <= listed(r, "tokenizer")
    assert "report.html" in listed(parent)
    keys = {
        o["Key"]
        for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket="bevt-test", Prefix="mlflow/")
        for o in page.get("Contents", [])
    }
    assert any(k.endswith(f"{parent.info.run_id}/artifacts/report.html") for k in keys)
    assert any(k.endswith(f"{joint.info.run_id}/artifacts/plots/masked_prediction.png") for k in keys)
    report = client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path))
    page = open(report).read()
    for r in children:
        assert f"<td>{r.info.run_name} ({r.info.run_id[:8]})</td><td>FINISHED</td>" in page
    assert page.count("data:image/png;base64,") >= 6
