"""The masked-prediction figure of a pretraining run: what the model predicts for masked cells."""

from __future__ import annotations

import numpy as np
import torch

from bevt_core.loading.targets import MEAN, STD, tokenizer_of
from bevt_core.tracking.plots import MaskedExample, masked_prediction


def _pixels(x: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) crop back to (H, W, 3) uint8."""
    return np.clip(x.float().permute(1, 2, 0).cpu().numpy() * STD + MEAN, 0, 255).astype(np.uint8)


def _drawer(token_set):
    """ids (G, G) -> pixels, when the tokenizer knows what its ids look like: the codebook does;
    DALL-E's decoder is not part of this project, so its ids are shown colour-coded only."""
    if token_set.record["tokenizer"]["name"] != "codebook":
        return None
    table = tokenizer_of(token_set, device="cpu").patches()

    def draw(ids: np.ndarray) -> np.ndarray:
        g, p = ids.shape[0], table.shape[1]
        return table[ids].transpose(0, 2, 1, 3, 4).reshape(g * p, g * p, 3)

    return draw


@torch.no_grad()
def figure(
    model,
    x: torch.Tensor,
    in_mask: torch.Tensor,
    out_mask: torch.Tensor,
    targets: torch.Tensor,
    token_set,
    title: str,
    count: int = 4,
) -> bytes:
    """One pretraining micro-batch as the loss sees it: images (B,3,H,W) with ``in_mask`` =
    ``out_mask`` (B,G,G), or clips (B,3,T,H,W) with the input mask (B,T/2,G,G) and the target-frame
    mask and ids (B,T,G,G), of which the first frame is shown."""
    was_training = model.training
    model.eval()
    n = min(count, len(x))
    device = next(model.parameters()).device
    logits = model.token_logits(x[:n].to(device), in_mask[:n].to(device))
    model.train(was_training)
    video = x.ndim == 5
    grid = targets.shape[-1]
    predicted = logits.argmax(-1).reshape(n, -1, grid, grid)[:, 0].cpu().numpy()
    draw = _drawer(token_set)
    examples = []
    for i in range(n):
        frame, target, mask = (x[i, :, 0], targets[i, 0], out_mask[i, 0]) if video else (x[i], targets[i], out_mask[i])
        t, p = target.cpu().numpy().astype(np.int64), predicted[i]
        examples.append(
            MaskedExample(
                _pixels(frame),
                mask.cpu().numpy().astype(bool),
                t,
                p,
                draw(t) if draw else None,
                draw(p) if draw else None,
            )
        )
    return masked_prediction(examples, logits.shape[-1], title)
