"""Parameter groups follow mmcv custom_keys precedence exactly (docs/official-behaviour.md §7.3); the lr
formulas of §4.3 and §5.1."""

from __future__ import annotations

import math

import pytest

from bevt_core.models import build_model
from bevt_core.train.optim import Schedule, backbone_mult_keys, layer_decay_keys, match_key, param_groups, pretrain_keys


def options(model, keys, lr=1.0, wd=1.0) -> dict[str, tuple[float, float]]:
    return {name: (g["lr"], g["weight_decay"]) for g in param_groups(model, lr, wd, keys) for name in g["names"]}


@pytest.fixture(scope="module")
def swin_b_k400():
    return build_model("k400-swin-b")


def test_k400_layer_decay_table(swin_b_k400):
    got = options(swin_b_k400, layer_decay_keys((2, 2, 18, 2), 0.9), wd=0.001)

    def k(n):
        return pytest.approx(0.9**n)

    assert got["backbone.norm.weight"] == (k(1), 0.0)
    assert got["backbone.layers.3.blocks.1.mlp.fc1.weight"][0] == k(1)
    assert got["backbone.layers.3.blocks.0.attn.qkv.weight"][0] == k(2)
    assert got["backbone.layers.2.downsample.reduction.weight"][0] == k(3)
    assert got["backbone.layers.2.blocks.17.attn.proj.weight"][0] == k(4)
    assert got["backbone.layers.2.blocks.10.attn.proj.weight"][0] == k(11)  # not caught by 'blocks.1'
    assert got["backbone.layers.2.blocks.1.attn.proj.weight"][0] == k(20)
    assert got["backbone.layers.2.blocks.0.attn.proj.weight"][0] == k(21)
    assert got["backbone.layers.1.downsample.reduction.weight"][0] == k(22)
    assert got["backbone.layers.0.blocks.0.mlp.fc2.bias"] == (k(27), 0.001)  # biases decay
    assert got["backbone.patch_embed.proj.weight"][0] == k(28)
    assert got["cls_head.fc_cls.weight"] == (1.0, 0.001)
    # 'relative_position_bias_table' (28 chars) beats the 27-char layer keys: lr x1, no decay.
    assert got["backbone.layers.2.blocks.17.attn.relative_position_bias_table"] == (1.0, 0.0)
    assert got["backbone.layers.0.blocks.0.attn.relative_position_bias_table"] == (1.0, 0.0)
    # Norms inside blocks and patch_embed.norm match the longer layer keys: they keep weight decay.
    assert got["backbone.layers.1.blocks.0.norm1.weight"] == (k(24), 0.001)
    assert got["backbone.layers.0.downsample.norm.weight"] == (k(25), 0.001)
    assert got["backbone.patch_embed.norm.weight"] == (k(28), 0.001)


def test_ssv2_backbone_mult():
    got = options(build_model("recognizer-tiny"), backbone_mult_keys(0.1), wd=0.05)
    assert got["backbone.layers.0.blocks.0.attn.qkv.weight"] == (pytest.approx(0.1), 0.05)
    assert got["backbone.layers.0.blocks.0.norm1.weight"] == (pytest.approx(0.1), 0.05)  # 'backbone' beats 'norm'
    assert got["backbone.norm.weight"] == (pytest.approx(0.1), 0.05)
    assert got["backbone.layers.1.blocks.0.attn.relative_position_bias_table"] == (1.0, 0.0)  # 10x the backbone
    assert got["cls_head.fc_cls.weight"] == (1.0, 0.05)


def test_pretrain_no_decay_keys():
    model = build_model("bevt-tiny")
    got = options(model, pretrain_keys(), wd=0.05)
    assert got["backbone.norm.weight"] == (1.0, 0.0)
    assert got["backbone.layers.0.blocks.0.norm2.bias"] == (1.0, 0.0)
    assert got["backbone.layers.0.blocks.0.attn.relative_position_bias_table"] == (1.0, 0.0)
    assert got["backbone.mask_token"] == (1.0, 0.05)  # mask_token and biases DO decay
    assert got["backbone.lm_down.bias"] == (1.0, 0.05)
    assert got["cls_head.lm_head.weight"] == (1.0, 0.05)
    assert sum(len(g["params"]) for g in param_groups(model, 1, 1, pretrain_keys())) == len(list(model.parameters()))


def test_precedence_is_length_then_alphabetical():
    keys = {"ab": {}, "b": {}, "ba": {}}
    assert match_key("xaba", keys) == "ab"  # equal length: alphabetical first
    assert match_key("xb", keys) == "b"
    assert match_key("zzz", keys) is None


def test_pretrain_schedule_formula():
    s = Schedule(5e-4, total_iters=1000, warmup_iters=100, iters_per_epoch=10)

    def cos(t):
        return 0.5 * 5e-4 * (1 + math.cos(math.pi * t / 1000))

    assert s.lr(0) == pytest.approx(cos(0) * 0.1)
    assert s.lr(50) == pytest.approx(cos(50) * (1 - 0.5 * 0.9))
    assert s.lr(100) == pytest.approx(cos(100))
    assert s.lr(700) == pytest.approx(cos(700))
    assert s.lr(1000) == pytest.approx(0.0, abs=1e-12)


def test_finetune_schedule_is_per_epoch_with_iteration_warmup():
    s = Schedule(3e-4, total_iters=600, warmup_iters=25, iters_per_epoch=10, by_epoch=True)
    assert s.lr(30) == s.lr(39)  # constant inside an epoch
    assert s.lr(30) == pytest.approx(0.5 * 3e-4 * (1 + math.cos(math.pi * 3 / 60)))
    assert s.lr(0) < s.lr(10) < s.lr(20)  # warmup still rises per iteration
    assert s.lr(12) == pytest.approx(s.lr(10) / (1 - (1 - 10 / 25) * 0.9) * (1 - (1 - 12 / 25) * 0.9))
