"""Token shards: precomputed tokenizer targets, one token tar per data shard.

A token directory (written by ``bevt tokenize``) mirrors a data shard directory: one token tar
per data shard, with the same name, holding the same keys in the same order. A sample is
``<key>.tokens.npy`` (uint16 ids ``(V, F, G, G)`` for a video of F stored frames, ``(V, G, G)``
for an image) and ``<key>.views.json`` (the V :class:`~bevt_core.data.views.View` dicts).
``manifest.parquet`` has one row per sample (key, shard, offset, bytes, ...), ``tokenizer.json``
records the tokenizer's identity and the augmentation the views were drawn from.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

from bevt_core import storage
from bevt_core.data.manifest import MANIFEST, Manifest, read_table
from bevt_core.data.shard_format import Sample, parse_sample, read_members
from bevt_core.data.views import View

RECORD = "tokenizer.json"
IDS, VIEWS = "tokens.npy", "views.json"

SCHEMA = pa.schema(
    [
        ("index", pa.int64()),  # position of the sample's row in the data manifest
        ("key", pa.string()),
        ("shard", pa.string()),  # token tar name = the data shard's name
        ("offset", pa.int64()),
        ("bytes", pa.int64()),
        ("frames", pa.int32()),  # stored frames tokenized (1 for an image)
        ("views", pa.int32()),
        ("grid", pa.int32()),
        ("video", pa.bool_()),
    ]
)


def token_members(ids: np.ndarray, views: list[View]) -> list[tuple[str, bytes]]:
    buf = io.BytesIO()
    np.save(buf, ids.astype(np.uint16), allow_pickle=False)
    return [(IDS, buf.getvalue()), (VIEWS, json.dumps([v.to_dict() for v in views], sort_keys=True).encode())]


@dataclass
class TokenSample:
    key: str
    ids: np.ndarray  # uint16 (V, F, G, G) or (V, G, G)
    views: list[View]


def parse_tokens(buf: bytes) -> TokenSample:
    key, members = read_members(buf)
    ids = np.load(io.BytesIO(members[IDS]), allow_pickle=False)
    return TokenSample(key, ids, [View.from_dict(d) for d in json.loads(members[VIEWS])])


def parse_data(buf: bytes) -> tuple[Sample, bool]:
    """A data sample and whether it is a video (frames ``<key>.NNNN.jpg``) rather than an image."""
    _, members = read_members(buf)
    return parse_sample(buf), "jpg" not in members


@dataclass
class TokenSet:
    """A finished token directory: its rows (by key) and its record."""

    manifest: Manifest
    record: dict

    @cached_property
    def by_key(self) -> dict[str, dict]:
        return {r["key"]: r for r in self.manifest.rows}


def load_tokens(root: str) -> TokenSet:
    uri = storage.join(root, MANIFEST)
    if not storage.exists(uri):
        raise FileNotFoundError(
            f"no {MANIFEST} in {root}: not a token directory, or `bevt tokenize` has not finished (rerun it to resume)"
        )
    record = json.loads(storage.read_bytes(storage.join(root, RECORD)))
    return TokenSet(Manifest(root, read_table(uri).to_pylist(), []), record)
