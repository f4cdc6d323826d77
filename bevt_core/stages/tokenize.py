"""Stage ``tokenize``: data shards -> token shards of precomputed tokenizer targets.

Each sample gets V augmentation views drawn from (seed, key, view index); every stored frame of
every view is cropped, resized to the tokenizer input and tokenized, and the uint16 ids go to a
token tar with the same name as the data shard, key by key, next to the view parameters. One
data shard is one task: a rerun skips the shards an interrupted run finished, and the manifest,
written last, marks the output complete. The tokenizer is DALL-E (--weights, optionally pinned
with --sha256) or the weight-free codebook, fitted on a seeded sample of the input unless
--codebook gives one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from bevt_core import storage
from bevt_core.config import ConfigError, at_least, between, non_empty, option
from bevt_core.data import jobs
from bevt_core.data.decode import decode_jpeg
from bevt_core.data.loader import read_runs
from bevt_core.data.manifest import MANIFEST, Manifest, load_manifest, read_table, rows_to_parquet
from bevt_core.data.shard_format import ShardWriter
from bevt_core.data.token_format import RECORD, SCHEMA, parse_data, token_members
from bevt_core.data.views import Augment, View, apply_view, sample_views
from bevt_core.tokenizers import CODEBOOK_FILE
from bevt_core.tokenizers.base import CELL, PinMismatch, Tokenizer, grid_size, tokenizer_input
from bevt_core.tracking import stage_report
from bevt_core.tracking.config import TrackingConfig
from bevt_core.tracking.stage_run import stage_run

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass
class TokenizeConfig:
    input: str = option(
        help="Data shard directory written by `bevt shard` (local or s3://); its "
        "manifest.parquet says what to tokenize.",
        check=non_empty,
    )
    output: str = option(
        help="Directory or s3://bucket/prefix for the token tars (one per data shard, same "
        "name), manifest.parquet, tokenizer.json and the codebook.",
        check=non_empty,
    )
    tokenizer: str = option(
        "dalle",
        help="dalle: the official DALL-E dVAE encoder (needs --weights). "
        "codebook: the weight-free k-means patch codebook, fitted on this data unless "
        "--codebook is given.",
        choices=("dalle", "codebook"),
    )
    weights: str = option(
        "",
        help="DALL-E encoder.pkl (the official pickle format; local or s3://). Loaded "
        "without running code: only the classes a DALL-E encoder is made of are allowed.",
    )
    sha256: str = option("", help="Pin the SHA-256 of --weights (or of --codebook): any other file is refused.")
    codebook: str = option("", help="A fitted codebook.npz to use instead of fitting one (tokenizer codebook).")
    codebook_size: int = option(
        1024, help="Codebook entries when fitting (ids are uint16: at most 65536).", check=between(2, 65536)
    )
    fit_samples: int = option(
        256, help="Samples drawn (seeded) from the input to fit the codebook on.", check=at_least(1)
    )
    fit_frames: int = option(
        4, help="Frames per video (evenly spaced, every view) used for fitting.", check=at_least(1)
    )
    fit_patches: int = option(65536, help="At most this many patches (seeded subsample) to fit on.", check=at_least(2))
    fit_iters: int = option(20, help="k-means iterations after k-means++ seeding.", check=at_least(0))
    views: int = option(
        4, help="Augmentation views stored per sample; training picks one at random each time.", check=between(1, 1024)
    )
    crop: int = option(
        224,
        help="Crop size in pixels (a multiple of 16; the grid is crop/16, the tokenizer "
        "input crop/2). The rescale range 256-320 scales with it.",
        check=at_least(CELL),
    )
    seed: int = option(
        0, help="Seed of the views (with each key and view index), the colour-jitter op order and the codebook fit."
    )
    precision: str = option(
        "auto",
        help="DALL-E conv precision (the output conv stays fp32). auto: fp16 on a GPU, the official behaviour, "
        "fp32 on a CPU; bf16 is as fast as fp16 on a GPU; ids can differ between precisions at near-ties.",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    device: str = option(
        "auto", help="Where the tokenizer runs (auto: the GPU when there is one).", choices=("auto", "cpu", "cuda")
    )
    batch_size: int = option(256, help="Frames per tokenizer call.", check=at_least(1))
    threads: int = option(
        0,
        help="Threads decoding and augmenting samples ahead of the tokenizer (0: one per CPU core).",
        check=at_least(0),
    )
    progress: bool = option(True, help="Show a progress bar on stderr.")
    tracking: TrackingConfig = option(TrackingConfig, help="MLflow tracking.")

    def check(self) -> str | None:
        if self.crop % CELL:
            return f"crop: must be a multiple of {CELL}; got {self.crop}"
        if self.tokenizer == "dalle" and not self.weights:
            return "weights: is required with --tokenizer dalle (the encoder.pkl URI)"
        if self.tokenizer == "dalle" and self.codebook:
            return "codebook: only for --tokenizer codebook"
        if self.tokenizer == "codebook" and self.weights:
            return "weights: only for --tokenizer dalle"
        if self.sha256 and not _SHA256.match(self.sha256):
            return f"sha256: must be 64 hex digits; got {self.sha256!r}"
        if self.sha256 and self.tokenizer == "codebook" and not self.codebook:
            return "sha256: pins a given file (--weights or --codebook); a fitted codebook has none"
        return None


@dataclass
class TokenizeResult:
    output: str
    tokenizer: str
    sha256: str
    vocab_size: int
    device: str
    samples: int
    frames: int  # crops tokenized (views x stored frames), this run
    shards: int
    seconds: float
    tokenize_seconds: float  # inside the tokenizer (resize + encoder), this run
    fit_seconds: float = 0.0
    resumed_shards: int = 0

    def summary(self) -> str:
        fps = self.frames / max(self.tokenize_seconds, 1e-9)
        lines = [
            f"tokenize: {self.samples} samples in {self.shards} token shards -> {self.output}",
            f"  tokenizer {self.tokenizer} (vocab {self.vocab_size}, sha256 {self.sha256[:16]}...) on "
            f"{self.device}; {self.frames} frames tokenized in {self.seconds:.1f} s "
            f"({fps:.0f} frames/s in the tokenizer)"
            + (f", {self.resumed_shards} shards reused from an earlier run" if self.resumed_shards else ""),
        ]
        if self.fit_seconds:
            lines.append(f"  codebook fitted in {self.fit_seconds:.1f} s")
        return "\n".join(lines)


# What changes the bytes written (not device, batch size, threads or progress).
_CONTENT_FIELDS = (
    "input",
    "tokenizer",
    "sha256",
    "codebook",
    "codebook_size",
    "fit_samples",
    "fit_frames",
    "fit_patches",
    "fit_iters",
    "views",
    "crop",
    "seed",
    "precision",
)


@dataclass
class _Prepared:
    key: str
    video: bool
    views: list[View]
    crops: np.ndarray  # (V*F, crop, crop, 3): view-major


def _prepare(buf: bytes, aug: Augment, count: int, frames: Iterable[int] | None = None) -> _Prepared:
    sample, video = parse_data(buf)
    jpegs = sample.jpegs if frames is None else [sample.jpegs[i] for i in frames]
    pixels = np.stack([decode_jpeg(j) for j in jpegs])
    views = sample_views(aug, sample.key, count, pixels.shape[1], pixels.shape[2], color=not video)
    return _Prepared(sample.key, video, views, np.concatenate([apply_view(pixels, v) for v in views]))


def _ahead(fn: Callable, items: Iterable, threads: int) -> Iterator:
    """``map(fn, items)`` in order, computed by ``threads`` threads a bounded distance ahead."""
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _tokenized(prepared: Iterable[_Prepared], tok: Tokenizer, per_call: int, clock: list[float]) -> Iterator:
    """(sample, ids) with ids shaped (V, F, G, G) or (V, G, G); samples batched into calls of
    about ``per_call`` crops so that images (V crops each) still fill the tokenizer."""
    batch: list[_Prepared] = []

    def flush():
        start = time.perf_counter()
        ids = tok.tokenize(np.concatenate([p.crops for p in batch]))
        clock[0] += time.perf_counter() - start
        pos = 0
        for p in batch:
            n, v = len(p.crops), len(p.views)
            mine = ids[pos : pos + n]
            pos += n
            yield p, mine.reshape(v, n // v, *mine.shape[1:]) if p.video else mine
        batch.clear()

    for p in prepared:
        batch.append(p)
        if sum(len(b.crops) for b in batch) >= per_call:
            yield from flush()
    if batch:
        yield from flush()


def _fit(cfg: TokenizeConfig, data: Manifest, aug: Augment, threads: int) -> np.ndarray:
    from bevt_core.tokenizers.codebook import fit_codebook, patch_features

    rng = np.random.default_rng(cfg.seed)
    picked = sorted(rng.choice(len(data), min(len(data), cfg.fit_samples), replace=False).tolist())
    per_sample = -(-cfg.fit_patches // len(picked))  # keeps memory near fit_patches, not samples x frames

    def features(i: int) -> np.ndarray:
        row = data.rows[i]
        n = row["frames"]
        frames = sorted(set(np.linspace(0, n - 1, min(n, cfg.fit_frames)).round().astype(int).tolist()))
        buf = storage.read_range(data.shard_uri(row), row["offset"], row["offset"] + row["bytes"])
        p = _prepare(buf, aug, cfg.views, frames)
        f = patch_features(tokenizer_input(p.crops))
        f = f.reshape(-1, f.shape[-1])
        if len(f) > per_sample:
            f = f[np.sort(np.random.default_rng([cfg.seed, i]).choice(len(f), per_sample, replace=False))]
        return f

    feats = np.concatenate(list(_ahead(features, picked, threads)))
    if len(feats) > cfg.fit_patches:
        feats = feats[np.sort(rng.choice(len(feats), cfg.fit_patches, replace=False))]
    try:
        return fit_codebook(feats, cfg.codebook_size, cfg.fit_iters, cfg.seed, cfg.device)
    except ValueError as e:
        raise ConfigError(f"codebook_size: {e}") from None


def _tokenizer(cfg: TokenizeConfig, data: Manifest, aug: Augment, threads: int) -> tuple[Tokenizer, float]:
    """Load, reuse (resume) or fit the tokenizer; returns it and the seconds spent fitting."""
    kw = dict(device=cfg.device, batch_size=cfg.batch_size)
    if cfg.tokenizer == "dalle":
        from bevt_core.tokenizers.dalle import DalleTokenizer, WeightsError

        try:
            return DalleTokenizer.load(cfg.weights, cfg.sha256, precision=cfg.precision, **kw), 0.0
        except PinMismatch as e:
            raise ConfigError(f"sha256: {e}") from None
        except WeightsError as e:
            raise ConfigError(f"weights: {e}") from None
        except FileNotFoundError:
            raise ConfigError(f"weights: file not found: {cfg.weights}") from None
    from bevt_core.tokenizers.codebook import CodebookTokenizer

    artifact = storage.join(cfg.output, CODEBOOK_FILE)
    if storage.exists(artifact):  # an earlier run with the same settings got this far
        return CodebookTokenizer.load(artifact, **kw), 0.0
    start = time.perf_counter()
    if cfg.codebook:
        try:
            tok = CodebookTokenizer.load(cfg.codebook, cfg.sha256, **kw)
        except FileNotFoundError:
            raise ConfigError(f"codebook: file not found: {cfg.codebook}") from None
        except PinMismatch as e:
            raise ConfigError(f"sha256: {e}") from None
        except ValueError as e:
            raise ConfigError(f"codebook: {e}") from None
    else:
        tok = CodebookTokenizer.from_centroids(_fit(cfg, data, aug, threads), **kw)
    storage.write_bytes(artifact, tok.to_bytes())
    return tok, time.perf_counter() - start


def _record(cfg: TokenizeConfig, tok: Tokenizer, aug: Augment) -> dict:
    return {
        "format": 1,
        "tokenizer": tok.identity(),
        "input": cfg.input,
        "views": cfg.views,
        "crop": cfg.crop,
        "grid": grid_size(cfg.crop),
        "tokenizer_input": cfg.crop // 2,
        "seed": cfg.seed,
        "jitter": aug.jitter,
        "jitter_order": list(aug.jitter_order),
        "flip": aug.flip,
        "scales": list(aug.scales),
    }


def _check_record(output: str, record: dict) -> None:
    """A resumed run must use the very tokenizer the finished shards were made with."""
    uri = storage.join(output, RECORD)
    if storage.exists(uri):
        earlier = json.loads(storage.read_bytes(uri))["tokenizer"]
        if earlier["sha256"] != record["tokenizer"]["sha256"]:
            field = "weights" if record["tokenizer"]["name"] == "dalle" else "codebook"
            raise ConfigError(
                f"{field}: {output} holds tokens made with a tokenizer of SHA-256 "
                f"{earlier['sha256']}, this one is {record['tokenizer']['sha256']}; "
                "use another --output or delete it"
            )
        return
    storage.write_bytes(uri, json.dumps(record, indent=1, sort_keys=True).encode())


@dataclass
class _Report:
    samples: int = 0
    frames: int = 0
    skipped: bool = False


def run(cfg: TokenizeConfig) -> TokenizeResult:
    with stage_run("tokenize", cfg, cfg.output) as tracker:
        result = _tokenize(cfg)
        stage_report.tokenize(tracker, result)
    return result


def _open_input(cfg: TokenizeConfig) -> Manifest:
    """The input's manifest, once the output is known to hold nothing made with other settings."""
    try:
        data = load_manifest(cfg.input)
    except FileNotFoundError as e:
        raise ConfigError(f"input: {e}") from None
    if not data.rows:
        raise ConfigError(f"input: {cfg.input} holds no samples (every input was rejected)")
    digest = hashlib.sha256(storage.read_bytes(storage.join(cfg.input, MANIFEST))).hexdigest()
    storage.make_local_dirs(cfg.output)
    settings = {k: getattr(cfg, k) for k in _CONTENT_FIELDS} | {"input_manifest_sha256": digest}
    jobs.check_same_settings(cfg.output, settings)
    jobs.clean_leftovers(cfg.output)
    return data


