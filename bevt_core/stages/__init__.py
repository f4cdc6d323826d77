"""The stages: one module each, a typed config in and a result out, and the registry that names them.

Every way of running a stage (the ``bevt`` command, a KFP component, a PyTorchJob replica) finds it
here by name. Modules are imported only when their stage is run: listing them must not import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    module: str
    config: str  # the config dataclass in that module
    run: str = "run"  # the function in that module
    positional: str = ""  # a config field also accepted as the first argument (`bevt predict clip.mp4`)

    def load(self) -> tuple[type, Callable[[Any], Any]]:
        module = importlib.import_module(self.module)
        return getattr(module, self.config), getattr(module, self.run)


STAGES = (
    Command(
        "shard",
        "decode videos or images into WebDataset tar shards with a Parquet manifest",
        "bevt_core.stages.shard",
        "ShardConfig",
    ),
    Command(
        "tokenize",
        "precompute tokenizer targets (DALL-E or a fitted codebook) for fixed augmentation views "
        "of every sample, as token shards aligned with the data shards",
        "bevt_core.stages.tokenize",
        "TokenizeConfig",
    ),
    Command(
        "pretrain-image",
        "image-stream masked image modeling on image shards with their token targets; writes a 2D Swin checkpoint",
        "bevt_core.stages.pretrain_image",
        "PretrainImageConfig",
    ),
    Command(
        "pretrain-joint",
        "BEVT two-stream (video + image) pretraining, initialised by inflating the "
        "image-stream checkpoint; DDP from the torchrun / PyTorchJob environment",
        "bevt_core.stages.pretrain_joint",
        "PretrainJointConfig",
    ),
    Command(
        "finetune",
        "video classification (K400 / SSv2 / Diving48 recipes) from a pretraining checkpoint",
        "bevt_core.stages.finetune",
        "FinetuneConfig",
    ),
    Command(
        "evaluate",
        "multi-view testing of a finetuned recognizer: top-1/top-5, per-class accuracy, confusion matrix",
        "bevt_core.stages.evaluate",
        "EvaluateConfig",
    ),
    Command(
        "predict",
        "top-k classes of a video file from a finetuned recognizer (a registered MLflow model or "
        "recognizer.pt), preprocessed as in evaluation",
        "bevt_core.stages.predict",
        "PredictConfig",
        positional="video",
    ),
)


def command(name: str) -> Command:
    for c in STAGES:
        if c.name == name:
            return c
    raise KeyError(f"no stage {name!r}; stages: {', '.join(c.name for c in STAGES)}")
