"""Video Swin Transformer backbone as BEVT uses it (docs/official-behaviour.md §1).

One set of transformer weights serves two inputs:

* video ``(B, 3, T, H, W)``: 3D patches of (2, 4, 4), 3D shifted windows;
* images: the pretraining model (``pretrain.py``) embeds them with its own 2D patch embedding and
  runs the same blocks on a token grid with a single time step, in 2D windows that read the
  zero-temporal-offset slice of each 3D relative-position table (docs/official-behaviour.md §1.7).

Tokens stay channels-last, ``(B, D, H, W, C)``, from the patch embedding to the final norm.
Module and parameter names match the official Video Swin / BEVT checkpoints (docs/official-behaviour.md §1.11).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp, trunc_normal_

Triple = tuple[int, int, int]
AttnImpl = Literal["reference", "sdpa", "auto"]
ATTN_IMPLS = ("reference", "sdpa", "auto")
# Additive logit penalty between tokens of different shifted regions; the official value, not -inf,
# so checkpoints trained with it see identical attention.
SHIFT_MASK_FILL = -100.0


@dataclass(frozen=True)
class SwinConfig:
    """Architecture of the Swin trunk. The defaults are Swin-B with BEVT's (8,7,7) windows."""

    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    patch_size: Triple = (2, 4, 4)
    window_size: Triple = (8, 7, 7)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.3
    in_chans: int = 3
    # "auto" runs the fused SDPA kernel on CUDA and the reference math elsewhere.
    attn_impl: AttnImpl = "auto"
    # Recompute each block in backward (torch.utils.checkpoint) to trade compute for memory.
    use_checkpoint: bool = False
    # The official image path applies the 2D shift mask in every block and keeps 7x7 windows with a roll
    # even where the map is only one window wide (docs/official-behaviour.md §1.7). False: plain Swin windows.
    image_mask_quirk: bool = True
    # Std of the truncated-normal Linear init. 0.02 is the official value for Swin-B and up; a
    # 32-wide trunk trained for minutes starts in a plateau with it (its residual branches are too
    # weak to pick up motion, only appearance), so the tiny presets use a larger one.
    init_std: float = 0.02

    def __post_init__(self) -> None:
        # YAML and CLI overrides arrive as lists; the config stays hashable and comparable.
        for name in ("depths", "num_heads", "patch_size", "window_size"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        if len(self.patch_size) != 3 or len(self.window_size) != 3:
            raise ValueError("patch_size and window_size are (time, height, width) triples")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(f"num_heads[{i}]={heads} does not divide stage width {self.embed_dim * 2**i}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")

    @property
    def num_features(self) -> int:
        """Channels of the last stage."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Official init: truncated-normal Linear weights, unit LayerNorms; convs keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------
# Window geometry


def clip_window(grid: Triple, window: Triple, shift: Triple) -> tuple[Triple, Triple]:
    """Shrink a window to a feature map that fits in one window, and do not shift along that dim."""
    clipped = tuple(g if g <= w else w for g, w in zip(grid, window))
    shifted = tuple(0 if g <= w else s for g, w, s in zip(grid, window, shift))
    return clipped, shifted


def pad_to_window(grid: Triple, window: Triple) -> Triple:
    return tuple(-(-g // w) * w for g, w in zip(grid, window))


def window_partition(x: torch.Tensor, window: Triple) -> torch.Tensor:
    """(B, D, H, W, C) -> (B * num_windows, window_volume, C), tokens in (d, h, w) order."""
    B, D, H, W, C = x.shape
    wd, wh, ww = window
    x = x.view(B, D // wd, wd, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, C)


def window_reverse(windows: torch.Tensor, window: Triple, batch: int, grid: Triple) -> torch.Tensor:
    """Inverse of window_partition."""
    D, H, W = grid
    wd, wh, ww = window
    x = windows.view(batch, D // wd, H // wh, W // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, D, H, W, -1)


def compute_shift_mask(grid: Triple, window: Triple, shift: Triple, device: torch.device) -> torch.Tensor:
    """Additive attention mask (num_windows, N, N) for a padded grid rolled by -shift.

    Along each shifted dim the rolled map has three regions, [0, P-w), [P-w, P-s) and [P-s, P);
    tokens that share a window but come from different regions must not attend to each other.
    """
    labels = []
    for size, w, s in zip(grid, window, shift):
        pos = torch.arange(size, device=device)
        labels.append((pos >= size - w).long() + (pos >= size - s).long() if s > 0 else torch.zeros_like(pos))
    region = labels[0][:, None, None] * 9 + labels[1][None, :, None] * 3 + labels[2][None, None, :]
    region_windows = window_partition(region[None, ..., None], window).squeeze(-1)
    different = region_windows[:, :, None] != region_windows[:, None, :]
    return different.float() * SHIFT_MASK_FILL


def relative_position_index(window: Triple) -> torch.Tensor:
    """(N, N) row of the bias table for each token pair (i, j) of a window, docs/official-behaviour.md §1.4."""
    wd, wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij"))
    coords = coords.flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1])[:, None, None]
    return rel[0] * (2 * wh - 1) * (2 * ww - 1) + rel[1] * (2 * ww - 1) + rel[2]


# ----------------------------------------------------------------------------------------------
# Attention


def reference_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """The official math: softmax(q*scale @ k^T + bias + mask) @ v.

    q, k, v: (B*nW, nH, N, hd); bias: (nH, N, N); mask: (nW, N, N) or None.
    """
    attn = (q * scale) @ k.transpose(-2, -1) + bias.unsqueeze(0)
    if mask is not None:
        num_windows, num_heads, n = mask.shape[0], q.shape[1], q.shape[2]
        attn = attn.view(-1, num_windows, num_heads, n, n) + mask[None, :, None]
        attn = attn.view(-1, num_heads, n, n)
    return attn.softmax(dim=-1) @ v


def fused_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Same result through scaled_dot_product_attention, bias and shift mask folded into attn_mask.

    With a mask the windows are folded into the head dim, (B, nW*nH, N, hd), so that one
    (1, nW*nH, N, N) mask broadcasts over the batch instead of being materialised per sample.
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0).to(q.dtype))
    batch_windows, num_heads, n, head_dim = q.shape
    num_windows = mask.shape[0]
    attn_mask = (bias.unsqueeze(0) + mask.unsqueeze(1)).to(q.dtype).reshape(1, num_windows * num_heads, n, n)

    def fold(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch_windows // num_windows, num_windows * num_heads, n, head_dim)

    out = F.scaled_dot_product_attention(fold(q), fold(k), fold(v), attn_mask=attn_mask)
    return out.view(batch_windows, num_heads, n, head_dim)


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside (d, h, w) windows with a learned relative-position bias."""

    def __init__(
        self, dim: int, window_size: Triple, num_heads: int, qkv_bias: bool = True, attn_impl: AttnImpl = "auto"
    ):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attn_impl = attn_impl
        wd, wh, ww = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads)
        )
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Persistent so that state dicts carry it, as the official checkpoints do.
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=True)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self, window: Triple) -> torch.Tensor:
        """(nH, N, N) bias for a window that may be smaller than the configured one.

        The index is restricted to the tokens of the smaller window geometrically. Where only the
        slowest (time) dim shrinks, and for the image path's single-frame window, this is exactly the
        official ``index[:N, :N]``; where height or width shrink (non-224 inputs) the official slice
        pairs the wrong tokens (docs/official-behaviour.md §1.4), this does not.
        """
        index = self.relative_position_index
        n = window[0] * window[1] * window[2]
        if tuple(window) != self.window_size:
            wd, wh, ww = self.window_size
            d, h, w = window
            index = index.view(wd, wh, ww, wd, wh, ww)[:d, :h, :w, :d, :h, :w].reshape(n, n)
        return self.relative_position_bias_table[index.reshape(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, window: Triple, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B*nW, N, C) windows of size ``window``; mask: (nW, N, N) additive or None."""
        batch_windows, n, dim = x.shape
        qkv = self.qkv(x).reshape(batch_windows, n, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.position_bias(window)
        impl = self.attn_impl
        if impl == "auto":
            impl = "sdpa" if x.is_cuda else "reference"
        if impl == "sdpa":
            out = fused_window_attention(q, k, v, bias, mask)
        else:
            out = reference_window_attention(q, k, v, bias, mask, self.scale)
        return self.proj(out.transpose(1, 2).reshape(batch_windows, n, dim))


# ----------------------------------------------------------------------------------------------
# Blocks and stages


class SwinBlock3D(nn.Module):
    """Pre-norm (shifted) window attention and MLP, each with a residual and stochastic depth.

    The block is told its window, shift and mask by its stage, so the same weights run the video
    path and the image path's 2D windows.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Triple,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        attn_impl: AttnImpl,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window_size, num_heads, qkv_bias, attn_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, window: Triple, shift: Triple, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop_path(self._window_attention(self.norm1(x), window, shift, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _window_attention(
        self, x: torch.Tensor, window: Triple, shift: Triple, mask: torch.Tensor | None
    ) -> torch.Tensor:
        batch, D, H, W, _ = x.shape
        padded = pad_to_window((D, H, W), window)
        # Padding comes after norm1 and is not masked out of attention, as in the official code.
        x = F.pad(x, (0, 0, 0, padded[2] - W, 0, padded[1] - H, 0, padded[0] - D))
        rolled = any(s > 0 for s in shift)
        if rolled:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        windows = self.attn(window_partition(x, window), window, mask)
        x = window_reverse(windows, window, batch, padded)
        if rolled:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :D, :H, :W]


