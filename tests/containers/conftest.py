"""The stage images (docker/), built once per session with docker/build.sh and then run.

Nothing here skips: when podman cannot be installed or an image cannot be built, every test that
needs the images fails with the build's output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bevt_core import images as img

REPO = Path(__file__).resolve().parents[2]
ENGINE = str(REPO / "docker" / "engine.sh")
BUILD_TIMEOUT_S = 2400  # a cold build (no layer or pip cache) downloads ~4 GB of CUDA wheels


def pytest_configure(config):
    config.addinivalue_line("markers", "containers: builds the stage images (docker/) and runs them")


def engine(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """``docker/engine.sh ARGS``: docker or podman with the project's container settings."""
    proc = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"engine {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@dataclass(frozen=True)
class Images:
    refs: dict[str, str]  # kind (cpu, cuda, mlflow) -> reference, from bevt_core/images.py
    build_s: float  # how long docker/build.sh took in this session (seconds when cached)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Images:
    """Build every image (from the layer cache when nothing changed)."""
    log = tmp_path_factory.mktemp("images") / "build.log"
    start = time.monotonic()
    with open(log, "w") as out:
        # images.py is read with this interpreter (the venv's), as the components and manifests read it.
        proc = subprocess.run(
            ["bash", str(REPO / "docker" / "build.sh")],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHON=sys.executable),
            timeout=BUILD_TIMEOUT_S,
        )
    if proc.returncode != 0:
        pytest.fail(f"docker/build.sh exited {proc.returncode}; the end of {log}:\n{log.read_text()[-5000:]}")
    return Images({kind: img.image(kind) for kind in img.NAMES}, time.monotonic() - start)
