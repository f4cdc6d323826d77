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
