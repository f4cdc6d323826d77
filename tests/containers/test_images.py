"""Smoke tests of the stage images: built from docker/ (conftest), then run as a user and the
cluster would run them, as the non-root user they declare.

- every Dockerfile passes hadolint; every image is non-root, labelled, and holds only packages
  pinned by requirements/lock.txt;
- `bevt --help` in the stage images, `mlflow` in the server image (which serves /health);
- bevt-cpu (no torch) shards real footage from a mounted folder into a mounted output, and the
  result is byte-identical to the same shard run by the test venv;
- bevt-cuda runs a two-replica PyTorchJob of the tiny joint pretraining as two containers on
  one network, each with exactly the environment, command, user and /dev/shm its pod would get.

Image sizes go to tests/containers/results/images.{json,md}.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from bevt_core import images as img
from bevt_core.kube import pytorchjob as pj
from bevt_core.stages.shard import ShardConfig
from bevt_core.stages.shard import run as shard
from tests.containers.conftest import ENGINE, REPO, Images, engine
from tests.joint import finished_line, joint_config, prepare_joint_data
from tests.services import free_port

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(3000)]
RESULTS = REPO / "tests" / "containers" / "results"
MAX_CPU_IMAGE_BYTES = 1.5e9


def _inspect(ref: str) -> dict:
    return json.loads(engine("image", "inspect", ref).stdout)[0]


def _run(ref: str, *args: str, timeout: float = 300) -> str:
    return engine("run", "--rm", ref, *args, timeout=timeout).stdout


def _world_readable(root: Path) -> None:
    """pytest's temp folders are root-only (0700): let the image's user 1000 read them."""
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | (0o055 if p.is_dir() else 0o044))


def test_hadolint_passes_on_every_dockerfile():
    dockerfiles = sorted((REPO / "docker").glob("*Dockerfile*"))
    assert dockerfiles
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    proc = subprocess.run([hadolint, *map(str, dockerfiles)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_images_are_non_root_labelled_and_pinned_by_the_lock(images: Images):
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    lock = (REPO / "requirements" / "lock.txt").read_text()
    for kind, ref in images.refs.items():
        config = _inspect(ref)["Config"]
        assert config["User"] == "1000:1000", kind
        labels = config["Labels"]
        assert labels["org.opencontainers.image.version"] == img.tag(), kind
        assert labels["org.opencontainers.image.revision"].removesuffix("-dirty") == revision, kind
        out = engine(
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            ref,
            "-c",
            "id -u && cat /opt/bevt/lock.txt && python /opt/bevt/check_lock.py /opt/bevt/lock.txt",
        ).stdout
        uid, _, rest = out.partition("\n")
        assert uid == "1000", kind
        assert rest.startswith(lock), f"{kind}: the image was built from another lock"
        assert "every one pinned by" in rest, kind


def test_the_kfp_components_name_the_built_images(images: Images):
    import components

    used = set()
    for module in pkgutil.iter_modules(components.__path__):
        for obj in vars(importlib.import_module(f"components.{module.name}")).values():
            spec = getattr(obj, "component_spec", None)
            if spec is not None:
                used.add(spec.implementation.container.image)
    assert used == {images.refs["cpu"], images.refs["cuda"]}


def test_stage_images_answer_help_and_the_cpu_image_has_no_torch(images: Images):
    for kind in ("cpu", "cuda"):
        assert "shard" in _run(images.refs[kind], "--help") and "pretrain-joint" in _run(images.refs[kind], "--help")
    assert "--frame-interval" in _run(images.refs["cpu"], "shard", "--help")
    assert "--targets" in _run(images.refs["cuda"], "pretrain-joint", "--help")
    probe = "import importlib.util as u; print([m for m in ('torch', 'torchvision', 'timm') if u.find_spec(m)])"
    assert engine("run", "--rm", "--entrypoint", "python", images.refs["cpu"], "-c", probe).stdout.strip() == "[]"


def test_mlflow_image_serves_with_a_postgres_driver(images: Images):
    ref = images.refs["mlflow"]
    assert _run(ref, "--version").strip().endswith("3.17.2")
    # SQLAlchemy loads its default driver for the backend-store URI of k8s/base/mlflow.yaml (without
    # connecting), psycopg with its bundled libpq: the image has no system libpq.
    probe = (
        "import sqlalchemy, psycopg; e = sqlalchemy.create_engine('postgresql://u:p@bevt-postgres:5432/mlflow'); "
        "print(e.dialect.driver, psycopg.pq.__impl__)"
    )
    assert engine("run", "--rm", "--entrypoint", "python", ref, "-c", probe).stdout.strip() == "psycopg binary"
    name, port = f"bevt-mlflow-{uuid.uuid4().hex[:8]}", free_port()
    engine(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"127.0.0.1:{port}:5000",
        ref,
        "server",
        "--host",
        "0.0.0.0",
        "--port",
        "5000",
        "--backend-store-uri",
        "sqlite:////tmp/mlflow.db",
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    assert r.read().decode().strip() == "OK"
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(engine("logs", name, check=False).stderr[-3000:]) from None
                time.sleep(1)
    finally:
        engine("rm", "-f", name, check=False)


def test_cpu_image_shards_real_footage_as_non_root_exactly_like_the_venv(images: Images, samples, tmp_path):
    """Real videos (decord), one only PyAV decodes and an empty file (rejected), mounted read-only."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    chosen = [
        samples.source_videos[0],
        samples.source_videos[1],
        samples.fallback_videos[0],
        next(p for p, kind in samples.bad_inputs if kind == "empty"),
    ]
    for src in chosen:
        shutil.copy(src, inputs / src.name)
    (inputs / "list.txt").write_text("".join(f"{src.name} {i % 2}\n" for i, src in enumerate(chosen)))
    in_container, on_host = tmp_path / "out-container", tmp_path / "out-host"
    in_container.mkdir(mode=0o777)
    in_container.chmod(0o777)  # the image's user 1000 writes here
    _world_readable(tmp_path)
    args = [
        "--input",
        str(inputs / "list.txt"),
        "--frame-interval",
        "4",
        "--short-side",
        "96",
        "--samples-per-shard",
        "2",
        "--max-reject-rate",
        "0.5",
        "--workers",
        "2",
    ]
    # The same absolute paths inside, so that recorded sources match the host run byte for byte.
    engine(
        "run",
        "--rm",
        "-v",
        f"{inputs}:{inputs}:ro",
        "-v",
        f"{in_container}:{in_container}",
        images.refs["cpu"],
        "shard",
        *args,
        "--output",
        str(in_container),
        "--no-progress",
        timeout=600,
    )
    shard(
        ShardConfig(
            input=str(inputs / "list.txt"),
            output=str(on_host),
            frame_interval=4,
            short_side=96,
            samples_per_shard=2,
            max_reject_rate=0.5,
            workers=2,
            progress=False,
        )
    )

    import pyarrow.parquet as pq

    manifest = pq.read_table(in_container / "manifest.parquet").to_pylist()
    ok = [r for r in manifest if r["status"] == "ok"]
    assert len(ok) == 3 and {r["decoder"] for r in ok} == {"decord", "pyav"}
    assert [r["reason"] for r in pq.read_table(in_container / "rejects.parquet").to_pylist()] == ["empty"]
    assert all(r["frames"] > 1 for r in ok)
    files = sorted(p.name for p in on_host.iterdir() if p.is_file())
    assert "shard-000000.tar" in files and "manifest.parquet" in files
    assert sorted(p.name for p in in_container.iterdir() if p.is_file()) == files
    for name in files:
        assert (in_container / name).read_bytes() == (on_host / name).read_bytes(), name
        assert (in_container / name).stat().st_uid == 1000, name


