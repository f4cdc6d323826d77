"""The tokenize stage and the target loader on real sample shards, locally and on S3.

The invariant (DESIGN §3): for any training sample the loader produces, running the tokenizer
on the replayed crop gives exactly the ids stored for it.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from dall_e.encoder import Encoder
from torch.utils.data import DataLoader

from bevt_core import storage
from bevt_core.config import ConfigError
from bevt_core.data.loader import read_sample
from bevt_core.data.manifest import load_manifest
from bevt_core.data.token_format import load_tokens
from bevt_core.data.views import Augment, sample_views
from bevt_core.loading.targets import TokenTargets, collate, normalize, tokenizer_of
from bevt_core.stages.shard import ShardConfig
from bevt_core.stages.shard import run as shard
from bevt_core.stages.tokenize import TokenizeConfig, run
from tests.conftest import bevt_cli
from tests.services import kill_mid_job

CROP, VIEWS = 48, 3


def first_lines(src: Path, n: int, dest: Path) -> Path:
    dest.write_text("\n".join(src.read_text().splitlines()[:n]) + "\n")
    return dest


@pytest.fixture(scope="module")
def inputs(samples, tmp_path_factory):
    """Local data shards of a few real clips (8 stored frames each) and photos, plus a DALL-E
    encoder with random weights saved like the official encoder.pkl."""
    root = tmp_path_factory.mktemp("tokenize")
    task = samples.camera_motion
    videos = first_lines(task.train_list, 6, root / "videos.txt")
    images = first_lines(samples.images_list, 7, root / "images.txt")
    shard(
        ShardConfig(
            input=str(videos),
            root=str(task.root),
            output=str(root / "video"),
            frame_interval=4,
            short_side=64,
            samples_per_shard=2,
            progress=False,
            workers=1,
        )
    )
    shard(
        ShardConfig(
            input=str(images),
            root=str(samples.images_root),
            modality="image",
            output=str(root / "image"),
            short_side=64,
            samples_per_shard=3,
            progress=False,
            workers=1,
        )
    )
    torch.manual_seed(0)
    torch.save(Encoder(n_hid=64, vocab_size=512), root / "encoder.pkl")
    return {
        "root": root,
        "video": str(root / "video"),
        "image": str(root / "image"),
        "weights": str(root / "encoder.pkl"),
        "videos_list": videos,
        "images_list": images,
    }


def tokenizer_args(kind: str, inputs: dict) -> dict:
    if kind == "dalle":
        return {"tokenizer": "dalle", "weights": inputs["weights"]}
    return {"tokenizer": "codebook", "codebook_size": 32, "fit_samples": 4, "fit_iters": 5}


def check_invariant(data: str, tokens: str, clip_len: int = 4, interval: int = 8, video: bool = True) -> int:
    """Stored targets == the tokenizer run online on the loader's replayed crops; returns ids checked."""
    stored = TokenTargets(data, tokens, clip_len=clip_len, frame_interval=interval, shuffle=True, seed=5)
    online = TokenTargets(data, tokens, clip_len=clip_len, frame_interval=interval, shuffle=True, seed=5, mode="replay")
    tok = tokenizer_of(online.tokens, device="cpu")
    checked = 0
    for s, o in zip(stored, online, strict=True):
        assert (s.key, s.view) == (o.key, o.view)  # same seed: the same draws
        crops = o.target.numpy()
        assert torch.equal(s.clip, normalize(crops)) and torch.equal(o.clip, s.clip)
        if video:
            assert s.clip.shape == (3, clip_len, CROP, CROP) and s.target.shape == (clip_len, 3, 3)
            ids = tok.tokenize(crops)
        else:
            assert s.clip.shape == (3, CROP, CROP) and s.target.shape == (3, 3)
            ids = tok.tokenize(crops[None])[0]
        assert s.target.dtype == torch.int64
        assert np.array_equal(ids.astype(np.int64), s.target.numpy()), s.key
        checked += ids.size
    return checked


@pytest.mark.parametrize("kind", ["codebook", "dalle"])
@pytest.mark.parametrize("modality", ["video", "image"])
def test_online_tokens_equal_stored_tokens(inputs, tmp_path, kind, modality):
    out = str(tmp_path / "tokens")
    result = run(
        TokenizeConfig(
            input=inputs[modality], output=out, views=VIEWS, crop=CROP, progress=False, **tokenizer_args(kind, inputs)
        )
    )
    n = len(load_manifest(inputs[modality]))
    assert result.samples == n and result.resumed_shards == 0
    assert result.frames == VIEWS * (n * 8 if modality == "video" else n)
    assert check_invariant(inputs[modality], out, video=modality == "video") > 0


