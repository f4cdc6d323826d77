"""The pipeline's run-time parameters, declared once: :class:`PipelineParams` is what ``bevt pipeline``
takes (``--params.recipe tiny``, a YAML ``params:`` block), and :func:`takes` makes its fields the KFP
pipeline function's signature, so the compiled pipeline has exactly these parameters and defaults."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from bevt_core.config import at_least, is_required, non_empty, option
from bevt_core.kube import backends
from bevt_core.recipes import PRETRAIN_JOINT


@dataclass
class FinetuneTask:
    """One downstream task: its videos are sharded, the pretrained model finetuned on them, evaluated and
    optionally registered. The pipeline runs every task in a ParallelFor."""

    run_label: str = option(
        help="Short name of the task (scene, ssv2...): labels its steps' MLflow runs ('finetune scene').",
        check=non_empty,
    )
    train_list: str = option(
        help="Training video list (K400-style 'path label' lines; local or s3://).", check=non_empty
    )
    val_list: str = option(help="Validation video list (also evaluated).", check=non_empty)
    root: str = option("", help="Folder or s3:// prefix both lists are relative to (default: each list's folder).")
    classes: str = option(
        "",
        help="Class names in label order (one per line, or JSON; local or s3://): what the "
        "evaluation and the registered model report. Default: the labels themselves.",
    )
    preset: str = option("k400-swin-b", help="Finetune and evaluate preset (bevt finetune --help).")
    frame_interval: int = option(2, help="Frame stride of this task's shards (K400: 2, SSv2: 1).", check=at_least(1))
    register_as: str = option(
        "",
        help="Register the finetuned model in the MLflow model registry under this name "
        "(`bevt predict --model models:/NAME/VERSION`). Empty: don't register.",
    )


@dataclass
class PipelineParams:
    pretrain_videos: str = option(
        help="Pretraining video list (K400-style 'path label' lines; local or s3://).", check=non_empty
    )
    images: str = option(help="Image list for the image stream.", check=non_empty)
    finetune_tasks: list[FinetuneTask] = option(
        help="The downstream tasks, each a mapping of the FinetuneTask "
        "fields (pipelines/params.py); give them in --config."
    )
    videos_root: str = option(
        "", help="Folder or s3:// prefix the pretraining video list is relative to (default: the list's folder)."
    )
    images_root: str = option("", help="Folder or s3:// prefix the image list is relative to.")
    recipe: str = option(
        "swin-b", help="Pretraining preset of pretrain-image and pretrain-joint.", choices=tuple(PRETRAIN_JOINT)
    )
    tokenizer: str = option(
        "dalle", help="dalle (needs tokenizer_weights) or codebook (fitted on the data).", choices=("dalle", "codebook")
    )
    tokenizer_weights: str = option("", help="DALL-E encoder.pkl URI.")
    tokenizer_sha256: str = option("", help="Pin the SHA-256 of tokenizer_weights.")
    views: int = option(4, help="Augmentation views tokenized per sample.", check=at_least(1))
    crop: int = option(
        224, help="Training crop in pixels (the tokenizer grid follows it; tiny: 64).", check=at_least(16)
    )
    codebook_size: int = option(1024, help="Codebook entries when tokenizer=codebook.", check=at_least(2))
    pretrain_frame_interval: int = option(
        8,
        help="Frame stride of the pretraining shards; it must divide the recipe's frame interval (swin-b: 8, tiny: 1).",
        check=at_least(1),
    )
    short_side: int = option(320, help="Short side of stored frames.", check=at_least(0))
    image_epochs: float = option(0.0, help="pretrain-image epochs (0: the preset's).", check=at_least(0.0))
    joint_epochs: float = option(0.0, help="pretrain-joint epochs (0: the preset's).", check=at_least(0.0))
    finetune_epochs: float = option(0.0, help="finetune epochs (0: the preset's).", check=at_least(0.0))
    max_steps: int = option(
        0, help="Stop every training stage after this many steps (0: all epochs).", check=at_least(0)
    )
    nodes: int = option(1, help="Nodes of the pretrain-joint training job.", check=at_least(1))
    min_nodes: int = option(
        0,
        help="> 0: pretrain-joint is elastic (torchrun c10d rendezvous) between this many nodes and `nodes`.",
        check=at_least(0),
    )
    finetune_nodes: int = option(1, help="Nodes of each finetune training job.", check=at_least(1))
    gpus_per_node: int = option(8, help="GPUs per node of the training jobs (one rank each).", check=at_least(0))
    procs_per_node: int = option(
        1, help="Ranks per node of pretrain-joint without GPUs (run-local: processes).", check=at_least(1)
    )
    finetune_procs_per_node: int = option(
        1,
        help="Ranks per node of each finetune step without GPUs (run-local: processes; "
        "with finetune_parallelism other than 1, the tasks' finetunes run side by side).",
        check=at_least(1),
    )
    distributed_mode: str = option(
        "kubernetes",
        help="How the distributed steps run: a training job on the cluster, or torchrun in the step's own container.",
        choices=("kubernetes", "local"),
    )
    training_backend: str = option(
        "auto",
        help="Kind of the distributed steps' jobs: pytorchjob (Kubeflow training operator v1), trainjob "
        "(Kubeflow Trainer v2), or auto: what the cluster serves, PyTorchJob where it has both.",
        choices=backends.CHOICES,
    )
    queue_name: str = option("", help="Kueue LocalQueue of the training jobs (gang admission: all replicas or none).")
    volcano_queue: str = option(
        "", help="Volcano queue of the PyTorchJobs (gang scheduling; the operator runs with Volcano)."
    )
    stall_timeout_s: float = option(
        1200.0,
        help="Fail a distributed step whose pods stay unschedulable or uncreatable this long (seconds).",
        check=at_least(1.0),
    )
    namespace: str = option("", help="Namespace of the training jobs (default: the launcher's).")
    trainer_image: str = option("", help="Image of the training jobs (default: bevt_core.images).")
    tracking_uri: str = option(
        "auto",
        help="MLflow tracking URI of every stage (k8s: http://bevt-mlflow:5000; "
        "run-local: auto is $MLFLOW_TRACKING_URI, else a sqlite file in the pipeline root).",
    )
    parent_run_id: str = option(
        "",
        help="MLflow run every stage run nests under. run-local creates one when "
        "tracking is on; given, run-local reopens it, and a rerun with the same parameters "
        "and parent resumes: the steps done before come from the cache.",
    )
    workers: int = option(2, help="DataLoader workers per rank.", check=at_least(0))
    log_every: int = option(
        20, help="Training steps log metrics (and a line in the step's log) every N steps.", check=at_least(1)
    )

    def check(self) -> str | None:
        if not self.finetune_tasks:
            return "finetune_tasks: give at least one task"
        labels = [t.run_label for t in self.finetune_tasks]
        if len(set(labels)) != len(labels):
            return f"finetune_tasks: run_label must differ between tasks; got {labels}"
        return None


def _kfp_type(tp: Any) -> type:
    """The plain type KFP understands for a field type (``list[FinetuneTask]`` is a ``list`` of mappings)."""
    origin = typing.get_origin(tp)
    return origin if origin in (list, dict) else tp


def signature_of(cls: type) -> inspect.Signature:
    """``cls``'s fields as function parameters: required ones first, the others with their defaults."""
    hints = typing.get_type_hints(cls)
    fields = sorted(dataclasses.fields(cls), key=lambda f: not is_required(f))
    return inspect.Signature(
        [
            inspect.Parameter(
                f.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=_kfp_type(hints[f.name]),
                default=inspect.Parameter.empty if is_required(f) else f.default,
            )
            for f in fields
        ]
    )


def takes(cls: type) -> Callable[[Callable[[Any], None]], Callable[..., None]]:
    """Decorate a pipeline body ``body(p)``: the result is a function whose parameters are ``cls``'s fields
    (what ``dsl.pipeline`` reads), calling ``body`` with them as attributes of ``p``."""
    signature = signature_of(cls)

    def wrap(body: Callable[[Any], None]) -> Callable[..., None]:
        @functools.wraps(body)
        def pipeline(*args: Any, **kwargs: Any) -> None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return body(SimpleNamespace(**bound.arguments))

        pipeline.__signature__ = signature
        pipeline.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        del pipeline.__wrapped__  # inspect.signature must read __signature__, not the body's own
        return pipeline

    return wrap
