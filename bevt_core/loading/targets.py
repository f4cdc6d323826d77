"""The pretraining loader that pairs clips with their token targets.

:class:`TokenTargets` streams (data, tokens) pairs with ShardStream's exact split across ranks
and workers, picks a view and a temporal window per sample, replays the view on the pixels with
:func:`~bevt_core.data.views.apply_view` and slices the stored ids that belong to those exact
pixels. Masks are not its business (:mod:`bevt_core.masking`).
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

import numpy as np
import torch

from bevt_core.data.decode import decode_jpeg
from bevt_core.data.jobs import recorded_settings
from bevt_core.data.loader import ShardStream, buffer_shuffle, current_consumer, read_runs
from bevt_core.data.shard_format import Sample
from bevt_core.data.token_format import TokenSample, TokenSet, load_tokens, parse_data, parse_tokens
from bevt_core.data.views import Augment, View, apply_view, draw_view
from bevt_core.loading.frames import StoredFrames, check_stride, interval_train
from bevt_core.tokenizers import open_tokenizer

# stored: the ids of a stored view; replay: the crop of a stored view, for a tokenizer in the step (it gives the
# stored ids); online: the crop of a fresh draw of the augmentation on every read, tokenized in the step (the
# official setup).
MODES = ("stored", "replay", "online")
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def tokenizer_of(tokens: TokenSet, device: str = "auto", batch_size: int = 256):
    """The tokenizer that made a token directory's ids, for online targets or to check them."""
    return open_tokenizer(tokens.record, tokens.manifest.root, device=device, batch_size=batch_size)


def normalize(crops: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float ``(3, ..., H, W)`` with the ImageNet mean/std on 0-255."""
    x = (crops.astype(np.float32) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 0)))


class TargetSample(NamedTuple):
    clip: torch.Tensor  # float (3, T, H, W) video or (3, H, W) image
    target: torch.Tensor  # int64 ids (T, G, G) / (G, G); replay, online: the uint8 crop (T, H, W, 3) / (H, W, 3)
    view: View
    key: str


class TokenTargets(ShardStream):
    """Training samples with their targets (``MODES``): the ids of one of the V stored views (``stored``), that
    view's uint8 crop for a tokenizer inside the step (``replay``), or the crop of a fresh augmentation drawn on
    every read, the official setup (``online``). The view (or the fresh draw) and one temporal window of
    ``clip_len`` frames, ``frame_interval`` frames of the video apart (:mod:`bevt_core.loading.frames`), are drawn
    at random per sample and epoch.
    """

    def __init__(
        self,
        data_root: str,
        tokens_root: str,
        *,
        clip_len: int = 16,
        frame_interval: int = 1,
        mode: str = "stored",
        shuffle: bool = False,
        seed: int = 0,
        even_ranks: bool = False,
        shuffle_buffer: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        super().__init__(
            data_root,
            shuffle=shuffle,
            seed=seed,
            even_ranks=even_ranks,
            shuffle_buffer=shuffle_buffer,
            rank=rank,
            world_size=world_size,
        )
        self.tokens = load_tokens(tokens_root)
        missing = [r["key"] for r in self.manifest.rows if r["key"] not in self.tokens.by_key]
        if missing:
            raise ValueError(
                f"{tokens_root} has no tokens for {len(missing)} samples of {data_root} "
                f"(e.g. {missing[0]}): tokenize this data directory"
            )
        check_stride(frame_interval, recorded_settings(data_root)["frame_interval"], data_root, "frame_interval")
        self.clip_len, self.frame_interval, self.mode = clip_len, frame_interval, mode
        record = self.tokens.record
        self.augment = Augment(crop=record["crop"], jitter=record["jitter"], flip=record["flip"], seed=record["seed"])

    def __iter__(self):
        consumer = current_consumer(self.rank, self.world_size)
        rows = self.rows_for(consumer)
        by_key = self.tokens.by_key
        pairs = zip(
            read_runs(self.manifest, rows, parse_data),
            read_runs(self.tokens.manifest, [by_key[r["key"]] for r in rows], parse_tokens),
        )
        rng = np.random.default_rng([self.seed, self.epoch, consumer.rank, consumer.worker])
        if self.shuffle and self.shuffle_buffer > 1:
            pairs = buffer_shuffle(pairs, self.shuffle_buffer, random.Random(int(rng.integers(1 << 62))))
        for (sample, is_video), tokens in pairs:
            yield self.make(sample, is_video, tokens, rng)

    def make(self, sample: Sample, is_video: bool, tokens: TokenSample, rng: np.random.Generator) -> TargetSample:
        if tokens.key != sample.key:
            raise ValueError(f"token shard out of step with the data: {tokens.key!r} vs {sample.key!r}")
        v = int(rng.integers(len(tokens.views)))
        view = tokens.views[v] if self.mode != "online" else self.fresh_view(sample, is_video, rng)
        if is_video:
            frames = StoredFrames.of(sample)
            idx = frames.positions(interval_train(frames.raw, self.clip_len, self.frame_interval, rng))
            # Decode and augment each stored frame once, even when a short video wraps around.
            uniq, inverse = np.unique(idx, return_inverse=True)
            crops = apply_view(np.stack([decode_jpeg(sample.jpegs[i]) for i in uniq.tolist()]), view)[inverse]
            ids = tokens.ids[v, idx]
        else:
            crops = apply_view(decode_jpeg(sample.jpegs[0]), view)
            ids = tokens.ids[v]
        target = torch.from_numpy(ids.astype(np.int64)) if self.mode == "stored" else torch.from_numpy(crops)
        return TargetSample(normalize(crops), target, view, sample.key)

    def fresh_view(self, sample: Sample, is_video: bool, rng: np.random.Generator) -> View:
        """A new draw of the augmentation the token directory's views come from, as the official pipeline makes
        on every read."""
        height, width = sample.meta["stored_height"], sample.meta["stored_width"]
        return draw_view(self.augment, height, width, not is_video, rng)


def collate(batch: list[TargetSample]) -> dict[str, Any]:
    """Stack clips and targets; views and keys stay lists (``torch.utils.data.DataLoader(collate_fn=...)``)."""
    return {
        "clip": torch.stack([b.clip for b in batch]),
        "target": torch.stack([b.target for b in batch]),
        "views": [b.view for b in batch],
        "keys": [b.key for b in batch],
    }
