"""The Swin-B joint training step (video and image streams, reduced input) compiles as one graph."""

from __future__ import annotations

import numpy as np
import torch

from bevt_core.masking import BlockMaskGenerator, TubeMaskGenerator
from bevt_core.models import build_model

FRAMES, SIZE = 4, 32  # reduced input: the graph is the same as at 16 x 224, the tensors smaller


def joint_batch():
    rng = np.random.default_rng(0)
    grid = SIZE // 16
    block = BlockMaskGenerator.scaled(grid)
    in_mask, out_mask = TubeMaskGenerator(num_frames=FRAMES, block=block)(rng)
    video = (
        torch.randn(1, 3, FRAMES, SIZE, SIZE),
        torch.from_numpy(in_mask)[None],
        torch.from_numpy(out_mask)[None],
        torch.randint(0, 8192, (1, FRAMES, grid, grid)),
    )
    masks = torch.from_numpy(np.stack([block(rng) for _ in range(2)]))
    image = (torch.randn(2, 3, SIZE, SIZE), masks, torch.randint(0, 8192, (2, grid, grid)))
    return video, image


def step_loss(model, video, image) -> torch.Tensor:
    loss = model(video=video, image=image)["loss"]
    loss.backward()
    return loss.detach()


def test_the_joint_step_of_swin_b_compiles_without_a_graph_break():
    """fullgraph=True fails on any graph break; aot_eager traces the backward as well, without code generation
    (inductor compiles the same graph, in minutes on two CPU cores)."""
    torch.manual_seed(0)
    model = build_model("bevt-swin-b", drop_path_rate=0.0, attn_impl="sdpa", num_frames=FRAMES, image_size=SIZE)
    torch.manual_seed(1)
    video, image = joint_batch()
    eager = step_loss(model, video, image)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = step_loss(torch.compile(model, fullgraph=True, backend="aot_eager"), video, image)
    torch.testing.assert_close(compiled, eager)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], msg=name)
