"""Shard from and to a real S3 server (SeaweedFS on loopback), and read the shards back."""

from __future__ import annotations

import subprocess

import pytest

from bevt_core import storage
from bevt_core.data.loader import ShardStream
from bevt_core.data.manifest import load_manifest
from bevt_core.stages.shard import ShardConfig, run
from tests.conftest import bevt_cli


def upload_task(task, prefix: str, limit: int = 6) -> str:
    lines = task.train_list.read_text().splitlines()[:limit]
    for line in lines:
        rel = line.split()[0]
        storage.write_bytes(f"{prefix}/videos/{rel}", (task.root / rel).read_bytes())
    storage.write_bytes(f"{prefix}/videos/train.txt", ("\n".join(lines) + "\nmissing.mp4 0\n").encode())
    storage.write_bytes(f"{prefix}/videos/classes.txt", (task.root / "classes.txt").read_bytes())
    return f"{prefix}/videos"


def test_s3_round_trip_equals_local(samples, s3, tmp_path):
    src = upload_task(samples.scene, "s3://bevt-test/rt")
    cfg = dict(
        input=f"{src}/train.txt",
        classes=f"{src}/classes.txt",
        frame_interval=4,
        short_side=48,
        samples_per_shard=4,
        progress=False,
        max_reject_rate=0.5,
    )
    remote = run(ShardConfig(output="s3://bevt-test/rt/shards", **cfg))
    assert remote.ok == 6 and remote.rejects_by_reason == {"missing": 1}
    assert storage.exists("s3://bevt-test/rt/shards/manifest.parquet")

    local_dir = tmp_path / "local"
    lines = storage.read_bytes(f"{src}/train.txt").decode().splitlines()
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    run(
        ShardConfig(
            **{**cfg, "input": str(tmp_path / "train.txt"), "classes": str(samples.scene.root / "classes.txt")},
            root=str(samples.scene.root),
            output=str(local_dir),
        )
    )
    for shard in ("shard-000000.tar", "shard-000001.tar"):
        assert storage.read_bytes(f"s3://bevt-test/rt/shards/{shard}") == (local_dir / shard).read_bytes()

    streamed = {s.key: s.jpegs for s in ShardStream("s3://bevt-test/rt/shards")}
    local = {s.key: s.jpegs for s in ShardStream(str(local_dir))}
    assert streamed == local and len(streamed) == 6


def test_s3_wrong_credentials_fail_clearly(samples, s3, monkeypatch):
    src = upload_task(samples.scene, "s3://bevt-test/creds", limit=1)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    storage.reset_s3_client()
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        run(ShardConfig(input=f"{src}/train.txt", output="s3://bevt-test/creds/out", progress=False))


def test_s3_kill_and_resume_via_cli(samples, s3, tmp_path, cli_env):
    import os
    import signal
    import time

    src = upload_task(samples.scene, "s3://bevt-test/resume", limit=12)
    env = {**cli_env, **s3.env()}
    cmd = bevt_cli() + [
        "shard",
        "--input",
        f"{src}/train.txt",
        "--output",
        "s3://bevt-test/resume/out",
        "--samples-per-shard",
        "2",
        "--short-side",
        "48",
        "--workers",
        "1",
        "--no-progress",
        "--max-reject-rate",
        "0.2",
    ]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not storage.exists("s3://bevt-test/resume/out/_parts/shard-000001.parquet"):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not storage.exists("s3://bevt-test/resume/out/manifest.parquet")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    m = load_manifest("s3://bevt-test/resume/out")
    assert len(m) == 12 and len({r["key"] for r in m.rows}) == 12


def test_cli_reports_bad_credentials_in_one_line(samples, s3, cli_env):
    src = upload_task(samples.scene, "s3://bevt-test/creds-cli", limit=1)
    env = {**cli_env, **s3.env(), "AWS_SECRET_ACCESS_KEY": "wrong"}
    proc = subprocess.run(
        bevt_cli() + ["shard", "--input", f"{src}/train.txt", "--output", "s3://bevt-test/x"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 1
    assert "object store access failed" in proc.stderr and "SignatureDoesNotMatch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_large_objects_go_up_in_parts_and_unfinished_uploads_stay_invisible(s3):
    import os

    from bevt_core.data import jobs

    data = os.urandom(storage.MULTIPART_CHUNK + 12345)
    storage.write_bytes("s3://bevt-test/big/obj.bin", data)
    client = s3.client()
    head = client.head_object(Bucket="bevt-test", Key="big/obj.bin")
    assert head["ContentLength"] == len(data) and "-" in head["ETag"], "a multipart ETag is '<md5>-<parts>'"
    assert storage.read_range("s3://bevt-test/big/obj.bin", 100, 200) == data[100:200]

    # What a stage killed mid-upload leaves: an uncompleted multipart upload, which is no object.
    up = client.create_multipart_upload(Bucket="bevt-test", Key="big/out/shard-000000.tar")
    client.upload_part(
        Bucket="bevt-test",
        Key="big/out/shard-000000.tar",
        UploadId=up["UploadId"],
        PartNumber=1,
        Body=data[: storage.MULTIPART_CHUNK],
    )
    assert not storage.exists("s3://bevt-test/big/out/shard-000000.tar")
    jobs.clean_leftovers("s3://bevt-test/big/out")
    assert client.list_multipart_uploads(Bucket="bevt-test", Prefix="big/out/").get("Uploads", []) == []
