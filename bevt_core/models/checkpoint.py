"""Checkpoint I/O with the official Video Swin / BEVT key names (docs/official-behaviour.md §1.10-1.11).

Reads official mmaction2 files and ours alike, from a local path or ``s3://``:

* containers ``{'state_dict'|'model'|'module': ...}`` or a bare state dict, ``module.`` prefixes;
* the frozen DALL-E tokenizer (``cls_head.vae_encoder.*``) and EMA buffers (``ema_*``) are dropped;
* pretraining-only tensors are dropped when the target model has no such modules (finetuning);
* relative-position tables are interpolated in time when the window depth differs (BEVT -> SSv2);
* 2D Swin checkpoints are inflated to 3D (the image-stream initialisation of joint pretraining).

Files are read with ``torch.load(weights_only=True)`` only: no pickled code runs.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from bevt_core.storage import read_bytes, write_bytes

from .swin3d import Triple

TABLE_KEY = "relative_position_bias_table"
INDEX_KEY = "relative_position_index"
# Wrappers that prefix every key: DDP / DataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Modules that exist only in the pretraining model.
PRETRAIN_ONLY_PREFIXES = (
    "backbone.mask_token",
    "backbone.patch_embed_2d.",
    "backbone.lm_down",
    "backbone.fpn",
    "cls_head.lm_head.",
)
TOKENIZER_PREFIX = "cls_head.vae_encoder."
EMA_PREFIX = "ema_"


class LoadResult(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


def _strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (or an already loaded one), unwrapped and de-prefixed."""
    if isinstance(source, Mapping):
        raw = source
    else:
        raw = torch.load(io.BytesIO(read_bytes(source)), map_location="cpu", weights_only=True)
    for container in ("state_dict", "model", "module"):
        if isinstance(raw.get(container), Mapping):
            raw = raw[container]
            break
    state = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        state[_strip_prefixes(key, WRAPPER_PREFIXES)] = value
    return state


def interpolate_bias_table(table: torch.Tensor, src_window: Triple, dst_window: Triple) -> torch.Tensor:
    """Resize a ((2Wd-1)(2Wh-1)(2Ww-1), nH) table trilinearly over its offset grid
    (docs/official-behaviour.md §1.10)."""
    src_grid = tuple(2 * w - 1 for w in src_window)
    dst_grid = tuple(2 * w - 1 for w in dst_window)
    num_heads = table.shape[1]
    grid = table.float().permute(1, 0).reshape(1, num_heads, *src_grid)
    resized = F.interpolate(grid, size=dst_grid, mode="trilinear")
    return resized.reshape(num_heads, -1).permute(1, 0).to(table.dtype).contiguous()


def inflate_2d_checkpoint(
    state_dict_2d: Mapping[str, torch.Tensor], window_size: Triple, temporal_patch: int = 2
) -> dict[str, torch.Tensor]:
    """A 2D Swin state dict as the 3D backbone's, keys relative to ``backbone.``
    (docs/official-behaviour.md §1.10, steps 1-6).

    The 2D patch embedding becomes both ``patch_embed_2d`` (as is) and ``patch_embed`` (its kernel
    spread evenly over ``temporal_patch`` frames, so a static clip embeds like the image); each
    2D relative-position table is resized to the (2Wh-1)x(2Ww-1) offsets if needed and repeated for
    every temporal offset.
    """
    state = {}
    for key, value in read_state_dict(state_dict_2d).items():
        key = _strip_prefixes(key, ("backbone.", "encoder."))
        if key.endswith(INDEX_KEY) or key.endswith("attn_mask"):
            continue
        if key.startswith("fc_norm."):
            key = "norm." + key[len("fc_norm.") :]
        state[key] = value
    for name in ("proj.weight", "proj.bias", "norm.weight", "norm.bias"):
        if f"patch_embed.{name}" in state:
            state[f"patch_embed_2d.{name}"] = state[f"patch_embed.{name}"]
    weight_2d = state["patch_embed.proj.weight"]
    state["patch_embed.proj.weight"] = weight_2d.unsqueeze(2).repeat(1, 1, temporal_patch, 1, 1) / temporal_patch
    wd, wh, ww = window_size
    plane = (2 * wh - 1, 2 * ww - 1)
    for key in [k for k in state if k.endswith(TABLE_KEY)]:
        table = state[key]
        rows, num_heads = table.shape
        if rows != plane[0] * plane[1]:
            side = math.isqrt(rows)
            if side * side != rows:
                raise ValueError(f"{key}: {rows} rows is not a square 2D offset grid")
            grid = table.float().permute(1, 0).reshape(1, num_heads, side, side)
            grid = F.interpolate(grid, size=plane, mode="bicubic")
            table = grid.reshape(num_heads, -1).permute(1, 0).to(table.dtype)
        state[key] = table.repeat(2 * wd - 1, 1)
    return state


