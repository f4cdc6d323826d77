"""pretrain-image's 2D checkpoint inflates back into a model whose image path computes the same thing."""

from __future__ import annotations

import torch

from bevt_core.models import build_model, load_checkpoint, save_weights
from bevt_core.stages.pretrain_image import image_checkpoint


def test_image_checkpoint_is_2d_and_inflates_to_the_same_image_predictions(tmp_path):
    torch.manual_seed(0)
    trained = build_model("bevt-tiny", drop_path_rate=0.0).eval()
    with torch.no_grad():  # make every table row distinct, as after training
        for name, p in trained.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn_like(p))
    state = image_checkpoint(trained.state_dict(), trained.config.swin.window_size)
    assert state["backbone.patch_embed.proj.weight"].ndim == 4  # a 2D Swin
    table = state["backbone.layers.0.blocks.0.attn.relative_position_bias_table"]
    assert table.shape[0] == 7 * 7  # (2*4-1)^2 offsets of the (4,4) window
    assert not any(
        k.startswith(("backbone.fpn_s", "backbone.fpn_t", "backbone.lm_down_st", "backbone.patch_embed_2d"))
        for k in state
    )
    save_weights(state, str(tmp_path / "image_encoder.pt"), {"format": "swin-2d"})

    torch.manual_seed(1)
    inflated = build_model("bevt-tiny", drop_path_rate=0.0).eval()
    missing = load_checkpoint(inflated, str(tmp_path / "image_encoder.pt"), strict=False).missing_keys
    assert {k.split(".")[1] for k in missing} == {"fpn_s", "fpn_t", "lm_down_st"}
    image = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 1:3, 1:3] = True
    with torch.no_grad():
        torch.testing.assert_close(inflated.token_logits(image, mask), trained.token_logits(image, mask))


def test_joint_pretraining_takes_only_the_backbone_unless_asked(tmp_path):
    """The official joint stage loads the image checkpoint into the backbone: the token classifier starts fresh."""
    from bevt_core.stages.pretrain_joint import initialise

    torch.manual_seed(0)
    image_stage = build_model("bevt-tiny", drop_path_rate=0.0)
    uri = str(tmp_path / "image_encoder.pt")
    save_weights(image_checkpoint(image_stage.state_dict(), image_stage.config.swin.window_size), uri, {})
    for carry in (False, True):
        torch.manual_seed(1)
        joint = build_model("bevt-tiny", drop_path_rate=0.0)
        fresh = joint.cls_head.lm_head.weight.detach().clone()
        initialise(joint, uri, lm_head=carry, say=lambda text: None)
        expected = image_stage.cls_head.lm_head.weight if carry else fresh
        torch.testing.assert_close(joint.cls_head.lm_head.weight, expected, rtol=0, atol=0)
        torch.testing.assert_close(joint.backbone.mask_token, image_stage.backbone.mask_token, rtol=0, atol=0)


def test_joint_pretraining_starts_from_the_official_image_stream_checkpoint_layout(tmp_path):
    """The released image-stream checkpoint, as the official joint stage reads it (docs/official-behaviour.md
    §1.10, Q1): a 2D Swin-B under ``model``, keys prefixed ``encoder.``, ``fc_norm`` for the final norm, with
    ``relative_position_index`` and ``attn_mask`` buffers; only the backbone is taken, inflated to 3D."""
    from bevt_core.stages.pretrain_joint import initialise

    torch.manual_seed(0)
    image_stream = build_model("bevt-swin-b")
    ours = image_checkpoint(image_stream.state_dict(), image_stream.config.swin.window_size)
    backbone = {k[len("backbone.") :]: v for k, v in ours.items() if k.startswith("backbone.")}
    backbone["fc_norm.weight"], backbone["fc_norm.bias"] = backbone.pop("norm.weight"), backbone.pop("norm.bias")
    released = {"encoder." + k: v for k, v in backbone.items()}
    released["encoder.layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    released["encoder.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    torch.save({"model": released}, tmp_path / "image_stream.pth")

    torch.manual_seed(1)
    joint = build_model("bevt-swin-b")
    fresh_head = joint.cls_head.lm_head.weight.detach().clone()
    initialise(joint, str(tmp_path / "image_stream.pth"), lm_head=False, say=lambda text: None)
    got, want = joint.state_dict(), image_stream.state_dict()
    torch.testing.assert_close(
        got["backbone.layers.2.blocks.5.mlp.fc1.weight"], want["backbone.layers.2.blocks.5.mlp.fc1.weight"]
    )
    torch.testing.assert_close(got["backbone.norm.weight"], want["backbone.norm.weight"])  # from fc_norm
    embed_2d = want["backbone.patch_embed_2d.proj.weight"]
    torch.testing.assert_close(got["backbone.patch_embed_2d.proj.weight"], embed_2d)
    torch.testing.assert_close(got["backbone.patch_embed.proj.weight"], embed_2d[:, :, None].repeat(1, 1, 2, 1, 1) / 2)
    table_2d = ours["backbone.layers.0.blocks.0.attn.relative_position_bias_table"]  # 169 rows
    torch.testing.assert_close(
        got["backbone.layers.0.blocks.0.attn.relative_position_bias_table"], table_2d.repeat(15, 1)
    )
    torch.testing.assert_close(joint.cls_head.lm_head.weight, fresh_head, rtol=0, atol=0)
