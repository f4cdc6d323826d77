"""The project as a user installs it: a non-editable ``pip install .`` holds bevt_core, components and
pipelines, and ``bevt pipeline compile`` works from any directory, with no source checkout on the path."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("bevt_core", "components", "pipelines", "pyproject.toml", "README.md")


def test_installed_package_compiles_the_pipeline_from_elsewhere(tmp_path):
    source = tmp_path / "src"  # a copy: the build must not write build/ or *.egg-info into the checkout
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(
            REPO / name,
            source / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The dependencies come from this environment's site-packages, added as a plain path: its .pth files
    # (among them the editable install of this checkout) are not run, so only the copy installed here counts.
    (next(venv.glob("lib/python*/site-packages")) / "dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"PIP_NO_INDEX": "1"}
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    install = subprocess.run([*pip, str(source)], env=env, capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import bevt_core, components, pipelines; "
            "print(bevt_core.__file__, components.__file__, pipelines.__file__)",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(venv)) for path in where.stdout.split()), where.stdout
    compiled = subprocess.run(
        [str(venv / "bin" / "bevt"), "pipeline", "compile", "--output", "bevt.yaml"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    spec = next(yaml.safe_load_all((elsewhere / "bevt.yaml").read_text()))
    assert spec["pipelineInfo"]["name"] == "bevt"
    assert "finetune_tasks" in spec["root"]["inputDefinitions"]["parameters"]
