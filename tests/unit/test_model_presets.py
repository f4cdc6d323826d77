"""Presets: every one builds with the right output shape; Swin-B parameter counts match
docs/official-behaviour.md §1.1.

Full-size models are built and run on the meta device: shapes and counts without any compute.
"""

import pytest
import torch

from bevt_core.models import PRESETS, BEVTPretrainModel, PretrainConfig, Recognizer3D, build_model, preset_config


def millions(module: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_output_shape(preset):
    config = PRESETS[preset]
    tiny = preset.endswith("tiny")
    device = torch.device("cpu" if tiny else "meta")
    with device:
        model = build_model(preset).eval()
        size, frames = config.image_size, config.num_frames
        with torch.no_grad():
            if isinstance(config, PretrainConfig):
                grid = config.mask_grid
                clip_mask = torch.zeros(1, frames // 2, grid, grid, dtype=torch.bool)
                image_mask = torch.zeros(1, grid, grid, dtype=torch.bool)
                clip_logits = model.token_logits(torch.zeros(1, 3, frames, size, size), clip_mask)
                image_logits = model.token_logits(torch.zeros(1, 3, size, size), image_mask)
                assert clip_logits.shape == (1, frames * grid * grid, config.vocab_size)
                assert image_logits.shape == (1, grid * grid, config.vocab_size)
            else:
                assert model(torch.zeros(1, 3, frames, size, size)).shape == (1, config.num_classes)


def test_swin_b_parameter_counts():
    with torch.device("meta"):
        k400, ssv2, bevt = build_model("k400-swin-b"), build_model("ssv2-swin-b"), build_model("bevt-swin-b")
    assert millions(k400) == 88.05
    assert millions(ssv2) == 88.83
    assert millions(bevt) == 109.68
    backbone = bevt.backbone
    decoders = [backbone.lm_down, backbone.fpn, backbone.lm_down_st, backbone.fpn_s, backbone.fpn_t]
    # The spec's trunk is the finetuning backbone; the image patch embedding and mask token add 0.0068M.
    assert millions(k400.backbone) == 87.64
    assert round(sum(millions(m) for m in decoders), 2) == 13.64
    assert millions(bevt.cls_head) == 8.40


def test_preset_choices():
    ssv2 = PRESETS["ssv2-swin-b"]
    assert ssv2.swin.window_size == (16, 7, 7) and ssv2.swin.drop_path_rate == 0.4
    assert ssv2.num_classes == 174 and ssv2.pretrained_window_size == (8, 7, 7)
    assert PRESETS["diving48-swin-b"].num_classes == 48
    assert PRESETS["bevt-swin-b"].vocab_size == 8192 and PRESETS["bevt-swin-b"].swin.window_size == (8, 7, 7)
    assert PRESETS["k400-swin-t"].swin.depths == (2, 2, 6, 2)


def test_overrides_are_routed_and_validated():
    config = preset_config("k400-swin-b", embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], num_classes=5)
    assert config.swin.embed_dim == 96 and config.swin.depths == (2, 2, 6, 2) and config.num_classes == 5
    model = build_model("bevt-tiny", vocab_size=17, image_mask_quirk=False)
    assert isinstance(model, BEVTPretrainModel) and model.cls_head.lm_head.out_features == 17
    assert not model.backbone.layers[0].image_mask_quirk
    assert isinstance(build_model("recognizer-tiny"), Recognizer3D)
    with pytest.raises(ValueError, match="no field"):
        preset_config("k400-swin-b", vocab_size=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("k400-swin-x")
    with pytest.raises(ValueError, match="num_heads"):
        preset_config("k400-swin-b", num_heads=(3, 8, 16, 32))
    with pytest.raises(ValueError, match="attn_impl"):
        preset_config("k400-swin-b", attn_impl="flash")