def _plan(data: Manifest) -> list[tuple[str, list[int]]]:
    """One task per data shard: its name and its rows in tar order."""
    by_shard: dict[str, list[int]] = {}
    for i, row in enumerate(data.rows):
        by_shard.setdefault(row["shard"], []).append(i)
    return [(name, sorted(rows, key=lambda i: data.rows[i]["offset"])) for name, rows in sorted(by_shard.items())]


@dataclass
class _ShardTokenizer:
    """Writes one data shard's token tar and part file; a shard whose part file exists is already done."""

    cfg: TokenizeConfig
    data: Manifest
    aug: Augment
    tok: Tokenizer
    threads: int
    clock: list[float]  # seconds inside the tokenizer, summed over shards

    def __call__(self, task: tuple[str, list[int]]) -> _Report:
        name, rows = task
        part = jobs.part_uri(self.cfg.output, name[: -len(".tar")])
        if storage.exists(part):
            return _Report(len(rows), skipped=True)
        report, written = _Report(), []
        raw = read_runs(self.data, [self.data.rows[i] for i in rows], parse=bytes)
        prepared = _ahead(lambda buf: _prepare(buf, self.aug, self.cfg.views), raw, self.threads)
        tokenized = _tokenized(prepared, self.tok, self.cfg.batch_size, self.clock)
        with jobs.atomic_tar(self.cfg.output, name) as f:
            writer = ShardWriter(f)
            for (sample, ids), i in zip(tokenized, rows, strict=True):
                written.append(self._write(writer, name, sample, ids, self.data.rows[i]))
                report.samples += 1
                report.frames += len(sample.crops)
            writer.close()
        storage.write_bytes(part, rows_to_parquet(written, SCHEMA))
        return report

    def _write(self, writer: ShardWriter, name: str, sample: _Prepared, ids: np.ndarray, row: dict) -> dict:
        if sample.key != row["key"]:
            raise RuntimeError(f"{name}: sample {sample.key!r} where the manifest has {row['key']!r}")
        offset, nbytes = writer.write(sample.key, token_members(ids, sample.views))
        frames = ids.shape[1] if sample.video else 1
        return dict(
            index=row["index"],
            key=sample.key,
            shard=name,
            offset=offset,
            bytes=nbytes,
            frames=frames,
            views=self.cfg.views,
            grid=ids.shape[-1],
            video=sample.video,
        )


