"""Pretraining micro-batches: clips or images with their token targets and random masks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bevt_core.loading.streams import StepStream
from bevt_core.loading.targets import TokenTargets
from bevt_core.masking import BlockMaskGenerator, TubeMaskGenerator


def stream(
    data: str,
    tokens: str,
    *,
    clip_len: int,
    frame_interval: int,
    mode: str,
    micro_batch: int,
    rank: int,
    world: int,
    seed: int,
    cycle: bool = False,
) -> StepStream:
    """A stream of tuples: video (clip, in_mask, out_mask, target), image (image, mask, target).

    target is int64 ids, or in ``online`` mode the uint8 crops for a tokenizer inside the step."""
    targets = TokenTargets(data, tokens, clip_len=clip_len, frame_interval=frame_interval, mode=mode)
    first = targets.tokens.manifest.rows[0]
    grid, video = int(first["grid"]), bool(first["video"])
    block = BlockMaskGenerator.scaled(grid)
    tube = TubeMaskGenerator(num_frames=clip_len, block=block)

    def make(row: dict, parsed: tuple, token_sample: Any, rng: np.random.Generator) -> tuple:
        sample, is_video = parsed
        if is_video != video:
            raise ValueError(f"{data}: mixes videos and images ({sample.key})")
        s = targets.make(sample, is_video, token_sample, rng)
        if video:
            in_mask, out_mask = tube(rng)
            return s.clip, torch.from_numpy(in_mask), torch.from_numpy(out_mask), s.target
        return s.clip, torch.from_numpy(block(rng)), s.target

    def collate(items: list[tuple]) -> tuple:
        return tuple(torch.stack(parts) for parts in zip(*items))

    result = StepStream(
        targets.manifest,
        make,
        collate,
        micro_batch=micro_batch,
        rank=rank,
        world=world,
        seed=seed,
        shuffle=True,
        tokens=targets.tokens,
        cycle=cycle,
    )
    result.is_video = video
    result.token_set = targets.tokens
    return result


def online_ids(tokenizer) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 crops (..., S, S, 3) on any device -> int64 ids (..., S/16, S/16) on that device."""

    def ids(crops: torch.Tensor) -> torch.Tensor:
        lead = crops.shape[:-3]
        flat = crops.reshape(-1, *crops.shape[-3:]).cpu().numpy()
        out = torch.from_numpy(tokenizer.tokenize(flat).astype(np.int64))
        return out.reshape(*lead, *out.shape[1:]).to(crops.device)

    return ids


def video_inputs(batch: tuple, ids: Callable | None) -> tuple:
    clip, in_mask, out_mask, target = batch
    return clip, in_mask, out_mask, ids(target) if ids else target


def image_inputs(batch: tuple, ids: Callable | None) -> tuple:
    image, mask, target = batch
    return image, mask, ids(target) if ids else target