def _source_window(key: str, rows: int, dst_window: Triple, declared: Triple | None) -> Triple:
    """The window a checkpoint table was trained with, assuming the same spatial window."""
    plane = (2 * dst_window[1] - 1) * (2 * dst_window[2] - 1)
    depth_offsets = rows // plane
    if rows % plane or depth_offsets % 2 == 0:
        raise ValueError(f"{key}: {rows} rows do not fit a window with spatial size {dst_window[1:]}")
    src = ((depth_offsets + 1) // 2, dst_window[1], dst_window[2])
    if declared is not None and tuple(declared) != src:
        raise ValueError(f"{key}: checkpoint window {src} is not the declared pretrained_window_size {declared}")
    return src


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def load_checkpoint(
    model: nn.Module, source: str | os.PathLike | Mapping[str, Any], strict: bool = True, inflate_2d: bool | None = None
) -> LoadResult:
    """Load official or our weights into a pretraining model or a recognizer.

    inflate_2d: treat the file as a 2D Swin checkpoint (None: when its patch embedding is 2D).
    2D checkpoints carry no decoders, head or temporal tables of their own; load them with
    ``strict=False`` as the official code does. ``relative_position_index`` is rebuilt from the
    window, never read, so it is never reported missing.
    """
    model = unwrap_model(model)
    state = {
        k: v
        for k, v in read_state_dict(source).items()
        if not k.startswith(TOKENIZER_PREFIX) and not k.startswith(EMA_PREFIX)
    }
    if not any(k.startswith(("backbone.", "cls_head.")) for k in state):
        # A bare backbone, e.g. a 2D image-stream encoder.
        state = {"backbone." + _strip_prefixes(k, ("encoder.",)): v for k, v in state.items()}
    embed = state.get("backbone.patch_embed.proj.weight")
    if inflate_2d or (inflate_2d is None and embed is not None and embed.ndim == 4):
        backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        others = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        config = model.backbone.config
        inflated = inflate_2d_checkpoint(backbone, config.window_size, config.patch_size[0])
        state = others | {"backbone." + k: v for k, v in inflated.items()}

    target = model.state_dict()
    for prefix in PRETRAIN_ONLY_PREFIXES:
        if not any(k.startswith(prefix) for k in target):
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.endswith(INDEX_KEY)}
    declared = getattr(getattr(model, "config", None), "pretrained_window_size", None)
    for key, table in list(state.items()):
        if key.endswith(TABLE_KEY) and key in target and table.shape != target[key].shape:
            dst_window = model.get_submodule(key.rsplit(".", 1)[0]).window_size
            state[key] = interpolate_bias_table(
                table, _source_window(key, table.shape[0], dst_window, declared), dst_window
            )

    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(INDEX_KEY)]
    if strict and (missing or unexpected):
        raise RuntimeError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    return LoadResult(missing, list(unexpected))


def save_checkpoint(model: nn.Module, uri: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
    """Atomically write ``{'state_dict', 'meta', **extra}`` (mmcv's layout) to a path or ``s3://``.

    ``extra`` holds whatever else must be restored with the weights (optimizer, step, ...); it must
    itself be loadable with ``weights_only=True``.
    """
    model = unwrap_model(model)
    config = getattr(model, "config", None)
    payload: dict[str, Any] = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": {
            "model": type(model).__name__,
            "config": asdict(config) if config is not None else None,
            "torch": str(torch.__version__),
            "time": time.time(),
        },
    }
    for key, value in (extra or {}).items():
        if key in payload:
            raise ValueError(f"extra may not replace {key!r}")
        payload[key] = value
    _write(payload, uri)


def save_weights(state_dict: Mapping[str, torch.Tensor], uri: str, meta: Mapping[str, Any]) -> None:
    """Atomically write ``{'state_dict', 'meta'}`` (mmcv's layout, loadable with weights_only): an exported
    model, whose tensors and meta the caller chose (e.g. the 2D view of a pretraining model)."""
    _write({"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "meta": dict(meta)}, uri)


def _write(payload: dict[str, Any], uri: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(uri, buffer.getvalue())