def test_short_videos_wrap_around_like_sample_frames(inputs, tmp_path):
    out = str(tmp_path / "tokens")
    run(
        TokenizeConfig(
            input=inputs["video"], output=out, views=2, crop=CROP, progress=False, **tokenizer_args("codebook", inputs)
        )
    )
    # Shards keep every 4th frame, 8 of them: a 5 x 12 = 60-frame span over the 32 frames they cover starts at 0
    # and wraps, every 12th frame of the video being every 3rd stored one.
    assert check_invariant(inputs["video"], out, clip_len=5, interval=12) > 0
    ds = TokenTargets(inputs["video"], out, clip_len=5, frame_interval=12, seed=1)
    tokens = load_tokens(out)
    for s in ds:
        stored = np.load(io.BytesIO(_member(out, tokens.by_key[s.key], "tokens.npy")))
        views = tokens.by_key[s.key]["views"]
        matches = [
            v
            for v in range(views)
            for start in range(8)
            if np.array_equal(stored[v, (start + np.arange(5) * 3) % 8], s.target)
        ]
        assert matches, f"{s.key}: target is not a wrapped window of a stored view"


def _member(root: str, row: dict, ext: str) -> bytes:
    buf = storage.read_range(storage.join(root, row["shard"]), row["offset"], row["offset"] + row["bytes"])
    with tarfile.open(fileobj=io.BytesIO(buf + b"\0" * 1024)) as t:
        return t.extractfile(f"{row['key']}.{ext}").read()


def test_token_shards_mirror_the_data_shards(inputs, tmp_path):
    out = tmp_path / "tokens"
    run(
        TokenizeConfig(
            input=inputs["video"],
            output=str(out),
            views=VIEWS,
            crop=CROP,
            seed=3,
            progress=False,
            **tokenizer_args("codebook", inputs),
        )
    )
    data = load_manifest(inputs["video"])
    tokens = load_tokens(str(out))
    assert sorted(p.name for p in out.glob("*.tar")) == sorted({r["shard"] for r in data.rows})
    for shard_name in sorted({r["shard"] for r in data.rows}):
        with tarfile.open(out / shard_name) as t:
            names = t.getnames()
        keys = [r["key"] for r in data.rows if r["shard"] == shard_name]
        assert names == [f"{k}.{ext}" for k in keys for ext in ("tokens.npy", "views.json")]
    record = json.loads((out / "tokenizer.json").read_text())
    assert record["tokenizer"]["name"] == "codebook" and record["grid"] == 3 and record["views"] == VIEWS
    assert record["tokenizer"]["sha256"] == hashlib.sha256((out / "codebook.npz").read_bytes()).hexdigest()
    aug = Augment(crop=CROP, seed=3)
    for row in data.rows:
        ids = np.load(io.BytesIO(_member(str(out), tokens.by_key[row["key"]], "tokens.npy")), allow_pickle=False)
        assert ids.dtype == np.uint16 and ids.shape == (VIEWS, row["frames"], 3, 3)
        assert ids.max() < 32
        views = json.loads(_member(str(out), tokens.by_key[row["key"]], "views.json"))
        # Anyone can recompute the views from (seed, key, index) and the stored frame size.
        assert views == [
            v.to_dict() | {"jitter": []}
            for v in sample_views(aug, row["key"], VIEWS, row["stored_height"], row["stored_width"], color=False)
        ]
    sample = read_sample(data, data.rows[0])
    assert len(sample.jpegs) == tokens.by_key[data.rows[0]["key"]]["frames"]
    # Fitting is deterministic from the seed: a second run makes the very same codebook and tokens.
    again = tmp_path / "again"
    run(
        TokenizeConfig(
            input=inputs["video"],
            output=str(again),
            views=VIEWS,
            crop=CROP,
            seed=3,
            progress=False,
            **tokenizer_args("codebook", inputs),
        )
    )
    assert (again / "codebook.npz").read_bytes() == (out / "codebook.npz").read_bytes()
    assert all((again / p.name).read_bytes() == p.read_bytes() for p in out.glob("*.tar"))