class PatchMerging(nn.Module):
    """2x2 spatial merge to twice the channels; time is never merged."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2], x.shape[3]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # This concatenation order is what the official reduction weights expect.
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One stage: blocks alternating plain and shifted windows, then an optional patch merge."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: Triple,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_paths: list[float],
        downsample: bool,
        attn_impl: AttnImpl,
        use_checkpoint: bool,
        image_mask_quirk: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = tuple(w // 2 for w in window_size)
        self.use_checkpoint = use_checkpoint
        self.image_mask_quirk = image_mask_quirk
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, num_heads, window_size, mlp_ratio, qkv_bias, drop_paths[i], attn_impl)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def block_plan(
        self, grid: Triple, image: bool, device: torch.device
    ) -> list[tuple[Triple, Triple, torch.Tensor | None]]:
        """(window, shift, mask) for each block on a (D, H, W) token grid."""
        if image and self.image_mask_quirk:
            # Official image path: fixed 2D windows, and the shift mask in every block, shifted or not.
            window = (1, self.window_size[1], self.window_size[2])
            shift = (0, self.shift_size[1], self.shift_size[2])
            mask = compute_shift_mask(pad_to_window(grid, window), window, shift, device)
            return [(window, shift if i % 2 else (0, 0, 0), mask) for i in range(len(self.blocks))]
        window_size = (1, *self.window_size[1:]) if image else self.window_size
        window, shift = clip_window(grid, window_size, self.shift_size)
        mask = compute_shift_mask(pad_to_window(grid, window), window, shift, device) if any(shift) else None
        no_shift = (0, 0, 0)
        return [(window, shift, mask) if i % 2 else (window, no_shift, None) for i in range(len(self.blocks))]

    def forward(self, x: torch.Tensor, image: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, D, H, W, C). Returns the stage output before and after the patch merge."""
        plan = self.block_plan(tuple(x.shape[1:4]), image, x.device)
        for block, (window, shift, mask) in zip(self.blocks, plan):
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, window, shift, mask, use_reentrant=False)
            else:
                x = block(x, window, shift, mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


# ----------------------------------------------------------------------------------------------
# Patch embeddings and the trunk


class PatchEmbed3D(nn.Module):
    """Non-overlapping (t, h, w) tubelets to tokens, then LayerNorm; pads the clip on the far side."""

    def __init__(self, patch_size: Triple, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, T/pt, H/ph, W/pw, C)."""
        T, H, W = x.shape[2:]
        pt, ph, pw = self.patch_size
        x = F.pad(x, (0, -W % pw, 0, -H % ph, 0, -T % pt))
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class PatchEmbed2D(nn.Module):
    """Image patches to tokens with a single time step, (B, 3, H, W) -> (B, 1, H/p, W/p, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[3] % p, 0, -x.shape[2] % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1)).unsqueeze(1)


