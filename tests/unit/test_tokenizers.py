"""Tokenizers: DALL-E parity with the dall_e package, safe loading, the fitted codebook."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from dall_e import map_pixels
from dall_e.encoder import Encoder

from bevt_core.tokenizers.base import PinMismatch, tokenizer_input
from bevt_core.tokenizers.codebook import FEATURES, CodebookTokenizer, codebook_bytes, fit_codebook, patch_features
from bevt_core.tokenizers.dalle import DalleTokenizer, WeightsError, load_encoder


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A randomly initialised DALL-E encoder saved the way encoder.pkl was (the module, pickled);
    narrower than the real one (n_hid 64, vocab 512) to keep the test fast."""
    torch.manual_seed(0)
    enc = Encoder(n_hid=64, vocab_size=512)
    path = tmp_path_factory.mktemp("dalle") / "encoder.pkl"
    torch.save(enc, path)
    return path, enc


@pytest.fixture(scope="module")
def crops():
    """Real-looking input: smooth gradients plus noise, so logits are not degenerate."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    base = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1)
    return np.stack(
        [
            np.clip(base[::s, ::s].repeat(s, 0).repeat(s, 1)[:64, :64] + rng.normal(0, 30, (64, 64, 3)), 0, 255).astype(
                np.uint8
            )
            for s in (1, 2, 1, 3, 2, 1)
        ]
    )


def test_dalle_ids_equal_the_packages_forward_and_argmax(encoder_file, crops):
    path, enc = encoder_file
    tok = DalleTokenizer.load(str(path), device="cpu", batch_size=4)
    ids = tok.tokenize(crops)
    assert ids.shape == (6, 4, 4) and ids.dtype == np.uint16 and tok.vocab_size == 512
    x = torch.from_numpy(tokenizer_input(crops)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = enc(map_pixels(x)).argmax(1).numpy()
    assert np.array_equal(ids, want)
    assert len(np.unique(ids)) > 5
    assert tok.identity()["name"] == "dalle" and len(tok.identity()["sha256"]) == 64


def test_dalle_bf16_mostly_agrees_with_fp32(encoder_file, crops):
    path, _ = encoder_file
    fp32 = DalleTokenizer.load(str(path), device="cpu").tokenize(crops)
    bf16 = DalleTokenizer.load(str(path), device="cpu", precision="bf16").tokenize(crops)
    assert (fp32 == bf16).mean() > 0.7  # equal except at near-ties


def test_pinned_sha256(encoder_file):
    path, _ = encoder_file
    _, digest = load_encoder(str(path))
    load_encoder(str(path), digest.upper())
    with pytest.raises(PinMismatch, match=f"has SHA-256 {digest}, not the pinned 0+: refusing"):
        load_encoder(str(path), "0" * 64)


def test_a_class_outside_the_allow_list_is_refused(tmp_path):
    torch.save(torch.nn.Linear(3, 3), tmp_path / "linear.pkl")
    with pytest.raises(WeightsError, match="torch.nn.modules.linear.Linear, which is not on the allow-list"):
        load_encoder(str(tmp_path / "linear.pkl"))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "x": _Exploit(marker)}, tmp_path / "evil.pkl")
    with pytest.raises(WeightsError, match="system, which is not on the allow-list"):
        load_encoder(str(tmp_path / "evil.pkl"))
    assert not marker.exists()
    with open(tmp_path / "plain.pkl", "wb") as f:  # not even a torch file
        pickle.dump(_Exploit(marker), f)
    with pytest.raises(WeightsError, match="cannot be loaded without running code from it"):
        load_encoder(str(tmp_path / "plain.pkl"))
    assert not marker.exists()


def _patch_world(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizer inputs made of 8x8 patches drawn from 6 fixed random prototypes (+ small noise)."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(99).integers(30, 220, (6, 8, 8, 3))
    which = rng.integers(0, 6, (n, 4, 4))
    img = protos[which] + rng.integers(-3, 4, (n, 4, 4, 8, 8, 3))
    return np.clip(img, 0, 255).astype(np.uint8).transpose(0, 1, 3, 2, 4, 5).reshape(n, 32, 32, 3), which


def test_codebook_recovers_patch_clusters_and_is_exact():
    small, which = _patch_world(0, 60)
    feats = patch_features(small)
    assert feats.shape == (60, 4, 4, FEATURES) and feats.dtype == np.int32
    centroids = fit_codebook(feats.reshape(-1, FEATURES), 6, 10, seed=0, device="cpu")
    tok = CodebookTokenizer.from_centroids(centroids, device="cpu", batch_size=7)
    ids = tok.encode(small)
    # One id per prototype: the clustering matches the ground truth up to renaming.
    pairs = set(zip(which.ravel().tolist(), ids.ravel().tolist()))
    assert len(pairs) == 6 and len({a for a, _ in pairs}) == 6 and len({b for _, b in pairs}) == 6
    # Exact integer distances: any batching gives the same ids.
    one_by_one = np.concatenate([tok.encode(small[i : i + 1]) for i in range(len(small))])
    assert np.array_equal(one_by_one, ids)


def test_codebook_fit_is_deterministic_from_the_seed_and_the_artifact_is_safe(tmp_path):
    small, _ = _patch_world(1, 40)
    feats = patch_features(small).reshape(-1, FEATURES)
    a = fit_codebook(feats, 16, 5, seed=3, device="cpu")
    assert np.array_equal(a, fit_codebook(feats, 16, 5, seed=3, device="cpu"))
    assert not np.array_equal(a, fit_codebook(feats, 16, 5, seed=4, device="cpu"))
    assert codebook_bytes(a) == codebook_bytes(a.copy())
    (tmp_path / "cb.npz").write_bytes(codebook_bytes(a))
    with np.load(tmp_path / "cb.npz", allow_pickle=False) as z:
        assert np.array_equal(z["centroids"], a)
    tok = CodebookTokenizer.load(str(tmp_path / "cb.npz"), device="cpu")
    assert tok.sha256 == CodebookTokenizer.from_centroids(a).sha256 and tok.vocab_size == 16
    with pytest.raises(PinMismatch, match="not the pinned"):
        CodebookTokenizer.load(str(tmp_path / "cb.npz"), "f" * 64)
    with pytest.raises(ValueError, match="cannot fit a codebook of 5000"):
        fit_codebook(feats, 5000, 1, seed=0)


def test_both_tokenizers_give_a_crop_over_16_grid(encoder_file):
    path, _ = encoder_file
    crops = np.random.default_rng(5).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    centroids = np.random.default_rng(0).integers(-50, 50, (8, FEATURES)).astype(np.int32)
    for tok in (DalleTokenizer.load(str(path), device="cpu"), CodebookTokenizer.from_centroids(centroids)):
        ids = tok.tokenize(crops)
        assert ids.shape == (3, 6, 6) and ids.dtype == np.uint16 and ids.max() < tok.vocab_size
    with pytest.raises(ValueError, match="not a multiple of 16"):
        tok.tokenize(crops[:, :40, :40])


def test_dalle_precision_defaults_to_the_official_fp16_on_gpus(encoder_file):
    from bevt_core.tokenizers.dalle import default_precision

    assert default_precision(torch.device("cuda", 0)) == "fp16" and default_precision(torch.device("cpu")) == "fp32"
    path, _ = encoder_file
    tokenizer = DalleTokenizer.load(str(path), device="cpu")
    assert tokenizer.precision == "fp32" and tokenizer.identity()["precision"] == "fp32"
