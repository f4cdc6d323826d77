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