class SwinTransformer3D(nn.Module):
    """The Video Swin trunk: 3D patch embedding, four stages, final LayerNorm.

    ``forward`` is the finetuning backbone: a clip to ``norm(stage 4)`` as (B, C, D, H, W).
    ``forward_stages`` runs any embedded token grid (video or image) through the shared stages.
    """

    def __init__(self, config: SwinConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed3D(config.patch_size, config.in_chans, config.embed_dim)
        drop_paths = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
            first = sum(config.depths[:i])
            self.layers.append(
                BasicLayer(
                    dim=config.embed_dim * 2**i,
                    depth=depth,
                    num_heads=heads,
                    window_size=config.window_size,
                    mlp_ratio=config.mlp_ratio,
                    qkv_bias=config.qkv_bias,
                    drop_paths=drop_paths[first : first + depth],
                    downsample=i < len(config.depths) - 1,
                    attn_impl=config.attn_impl,
                    use_checkpoint=config.use_checkpoint,
                    image_mask_quirk=config.image_mask_quirk,
                )
            )
        self.norm = nn.LayerNorm(config.num_features)
        self.apply(partial(init_weights, std=config.init_std))

    def forward_stages(self, tokens: torch.Tensor, image: bool = False) -> list[torch.Tensor]:
        """Each stage's output before its patch merge, channels-last (B, D, H, W, C_i)."""
        outputs = []
        for layer in self.layers:
            before, tokens = layer(tokens, image=image)
            outputs.append(before)
        return outputs

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised clip -> (B, C, T/2, H/32, W/32) features."""
        last = self.forward_stages(self.patch_embed(clip))[-1]
        return self.norm(last).permute(0, 4, 1, 2, 3)
