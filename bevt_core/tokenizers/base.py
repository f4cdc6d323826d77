"""The tokenizer interface: augmented crops in, one token id per 16x16 crop cell out.

Every tokenizer takes RGB uint8 crops ``(N, S, S, 3)`` at the crop size ``S`` (a multiple of
16), resizes them to ``S/2`` with OpenCV's Lanczos4 (the official ``CopyResize``; 112 px at
224) and maps each to a ``(S/16, S/16)`` grid of ids (14x14 at 224), returned as uint16. It
reports its codebook size and identity (name + SHA-256 of its weights), which every output
that holds its ids records.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

CELL = 16  # crop pixels per token along each side
MAX_VOCAB = 1 << 16  # ids are stored as uint16


def grid_size(crop: int) -> int:
    if crop % CELL:
        raise ValueError(f"crop size {crop} is not a multiple of {CELL}")
    return crop // CELL


def tokenizer_input(crops: np.ndarray) -> np.ndarray:
    """The half-size copy the tokenizer sees: ``(N, S/2, S/2, 3)`` uint8, Lanczos4 per crop.

    Crops are resized on all cores (OpenCV does not split images this small by itself, and it
    releases the GIL): one thread would cap a GPU tokenizer at a few thousand frames/s."""
    n, h, w = crops.shape[:3]
    out = np.empty((n, h // 2, w // 2, 3), np.uint8)

    def one(i: int) -> None:
        cv2.resize(crops[i], (w // 2, h // 2), dst=out[i], interpolation=cv2.INTER_LANCZOS4)

    with ThreadPoolExecutor(min(n, os.cpu_count() or 1) or 1) as pool:
        list(pool.map(one, range(n)))
    return out


class PinMismatch(ValueError):
    """A file is not the one its SHA-256 pin names."""


def pinned_digest(uri: str, data: bytes, sha256: str = "") -> str:
    """SHA-256 of ``data``; refuses it when a pin is given and differs."""
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256.lower():
        raise PinMismatch(f"{uri} has SHA-256 {digest}, not the pinned {sha256.lower()}: refusing to load it")
    return digest


def pick_device(device: str):
    """``auto``: the GPU when there is one."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Tokenizer(ABC):
    name: str

    def __init__(self, vocab_size: int, sha256: str, batch_size: int, device: str):
        if not 1 < vocab_size <= MAX_VOCAB:
            raise ValueError(f"codebook size {vocab_size} does not fit uint16 ids")
        self.vocab_size, self.sha256, self.batch_size = vocab_size, sha256, batch_size
        self.device = pick_device(device)

    def identity(self) -> dict:
        """What every output made with this tokenizer records."""
        return {"name": self.name, "sha256": self.sha256, "vocab_size": self.vocab_size}

    def tokenize(self, crops: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(N, S, S, 3)`` -> uint16 ``(N, S/16, S/16)``, in chunks of ``batch_size``."""
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
            raise ValueError(f"expected uint8 (N, S, S, 3) crops, got {crops.dtype} {crops.shape}")
        g = grid_size(crops.shape[1])
        out = np.empty((len(crops), g, g), np.uint16)
        for i in range(0, len(crops), self.batch_size):
            out[i : i + self.batch_size] = self.encode(tokenizer_input(crops[i : i + self.batch_size]))
        return out

    @abstractmethod
    def encode(self, small: np.ndarray) -> np.ndarray:
        """Ids ``(n, s/8, s/8)`` of tokenizer inputs ``(n, s, s, 3)`` uint8 (already resized)."""
