"""Benchmark the data path (DESIGN §5): shard vs pure decode, and loader vs decord per clip.

    python tests/benchmarks/bench_data.py [--repeats 3] [--max-videos 12] [--copies 8]

Works on the real sample footage, first transcoded to h264 with a short side of 256 (the way
K400 is distributed as ``train_256``), so both sides of every comparison read the same pixels.
Writes ``tests/benchmarks/results/data.json`` and ``data.md``. Ratios are what count on a noisy
machine: each one compares two measurements taken in the same run, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from bevt_core.data.decode import decode_jpeg, decode_video, resize_short_side
from bevt_core.data.loader import read_sample
from bevt_core.data.manifest import load_manifest
from bevt_core.samples import prepare_samples
from bevt_core.stages.shard import ShardConfig, run
from tests.benchmarks.machine import describe

RESULTS = Path(__file__).parent / "results"
CLIP_LEN, CLIP_INTERVAL = 16, 8  # the BEVT pretraining clip: 16 frames over a 128-frame span


def transcode_256(src: Path, dst: Path, max_frames: int = 300) -> int:
    """h264 copy of ``src`` with its short side capped at 256; returns frames written."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = None
        n = 0
        for frame in inp.decode(video=0):
            rgb = resize_short_side(frame.to_ndarray(format="rgb24"), 256)
            rgb = np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])
            if stream is None:
                stream = out.add_stream("libx264", rate=25, options={"preset": "medium", "crf": "23"})
                stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
            for p in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(p)
            n += 1
            if n >= max_frames:
                break
        for p in stream.encode():
            out.mux(p)
    return n


