"""Checkpoints: official key names (docs/official-behaviour.md §1.11), strict loading, finetune loading with window
interpolation, 2D->3D inflation (docs/official-behaviour.md §1.10) and our own save/load.

The expected keys are written out here from the spec's description, not read from the model code.
"""

import numpy as np
import pytest
import torch

from bevt_core.models import (
    build_model,
    inflate_2d_checkpoint,
    interpolate_bias_table,
    load_checkpoint,
    save_checkpoint,
)


def official_keys(embed_dim, depths, heads, window, *, pretrain, vocab=8192, num_classes=400):
    """{key: shape} of an official BEVT pretraining or Video Swin finetuned checkpoint."""
    wd, wh, ww = window
    rows, n = (2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), wd * wh * ww
    c, out = embed_dim, embed_dim * 2 ** (len(depths) - 1)
    keys = {
        "backbone.patch_embed.proj.weight": (c, 3, 2, 4, 4),
        "backbone.patch_embed.proj.bias": (c,),
        "backbone.patch_embed.norm.weight": (c,),
        "backbone.patch_embed.norm.bias": (c,),
    }
    for i, (depth, nh) in enumerate(zip(depths, heads)):
        d = c * 2**i
        for j in range(depth):
            p = f"backbone.layers.{i}.blocks.{j}."
            keys |= {
                p + "norm1.weight": (d,),
                p + "norm1.bias": (d,),
                p + "attn.relative_position_bias_table": (rows, nh),
                p + "attn.relative_position_index": (n, n),
                p + "attn.qkv.weight": (3 * d, d),
                p + "attn.qkv.bias": (3 * d,),
                p + "attn.proj.weight": (d, d),
                p + "attn.proj.bias": (d,),
                p + "norm2.weight": (d,),
                p + "norm2.bias": (d,),
                p + "mlp.fc1.weight": (4 * d, d),
                p + "mlp.fc1.bias": (4 * d,),
                p + "mlp.fc2.weight": (d, 4 * d),
                p + "mlp.fc2.bias": (d,),
            }
        if i < len(depths) - 1:
            p = f"backbone.layers.{i}.downsample."
            keys |= {p + "reduction.weight": (2 * d, 4 * d), p + "norm.weight": (4 * d,), p + "norm.bias": (4 * d,)}
    keys |= {"backbone.norm.weight": (out,), "backbone.norm.bias": (out,)}
    if not pretrain:
        return keys | {"cls_head.fc_cls.weight": (num_classes, out), "cls_head.fc_cls.bias": (num_classes,)}
    return keys | {
        "backbone.patch_embed_2d.proj.weight": (c, 3, 4, 4),
        "backbone.patch_embed_2d.proj.bias": (c,),
        "backbone.patch_embed_2d.norm.weight": (c,),
        "backbone.patch_embed_2d.norm.bias": (c,),
        "backbone.mask_token": (1, 1, c),
        "backbone.lm_down.weight": (out, out * 3 // 2),
        "backbone.lm_down.bias": (out,),
        "backbone.fpn.0.weight": (out, out, 2, 2),
        "backbone.fpn.0.bias": (out,),
        "backbone.lm_down_st.0.weight": (out, out * 3 // 2),
        "backbone.lm_down_st.0.bias": (out,),
        "backbone.fpn_s.0.weight": (out, out, 1, 2, 2),
        "backbone.fpn_s.0.bias": (out,),
        "backbone.fpn_t.0.weight": (out, out, 2, 1, 1),
        "backbone.fpn_t.0.bias": (out,),
        "cls_head.lm_head.weight": (vocab, out),
        "cls_head.lm_head.bias": (vocab,),
    }


def dalle_keys():
    """The 74 frozen DALL-E encoder tensors saved with the pretraining model (tiny shapes: ignored anyway)."""
    keys = ["blocks.input.w", "blocks.input.b", "blocks.output.conv.w", "blocks.output.conv.b"]
    for g in range(1, 5):
        for b in (1, 2):
            block = f"blocks.group_{g}.block_{b}."
            keys += [block + f"res_path.conv_{k}.{t}" for k in range(1, 5) for t in "wb"]
            if b == 1 and g > 1:
                keys += [block + "id_path.w", block + "id_path.b"]
    return {"cls_head.vae_encoder." + k: (2, 2) for k in keys}


TINY = dict(embed_dim=32, depths=(1, 1, 2, 1), heads=(1, 2, 4, 8), window=(4, 4, 4))


def random_state(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        k: torch.zeros(s, dtype=torch.long)
        if k.endswith("relative_position_index")
        else torch.randn(s, generator=generator)
        for k, s in shapes.items()
    }


def shapes_of(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_dalle_key_count():
    assert len(dalle_keys()) == 74


@pytest.mark.parametrize(
    "preset,window,pretrain,classes",
    [
        ("bevt-swin-b", (8, 7, 7), True, None),
        ("k400-swin-b", (8, 7, 7), False, 400),
        ("ssv2-swin-b", (16, 7, 7), False, 174),
    ],
)
def test_swin_b_keys_and_shapes_are_official(preset, window, pretrain, classes):
    with torch.device("meta"):
        model = build_model(preset)
    expected = official_keys(128, (2, 2, 18, 2), (4, 8, 16, 32), window, pretrain=pretrain, num_classes=classes)
    assert shapes_of(model) == expected
    assert len(expected) == (368 if pretrain else 353)
    assert model.state_dict()["backbone.layers.0.blocks.0.attn.relative_position_index"].dtype == torch.int64


@pytest.mark.parametrize("container", ["state_dict", "model", "module", "bare"])
def test_official_pretraining_checkpoint_loads_strictly(tmp_path, container):
    state = random_state(official_keys(**TINY, pretrain=True, vocab=256) | dalle_keys())
    keys = {("module." + k if container == "model" else k): v for k, v in state.items()}
    payload = keys if container == "bare" else {container: keys, "meta": {"epoch": 150}}
    path = tmp_path / "bevt.pth"
    torch.save(payload, path)
    model = build_model("bevt-tiny")
    result = load_checkpoint(model, path, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    loaded = model.state_dict()
    for key, value in state.items():
        if key.startswith("cls_head.vae_encoder.") or key.endswith("relative_position_index"):
            continue
        assert torch.equal(loaded[key], value), key
    # The index is rebuilt from the window, never taken from the file.
    assert loaded["backbone.layers.0.blocks.0.attn.relative_position_index"].max() == 7 * 7 * 7 - 1


def test_official_finetuned_checkpoint_with_ema_loads_strictly():
    state = random_state(official_keys(**TINY, pretrain=False, num_classes=10))
    ema = {"ema_" + k.replace(".", "_"): v for k, v in state.items()}
    model = build_model("recognizer-tiny")
    load_checkpoint(model, {"state_dict": state | ema, "meta": {}}, strict=True)
    assert torch.equal(model.cls_head.fc_cls.weight, state["cls_head.fc_cls.weight"])


def test_strict_load_reports_missing_and_unexpected():
    state = random_state(official_keys(**TINY, pretrain=False, num_classes=10))
    del state["backbone.norm.weight"]
    state["backbone.extra.weight"] = torch.zeros(1)
    model = build_model("recognizer-tiny")
    with pytest.raises(RuntimeError, match="backbone.norm.weight"):
        load_checkpoint(model, {"state_dict": state})
    result = load_checkpoint(model, {"state_dict": state}, strict=False)
    assert result.missing_keys == ["backbone.norm.weight"] and result.unexpected_keys == ["backbone.extra.weight"]


def linear_resize_1d(values: np.ndarray, size: int) -> np.ndarray:
    """Independent half-pixel linear resampling (align_corners=False) along axis 0."""
    n = values.shape[0]
    x = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, None)
    i0 = np.floor(x).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = (x - i0)[:, None]
    return values[i0] * (1 - lam) + values[i1] * lam


def test_interpolate_bias_table_in_time():
    table = torch.randn(15 * 13 * 13, 3)
    resized = interpolate_bias_table(table, (8, 7, 7), (16, 7, 7))
    assert resized.shape == (5239, 3)
    grid = table.numpy().reshape(15, 169 * 3)
    expected = linear_resize_1d(grid, 31).reshape(5239, 3)
    np.testing.assert_allclose(resized.numpy(), expected, atol=1e-5)
    constant_in_time = table.view(15, 169, 3)[:1].expand(15, 169, 3).reshape(-1, 3)
    resized = interpolate_bias_table(constant_in_time, (8, 7, 7), (16, 7, 7)).view(31, 169, 3)
    torch.testing.assert_close(resized, resized[:1].expand(31, 169, 3))


def test_recognizer_loads_pretraining_checkpoint_with_deeper_window():
    """BEVT -> SSv2 path at tiny size: window (4,4,4) pretraining, (8,4,4) finetuning."""
    pretrained = random_state(official_keys(**TINY, pretrain=True, vocab=256) | dalle_keys())
    model = build_model("recognizer-tiny", window_size=(8, 4, 4), pretrained_window_size=(4, 4, 4))
    result = load_checkpoint(model, {"state_dict": pretrained}, strict=False)
    assert result.missing_keys == ["cls_head.fc_cls.weight", "cls_head.fc_cls.bias"]
    assert result.unexpected_keys == []
    key = "backbone.layers.2.blocks.1.attn.relative_position_bias_table"
    loaded = model.state_dict()[key]
    assert loaded.shape == (15 * 49, 4)
    expected = linear_resize_1d(pretrained[key].numpy().reshape(7, 49 * 4), 15).reshape(-1, 4)
    np.testing.assert_allclose(loaded.numpy(), expected, atol=1e-5)
    assert torch.equal(
        model.backbone.layers[2].blocks[1].attn.qkv.weight, pretrained["backbone.layers.2.blocks.1.attn.qkv.weight"]
    )
    wrong = build_model("recognizer-tiny", window_size=(8, 4, 4), pretrained_window_size=(2, 4, 4))
    with pytest.raises(ValueError, match="pretrained_window_size"):
        load_checkpoint(wrong, {"state_dict": pretrained}, strict=False)


def swin_2d_checkpoint(table_side=7):
    """A 2D Swin (BEiT-style ``encoder.`` prefix, fc_norm) at the tiny size."""
    generator = torch.Generator().manual_seed(5)
    state = {
        "encoder.patch_embed.proj.weight": torch.randn(32, 3, 4, 4, generator=generator),
        "encoder.patch_embed.proj.bias": torch.randn(32, generator=generator),
        "encoder.patch_embed.norm.weight": torch.randn(32, generator=generator),
        "encoder.patch_embed.norm.bias": torch.randn(32, generator=generator),
        "encoder.fc_norm.weight": torch.randn(256, generator=generator),
        "encoder.fc_norm.bias": torch.randn(256, generator=generator),
    }
    for key, shape in official_keys(**TINY, pretrain=False).items():
        if key.startswith("backbone.layers"):
            name = "encoder." + key[len("backbone.") :]
            if name.endswith("relative_position_bias_table"):
                state[name] = torch.randn(table_side**2, shape[1], generator=generator)
            elif name.endswith("relative_position_index"):
                state[name] = torch.zeros(49, 49, dtype=torch.long)
            else:
                state[name] = torch.randn(shape, generator=generator)
    state["encoder.layers.0.blocks.0.attn_mask"] = torch.zeros(4, 16, 16)
    return {"model": state}


def test_inflate_2d_checkpoint_shapes_and_values():
    source = swin_2d_checkpoint()["model"]
    inflated = inflate_2d_checkpoint({"module." + k: v for k, v in source.items()}, window_size=(4, 4, 4))
    assert not any(k.endswith(("relative_position_index", "attn_mask")) for k in inflated)
    assert not any(k.startswith("fc_norm") for k in inflated)
    assert torch.equal(inflated["norm.weight"], source["encoder.fc_norm.weight"])
    w2d = source["encoder.patch_embed.proj.weight"]
    assert torch.equal(inflated["patch_embed_2d.proj.weight"], w2d)
    assert torch.equal(inflated["patch_embed_2d.norm.bias"], source["encoder.patch_embed.norm.bias"])
    assert inflated["patch_embed.proj.weight"].shape == (32, 3, 2, 4, 4)
    torch.testing.assert_close(inflated["patch_embed.proj.weight"].sum(2), w2d)
    table_2d = source["encoder.layers.3.blocks.0.attn.relative_position_bias_table"]
    table = inflated["layers.3.blocks.0.attn.relative_position_bias_table"]
    assert table.shape == (7 * 49, 8)
    blocks = table.view(7, 49, 8)
    assert torch.equal(blocks[3], table_2d)  # dd = 0: the slice the image path reads
    assert all(torch.equal(block, table_2d) for block in blocks)


def test_inflate_resizes_other_2d_windows():
    source = swin_2d_checkpoint(table_side=11)["model"]  # a window-6 2D model
    inflated = inflate_2d_checkpoint(source, window_size=(4, 4, 4))
    table = inflated["layers.0.blocks.0.attn.relative_position_bias_table"]
    assert table.shape == (7 * 49, 1)
    constant = {k: (torch.full_like(v, 0.25) if k.endswith("bias_table") else v) for k, v in source.items()}
    table = inflate_2d_checkpoint(constant, window_size=(4, 4, 4))[
        "layers.0.blocks.0.attn.relative_position_bias_table"
    ]
    torch.testing.assert_close(table, torch.full_like(table, 0.25))


def test_load_2d_checkpoint_is_detected_and_static_clip_embeds_like_image():
    model = build_model("bevt-tiny").eval()
    result = load_checkpoint(model, swin_2d_checkpoint(), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == {
        f"backbone.{m}.{p}"
        for m in ("lm_down", "fpn.0", "lm_down_st.0", "fpn_s.0", "fpn_t.0")
        for p in ("weight", "bias")
    } | {"backbone.mask_token", "cls_head.lm_head.weight", "cls_head.lm_head.bias"}
    image = torch.randn(1, 3, 64, 64)
    clip = image.unsqueeze(2).expand(1, 3, 8, 64, 64)
    with torch.no_grad():
        video_tokens = model.backbone.embed(clip, None)
        image_tokens = model.backbone.embed(image, None)
    torch.testing.assert_close(video_tokens, image_tokens.expand_as(video_tokens), atol=1e-5, rtol=1e-5)


def test_save_and_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = build_model("bevt-tiny")
    uri = tmp_path / "ckpt" / "latest.pth"
    save_checkpoint(torch.compile(model), uri, extra={"step": 12})
    payload = torch.load(uri, map_location="cpu", weights_only=True)
    assert set(payload) == {"state_dict", "meta", "step"} and payload["step"] == 12
    assert payload["meta"]["model"] == "BEVTPretrainModel"
    assert payload["meta"]["config"]["swin"]["window_size"] == (4, 4, 4)
    assert set(payload["state_dict"]) == set(official_keys(**TINY, pretrain=True, vocab=256))
    fresh = build_model("bevt-tiny")
    load_checkpoint(fresh, str(uri), strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with pytest.raises(ValueError):
        save_checkpoint(model, tmp_path / "x.pth", extra={"state_dict": {}})
    assert not (tmp_path / "x.pth").exists()


def test_swin_b_official_checkpoint_loads_strictly(tmp_path):
    shapes = official_keys(128, (2, 2, 18, 2), (4, 8, 16, 32), (8, 7, 7), pretrain=True) | dalle_keys()
    state = {k: torch.zeros(s, dtype=torch.long) if k.endswith("index") else torch.empty(s) for k, s in shapes.items()}
    model = build_model("bevt-swin-b")
    assert load_checkpoint(model, {"state_dict": state}, strict=True) == ([], [])
    finetune = build_model("ssv2-swin-b")
    result = load_checkpoint(finetune, {"state_dict": state}, strict=False)
    assert result.missing_keys == ["cls_head.fc_cls.weight", "cls_head.fc_cls.bias"]
    assert finetune.backbone.layers[0].blocks[0].attn.relative_position_bias_table.shape == (5239, 4)


def test_inflated_trunk_cannot_tell_a_clip_from_its_time_reversal():
    """The official inflation (kernel split evenly over the tubelet, one 2D bias for every temporal
    offset) makes the trunk's pooled features exactly invariant to playing the clip backwards; a
    random 3D init is not. Pretraining and finetuning have to break that symmetry to see direction."""
    clip = torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(0))

    def reversal_change(model) -> float:
        with torch.no_grad():
            forward, backward = (model.backbone(x).mean((2, 3, 4)) for x in (clip, clip.flip(2)))
        return ((forward - backward).norm() / forward.norm()).item()

    inflated = build_model("recognizer-tiny").eval()
    load_checkpoint(inflated, swin_2d_checkpoint(), strict=False)
    assert reversal_change(inflated) < 1e-5
    assert reversal_change(build_model("recognizer-tiny").eval()) > 0.05
