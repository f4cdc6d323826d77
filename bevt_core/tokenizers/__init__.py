"""Visual tokenizers (docs/official-behaviour.md §2): one interface (:mod:`.base`), DALL-E (:mod:`.dalle`) and the
weight-free codebook fitted on the data (:mod:`.codebook`)."""

from __future__ import annotations

from bevt_core import storage

CODEBOOK_FILE = "codebook.npz"  # a codebook tokenizer's artifact inside a token directory


def open_tokenizer(record: dict, root: str, device: str = "auto", batch_size: int = 256, precision: str = ""):
    """The tokenizer a token directory's ``tokenizer.json`` record names, pinned to its SHA-256."""
    ident = record["tokenizer"]
    if ident["name"] == "dalle":
        from bevt_core.tokenizers.dalle import DalleTokenizer

        return DalleTokenizer.load(
            ident["weights"],
            ident["sha256"],
            precision=precision or ident["precision"],
            device=device,
            batch_size=batch_size,
        )
    if ident["name"] == "codebook":
        from bevt_core.tokenizers.codebook import CodebookTokenizer

        return CodebookTokenizer.load(
            storage.join(root, CODEBOOK_FILE), ident["sha256"], device=device, batch_size=batch_size
        )
    raise ValueError(f"unknown tokenizer {ident['name']!r} in {root}")
