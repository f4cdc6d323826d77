"""BEVT pretraining model: mask token, decoders, shared head, per-stream masked losses."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bevt_core.masking import BlockMaskGenerator, TubeMaskGenerator
from bevt_core.models import BEVTPretrainModel, build_model

VOCAB = 256  # bevt-tiny
G = 4  # 64 px / 16


def batch(seed: int = 0, clips: int = 2, images: int = 2):
    """A joint batch at the tiny preset's size with masks from the real generators."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    tube = TubeMaskGenerator(num_frames=8, block=BlockMaskGenerator.scaled(G))
    block = tube.block
    tubes = [tube(rng) for _ in range(clips)]
    video = (
        torch.randn(clips, 3, 8, 64, 64, generator=generator),
        torch.from_numpy(np.stack([t[0] for t in tubes])),
        torch.from_numpy(np.stack([t[1] for t in tubes])),
        torch.randint(0, VOCAB, (clips, 8, G, G), generator=generator),
    )
    image = (
        torch.randn(images, 3, 64, 64, generator=generator),
        torch.from_numpy(np.stack([block(rng) for _ in range(images)])),
        torch.randint(0, VOCAB, (images, G, G), generator=generator),
    )
    return video, image


@pytest.fixture(scope="module")
def model() -> BEVTPretrainModel:
    torch.manual_seed(0)
    return build_model("bevt-tiny", drop_path_rate=0.0).eval()


def test_token_logits_shapes(model):
    video, image = batch()
    with torch.no_grad():
        assert model.token_logits(video[0], video[1]).shape == (2, 8 * G * G, VOCAB)
        assert model.token_logits(image[0], image[1]).shape == (2, G * G, VOCAB)
        assert model.token_logits(image[0]).shape == (2, G * G, VOCAB)


def test_mask_token_covers_4x4_patches_and_2_frames(model):
    backbone = model.backbone
    clip = torch.randn(1, 3, 8, 64, 64)
    mask = torch.zeros(1, 4, G, G, dtype=torch.bool)
    mask[0, 1, 2, 3] = True
    with torch.no_grad():
        plain, masked = backbone.embed(clip, None), backbone.embed(clip, mask)
    changed = (plain != masked).any(-1)[0]
    expected = torch.zeros(4, 16, 16, dtype=torch.bool)
    expected[1, 8:12, 12:16] = True  # one token step = 2 frames; one cell = 4x4 patch tokens
    assert torch.equal(changed, expected)
    assert torch.equal(masked[0, 1, 8, 12], backbone.mask_token[0, 0])
    image_mask = torch.zeros(1, G, G, dtype=torch.bool)
    image_mask[0, 0, 1] = True
    with torch.no_grad():
        image_tokens = backbone.embed(torch.randn(1, 3, 64, 64), image_mask)
    assert image_tokens.shape == (1, 1, 16, 16, 32)
    assert torch.equal(image_tokens[0, 0, :4, 4:8], backbone.mask_token[0, 0].expand(4, 4, 32))
    # One mask token serves both streams.
    assert sum(1 for name, _ in model.named_parameters() if "mask_token" in name) == 1


def test_loss_is_masked_cross_entropy_per_stream(model):
    video, image = batch()
    with torch.no_grad():
        out = model.loss(video=video, image=image)
        logits_v = model.token_logits(video[0], video[1])
        logits_i = model.token_logits(image[0], image[1])
    out_mask = video[2].flatten(1)
    expected_v = F.cross_entropy(logits_v[out_mask], video[3].flatten(1)[out_mask])
    expected_i = F.cross_entropy(logits_i[image[1].flatten(1)], image[2].flatten(1)[image[1].flatten(1)])
    torch.testing.assert_close(out["loss_video"], expected_v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss_image"], expected_i, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss"], expected_v + expected_i, atol=1e-5, rtol=1e-5)
    acc = (logits_v[out_mask].argmax(-1) == video[3].flatten(1)[out_mask]).float().mean()
    torch.testing.assert_close(out["acc_video"], acc)
    assert set(out) == {"loss", "loss_video", "loss_image", "acc_video", "acc_image"}


def test_unmasked_targets_do_not_matter(model):
    video, _ = batch()
    other_ids = torch.where(video[2], video[3], (video[3] + 1) % VOCAB)
    with torch.no_grad():
        a = model.loss(video=video)["loss"]
        b = model.loss(video=(video[0], video[1], video[2], other_ids))["loss"]
    torch.testing.assert_close(a, b)


def test_single_stream_and_weights():
    torch.manual_seed(0)
    weighted = build_model("bevt-tiny", drop_path_rate=0.0, loss_weight_video=0.5, loss_weight_image=2.0).eval()
    video, image = batch()
    with torch.no_grad():
        both = weighted.loss(video=video, image=image)
        only_image = weighted(image=image)
    assert set(only_image) == {"loss", "loss_image", "acc_image"}
    torch.testing.assert_close(both["loss"], 0.5 * both["loss_video"] + 2.0 * both["loss_image"])
    torch.testing.assert_close(only_image["loss_image"], both["loss_image"])
    with pytest.raises(ValueError):
        weighted.loss()


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model("bevt-tiny", drop_path_rate=0.0)
    video, image = batch(seed=3, clips=1, images=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        out = model(video=video, image=image)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[0] > 2 * 5.0  # two streams at ~ln(256) each
    assert losses[-1] < 0.05 * losses[0]
    assert out["acc_video"] > 0.5 and out["acc_image"] > 0.5
