"""The PyTorchJob contract for real: our manifest, the operator's env, a real gloo training run.

From the rendered PyTorchJob, each replica's environment is computed exactly as the training
operator builds it (bevt_core.kube.pytorchjob.replica_env); the Master and each Worker then start
as separate processes running the container's own command (``torchrun -m bevt_core.cli
pretrain-joint --config ...``) with only that environment, plus PATH and HOME. The pods' hostnames
(``<job>-master-0``, ...) map to 127.0.0.1, the one thing a single machine cannot reproduce. The
job is the tiny pretrain-joint preset on real sample data, two nodes, DDP over gloo.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bevt_core.kube import pytorchjob as pj
from tests.joint import finished_line, joint_config, prepare_joint_data
from tests.services import free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def joint_data(samples, tmp_path_factory) -> Path:
    """A handful of real clips and photos, sharded and tokenized (shared codebook), 64 px."""
    return prepare_joint_data(samples, tmp_path_factory.mktemp("contract"))


OPERATOR_VARS = {
    "PYTHONUNBUFFERED",
    "MASTER_ADDR",
    "PET_MASTER_ADDR",
    "MASTER_PORT",
    "PET_MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "PET_NODE_RANK",
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
}
ELASTIC_VARS = {"PET_RDZV_ENDPOINT", "PET_RDZV_BACKEND", "PET_MAX_RESTARTS"}


@pytest.mark.parametrize(
    "elastic", [None, pj.Elastic(min_nodes=2, max_nodes=2, max_restarts=0)], ids=["static", "elastic-c10d"]
)
def test_master_and_worker_with_only_the_operator_env_train_together(joint_data, tmp_path, elastic):
    config = tmp_path / "pretrain-joint.yaml"
    batch = 2
    config.write_text(yaml.safe_dump(joint_config(joint_data, tmp_path / "work", batch)))
    job = pj.manifest(
        pj.JobSpec(
            name="bevt-contract",
            image="unused",
            args=pj.entrypoint("pretrain-joint", str(config)),
            workers=1,
            nproc_per_node=1,
            port=free_port(),
            env=(("OMP_NUM_THREADS", "1"),),
            elastic=elastic,
        )
    )
    pj.validate(job)
    hosts = {pj.pod_name("bevt-contract", t, i) for t, i in pj.replicas(job)}
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    # The image's PATH has the venv's torchrun first; HOME is where torch may cache.
    base = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)}
    procs = []
    for rtype, index in pj.replicas(job):
        env = pj.replica_env(job, rtype, index)
        assert set(env) == {"OMP_NUM_THREADS"} | OPERATOR_VARS | (ELASTIC_VARS if elastic else set())
        env = {k: _local(v, hosts) for k, v in env.items()}
        procs.append(
            subprocess.Popen(
                [*container["command"], *container["args"]],
                env=base | env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + "\n---\n" + outs[1][-3000:]
    # World size 2: each optimizer step consumed one micro-batch per rank, and both ranks finished it.
    for out in outs:
        assert finished_line(2, batch) in out, out[-2000:]
    weights = torch.load(tmp_path / "work" / "bevt_pretrain.pt", weights_only=True)
    assert weights["meta"]["format"] == "bevt-3d"


def _local(value: str, hosts: set[str]) -> str:
    """A pod hostname (also inside host:port) as 127.0.0.1."""
    host, sep, port = value.rpartition(":")
    if sep and host in hosts:
        return f"127.0.0.1:{port}"
    return "127.0.0.1" if value in hosts else value
