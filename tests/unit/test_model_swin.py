"""Swin3D backbone: geometry, fused vs reference attention, the image-path quirk, compile, bf16."""

import copy

import pytest
import torch

from bevt_core.models import build_model
from bevt_core.models.swin3d import (
    BasicLayer,
    SwinBlock3D,
    WindowAttention3D,
    compute_shift_mask,
    relative_position_index,
    window_partition,
    window_reverse,
)


def test_relative_position_index_matches_formula():
    window = (2, 3, 3)
    index = relative_position_index(window)
    coords = [(d, h, w) for d in range(2) for h in range(3) for w in range(3)]
    for i, (di, hi, wi) in enumerate(coords):
        for j, (dj, hj, wj) in enumerate(coords):
            expected = (di - dj + 1) * 5 * 5 + (hi - hj + 2) * 5 + (wi - wj + 2)
            assert index[i, j] == expected
    assert index.shape == (18, 18) and index.max() == 3 * 5 * 5 - 1


def test_bevt_window_tables_and_image_slice():
    attn = WindowAttention3D(dim=8, window_size=(8, 7, 7), num_heads=2)
    assert attn.relative_position_bias_table.shape == (2535, 2)
    assert attn.relative_position_index.shape == (392, 392)
    # The image path's 2D window reads the d=0 plane: official index[:49, :49], rows 1183..1351.
    bias_2d = attn.position_bias((1, 7, 7))
    index_2d = attn.relative_position_index[:49, :49]
    assert index_2d.min() == 7 * 169 and index_2d.max() == 7 * 169 + 168
    torch.testing.assert_close(bias_2d, attn.relative_position_bias_table[index_2d].permute(2, 0, 1))
    # A window clipped in time only is the official prefix slice too.
    torch.testing.assert_close(
        attn.position_bias((4, 7, 7)),
        attn.relative_position_bias_table[attn.relative_position_index[:196, :196]].permute(2, 0, 1),
    )
    assert WindowAttention3D(8, (16, 7, 7), 2).relative_position_bias_table.shape == (5239, 2)


def test_window_partition_roundtrip():
    x = torch.randn(2, 4, 6, 6, 3)
    windows = window_partition(x, (2, 3, 3))
    assert windows.shape == (2 * 2 * 2 * 2, 18, 3)
    torch.testing.assert_close(window_reverse(windows, (2, 3, 3), 2, (4, 6, 6)), x)


def test_shift_mask_regions():
    # 1D along w: grid 8, window 4, shift 2 -> second window mixes regions [4,6) and [6,8).
    mask = compute_shift_mask((1, 1, 8), (1, 1, 4), (0, 0, 2), torch.device("cpu"))
    assert mask.shape == (2, 4, 4)
    assert torch.all(mask[0] == 0)
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]) * -100.0
    torch.testing.assert_close(mask[1], expected)


def test_drop_path_schedule_is_linear_over_blocks():
    model = build_model("recognizer-tiny", drop_path_rate=0.4)
    rates = [
        0.0 if isinstance(b.drop_path, torch.nn.Identity) else b.drop_path.drop_prob
        for layer in model.backbone.layers
        for b in layer.blocks
    ]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.4, 5))


def test_backbone_stage_shapes_video_and_image():
    model = build_model("bevt-tiny").eval()
    backbone = model.backbone
    stages = backbone.forward_stages(backbone.embed(torch.randn(1, 3, 8, 64, 64), None))
    assert [tuple(s.shape) for s in stages] == [
        (1, 4, 16, 16, 32),
        (1, 4, 8, 8, 64),
        (1, 4, 4, 4, 128),
        (1, 4, 2, 2, 256),
    ]
    stages = backbone.forward_stages(backbone.embed(torch.randn(1, 3, 64, 64), None), image=True)
    assert [tuple(s.shape) for s in stages] == [
        (1, 1, 16, 16, 32),
        (1, 1, 8, 8, 64),
        (1, 1, 4, 4, 128),
        (1, 1, 2, 2, 256),
    ]


# ---------------------------------------------------------------------------------------------
# Fused vs reference attention


def _pair(impl_a="reference", impl_b="sdpa", **overrides):
    torch.manual_seed(0)
    a = build_model("bevt-tiny", attn_impl=impl_a, drop_path_rate=0.0, **overrides)
    b = copy.deepcopy(a)
    for module in b.modules():
        if isinstance(module, WindowAttention3D):
            module.attn_impl = impl_b
    return a, b


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close_fp32(actual, expected, name=""):
    """Equal to 1e-5 relative to the tensor's scale: gradients are sums over many tokens, and fp32
    summation order alone moves them by ~1e-6 of their largest entry."""
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= 1e-5 * max(scale, 1.0), f"{name}: max error {error:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_fused_equals_reference(shifted):
    torch.manual_seed(0)
    ref = WindowAttention3D(dim=16, window_size=(2, 4, 4), num_heads=2, attn_impl="reference")
    fused = copy.deepcopy(ref)
    fused.attn_impl = "sdpa"
    mask = compute_shift_mask((4, 8, 8), (2, 4, 4), (1, 2, 2), torch.device("cpu")) if shifted else None
    x = torch.randn(3 * 8, 32, 16, requires_grad=True)  # batch 3 x 8 windows
    outs, grads = [], []
    for module in (ref, fused):
        x.grad = None
        out = module(x, (2, 4, 4), mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out)
        grads.append((x.grad.clone(), module.relative_position_bias_table.grad.clone(), module.qkv.weight.grad.clone()))
    assert_close_fp32(outs[1], outs[0], "output")
    for g_fused, g_ref, name in zip(grads[1], grads[0], ("input", "bias table", "qkv")):
        assert_close_fp32(g_fused, g_ref, name)


