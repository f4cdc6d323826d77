"""The DALL-E dVAE encoder as a tokenizer (docs/official-behaviour.md §2): the official BEVT targets.

``encoder.pkl`` is a pickled ``dall_e.encoder.Encoder`` module. It is loaded with
``torch.load(weights_only=True)`` plus an allow-list of exactly the classes that file is made
of, so a file that names anything else (a class, or a function such as ``os.system``) is
refused before any of it runs; an optional SHA-256 pin refuses any other file. The module is
then rebuilt as plain ``nn.Conv2d`` layers so precision, device and memory layout are ours to
choose; the weights and the order of operations are the package's own.

Precision: ``fp32`` everywhere, or ``fp16`` / ``bf16`` for every conv except the 2048->vocab
output conv, which stays fp32 as in ``dall_e`` (``use_float16=False``). ``fp16`` is what the
official code computes on CUDA. Ids can differ between precisions (and between devices or
kernels) where two logits are near-tied; pick one precision per run and keep it (the tokenize
stage fingerprints it). On CUDA, cuDNN may use TF32 for the fp32 convs unless you turn it off.
"""

from __future__ import annotations

import io
import pickle
import re
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bevt_core import storage
from bevt_core.tokenizers.base import Tokenizer, pinned_digest

LOGIT_LAPLACE_EPS = 0.1  # dall_e.utils.logit_laplace_eps: map_pixels squeezes [0,1] into [0.1,0.9]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class WeightsError(ValueError):
    """The weights file is not safe to load (or not a DALL-E encoder)."""


def allowed_classes() -> list:
    """Everything a pickled ``dall_e`` Encoder is made of (torch.device and tensors are always allowed)."""
    import dall_e.encoder
    import dall_e.utils

    return [
        dall_e.encoder.Encoder,
        dall_e.encoder.EncoderBlock,
        dall_e.utils.Conv2d,
        nn.Sequential,
        nn.Identity,
        nn.ReLU,
        nn.MaxPool2d,
        OrderedDict,
    ]


def load_encoder(uri: str, sha256: str = "") -> tuple[nn.Module, str]:
    """The pickled ``dall_e`` Encoder at ``uri`` (local or s3://) and the file's SHA-256.

    Raises :class:`~bevt_core.tokenizers.base.PinMismatch` or :class:`WeightsError`."""
    data = storage.read_bytes(uri)
    digest = pinned_digest(uri, data, sha256)
    try:
        with torch.serialization.safe_globals(allowed_classes()):
            module = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise WeightsError(
                f"{uri} references {found.group(1)}, which is not on the allow-list of classes a "
                "DALL-E encoder is made of; refusing to load it"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        why = detail.group(1).strip() if detail else type(e).__name__
        raise WeightsError(
            f"{uri} cannot be loaded without running code from it ({why}); refusing to load it"
        ) from None
    import dall_e.encoder

    if not isinstance(module, dall_e.encoder.Encoder):
        raise WeightsError(f"{uri} holds a {type(module).__name__}, not a dall_e Encoder")
    return module, digest


def _conv(c) -> nn.Conv2d:
    """A ``dall_e.utils.Conv2d`` as an ``nn.Conv2d`` with the same weights and padding."""
    conv = nn.Conv2d(c.n_in, c.n_out, c.kw, padding=(c.kw - 1) // 2)
    conv.weight.data.copy_(c.w.detach())
    conv.bias.data.copy_(c.b.detach())
    return conv


class _Block(nn.Module):
    def __init__(self, blk):
        super().__init__()
        self.id_path = _conv(blk.id_path) if not isinstance(blk.id_path, nn.Identity) else nn.Identity()
        self.convs = nn.ModuleList(_conv(getattr(blk.res_path, f"conv_{i}")) for i in range(1, 5))
        self.post_gain = blk.post_gain

    def forward(self, x):
        h = x
        for conv in self.convs:
            h = conv(F.relu(h))
        return self.id_path(x) + self.post_gain * h


class DalleEncoder(nn.Module):
    """``dall_e.encoder.Encoder``'s computation, with the output conv kept in fp32."""

    def __init__(self, enc):
        super().__init__()
        layers = [_conv(enc.blocks.input)]
        for g in range(1, enc.group_count + 1):
            for name, m in getattr(enc.blocks, f"group_{g}").named_children():
                layers.append(nn.MaxPool2d(2) if name == "pool" else _Block(m))
        self.body = nn.Sequential(*layers)
        self.output = _conv(enc.blocks.output.conv)
        self.vocab_size = enc.vocab_size

    def forward(self, x):
        h = F.relu(self.body(x.to(self.body[0].weight.dtype)))
        return self.output(h.float())


def map_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> the encoder's input range [0.1, 0.9] (dall_e ``map_pixels`` of x/255)."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * (x.float() / 255) + LOGIT_LAPLACE_EPS


def default_precision(device: torch.device) -> str:
    """fp16 on a GPU, as the official tokenizer runs under apex O1 (docs/official-behaviour.md §7.10); fp32 on a
    CPU, where half precision is slow."""
    return "fp16" if device.type == "cuda" else "fp32"


class DalleTokenizer(Tokenizer):
    name = "dalle"

    def __init__(
        self,
        encoder: nn.Module,
        sha256: str,
        uri: str = "",
        precision: str = "auto",
        device: str = "auto",
        batch_size: int = 256,
    ):
        super().__init__(encoder.vocab_size, sha256, batch_size, device)
        if precision == "auto":
            precision = default_precision(self.device)
        self.uri, self.precision = uri, precision
        net = DalleEncoder(encoder).requires_grad_(False).eval()
        net.body.to(PRECISIONS[precision])
        self.net = net.to(self.device, memory_format=torch.channels_last)

    @classmethod
    def load(cls, uri: str, sha256: str = "", **kwargs) -> DalleTokenizer:
        encoder, digest = load_encoder(uri, sha256)
        return cls(encoder, digest, uri, **kwargs)

    def identity(self) -> dict:
        return super().identity() | {"weights": self.uri, "precision": self.precision}

    @torch.inference_mode()
    def logits(self, small: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(small).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        return self.net(map_pixels(x).contiguous(memory_format=torch.channels_last))

    def encode(self, small: np.ndarray) -> np.ndarray:
        ids = self.logits(small).argmax(dim=1)
        return ids.to(torch.int32).cpu().numpy().astype(np.uint16)