@pytest.fixture(scope="module")
def joint_data(samples, tmp_path_factory) -> Path:
    root = prepare_joint_data(samples, tmp_path_factory.mktemp("joint"))
    _world_readable(root)
    return root


def _pod_run_args(job: dict, replica_type: str, index: int, network: str) -> list[str]:
    """What the kubelet and the training operator would give this replica's container, as engine
    `run` arguments: name and hostname (the pod's), the operator's env, the pod's user and
    capabilities, the memory-backed /dev/shm of its size, and the container's command and args."""
    template = job["spec"]["pytorchReplicaSpecs"][replica_type]["template"]["spec"]
    container = next(c for c in template["containers"] if c["name"] == pj.CONTAINER)
    pod = template["securityContext"]
    shm = next(v["emptyDir"]["sizeLimit"] for v in template["volumes"] if v["name"] == "dshm")
    name = pj.pod_name(job["metadata"]["name"], replica_type, index)
    args = [
        "--name",
        name,
        "--hostname",
        name,
        "--network",
        network,
        "--user",
        f"{pod['runAsUser']}:{pod['runAsGroup']}",
        "--shm-size",
        shm.replace("Gi", "g").replace("Mi", "m"),
    ]
    if container["securityContext"]["capabilities"]["drop"] == ["ALL"]:
        args.append("--cap-drop=ALL")
    if container["securityContext"]["allowPrivilegeEscalation"] is False:
        args.append("--security-opt=no-new-privileges")
    for k, v in pj.replica_env(job, replica_type, index).items():
        args += ["--env", f"{k}={v}"]
    return [*args, "--entrypoint", container["command"][0]]