@pytest.mark.parametrize("stream", ["video", "image"])
@pytest.mark.parametrize("quirk", [True, False])
def test_model_fused_equals_reference_with_padding(stream, quirk):
    """40 px inputs: windows padded at stages 1-2, clipped at 3-4; shifted blocks everywhere."""
    ref, fused = _pair(image_mask_quirk=quirk)
    torch.manual_seed(1)
    if stream == "video":
        x, mask = torch.randn(2, 3, 6, 40, 40), torch.rand(2, 3, 3, 3) < 0.5
    else:
        x, mask = torch.randn(2, 3, 40, 40), torch.rand(2, 3, 3) < 0.5
    outs = []
    for model in (ref, fused):
        out = model.token_logits(x, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out)
    assert_close_fp32(outs[1], outs[0], "logits")
    g_ref, g_fused = _grads(ref), _grads(fused)
    assert g_ref.keys() == g_fused.keys()
    for name in g_ref:
        assert_close_fp32(g_fused[name], g_ref[name], name)


def test_auto_attention_is_reference_on_cpu():
    torch.manual_seed(0)
    auto, ref = _pair("auto", "reference")
    x, mask = torch.randn(1, 3, 8, 64, 64), torch.rand(1, 4, 4, 4) < 0.5
    with torch.no_grad():
        torch.testing.assert_close(auto.token_logits(x, mask), ref.token_logits(x, mask), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Image path at stage 4: the official quirk


def _changed_by(block, plan, x, position):
    """Which tokens of a 7x7 map a block's output changes when one input token changes."""
    window, shift, mask = plan
    bumped = x.clone()
    bumped[0, 0, position[0], position[1]] += torch.linspace(-1, 1, x.shape[-1])
    with torch.no_grad():
        return (block(bumped, window, shift, mask) - block(x, window, shift, mask)).abs().sum(-1)[0, 0] > 1e-6


def _region(rows, cols):
    region = torch.zeros(7, 7, dtype=torch.bool)
    region[rows[0] : rows[1], cols[0] : cols[1]] = True
    return region


@pytest.mark.parametrize("quirk", [True, False])
def test_image_stage4_quadrants(quirk):
    torch.manual_seed(0)
    layer = BasicLayer(16, 2, 2, (8, 7, 7), 4.0, True, [0.0, 0.0], False, "reference", False, quirk)
    plan = layer.block_plan((1, 7, 7), image=True, device=torch.device("cpu"))
    x = torch.randn(1, 1, 7, 7, 16)
    changed_even = _changed_by(layer.blocks[0], plan[0], x, (0, 0))
    changed_odd = _changed_by(layer.blocks[1], plan[1], x, (3, 0))
    if quirk:
        # Non-shifted block: regions [0,4) x [0,4) etc. Shifted block (rolled by 3): rows 3..6 x cols 0..2.
        assert torch.equal(changed_even, _region((0, 4), (0, 4)))
        assert torch.equal(changed_odd, _region((3, 7), (0, 3)))
        assert plan[1][1] == (0, 3, 3)
    else:
        assert changed_even.all() and changed_odd.all()
        assert all(mask is None and shift == (0, 0, 0) for _, shift, mask in plan)
    # The video path never masks a single-window map, quirk or not.
    assert all(mask is None for _, _, mask in layer.block_plan((8, 7, 7), image=False, device=torch.device("cpu")))


# ---------------------------------------------------------------------------------------------
# Compile, bf16, activation checkpointing


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_block_compiles_without_graph_breaks(impl):
    torch._dynamo.reset()
    block = SwinBlock3D(16, 2, (2, 4, 4), 4.0, True, 0.1, impl)
    mask = compute_shift_mask((2, 8, 8), (2, 4, 4), (1, 2, 2), torch.device("cpu"))
    explanation = torch._dynamo.explain(block)(torch.randn(1, 2, 7, 7, 16), (2, 4, 4), (1, 2, 2), mask)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


def test_bf16_autocast_forward_backward():
    ref, fused = _pair()
    x, mask = torch.randn(1, 3, 8, 64, 64), torch.rand(1, 4, 4, 4) < 0.5
    outs = []
    for model in (ref, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.token_logits(x, mask)
        out.float().square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        outs.append(out.float())
    assert outs[0].dtype == torch.float32
    torch.testing.assert_close(outs[1], outs[0], atol=0.1, rtol=0.05)


def test_activation_checkpointing_gives_same_gradients():
    plain, _ = _pair()
    checkpointed = build_model("bevt-tiny", drop_path_rate=0.0, use_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())
    x, mask = torch.randn(1, 3, 8, 64, 64), torch.rand(1, 4, 4, 4) < 0.5
    for model in (plain, checkpointed):
        model.token_logits(x, mask).square().mean().backward()
    g_plain, g_ckpt = _grads(plain), _grads(checkpointed)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], atol=1e-6, rtol=1e-5)
