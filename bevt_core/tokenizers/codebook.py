"""A weight-free tokenizer: k-means over patch appearance, fitted on the data itself.

For users without the DALL-E weights, and for the demo. It cuts the tokenizer input (the crop
resized to half size with Lanczos4, as for DALL-E) into 8x8 patches, one per output grid cell
(14x14 at a 224 crop), and gives each patch the id of its nearest codebook entry.

What a patch looks like to it (195 integers): its 64 RGB pixels minus the patch's mean colour
(structure: edges, texture, shading) followed by the mean colour times 2 (plain pixel L2 would
weigh the mean colour by 8 = sqrt(64); 2 makes global brightness, which colour jitter moves,
matter less than structure). Codebook entries are integers too, so every distance is an exact
integer in float64 and the argmin, ties included (lowest id wins), is the same for any batch,
order, device or BLAS: stored ids can always be reproduced exactly.

The fit is k-means++ then Lloyd iterations, in the same exact integer arithmetic with integer
(rounded) centroids, from one seeded generator: the same patches and seed give the same
codebook on any machine.

What it is not: a learned discrete VAE. Its ids name clusters of patch appearance, not latent
codes trained to reconstruct images, and neighbouring ids mean nothing. It gives masked
modelling a real, data-dependent target to predict, good enough to exercise and compare the
pipeline, not a replacement for DALL-E or PeCo targets when reproducing the paper's numbers.

The artifact is a ``.npz`` (``np.load(allow_pickle=False)``: no code can ride along) written with
fixed zip timestamps, so the same codebook is the same bytes and its SHA-256 is its identity.
"""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import torch

from bevt_core import storage
from bevt_core.tokenizers.base import Tokenizer, pick_device, pinned_digest

PATCH = 8  # tokenizer-input pixels per grid cell (16 crop pixels at half size)
COLOUR_WEIGHT = 2
FORMAT = 1  # bump when the feature definition changes: old codebooks are then refused
FEATURES = PATCH * PATCH * 3 + 3


