"""Recognizer: I3D head and multi-view inference."""

import torch

from bevt_core.models import build_model


def test_forward_and_head_init():
    torch.manual_seed(0)
    model = build_model("recognizer-tiny", num_classes=7)
    clip = torch.randn(2, 3, 8, 64, 64)
    logits = model(clip)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert model.cls_head.fc_cls.weight.grad is not None
    assert torch.all(model.cls_head.fc_cls.bias == 0)
    assert abs(model.cls_head.fc_cls.weight.std().item() - 0.01) < 0.003
    assert model.cls_head.dropout.p == 0.5
    assert model.backbone(clip).shape == (2, 256, 4, 2, 2)  # (B, C, T/2, H/32, W/32)


def test_predict_views_averages_softmax_and_chunking_is_invisible():
    torch.manual_seed(0)
    model = build_model("recognizer-tiny").eval()
    views = torch.randn(2, 3, 3, 8, 64, 64)  # 2 videos x 3 views
    with torch.no_grad():
        per_view = torch.stack([model(views[:, v]).softmax(-1) for v in range(3)], dim=1)
    expected = per_view.mean(1)
    for chunk in (None, 1, 4):
        probs = model.predict_views(views, max_views_per_forward=chunk)
        assert probs.shape == (2, 10)
        torch.testing.assert_close(probs, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


def test_validation_view_is_the_official_resize_and_centre_crop():
    """One clip, short side to 256/224 of the crop, then the centre crop (Resize(-1, 256), CenterCrop(224))."""
    import cv2
    import numpy as np

    from bevt_core.data.decode import decode_jpeg, encode_jpeg
    from bevt_core.data.shard_format import Sample
    from bevt_core.loading.clip_spec import ClipSpec
    from bevt_core.loading.clips import validation_view
    from bevt_core.loading.targets import normalize

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, 48, 80, 3), dtype=np.uint8)
    jpegs = [encode_jpeg(f, 95) for f in frames]
    sample = Sample("k", 0, {"frame_indices": list(range(16)), "num_frames": 16}, jpegs)
    view = validation_view(sample, ClipSpec(clip_len=4, frame_interval=2, sampling="interval", crop=32))
    # The middle clip of 16 frames for a span of 8: starts at int((16 - 8 + 1) / 2) = 4.
    chosen = np.stack([decode_jpeg(jpegs[i]) for i in (4, 6, 8, 10)])
    side = round(32 * 256 / 224)  # 37
    resized = np.stack([cv2.resize(f, (round(80 * side / 48), side), interpolation=cv2.INTER_LINEAR) for f in chosen])
    top, left = (resized.shape[1] - 32) // 2, (resized.shape[2] - 32) // 2
    expected = normalize(resized[:, top : top + 32, left : left + 32])[None]
    assert view.shape == (1, 3, 4, 32, 32)
    torch.testing.assert_close(view, expected)