def test_loader_reads_each_sample_once_across_ranks_and_workers(inputs, tmp_path):
    out = str(tmp_path / "tokens")
    run(
        TokenizeConfig(
            input=inputs["image"], output=out, views=2, crop=CROP, progress=False, **tokenizer_args("codebook", inputs)
        )
    )
    keys = []
    for rank in range(2):
        ds = TokenTargets(inputs["image"], out, shuffle=True, seed=2, rank=rank, world_size=2)
        for batch in DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate):
            assert batch["clip"].shape[1:] == (3, CROP, CROP) and batch["target"].shape[1:] == (3, 3)
            keys.extend(batch["keys"])
    assert sorted(keys) == sorted(r["key"] for r in load_manifest(inputs["image"]).rows)


def test_loader_refuses_tokens_of_other_data(inputs, tmp_path):
    out = str(tmp_path / "tokens")
    run(
        TokenizeConfig(
            input=inputs["image"], output=out, views=1, crop=CROP, progress=False, **tokenizer_args("codebook", inputs)
        )
    )
    with pytest.raises(ValueError, match="has no tokens for 6 samples"):
        TokenTargets(inputs["video"], out)
    with pytest.raises(FileNotFoundError, match="not a token directory"):
        TokenTargets(inputs["video"], str(tmp_path))


def test_from_and_to_s3(inputs, s3, tmp_path, samples):
    prefix = "s3://bevt-test/tokenize"
    shard(
        ShardConfig(
            input=str(inputs["videos_list"]),
            root=str(samples.camera_motion.root),
            output=f"{prefix}/video",
            frame_interval=4,
            short_side=64,
            samples_per_shard=2,
            progress=False,
            workers=1,
        )
    )
    shard(
        ShardConfig(
            input=str(inputs["images_list"]),
            root=str(samples.images_root),
            modality="image",
            output=f"{prefix}/image",
            short_side=64,
            samples_per_shard=3,
            progress=False,
            workers=1,
        )
    )
    weights = f"{prefix}/encoder.pkl"
    storage.write_bytes(weights, Path(inputs["weights"]).read_bytes())
    digest = hashlib.sha256(Path(inputs["weights"]).read_bytes()).hexdigest()
    for modality in ("video", "image"):
        out = f"{prefix}/{modality}-tokens"
        cfg = dict(views=VIEWS, crop=CROP, progress=False, tokenizer="dalle", sha256=digest)
        run(TokenizeConfig(input=f"{prefix}/{modality}", output=out, weights=weights, **cfg))
        assert check_invariant(f"{prefix}/{modality}", out, video=modality == "video") > 0
        # The same data and settings give the same token bytes whether stored locally or on S3.
        local = tmp_path / f"{modality}-tokens"
        run(TokenizeConfig(input=inputs[modality], output=str(local), weights=inputs["weights"], **cfg))
        for tar in sorted(local.glob("*.tar")):
            assert storage.read_bytes(f"{out}/{tar.name}") == tar.read_bytes()
    with pytest.raises(ConfigError, match="^sha256: .* not the pinned"):
        run(
            TokenizeConfig(
                input=f"{prefix}/image", output=str(tmp_path / "x"), weights=weights, sha256="a" * 64, progress=False
            )
        )


def tokenize_cmd(data: str, weights: str, out: Path) -> list[str]:
    return bevt_cli() + [
        "tokenize",
        "--input",
        data,
        "--output",
        str(out),
        "--tokenizer",
        "dalle",
        "--weights",
        weights,
        "--views",
        "2",
        "--crop",
        "64",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--no-progress",
    ]


def test_sigkill_then_rerun_equals_uninterrupted(samples, inputs, tmp_path, cli_env):
    task = samples.camera_motion
    data = tmp_path / "data"
    listing = first_lines(task.train_list, 24, tmp_path / "list.txt")
    shard(
        ShardConfig(
            input=str(listing),
            root=str(task.root),
            output=str(data),
            frame_interval=4,
            short_side=64,
            samples_per_shard=3,
            progress=False,
            workers=1,
        )
    )
    ref = tmp_path / "ref"
    subprocess.run(tokenize_cmd(str(data), inputs["weights"], ref), check=True, capture_output=True, env=cli_env)

    out = tmp_path / "killed"
    finished = kill_mid_job(tokenize_cmd(str(data), inputs["weights"], out), out, cli_env)
    assert 2 <= finished < len(list((ref / "_parts").glob("shard-*.parquet")))

    rerun = subprocess.run(
        tokenize_cmd(str(data), inputs["weights"], out), check=True, capture_output=True, text=True, env=cli_env
    )
    assert "reused from an earlier run" in rerun.stdout
    assert not list(out.glob(".*.tmp-*")), "temporaries of the killed run are cleaned up"
    assert pq.read_table(out / "manifest.parquet").equals(pq.read_table(ref / "manifest.parquet"))

    def tars(folder):
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}

    assert tars(out) == tars(ref) and len(tars(ref)) == 8
    assert (out / "tokenizer.json").read_bytes() == (ref / "tokenizer.json").read_bytes()
    keys = pq.read_table(out / "manifest.parquet").column("key").to_pylist()
    assert keys == [r["key"] for r in load_manifest(str(data)).rows]


