"""A finetuned recognizer back from ``recognizer.pt``: the model, its classes and how its inputs are prepared."""

from __future__ import annotations

import io

import torch

from bevt_core import storage
from bevt_core.config import ConfigError
from bevt_core.models import Recognizer3D, RecognizerConfig, SwinConfig


def load_recognizer(uri: str, field_name: str = "weights") -> tuple[Recognizer3D, dict]:
    """The model and its checkpoint meta (classes, model config, preprocessing recipe); errors name ``field_name``."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ConfigError(f"{field_name}: {uri} does not exist") from None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- foreign bytes raise UnpicklingError, KeyError, EOFError...: not ours
        raise ConfigError(f"{field_name}: {uri} is not a checkpoint torch loads with weights_only") from None
    meta = payload.get("meta", {}) if isinstance(payload, dict) else {}
    if meta.get("format") != "recognizer":
        raise ConfigError(f"{field_name}: {uri} is not a finetuned recognizer written by `bevt finetune`")
    config = dict(meta["config"])
    swin = SwinConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.pop("swin").items()})
    model = Recognizer3D(RecognizerConfig(swin=swin, **config))
    model.load_state_dict(payload["state_dict"])
    return model, meta