def test_cuda_image_runs_the_pytorchjob_as_two_containers_with_the_operator_env(images: Images, joint_data, tmp_path):
    tmp_path.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)  # the pods' user 1000 writes checkpoints here (the shared volume)
    config = tmp_path / "pretrain-joint.yaml"
    batch = 2
    # One DataLoader worker per rank: batches cross the container's /dev/shm.
    config.write_text(yaml.safe_dump(joint_config(joint_data, work, batch, workers=1)))
    config.chmod(0o644)
    job = pj.manifest(
        pj.JobSpec(
            name=f"bevt-smoke-{uuid.uuid4().hex[:6]}",
            image=images.refs["cuda"],
            args=pj.entrypoint("pretrain-joint", str(config)),
            workers=1,
            nproc_per_node=1,
            env=(("OMP_NUM_THREADS", "1"),),
        )
    )
    pj.validate(job)
    network = job["metadata"]["name"]
    engine("network", "create", network)
    procs, names, logs = [], [], []
    try:
        for rtype, index in pj.replicas(job):
            container = job["spec"]["pytorchReplicaSpecs"][rtype]["template"]["spec"]["containers"][0]
            run_args = _pod_run_args(job, rtype, index, network)
            names.append(run_args[1])
            logs.append(tmp_path / f"{run_args[1]}.log")
            mounts = ["-v", f"{joint_data}:{joint_data}:ro", "-v", f"{tmp_path}:{tmp_path}"]
            with open(logs[-1], "w") as log:
                procs.append(
                    subprocess.Popen(
                        [ENGINE, "run", "--rm", *run_args, *mounts, container["image"], *container["args"]],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        # Until both exit, or one fails (the other would wait for its peer until the rendezvous timeout).
        deadline = time.monotonic() + 900
        while (
            time.monotonic() < deadline and not all(p.poll() == 0 for p in procs) and not any(p.poll() for p in procs)
        ):
            time.sleep(1)
    finally:
        for name in names:
            engine("rm", "-f", name, check=False)
        for p in procs:
            p.wait(60)
        engine("network", "rm", "-f", network, check=False)
    outs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + "\n---\n" + outs[1][-3000:]
    for out in outs:
        assert finished_line(2, batch) in out, out[-2000:]
    import torch

    weights = torch.load(work / "bevt_pretrain.pt", weights_only=True)
    assert weights["meta"]["format"] == "bevt-3d"
    assert (work / "bevt_pretrain.pt").stat().st_uid == 1000


def test_image_sizes_are_recorded_and_the_shard_image_is_small(images: Images):
    sizes = {kind: int(_inspect(ref)["Size"]) for kind, ref in images.refs.items()}
    engine_name = engine("--name").stdout.strip()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = [{"image": images.refs[k], "kind": k, "bytes": sizes[k], "gb": round(sizes[k] / 1e9, 2)} for k in sizes]
    (RESULTS / "images.json").write_text(json.dumps({"engine": engine_name, "images": rows}, indent=2) + "\n")
    (RESULTS / "images.md").write_text(
        f"# Stage image sizes ({engine_name}, uncompressed, as stored locally)\n\n"
        "Written by tests/containers/test_images.py. bevt-cuda shares bevt-cpu's base and package layers.\n\n"
        "| image | stages | size |\n|---|---|---|\n"
        + "".join(
            f"| `{r['image']}` "
            f"| {', '.join(s for s, k in img.STAGE_IMAGE.items() if k == r['kind']) or 'MLflow server'}"
            f" | {r['gb']:.2f} GB |\n"
            for r in rows
        )
    )
    assert sizes["cpu"] < MAX_CPU_IMAGE_BYTES, f"bevt-cpu is {sizes['cpu'] / 1e9:.2f} GB"
