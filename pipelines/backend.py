"""What the cluster must offer the pipeline, and the checks ``bevt pipeline submit`` makes before it starts a
run: the Kubeflow Pipelines backend's version, and the kind of training job the launcher steps will create.

An older backend accepts the pipeline and runs it without the feature: a setting the IR carries is silently
dropped, so the run misbehaves hours later (no retries, every finetune at once) or a pod fails to start.
Each requirement names the kubeflow/pipelines change that brought the feature and the first release
containing it (read off the release tags of the kubeflow/pipelines repository).

The API server reports its release as ``tag_name`` on ``GET /apis/v2beta1/healthz``
(backend/src/apiserver/main.go); through the Kubeflow Pipelines UI (ml-pipeline-ui, what a Kubeflow
gateway's ``/pipeline`` prefix reaches) the same endpoint answers ``apiServerTagName``
(frontend/server/handlers/healthz.ts). kfp.Client's ``get_kfp_healthz`` parses the answer into a model
without either field, so the check reads the raw answer. The driver and launcher images are the ones the
API server is configured with, by default from the same release.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bevt_core.config import ConfigError
from bevt_core.kube import backends


@dataclass(frozen=True)
class Requirement:
    version: tuple[int, int, int]
    feature: str  # what needs it, and what an older backend does instead

    @property
    def release(self) -> str:
        return ".".join(map(str, self.version))


REQUIREMENTS = (
    Requirement(
        (2, 3, 0),
        "steps running as a non-root user: the launcher's write locations (/s3, /minio, /gcs, /.local, /.cache) "
        "as emptyDirs (kubeflow/pipelines#10857), and the /dev/shm and /tmp emptyDirs of kfp-kubernetes "
        "(#10913); older backends leave those unwritable or unmounted",
    ),
    Requirement(
        (2, 4, 0),
        "the finetune loop's parallelism (ParallelFor parallelism, #10798); older backends run every task at once",
    ),
    Requirement(
        (2, 14, 0),
        "retries with backoff in every step (#11861; 2.4.1 and 2.5 retried only the root DAG's steps, #11673, "
        "not the finetune loop's; older backends do not retry at all)",
    ),
    Requirement(
        (2, 15, 0),
        "the optional bevt-env ConfigMap as env (#12216); older drivers drop `optional`, so a namespace "
        "without bevt-env fails every step with CreateContainerConfigError",
    ),
)
MINIMUM = max(REQUIREMENTS, key=lambda r: r.version)


class BackendTooOld(ConfigError):
    """Reported like a bad setting: before anything is created on the server."""


def reported_version(healthz: dict[str, Any]) -> str:
    """The release the healthz answer names, or "" when it names none (a build without TAG_NAME says
    ``unknown``)."""
    tag = str(healthz.get("tag_name") or healthz.get("apiServerTagName") or "")
    return "" if tag == "unknown" else tag


def _parse(tag: str) -> tuple[int, int, int] | None:
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", tag)
    return tuple(int(g) for g in match.groups()) if match else None  # type: ignore[return-value]


def check(tag: str, host: str) -> None:
    """Refuse a backend release older than the pipeline needs; a tag that is no release (a dev build) passes."""
    version = _parse(tag)
    if version is None:
        return
    missing = [r for r in REQUIREMENTS if version < r.version]
    if missing:
        lines = "\n".join(f"  {r.release}: {r.feature}" for r in missing)
        raise BackendTooOld(
            f"host: the Kubeflow Pipelines backend at {host} is {tag}; this pipeline needs {MINIMUM.release} "
            f"or later for:\n"
            f"{lines}\nUpgrade Kubeflow Pipelines, or submit anyway with --no-check-backend."
        )


def read_version(client: Any) -> str:
    """The release a ``kfp.Client``'s API server reports ("" when it reports none or cannot be asked)."""
    import json

    import kfp_server_api

    try:
        # _preload_content=False: the raw JSON, whose tag_name the generated response model would drop.
        answer = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
    except kfp_server_api.ApiException:
        return ""  # a gateway that does not route healthz: nothing told, nothing to check
    return reported_version(json.loads(answer.data))


def check_training_jobs(kubeconfig: str, choice: str) -> str:
    """Which kind of training job the cluster of ``kubeconfig`` will run (``choice``: params.training_backend),
    refusing a kind it does not serve. Without a kubeconfig (none given, no $KUBECONFIG, no ~/.kube/config)
    nothing is checked: the KFP endpoint alone does not reach the Kubernetes API. Returns what is known."""
    import os

    from kubernetes import config

    # As kubectl finds it; $KUBECONFIG may list several files (the client merges them).
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if not kubeconfig and not any(os.path.exists(p) for p in path.split(os.pathsep)):
        return f"training backend {choice} not checked (no kubeconfig)"
    try:
        api = config.new_client_from_config(config_file=path)
    except (config.ConfigException, OSError) as e:
        raise ConfigError(f"kubeconfig: cannot load {path}: {e}") from None
    with api:
        try:
            kind = backends.detect(api, choice)
        except backends.BackendMissing as e:
            raise ConfigError(f"params.training_backend: {e}") from None
    return f"training jobs: {kind.kind} ({kind.api_version})"
