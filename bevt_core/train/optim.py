"""Parameter groups (mmcv ``custom_keys`` semantics, docs/official-behaviour.md §7.3), AdamW and the lr
schedules (docs/official-behaviour.md §4.3, §5.1).

mmcv gives each parameter the options of the first custom key that is a substring of its name,
trying keys longest first (alphabetical among equal lengths); a key's missing multiplier is 1.
Those rules decide, e.g., that K400's relative-position tables escape layer decay and that
SSv2's backbone norms keep weight decay: reproducing them exactly reproduces the optimisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

NO_DECAY = {
    "relative_position_bias_table": {"decay_mult": 0.0},
    "absolute_pos_embed": {"decay_mult": 0.0},
    "norm": {"decay_mult": 0.0},
}


def pretrain_keys() -> dict[str, dict[str, float]]:
    """BEVT pretraining: no decay on anything named *norm* or on position tables; biases decay."""
    return dict(NO_DECAY)


def layer_decay_keys(depths: tuple[int, ...], decay: float) -> dict[str, dict[str, float]]:
    """The K400 recipe: lr x decay^k, k counted from the top (``backbone.norm`` and the last block
    1, ..., ``patch_embed`` deepest), plus the no-decay keys; the head keeps lr x 1."""
    keys = dict(NO_DECAY)
    keys["backbone.norm"] = {"lr_mult": decay, "decay_mult": 0.0}
    k = 0
    last = len(depths) - 1
    for i in range(last, -1, -1):
        if i < last:
            k += 1
            keys[f"backbone.layers.{i}.downsample"] = {"lr_mult": decay**k}
        for j in range(depths[i] - 1, -1, -1):
            k += 1
            keys[f"backbone.layers.{i}.blocks.{j}"] = {"lr_mult": decay**k}
    keys["backbone.patch_embed"] = {"lr_mult": decay ** (k + 1)}
    return keys


def backbone_mult_keys(mult: float) -> dict[str, dict[str, float]]:
    """The SSv2 recipe: everything under ``backbone`` at lr x mult, plus the no-decay keys."""
    return {"backbone": {"lr_mult": mult}, **NO_DECAY}


def match_key(name: str, keys: dict[str, dict[str, float]]) -> str | None:
    """mmcv's rule: sort keys alphabetically, then by length descending; the first substring wins."""
    for key in sorted(sorted(keys), key=len, reverse=True):
        if key in name:
            return key
    return None


def param_groups(model: nn.Module, lr: float, weight_decay: float, keys: dict[str, dict[str, float]]) -> list[dict]:
    """One group per trainable parameter (as mmcv builds them), merged when options agree."""
    merged: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        opts = keys.get(match_key(name, keys) or "", {})
        lr_mult, decay_mult = opts.get("lr_mult", 1.0), opts.get("decay_mult", 1.0)
        group = merged.setdefault(
            (lr_mult, decay_mult),
            {
                "params": [],
                "names": [],
                "lr": lr * lr_mult,
                "lr_mult": lr_mult,
                "weight_decay": weight_decay * decay_mult,
            },
        )
        group["params"].append(p)
        group["names"].append(name)
    return list(merged.values())


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], eps: float) -> torch.optim.AdamW:
    # 'names' is ours (for inspection); the optimizer keeps unknown group keys as they are.
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


@dataclass(frozen=True)
class Schedule:
    """Cosine to 0 with mmcv's linear warmup from ``warmup_ratio`` x, evaluated per micro-iteration.

    ``by_epoch=False`` (pretraining, docs/official-behaviour.md §4.3): ``lr(t) = cos(t) * (1 - (1 - t/W) * 0.9)`` for
    t < W, ``cos(t) = 0.5 * lr0 * (1 + cos(pi t / T))``. ``by_epoch=True`` (finetuning, §5.1): the
    cosine steps once per epoch (constant inside an epoch), the warmup is still per iteration.
    """

    base_lr: float
    total_iters: int
    warmup_iters: int
    iters_per_epoch: int
    by_epoch: bool = False
    warmup_ratio: float = 0.1

    def lr(self, t: int) -> float:
        if self.by_epoch:
            epochs = max(self.total_iters / self.iters_per_epoch, 1e-9)
            progress = (t // self.iters_per_epoch) / epochs
        else:
            progress = t / max(self.total_iters, 1)
        regular = 0.5 * self.base_lr * (1 + math.cos(math.pi * min(progress, 1.0)))
        if t < self.warmup_iters:
            return regular * (1 - (1 - t / self.warmup_iters) * (1 - self.warmup_ratio))
        return regular

    def apply(self, optimizer: torch.optim.Optimizer, t: int) -> float:
        lr = self.lr(t)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr
