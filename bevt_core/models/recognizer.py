"""Video classifier for finetuning: the Swin trunk and an I3D-style head (docs/official-behaviour.md §5.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .swin3d import SwinConfig, SwinTransformer3D, Triple


@dataclass(frozen=True)
class RecognizerConfig:
    swin: SwinConfig = field(default_factory=SwinConfig)
    num_classes: int = 400
    head_dropout: float = 0.5
    # Window of the pretraining checkpoint when it differs from swin.window_size (SSv2: (8,7,7));
    # load_checkpoint interpolates the relative-position tables from it.
    pretrained_window_size: Triple | None = None
    # The input the preset is meant for.
    image_size: int = 224
    num_frames: int = 32

    def __post_init__(self) -> None:
        if self.pretrained_window_size is not None:
            object.__setattr__(self, "pretrained_window_size", tuple(int(v) for v in self.pretrained_window_size))


class I3DHead(nn.Module):
    """Global average pool over (t, h, w), dropout, linear classifier ``fc_cls``."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc_cls = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, num_classes) logits."""
        return self.fc_cls(self.dropout(self.avg_pool(features).flatten(1)))


class Recognizer3D(nn.Module):
    def __init__(self, config: RecognizerConfig):
        super().__init__()
        self.config = config
        self.backbone = SwinTransformer3D(config.swin)
        self.cls_head = I3DHead(config.swin.num_features, config.num_classes, config.head_dropout)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """Normalised clip (B, 3, T, H, W) -> logits (B, num_classes)."""
        return self.cls_head(self.backbone(clip))

    @torch.no_grad()
    def predict_views(self, views: torch.Tensor, max_views_per_forward: int | None = None) -> torch.Tensor:
        """Class probabilities averaged over test views (softmax per view, then mean).

        views: (B, V, 3, T, H, W), V = clips x crops. At most ``max_views_per_forward`` clips go
        through the network at once; that bounds memory and does not change the result.
        Call ``eval()`` first: dropout and drop path are the caller's mode to set.
        """
        batch, num_views = views.shape[:2]
        flat = views.flatten(0, 1)
        chunk = max_views_per_forward or flat.shape[0]
        probs = torch.cat([self(part).float().softmax(-1) for part in flat.split(chunk)])
        return probs.view(batch, num_views, -1).mean(1)