def patch_features(small: np.ndarray) -> np.ndarray:
    """``(n, s, s, 3)`` uint8 -> ``(n, s/8, s/8, 195)`` int32 patch descriptors (module docstring)."""
    n, h, w, _ = small.shape
    g, k = h // PATCH, w // PATCH
    p = small.reshape(n, g, PATCH, k, PATCH, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, g, k, PATCH * PATCH, 3)
    p = p.astype(np.int32)
    mean = (p.sum(axis=3) + PATCH * PATCH // 2) // (PATCH * PATCH)  # integer: exact everywhere
    structure = (p - mean[:, :, :, None, :]).reshape(n, g, k, PATCH * PATCH * 3)
    return np.concatenate([structure, COLOUR_WEIGHT * mean], axis=-1).astype(np.int32)


def _nearest(x: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest row of ``c`` for each row of ``x`` and the squared distance; float64
    tensors holding integers, so every value below is exact (|x.c| < 2^53)."""
    step = max(1, (1 << 22) // len(c))  # rows per chunk: the distance block stays ~32 MB
    idx, best = [], []
    for i in range(0, len(x), step):
        xi = x[i : i + step]
        d = (xi * xi).sum(1, keepdim=True) - 2 * (xi @ c.T) + c_sq
        b, j = d.min(dim=1)
        idx.append(j)
        best.append(b)
    return torch.cat(idx), torch.cat(best)


class CodebookTokenizer(Tokenizer):
    name = "codebook"

    def __init__(self, centroids: np.ndarray, sha256: str, device: str = "auto", batch_size: int = 256):
        if centroids.ndim != 2 or centroids.shape[1] != FEATURES:
            raise ValueError(f"codebook must be (K, {FEATURES}), got {centroids.shape}")
        super().__init__(len(centroids), sha256, batch_size, device)
        self.centroids = centroids.astype(np.int32)
        self._c = torch.from_numpy(self.centroids).to(self.device, torch.float64)
        self._c_sq = (self._c * self._c).sum(1)

    def encode(self, small: np.ndarray) -> np.ndarray:
        f = patch_features(small)
        x = torch.from_numpy(f.reshape(-1, FEATURES)).to(self.device, torch.float64)
        idx, _ = _nearest(x, self._c, self._c_sq)
        return idx.to(torch.int32).cpu().numpy().astype(np.uint16).reshape(f.shape[:3])

    def to_bytes(self) -> bytes:
        return codebook_bytes(self.centroids)

    def patches(self) -> np.ndarray:
        """``(K, 8, 8, 3)`` uint8: the tokenizer-input patch each id stands for (its structure plus
        its mean colour), so ids can be drawn back as pixels."""
        structure = self.centroids[:, : PATCH * PATCH * 3].reshape(-1, PATCH, PATCH, 3)
        mean = self.centroids[:, PATCH * PATCH * 3 :] / COLOUR_WEIGHT
        return np.clip(structure + mean[:, None, None, :], 0, 255).round().astype(np.uint8)

    @classmethod
    def load(cls, uri: str, sha256: str = "", **kwargs) -> CodebookTokenizer:
        data = storage.read_bytes(uri)
        digest = pinned_digest(uri, data, sha256)
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if int(z["format"]) != FORMAT:
                raise ValueError(f"{uri} is codebook format {int(z['format'])}; this code reads format {FORMAT}")
            return cls(z["centroids"], digest, **kwargs)

    @classmethod
    def from_centroids(cls, centroids: np.ndarray, **kwargs) -> CodebookTokenizer:
        return cls(centroids, hashlib.sha256(codebook_bytes(centroids)).hexdigest(), **kwargs)


def codebook_bytes(centroids: np.ndarray) -> bytes:
    """The ``.npz`` artifact, byte-identical for identical centroids."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, arr in (("format", np.array(FORMAT, np.int32)), ("centroids", centroids.astype(np.int32))):
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            z.writestr(
                zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                member.getvalue(),
                compress_type=zipfile.ZIP_DEFLATED,
            )
    return buf.getvalue()


def fit_codebook(features: np.ndarray, size: int, iters: int, seed: int, device: str = "auto") -> np.ndarray:
    """k-means++ then ``iters`` Lloyd steps over ``(P, 195)`` integer features; ``(size, 195)`` int32."""
    if len(features) < size:
        raise ValueError(
            f"{len(features)} patches cannot fit a codebook of {size}: sample more data or choose a smaller codebook"
        )
    dev = pick_device(device)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(features.astype(np.float64)).to(dev)
    x_sq = (x * x).sum(1)
    chosen = [int(rng.integers(len(x)))]
    best = x_sq - 2 * (x @ x[chosen[0]]) + x_sq[chosen[0]]
    for _ in range(1, size):
        # D^2 sampling on exact integer weights: an integer draw on the integer running sum.
        cum = torch.cumsum(best, 0).cpu().numpy()
        pick = int(np.searchsorted(cum, rng.integers(int(cum[-1])) if cum[-1] > 0 else 0, side="right"))
        pick = min(pick, len(x) - 1)
        chosen.append(pick)
        best = torch.minimum(best, x_sq - 2 * (x @ x[pick]) + x_sq[pick])
    c = x[chosen].clone()
    for _ in range(iters):
        idx, dist = _nearest(x, c, (c * c).sum(1))
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=size).to(torch.float64)
        empty = (counts == 0).nonzero().flatten().tolist()
        # Integer rounding of the mean (half up), exact in float64: floor((2*sum + n) / (2*n)).
        new = torch.floor((2 * sums + counts[:, None]) / (2 * counts.clamp(min=1)[:, None]))
        for j in empty:  # re-seed an empty cluster with the worst-served patch (first on ties)
            far = int(dist.argmax())
            new[j] = x[far]
            dist[far] = -1
        if torch.equal(new, c):
            break
        c = new
    return c.cpu().numpy().astype(np.int32)
