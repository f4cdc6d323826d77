"""Token shards (precomputed tokenizer targets) and the training loader that pairs them with clips.

A token directory (written by ``bevt tokenize``) mirrors a data shard directory: one token tar
per data shard, with the same name, holding the same keys in the same order. A sample is
``<key>.tokens.npy`` (uint16 ids ``(V, F, G, G)`` for a video of F stored frames, ``(V, G, G)``
for an image) and ``<key>.views.json`` (the V :class:`~bevt_core.data.views.View` dicts).
``manifest.parquet`` has one row per sample (key, shard, offset, bytes, ...), ``tokenizer.json``
records the tokenizer's identity and the augmentation the views were drawn from.

:class:`TokenTargets` streams (data, tokens) pairs with ShardStream's exact split across ranks
and workers, picks a view and a temporal window per sample, replays the view on the pixels with
:func:`~bevt_core.data.views.apply_view` and slices the stored ids that belong to those exact
pixels. Masks are not its business (:mod:`bevt_core.masking`).
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from bevt_core.data import storage
from bevt_core.data.decode import decode_jpeg
from bevt_core.data.loader import ShardStream, _buffer_shuffle, _read_runs, current_consumer
from bevt_core.data.manifest import MANIFEST, Manifest, read_table
from bevt_core.data.shards import Sample, parse_sample, read_members
from bevt_core.data.views import View, apply_view

RECORD = "tokenizer.json"
IDS, VIEWS = "tokens.npy", "views.json"
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)

SCHEMA = pa.schema([
    ("index", pa.int64()),  # position of the sample's row in the data manifest
    ("key", pa.string()),
    ("shard", pa.string()),  # token tar name = the data shard's name
    ("offset", pa.int64()),
    ("bytes", pa.int64()),
    ("frames", pa.int32()),  # stored frames tokenized (1 for an image)
    ("views", pa.int32()),
    ("grid", pa.int32()),
    ("video", pa.bool_()),
])


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

    def tokenizer(self, device: str = "auto", batch_size: int = 256):
        """The tokenizer that made these ids, for online targets or to check them."""
        from bevt_core.tokenizers import open_tokenizer

        return open_tokenizer(self.record, self.manifest.root, device=device, batch_size=batch_size)


def load_tokens(root: str) -> TokenSet:
    uri = storage.join(root, MANIFEST)
    if not storage.exists(uri):
        raise FileNotFoundError(f"no {MANIFEST} in {root}: not a token directory, or `bevt tokenize` has not "
                                "finished (rerun it to resume)")
    record = json.loads(storage.read_bytes(storage.join(root, RECORD)))
    return TokenSet(Manifest(root, read_table(uri).to_pylist(), []), record)


def clip_indices(frames: int, clip_len: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """``SampleFrames(num_clips=1)``: a random start in ``[0, frames - clip_len*stride]``, then
    every ``stride``-th stored frame; a video too short starts at 0 and wraps around."""
    span = clip_len * stride
    start = int(rng.integers(0, frames - span + 1)) if frames >= span else 0
    return (start + np.arange(clip_len) * stride) % frames


def normalize(crops: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float ``(3, ..., H, W)`` with the ImageNet mean/std on 0-255."""
    x = (crops.astype(np.float32) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 0)))


class TargetSample(NamedTuple):
    clip: torch.Tensor  # float (3, T, H, W) video or (3, H, W) image
    target: torch.Tensor  # int64 ids (T, G, G) / (G, G); in "online" mode the uint8 crop (T, H, W, 3) / (H, W, 3)
    view: View
    key: str


class TokenTargets(ShardStream):
    """Training samples with their precomputed targets (``mode="stored"``) or, for comparison with
    the official setup, with the augmented uint8 crop for a tokenizer inside the step
    (``mode="online"``). One view index (of the stored V) and one temporal window of ``clip_len``
    frames, ``frame_stride`` stored frames apart, are drawn at random per sample and epoch.
    """

    def __init__(self, data_root: str, tokens_root: str, *, clip_len: int = 16, frame_stride: int = 1,
                 mode: str = "stored", shuffle: bool = False, seed: int = 0, even_ranks: bool = False,
                 shuffle_buffer: int = 0, rank: int | None = None, world_size: int | None = None):
        if mode not in ("stored", "online"):
            raise ValueError(f"mode must be 'stored' or 'online', got {mode!r}")
        super().__init__(data_root, shuffle=shuffle, seed=seed, even_ranks=even_ranks,
                         shuffle_buffer=shuffle_buffer, rank=rank, world_size=world_size)
        self.tokens = load_tokens(tokens_root)
        missing = [r["key"] for r in self.manifest.rows if r["key"] not in self.tokens.by_key]
        if missing:
            raise ValueError(f"{tokens_root} has no tokens for {len(missing)} samples of {data_root} "
                             f"(e.g. {missing[0]}): tokenize this data directory")
        self.clip_len, self.frame_stride, self.mode = clip_len, frame_stride, mode

    def __iter__(self):
        consumer = current_consumer(self.rank, self.world_size)
        rows = self.rows_for(consumer)
        by_key = self.tokens.by_key
        pairs = zip(_read_runs(self.manifest, rows, parse_data),
                    _read_runs(self.tokens.manifest, [by_key[r["key"]] for r in rows], parse_tokens))
        rng = np.random.default_rng([self.seed, self.epoch, consumer.rank, consumer.worker])
        if self.shuffle and self.shuffle_buffer > 1:
            pairs = _buffer_shuffle(pairs, self.shuffle_buffer, random.Random(int(rng.integers(1 << 62))))
        for (sample, is_video), tokens in pairs:
            yield self.make(sample, is_video, tokens, rng)

    def make(self, sample: Sample, is_video: bool, tokens: TokenSample, rng: np.random.Generator) -> TargetSample:
        if tokens.key != sample.key:
            raise ValueError(f"token shard out of step with the data: {tokens.key!r} vs {sample.key!r}")
        v = int(rng.integers(len(tokens.views)))
        view = tokens.views[v]
        if is_video:
            idx = clip_indices(len(sample.jpegs), self.clip_len, self.frame_stride, rng)
            # Decode and augment each stored frame once, even when a short video wraps around.
            uniq, inverse = np.unique(idx, return_inverse=True)
            crops = apply_view(np.stack([decode_jpeg(sample.jpegs[i]) for i in uniq.tolist()]), view)[inverse]
            ids = tokens.ids[v, idx]
        else:
            crops = apply_view(decode_jpeg(sample.jpegs[0]), view)
            ids = tokens.ids[v]
        target = torch.from_numpy(crops) if self.mode == "online" else torch.from_numpy(ids.astype(np.int64))
        return TargetSample(normalize(crops), target, view, sample.key)


def collate(batch: list[TargetSample]) -> dict[str, Any]:
    """Stack clips and targets; views and keys stay lists (``torch.utils.data.DataLoader(collate_fn=...)``)."""
    return {"clip": torch.stack([b.clip for b in batch]), "target": torch.stack([b.target for b in batch]),
            "views": [b.view for b in batch], "keys": [b.key for b in batch]}
