"""The one place that names the container images (docker/ builds them, components/, k8s/ and the
launcher run them).

Registry and tag come from ``BEVT_IMAGE_REGISTRY`` / ``BEVT_IMAGE_TAG`` when set, so a user who
pushes the images elsewhere changes two variables, not code. k8s/base pins the same defaults in
its ``images:`` list (a test keeps the two equal); overlays retag with ``kustomize edit set image``.
"""

from __future__ import annotations

import os

DEFAULT_REGISTRY = "ghcr.io/bevt"
DEFAULT_TAG = "0.1.0"

# docker/ builds one CPU image (decoding: shard), one CUDA image (tokenizer and training) and the
# MLflow server image (mlflow + the Postgres driver + boto3 for S3 artifacts). The launcher step
# validates the training config, whose classes import torch, and runs torchrun itself in local
# mode: it uses the training image (already cached on the nodes that run the PyTorchJob).
NAMES = {"cpu": "bevt-cpu", "cuda": "bevt-cuda", "mlflow": "bevt-mlflow"}
STAGE_IMAGE = {
    "shard": "cpu",
    "tokenize": "cuda",
    "pretrain-image": "cuda",
    "pretrain-joint": "cuda",
    "finetune": "cuda",
    "evaluate": "cuda",
    "launcher": "cuda",
}


def registry() -> str:
    return os.environ.get("BEVT_IMAGE_REGISTRY", DEFAULT_REGISTRY).rstrip("/")


def tag() -> str:
    return os.environ.get("BEVT_IMAGE_TAG", DEFAULT_TAG)


def image(kind: str, default: bool = False) -> str:
    """Full reference of the ``cpu``, ``cuda`` or ``mlflow`` image; ``default`` ignores the
    environment (what k8s/base pins)."""
    if kind not in NAMES:
        raise ValueError(f"image kind must be one of {', '.join(NAMES)}; got {kind!r}")
    if default:
        return f"{DEFAULT_REGISTRY}/{NAMES[kind]}:{DEFAULT_TAG}"
    return f"{registry()}/{NAMES[kind]}:{tag()}"


def for_stage(stage: str) -> str:
    return image(STAGE_IMAGE[stage])
