"""Lineage tags: code revision, config hash, input manifest hashes, upstream runs via producer records."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib

import pytest

from bevt_core.tracking import lineage


def test_every_declared_input_is_a_field_of_its_stage_config():
    from bevt_core.cli import COMMANDS

    for cmd in COMMANDS:
        if cmd.name in lineage.STAGE_INPUTS:
            cls = getattr(importlib.import_module(cmd.module), cmd.config)
            assert set(lineage.STAGE_INPUTS[cmd.name]) <= {f.name for f in dataclasses.fields(cls)}, cmd.name


def test_config_hash_ignores_only_the_parent_run():
    cfg = {"preset": "tiny", "run": {"work_dir": "w", "parent_run_id": "abc"}}
    same = {"run": {"parent_run_id": "other", "work_dir": "w"}, "preset": "tiny"}
    assert lineage.config_sha256(cfg) == lineage.config_sha256(same)
    assert lineage.config_sha256(cfg) != lineage.config_sha256({**cfg, "preset": "swin-b"})


def test_git_revision_from_the_environment_or_the_checkout(monkeypatch):
    lineage.git_revision.cache_clear()
    monkeypatch.setenv(lineage.GIT_ENV, "feedbeef")
    assert lineage.git_revision() == ("feedbeef", False)
    lineage.git_revision.cache_clear()
    monkeypatch.delenv(lineage.GIT_ENV)
    commit, _ = lineage.git_revision()
    if (lineage.REPO / ".git").exists():
        assert len(commit) == 40 and int(commit, 16) >= 0
    else:
        assert commit == "unknown"
    lineage.git_revision.cache_clear()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_tags_trace_inputs_to_their_producers(where, tmp_path, request):
    from bevt_core import storage

    if where == "s3":
        request.getfixturevalue("s3")
        base = f"s3://bevt-test/lineage-{tmp_path.name}"
    else:
        base = str(tmp_path)
    data, model = storage.join(base, "shards"), storage.join(base, "model")
    storage.write_bytes(storage.join(data, "manifest.parquet"), b"manifest bytes")
    lineage.write_record(data, lineage.Record("run-shard", "shard"))
    storage.write_bytes(storage.join(model, "recognizer.pt"), b"weights")
    lineage.write_record(model, lineage.Record("run-finetune", "finetune"))

    tags = lineage.stage_tags(
        "evaluate", {"weights": storage.join(model, "recognizer.pt"), "data": data, "output": "out"}
    )
    assert tags["bevt.input.data.manifest_sha256"] == hashlib.sha256(b"manifest bytes").hexdigest()
    assert tags["bevt.upstream.data"] == "run-shard" and tags["bevt.upstream.weights"] == "run-finetune"
    assert tags["bevt.upstream_run_ids"] == "run-finetune,run-shard"
    assert tags["bevt.stage"] == "evaluate" and tags["bevt.image"].endswith("/bevt-cuda:0.1.0")
    assert tags["bevt.config_sha256"] == lineage.config_sha256(
        {"weights": storage.join(model, "recognizer.pt"), "data": data, "output": "out"}
    )
    # An input nobody recorded (data from outside the pipeline) has no upstream, and says so by absence.
    storage.write_bytes(storage.join(base, "list.txt"), b"a.mp4 0\n")
    tags = lineage.stage_tags("shard", {"input": storage.join(base, "list.txt")})
    assert tags["bevt.input.input.sha256"] == hashlib.sha256(b"a.mp4 0\n").hexdigest()
    assert tags["bevt.upstream_run_ids"] == "" and not any(k.startswith("bevt.upstream.") for k in tags)


def test_source_tags_say_what_started_the_run():
    cli = lineage.stage_tags("shard", {"tracking": {"source": "cli"}})
    step = lineage.stage_tags("shard", {"tracking": {"source": "pipeline"}})
    assert (cli["mlflow.source.name"], cli["mlflow.source.type"]) == ("bevt shard", "LOCAL")
    assert (step["mlflow.source.name"], step["mlflow.source.type"]) == ("pipeline step shard", "JOB")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_datasets_name_what_a_run_read_and_wrote(where, tmp_path, request):
    """The same directory is the same dataset (name and digest) whichever run names it; each input carries its
    context, and the profile counts what the manifest holds."""
    import json

    from bevt_core import storage
    from bevt_core.data.manifest import rows_to_parquet
    from bevt_core.tracking import datasets

    if where == "s3":
        request.getfixturevalue("s3")
        base = f"s3://bevt-test/datasets-{tmp_path.name}"
    else:
        base = str(tmp_path)
    rows = [{"status": "ok", "frames": 8}, {"status": "ok", "frames": 6}, {"status": "rejected", "frames": None}]
    train, val = storage.join(base, "scene", "train"), storage.join(base, "scene", "val")
    for root, part in ((train, rows), (val, rows[:1])):
        storage.write_bytes(storage.join(root, "manifest.parquet"), rows_to_parquet(part))
        storage.write_bytes(storage.join(root, "classes.json"), json.dumps(["a", "b"]).encode())
    listing = storage.join(base, "lists", "scene.txt")
    storage.write_bytes(listing, b"a.mp4 0\nb.mp4 1\n\n")

    inputs = datasets.stage_inputs("finetune", {"train": train, "val": val, "init": storage.join(base, "w.pt")})
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert all(i.tags[0].key == "mlflow.data.context" for i in inputs)
    assert set(by_context) == {"training", "validation"}  # the checkpoint is not a dataset
    trained = by_context["training"]
    assert trained.name == "scene/train" and json.loads(trained.source) == {"uri": train}
    assert (
        trained.digest == hashlib.sha256(storage.read_bytes(storage.join(train, "manifest.parquet"))).hexdigest()[:16]
    )
    assert trained.source_type == ("s3" if where == "s3" else "local")
    assert json.loads(trained.profile) == {"samples": 2, "rejected": 1, "frames": 14, "classes": 2}
    # What the shard run wrote is the dataset the finetune run read.
    (written,) = datasets.stage_outputs(train)
    assert written.tags[0].value == "output" and written.dataset == trained
    (source,) = datasets.stage_inputs("shard", {"input": listing})
    assert source.tags[0].value == "source" and json.loads(source.dataset.profile) == {"items": 2}
    assert source.dataset.digest == hashlib.sha256(b"a.mp4 0\nb.mp4 1\n\n").hexdigest()[:16]
    # The producer's name for what it wrote wins over the location: shards are named after their list.
    assert datasets.output_name("shard", {"input": listing}) == "lists/scene"
    lineage.write_record(train, lineage.Record("run-shard", "shard", "lists/scene"))
    assert datasets.stage_outputs(train)[0].dataset.name == "lists/scene"
    assert datasets.output_name("tokenize", {"input": train}) == "lists/scene tokens"
    assert datasets.output_name("finetune", {"train": train}) == ""  # a work directory is no dataset
    # A directory without a manifest (an unfinished stage, a training work dir) names no dataset.
    assert datasets.stage_outputs(storage.join(base, "work")) == []
