"""What a stored augmentation view costs at Swin-B settings: tokenize time and bytes per clip.

    python -m tests.benchmarks.bench_views [--frames 8]

Real footage (the sample videos) is sharded as K400 pretraining shards are (every 8th frame, short side
320, JPEG 90); one clip's stored frames then go through what ``bevt tokenize`` does for one view: decode,
the view (rescale to 256-320, crop 224, flip), the 112 px Lanczos copy and the DALL-E encoder (its real
architecture, random weights: speed does not depend on them). Per stored frame, the view's ids take
14 x 14 uint16. A K400 video of 10 s at 30 fps keeps 38 frames at stride 8: the table scales to that.

Writes ``tests/benchmarks/results/views.json`` and ``views.md``. On a CPU the DALL-E time is what this
machine does; the GPU row uses the DESIGN target of 5,000 frames/s per H100 (not measured here).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from dall_e.encoder import Encoder

from bevt_core.data.decode import decode_jpeg
from bevt_core.data.loader import read_sample
from bevt_core.data.manifest import load_manifest
from bevt_core.data.views import Augment, apply_view, sample_views
from bevt_core.samples import prepare_samples
from bevt_core.stages.shard import ShardConfig
from bevt_core.stages.shard import run as shard
from bevt_core.tokenizers.dalle import DalleTokenizer
from bevt_core.tracking.config import TrackingConfig
from tests.benchmarks.machine import describe

RESULTS = Path(__file__).parent / "results"
K400_FRAMES_PER_CLIP = 38  # 300 decoded frames, every 8th kept
K400_CLIPS = 240_000
GPU_FRAMES_PER_S = 5000  # DESIGN §5 target for DALL-E at 112 px on one H100
VIEW_COUNTS = (1, 4, 16)


def k400_like_shards(work: Path) -> str:
    videos = prepare_samples(profile="ci").source_videos[:4]
    (work / "list.txt").write_text("".join(f"{v} 0\n" for v in videos))
    out = str(work / "shards")
    shard(
        ShardConfig(
            input=str(work / "list.txt"),
            output=out,
            frame_interval=8,
            short_side=320,
            jpeg_quality=90,
            progress=False,
            workers=1,
            tracking=TrackingConfig("none"),
        )
    )
    return out


def measure(shards: str, frames: int) -> dict:
    manifest = load_manifest(shards)
    sample = max((read_sample(manifest, row) for row in manifest.rows), key=lambda s: len(s.jpegs))
    jpegs = sample.jpegs[:frames]
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(Encoder(), Path(tmp) / "encoder.pkl")
        tokenizer = DalleTokenizer.load(str(Path(tmp) / "encoder.pkl"), device="auto")
    height, width = decode_jpeg(jpegs[0]).shape[:2]
    (view,) = sample_views(Augment(), sample.key, 1, height, width, color=False)
    tokenizer.tokenize(np.stack([np.zeros((224, 224, 3), np.uint8)] * 2))  # warm-up
    start = time.perf_counter()
    pixels = np.stack([decode_jpeg(j) for j in jpegs])
    crops = apply_view(pixels, view)
    prepared = time.perf_counter()
    ids = tokenizer.tokenize(crops)
    done = time.perf_counter()
    data_bytes = sum(len(j) for j in sample.jpegs) / len(sample.jpegs)
    return {
        "frames_measured": len(jpegs),
        "tokenizer": f"DALL-E {tokenizer.precision} on {tokenizer.device}",
        "stored_size": [height, width],
        "prepare_s_per_frame": (prepared - start) / len(jpegs),
        "dalle_s_per_frame": (done - prepared) / len(jpegs),
        "token_bytes_per_frame_view": int(ids[0].astype(np.uint16).nbytes),
        "jpeg_bytes_per_frame": data_bytes,
    }


def project(m: dict) -> list[dict]:
    rows = []
    for views in VIEW_COUNTS:
        frames = K400_FRAMES_PER_CLIP * views
        machine_s = frames * (m["prepare_s_per_frame"] + m["dalle_s_per_frame"])
        rows.append(
            {
                "views": views,
                "token_kb_per_clip": frames * m["token_bytes_per_frame_view"] / 1e3,
                "data_kb_per_clip": K400_FRAMES_PER_CLIP * m["jpeg_bytes_per_frame"] / 1e3,
                "machine_s_per_clip": machine_s,
                "gpu_hours_k400": K400_CLIPS * frames / GPU_FRAMES_PER_S / 3600,
                "token_gb_k400": K400_CLIPS * frames * m["token_bytes_per_frame_view"] / 1e9,
            }
        )
    return rows


def write(m: dict, rows: list[dict]) -> None:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {"device": describe(), "git": git, "date": time.strftime("%Y-%m-%d"), "measured": m, "k400": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "views.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        "# What a stored view costs (Swin-B settings, K400 pretraining shards)",
        "",
        f"Measured {record['date']} on {record['device']} (git {git}): one clip of real footage sharded at "
        f"stride 8, short side 320; {m['frames_measured']} stored frames of {m['stored_size'][1]}x"
        f"{m['stored_size'][0]}. Per frame and view: decode + view {m['prepare_s_per_frame'] * 1e3:.1f} ms, "
        f"{m['tokenizer']} {m['dalle_s_per_frame'] * 1e3:.1f} ms; ids "
        f"{m['token_bytes_per_frame_view']} bytes; the stored JPEG {m['jpeg_bytes_per_frame'] / 1e3:.1f} kB.",
        "",
        f"Scaled to a K400 clip of {K400_FRAMES_PER_CLIP} stored frames and {K400_CLIPS:,} clips; GPU "
        f"hours at the {GPU_FRAMES_PER_S:,} frames/s per H100 target:",
        "",
        "| views | token kB / clip | data kB / clip | tokens / data | s / clip (this machine) | "
        "H100 hours, K400 | token GB, K400 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['views']} | {r['token_kb_per_clip']:.0f} | {r['data_kb_per_clip']:.0f} | "
            f"{r['token_kb_per_clip'] / r['data_kb_per_clip']:.1%} | {r['machine_s_per_clip']:.1f} | "
            f"{r['gpu_hours_k400']:.1f} | {r['token_gb_k400']:.1f} |"
        )
    (RESULTS / "views.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--frames", type=int, default=8, help="stored frames of the clip to time (DALL-E on a CPU is slow)"
    )
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as work:
        measured = measure(k400_like_shards(Path(work)), args.frames)
    rows = project(measured)
    write(measured, rows)
    print(json.dumps({"measured": measured, "k400": rows}, indent=1))


if __name__ == "__main__":
    main()
