"""The MLflow Deployment's backend store on a real PostgreSQL server: the URI of k8s/base/mlflow.yaml
carries no credentials, libpq takes them from PGUSER and PGPASSWORD (the bevt-postgres Secret), so
a password with the characters a URI reserves works as it is, where putting it into the URI breaks.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.test_kube_manifests import kinds, render
from tests.services import apt_install, free_port

PASSWORD = "p@ss:w/rd%?#&"  # each of @ : / % ? # & ends or splits a field of a URI
USER = "mlflow"


def postgres_bin() -> Path:
    """Debian's PostgreSQL server binaries, installed when missing."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    if not found:
        apt_install(["postgresql"])
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    assert found, "postgresql installed but no /usr/lib/postgresql/*/bin/postgres"
    return found[0].parent


def as_postgres_user() -> list[str]:
    """initdb and postgres refuse to run as root."""
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def postgres():
    pg_bin = postgres_bin()
    work = Path(tempfile.mkdtemp(prefix="bevt-pg-"))
    (work / "pw").write_text(PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(work, "nobody", "nogroup")
        shutil.chown(work / "pw", "nobody", "nogroup")
    run = as_postgres_user()
    subprocess.run(
        [
            *run,
            str(pg_bin / "initdb"),
            "-D",
            str(work / "data"),
            "-U",
            USER,
            "--pwfile",
            str(work / "pw"),
            "--auth=scram-sha-256",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [*run, str(pg_bin / "postgres"), "-D", str(work / "data"), "-h", "127.0.0.1", "-p", str(port), "-k", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": USER, "PGPASSWORD": PASSWORD}
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(
            [str(pg_bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        ).returncode:
            assert time.monotonic() < deadline, "postgres did not start"
            time.sleep(0.3)
        subprocess.run([str(pg_bin / "createdb"), "mlflow"], env=os.environ | env, check=True)
        yield port
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown: SIGTERM waits for the clients' pooled connections
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def backend_uri() -> str:
    (mlflow,) = [d for d in kinds(render("overlays/gpu"), "Deployment") if d["metadata"]["name"] == "bevt-mlflow"]
    (arg,) = [a for a in mlflow["spec"]["template"]["spec"]["containers"][0]["args"] if "backend-store" in a]
    return arg.split("=", 1)[1]


def test_mlflow_reaches_postgres_with_the_password_from_the_environment(postgres, monkeypatch, tmp_path):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = backend_uri()
    assert uri == "postgresql://bevt-postgres:5432/mlflow"
    monkeypatch.setenv("PGUSER", USER)
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    store = SqlAlchemyStore(uri.replace("bevt-postgres:5432", f"127.0.0.1:{postgres}"), str(tmp_path))
    experiment = store.create_experiment("bevt")
    assert store.get_experiment(experiment).name == "bevt"


def test_the_same_password_inside_the_uri_breaks(postgres, monkeypatch):
    """What the Deployment did before: postgresql://$(PGUSER):$(PGPASSWORD)@host/db."""
    import sqlalchemy

    monkeypatch.delenv("PGPASSWORD", raising=False)
    # The URI parser ends the password at its @ and reads "ss:w" as host and port.
    with pytest.raises(ValueError, match="invalid literal for int"):
        sqlalchemy.create_engine(f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{postgres}/mlflow")