def test_changed_settings_or_weights_on_the_same_output_are_refused(inputs, tmp_path):
    cfg = dict(
        input=inputs["image"],
        output=str(tmp_path / "out"),
        views=2,
        crop=CROP,
        progress=False,
        tokenizer="dalle",
        weights=inputs["weights"],
    )
    run(TokenizeConfig(**cfg))
    with pytest.raises(ConfigError, match="^views:"):
        run(TokenizeConfig(**{**cfg, "views": 3}))
    torch.manual_seed(1)
    other = tmp_path / "other.pkl"
    torch.save(Encoder(n_hid=64, vocab_size=512), other)
    with pytest.raises(ConfigError, match="^weights: .* tokenizer of SHA-256"):
        run(TokenizeConfig(**{**cfg, "weights": str(other)}))


def test_cli_help_documents_every_option():
    from dataclasses import fields

    out = subprocess.run(bevt_cli() + ["tokenize", "--help"], capture_output=True, text=True, check=True).stdout
    for f in fields(TokenizeConfig):
        assert "--" + f.name.replace("_", "-") in out
    assert "--print-config" in out and "Choices: dalle, codebook" in out


@pytest.mark.parametrize(
    "args, field",
    [
        (["--tokenizer", "dalle"], "weights"),
        (["--tokenizer", "codebook", "--crop", "100"], "crop"),
        (["--tokenizer", "codebook", "--views", "0"], "views"),
        (["--tokenizer", "codebook", "--precision", "fp8"], "precision"),
        (["--tokenizer", "codebook", "--sha256", "xyz"], "sha256"),
    ],
)
def test_cli_config_errors_name_the_field_before_any_work(tmp_path, inputs, args, field):
    out = tmp_path / "never"
    proc = subprocess.run(
        bevt_cli() + ["tokenize", "--input", inputs["image"], "--output", str(out)] + args,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"bevt tokenize: error: {field}:"), proc.stderr
    assert not out.exists()


def test_cli_refuses_unsafe_weights(tmp_path, inputs):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "linear.pkl")
    proc = subprocess.run(
        bevt_cli()
        + [
            "tokenize",
            "--input",
            inputs["image"],
            "--output",
            str(tmp_path / "o"),
            "--weights",
            str(tmp_path / "linear.pkl"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "error: weights:" in proc.stderr and "not on the allow-list" in proc.stderr


def test_online_mode_draws_a_fresh_augmentation_on_every_read(inputs, tmp_path):
    """As the official pipeline: each epoch a new rescale, crop and flip (and jitter for images), not one of the
    stored views; the draws come from (seed, epoch, reader), so a run that resumes sees the same ones."""
    out = str(tmp_path / "tokens")
    run(
        TokenizeConfig(
            input=inputs["image"], output=out, views=2, crop=CROP, progress=False, **tokenizer_args("codebook", inputs)
        )
    )
    tokens = load_tokens(out)
    stored = {row["key"]: json.loads(_member(out, row, "views.json")) for row in tokens.manifest.rows}
    stream = TokenTargets(inputs["image"], out, clip_len=1, frame_interval=1, seed=3, mode="online")

    def epoch_views(epoch: int) -> dict[str, dict]:
        stream.set_epoch(epoch)
        return {s.key: s.view.to_dict() for s in stream}

    first, second = epoch_views(0), epoch_views(1)
    first_as_stored = {k: json.loads(json.dumps(v)) for k, v in first.items()}
    assert first == epoch_views(0)
    assert sum(first[k] != second[k] for k in first) >= len(first) - 1
    assert sum(first_as_stored[k] in stored[k] for k in first) <= 1
    assert all(v["jitter"] for v in first.values()), "images are colour-jittered"