def _tokenize(cfg: TokenizeConfig) -> TokenizeResult:
    start = time.perf_counter()
    data = _open_input(cfg)
    threads = cfg.threads or os.cpu_count() or 1
    aug = Augment(crop=cfg.crop, seed=cfg.seed)
    tok, fit_seconds = _tokenizer(cfg, data, aug, threads)
    _check_record(cfg.output, _record(cfg, tok, aug))
    tasks, clock = _plan(data), [0.0]
    reports = jobs.run_parallel(
        tasks,
        _ShardTokenizer(cfg, data, aug, tok, threads, clock),
        1,
        cfg.progress,
        "tokenize",
        weight=lambda t: len(t[1]),
        postfix=lambda done: {"frames": sum(r.frames for r in done)},
    )
    rows = [r for name, _ in tasks for r in read_table(jobs.part_uri(cfg.output, name[: -len(".tar")])).to_pylist()]
    rows.sort(key=lambda r: r["index"])
    storage.write_bytes(storage.join(cfg.output, MANIFEST), rows_to_parquet(rows, SCHEMA))
    return TokenizeResult(
        output=cfg.output,
        tokenizer=tok.name,
        sha256=tok.sha256,
        vocab_size=tok.vocab_size,
        device=str(tok.device),
        samples=len(rows),
        frames=sum(r.frames for r in reports),
        shards=len(tasks),
        seconds=time.perf_counter() - start,
        tokenize_seconds=clock[0],
        fit_seconds=fit_seconds,
        resumed_shards=sum(r.skipped for r in reports),
    )