def best_of(repeats: int, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_shard(videos: list[Path], listing: Path, work: Path, interval: int, repeats: int) -> dict:
    def decode_all():
        for v in videos:
            decode_video(v, interval)

    def shard_in_process():
        # The stage function itself with one worker (inline): the same process-startup-free
        # footing as the decode loop it is compared with.
        out = work / f"shard-i{interval}-inline-{time.monotonic_ns()}"
        run(
            ShardConfig(
                input=str(listing),
                output=str(out),
                frame_interval=interval,
                short_side=256,
                samples_per_shard=max(1, len(videos) // 16),
                workers=1,
                progress=False,
            )
        )

    def shard_cli(workers: int):
        # Scaling is measured on the real command: its worker processes start from the light `bevt`
        # entry point, not from this script (spawned workers re-import the parent's main module).
        out = work / f"shard-i{interval}-w{workers}-{time.monotonic_ns()}"
        subprocess.run(
            [
                str(Path(sys.executable).parent / "bevt"),
                "shard",
                "--input",
                str(listing),
                "--output",
                str(out),
                "--frame-interval",
                str(interval),
                "--short-side",
                "256",
                "--samples-per-shard",
                str(max(1, len(videos) // 16)),
                "--workers",
                str(workers),
                "--no-progress",
            ],
            check=True,
            capture_output=True,
        )

    decode_s = best_of(repeats, decode_all)
    shard_s = best_of(repeats, shard_in_process)
    cli_1 = best_of(repeats, lambda: shard_cli(1))
    cli_2 = best_of(repeats, lambda: shard_cli(2))
    return {
        "frame_interval": interval,
        "videos": len(videos),
        "decode_s": round(decode_s, 3),
        "shard_1_worker_s": round(shard_s, 3),
        "shard_over_decode": round(shard_s / decode_s, 3),
        "cli_1_worker_s": round(cli_1, 3),
        "cli_2_workers_s": round(cli_2, 3),
        "speedup_2_workers": round(cli_1 / cli_2, 3),
    }


def _decode_all(paths: list[Path], interval: int) -> None:
    for p in paths:
        decode_video(p, interval)


def bench_decode_scaling(videos: list[Path], interval: int, repeats: int) -> dict:
    """What the machine itself gives: pure decoding in 1 vs 2 processes (workers warmed first)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    one = best_of(repeats, lambda: _decode_all(videos, interval))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_decode_all, [videos[:1], videos[1:2]], [interval] * 2))
        two = best_of(repeats, lambda: list(pool.map(_decode_all, [videos[0::2], videos[1::2]], [interval] * 2)))
    return {
        "frame_interval": interval,
        "decode_1_process_s": round(one, 3),
        "decode_2_processes_s": round(two, 3),
        "speedup_2_processes": round(one / two, 3),
    }


def bench_loader(videos: list[Path], shards: str, repeats: int, seed: int = 0) -> dict:
    import decord

    m = load_manifest(shards)
    rows = {r["source"]: r for r in m.rows}
    rng = random.Random(seed)
    clips = []
    for v in videos:
        row = rows[v.name]
        n = row["num_frames"]
        start = rng.randrange(max(1, n - CLIP_LEN * CLIP_INTERVAL + 1))
        frame_idx = [(start + i * CLIP_INTERVAL) % n for i in range(CLIP_LEN)]
        kept = [f // CLIP_INTERVAL for f in frame_idx]  # stored frames are every 8th from 0
        clips.append((v, row, frame_idx, [min(k, row["frames"] - 1) for k in kept]))

    def from_shards():
        for _, row, _, kept in clips:
            sample = read_sample(m, row)
            np.stack([decode_jpeg(sample.jpegs[k]) for k in kept])

    def from_mp4():
        for v, _, frame_idx, _ in clips:
            vr = decord.VideoReader(str(v), num_threads=1)
            vr.get_batch(frame_idx).asnumpy()

    def cpu_of(fn):
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
        return best / len(clips)

    shard_cpu, decord_cpu = cpu_of(from_shards), cpu_of(from_mp4)
    return {
        "clips": len(clips),
        "clip": f"{CLIP_LEN} frames at interval {CLIP_INTERVAL}",
        "shard_cpu_ms_per_clip": round(shard_cpu * 1e3, 2),
        "decord_cpu_ms_per_clip": round(decord_cpu * 1e3, 2),
        "shard_over_decord": round(shard_cpu / decord_cpu, 3),
    }


def write_results(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Data path benchmark",
        "",
        f"Measured {result['date']} on {result['device']} (git {result['git']}); command: `{result['command']}`.",
        "",
        "| measurement | value | target | met |",
        "|---|---|---|---|",
    ]
    for s in result["shard"]:
        lines.append(
            f"| shard wall / pure decode, interval {s['frame_interval']} ({s['videos']} videos, 1 worker) "
            f"| {s['shard_over_decode']:.2f}x ({s['shard_1_worker_s']} s vs {s['decode_s']} s) | <= 1.5x "
            f"| {'yes' if s['shard_over_decode'] <= 1.5 else 'no'} |"
        )
        lines.append(
            f"| `bevt shard` speed-up 1 -> 2 workers, interval {s['frame_interval']} "
            f"({s['cli_1_worker_s']} s vs {s['cli_2_workers_s']} s) | {s['speedup_2_workers']:.2f}x | "
            f"~2x (linear) | {'yes' if s['speedup_2_workers'] >= 1.7 else 'no'} |"
        )
    ds = result["decode_scaling"]
    lines.append(
        f"| for reference: pure decode speed-up 1 -> 2 processes on this machine, interval "
        f"{ds['frame_interval']} | {ds['speedup_2_processes']:.2f}x | (hardware) | - |"
    )
    ld = result["loader"]
    lines.append(
        f"| loader CPU per clip / decord from mp4 ({ld['clip']}) | {ld['shard_over_decord']:.3f} "
        f"({ld['shard_cpu_ms_per_clip']} ms vs {ld['decord_cpu_ms_per_clip']} ms) | <= 0.25 | "
        f"{'yes' if ld['shard_over_decord'] <= 0.25 else 'no'} |"
    )
    (RESULTS / "data.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-videos", type=int, default=12)
    parser.add_argument(
        "--copies",
        type=int,
        default=8,
        help="list each video this many times (as distinct files) so fixed costs are amortised",
    )
    args = parser.parse_args()
    samples = prepare_samples(profile="ci")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "videos").mkdir()
        videos = []
        for src in samples.source_videos[: args.max_videos]:
            dst = work / "videos" / f"{src.stem}.mp4"
            if transcode_256(src, dst) >= 2:
                videos.append(dst)
        for v in list(videos):
            for c in range(1, args.copies):
                copy = v.with_name(f"{v.stem}-copy{c}.mp4")
                os.link(v, copy)
                videos.append(copy)
        listing = work / "videos" / "list.txt"
        listing.write_text("".join(f"{v.name} 0\n" for v in videos))
        shard = [bench_shard(videos, listing, work, interval, args.repeats) for interval in (8, 1)]
        decode_scaling = bench_decode_scaling(videos, 8, args.repeats)
        shards = work / "loader-shards"
        run(
            ShardConfig(
                input=str(listing), output=str(shards), frame_interval=CLIP_INTERVAL, short_side=256, progress=False
            )
        )
        loader = bench_loader(videos, str(shards), args.repeats)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": describe(),
        "git": git or "uncommitted",
        "command": "python tests/benchmarks/bench_data.py",
        "shard": shard,
        "decode_scaling": decode_scaling,
        "loader": loader,
    }
    write_results(result)
    print((RESULTS / "data.md").read_text())


if __name__ == "__main__":
    main()
