"""BEVT pretraining model: masked visual-token prediction on video and images at once
(docs/official-behaviour.md §1.7-1.9, §4.1).

Both streams share the Swin trunk, the mask token, the final ``norm`` and ``lm_head``; each has its
own patch embedding and its own decoder, which fuses the stage-3 and upsampled stage-4 outputs back
to stage-3 resolution (one token per 16x16 pixels, and per frame for video).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from .swin3d import PatchEmbed2D, SwinConfig, SwinTransformer3D, init_weights


@dataclass(frozen=True)
class PretrainConfig:
    swin: SwinConfig = field(default_factory=SwinConfig)
    vocab_size: int = 8192
    loss_weight_video: float = 1.0
    loss_weight_image: float = 1.0
    # The input the preset is meant for; the masks are (num_frames/2, G, G) and (G, G), G = image_size/16.
    image_size: int = 224
    num_frames: int = 16

    @property
    def mask_grid(self) -> int:
        return self.image_size // 16


class BEVTBackbone(SwinTransformer3D):
    """The trunk plus everything pretraining adds under the ``backbone.`` prefix of the checkpoints."""

    def __init__(self, config: SwinConfig):
        super().__init__(config)
        dim, out = config.embed_dim, config.num_features
        fused = out + out // 2  # stage 3 concatenated with upsampled stage 4
        self.patch_embed_2d = PatchEmbed2D(config.patch_size[1], config.in_chans, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Image decoder.
        self.fpn = nn.Sequential(nn.ConvTranspose2d(out, out, kernel_size=2, stride=2))
        self.lm_down = nn.Linear(fused, out)
        # Video decoder: spatial x2, fuse, then back to one token per frame.
        self.fpn_s = nn.Sequential(nn.ConvTranspose3d(out, out, kernel_size=(1, 2, 2), stride=(1, 2, 2)))
        self.lm_down_st = nn.Sequential(nn.Linear(fused, out))
        t = config.patch_size[0]
        self.fpn_t = nn.Sequential(nn.ConvTranspose3d(out, out, kernel_size=(t, 1, 1), stride=(t, 1, 1)))
        trunc_normal_(self.mask_token, std=0.02)
        self.lm_down.apply(partial(init_weights, std=config.init_std))
        self.lm_down_st.apply(partial(init_weights, std=config.init_std))

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Patch-embed a clip (B,3,T,H,W) or image (B,3,H,W) and put the mask token on masked cells.

        mask: (B, T/2, G, G) for a clip, (B, G, G) for an image, True = masked. Each cell covers
        a 4x4 block of patch tokens (nearest upsampling), i.e. 16x16 pixels.
        """
        tokens = self.patch_embed(x) if x.ndim == 5 else self.patch_embed_2d(x)
        if mask is None:
            return tokens
        cells = mask if x.ndim == 5 else mask.unsqueeze(1)
        covered = F.interpolate(cells.unsqueeze(1).float(), size=tokens.shape[1:4], mode="nearest")
        covered = covered.squeeze(1).unsqueeze(-1).bool()
        return torch.where(covered, self.mask_token.to(tokens.dtype), tokens)

    def decode_video(self, s3: torch.Tensor, s4: torch.Tensor) -> torch.Tensor:
        """(B,D,H3,W3,C3), (B,D,H4,W4,C4) -> (B, pt*D, H3, W3, C4)."""
        up = self.fpn_s(s4.permute(0, 4, 1, 2, 3))[..., : s3.shape[2], : s3.shape[3]]
        x = self.lm_down_st(torch.cat([s3, up.permute(0, 2, 3, 4, 1)], dim=-1))
        return self.fpn_t(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)

    def decode_image(self, s3: torch.Tensor, s4: torch.Tensor) -> torch.Tensor:
        """(B,1,H3,W3,C3), (B,1,H4,W4,C4) -> (B, 1, H3, W3, C4)."""
        up = self.fpn(s4[:, 0].permute(0, 3, 1, 2))[..., : s3.shape[2], : s3.shape[3]]
        return self.lm_down(torch.cat([s3, up.permute(0, 2, 3, 1).unsqueeze(1)], dim=-1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded, normalised token features: (B, T*G*G, C4) for a clip, (B, G*G, C4) for an image."""
        image = x.ndim == 4
        *_, s3, s4 = self.forward_stages(self.embed(x, mask), image=image)
        decoded = self.decode_image(s3, s4) if image else self.decode_video(s3, s4)
        return self.norm(decoded).flatten(1, 3)


class MIMHead(nn.Module):
    """The shared token classifier, ``cls_head.lm_head`` in the checkpoints."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.lm_head = nn.Linear(dim, vocab_size)
        trunc_normal_(self.lm_head.weight, std=0.02)
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(tokens)


VideoBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
ImageBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class BEVTPretrainModel(nn.Module):
    """``forward(video=..., image=...)`` is the loss, so DDP sees every parameter it trains."""

    def __init__(self, config: PretrainConfig):
        super().__init__()
        self.config = config
        self.backbone = BEVTBackbone(config.swin)
        self.cls_head = MIMHead(config.swin.num_features, config.vocab_size)

    def token_logits(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits for every output token: (B, T*G*G, V) for a clip, (B, G*G, V) for an image."""
        return self.cls_head(self.backbone(x, mask))

    def _masked_loss(
        self, features: torch.Tensor, masked: torch.Tensor, target_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy over the masked tokens only, each a mean over those tokens."""
        masked = masked.flatten(1).to(torch.bool)
        # The classifier runs on masked tokens only: same loss, a fraction of the lm_head FLOPs.
        logits = self.cls_head(features[masked]).float()
        target = target_ids.flatten(1)[masked].long()
        loss = F.cross_entropy(logits, target)
        accuracy = (logits.detach().argmax(-1) == target).float().mean()
        return loss, accuracy

    def loss(self, video: VideoBatch | None = None, image: ImageBatch | None = None) -> dict[str, torch.Tensor]:
        """Weighted sum of the per-stream masked-token losses.

        video: (clip (B,3,T,H,W), input mask (B,T/2,G,G), target mask (B,T,G,G), token ids (B,T,G,G));
        image: (image (B,3,H,W), mask (B,G,G), token ids (B,G,G)).
        The result has ``loss`` and, for each stream given, ``loss_<stream>`` and ``acc_<stream>``.
        """
        if video is None and image is None:
            raise ValueError("loss needs a video batch, an image batch, or both")
        out: dict[str, torch.Tensor] = {}
        total = 0.0
        if video is not None:
            clip, in_mask, out_mask, target_ids = video
            out["loss_video"], out["acc_video"] = self._masked_loss(self.backbone(clip, in_mask), out_mask, target_ids)
            total = total + self.config.loss_weight_video * out["loss_video"]
        if image is not None:
            img, mask, target_ids = image
            out["loss_image"], out["acc_image"] = self._masked_loss(self.backbone(img, mask), mask, target_ids)
            total = total + self.config.loss_weight_image * out["loss_image"]
        out["loss"] = total
        return out

    def forward(self, video: VideoBatch | None = None, image: ImageBatch | None = None) -> dict[str, torch.Tensor]:
        return self.loss(video=video, image=image)
