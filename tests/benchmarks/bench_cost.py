"""What the official schedule costs: FLOPs, GPU-hours, bytes and S3 bandwidth, with stored or online targets.

    python -m tests.benchmarks.bench_cost [--mfu 0.4] [--views 4]

FLOPs are counted with ``torch.utils.flop_counter`` on the meta device (no compute) at the official shapes:
the joint micro-batch of one GPU (4 clips of 16x224 px and 32 images), one image of the image stream, one
32-frame clip of each finetune, the DALL-E encoder on one 112 px frame. A training step is three forwards
(backward counted as twice the forward), a test view one. GPU-hours divide the FLOPs by the stated MFU of a
GPU's dense bf16 peak: the same MFU for the model and for DALL-E, so the comparison with the official online
tokenizer is of work, not of the official V100s. Bytes come from ``views.json`` (``bench_views``): the
stored JPEG of a real frame at short side 320 and 392 bytes of ids per frame and view.

Writes ``tests/benchmarks/results/cost.json`` and ``cost.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from dall_e.encoder import Encoder
from torch.utils.flop_counter import FlopCounterMode

from bevt_core.train.engine import PEAK_TFLOPS
from tests.benchmarks.bench_model import Workload, count_flops

RESULTS = Path(__file__).parent / "results"
GPU = "H100"
# Dataset sizes as the official lists give them (K400 lists vary with what is still downloadable).
IN1K_TRAIN = 1_281_167
K400_TRAIN, K400_VAL = 240_000, 20_000
SSV2_TRAIN, SSV2_VAL = 168_913, 24_777
K400_STORED = {"pretrain": 38, "finetune": 150}  # stored frames of a 10 s, 30 fps clip at stride 8 / 2
SSV2_STORED = 48  # every frame of a ~4 s, 12 fps SSv2 video (the uniform sampler needs them all)
VALIDATIONS = 12  # every 5 of 60 finetune epochs


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: str  # the official config file, or why ours
    train_flops: float  # one training sample: 3 forwards
    samples: float  # training samples over the schedule
    eval_flops: float = 0.0  # one view forward
    eval_views: float = 0.0  # validations + the best and last multi-view tests
    dalle_frames: float = 0.0  # frames the official setup tokenizes inside the steps


def dalle_flops_per_frame() -> float:
    with torch.device("meta"):
        encoder = Encoder()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            encoder(torch.empty(1, 3, 112, 112))
    return float(counter.get_total_flops())


def stages() -> list[Stage]:
    joint = count_flops(Workload("pretrain", "bevt-swin-b", 4, 16, 32, 224)) / 4  # per clip, its 8 images with it
    image = count_flops(Workload("pretrain", "bevt-swin-b", 0, 16, 1, 224))
    k400 = count_flops(Workload("finetune", "k400-swin-b", 1, 32, 0, 224))
    ssv2 = count_flops(Workload("finetune", "ssv2-swin-b", 1, 32, 0, 224))
    return [
        Stage(
            "image stream",
            "ours (the official stage is not released): 800 epochs, 2048 images per step",
            image,
            800 * IN1K_TRAIN,
            dalle_frames=800 * IN1K_TRAIN,
        ),
        Stage(
            "joint",
            "swin_base_patch244_window877_bevt_in1k_k400.py",
            joint,
            150 * K400_TRAIN,
            dalle_frames=150 * K400_TRAIN * (16 + 8),
        ),
        Stage(
            "finetune K400",
            "swin_base_patch244_window877_bevt_finetune_k400.py",
            k400,
            60 * K400_TRAIN,
            k400 / 3,
            K400_VAL * (VALIDATIONS + 2 * 12),
        ),
        Stage(
            "finetune SSv2",
            "swin_base_patch244_window1677_bevt_finetune_ssv2.py",
            ssv2,
            60 * SSV2_TRAIN,
            ssv2 / 3,
            SSV2_VAL * (VALIDATIONS + 2 * 3),
        ),
    ]


def stored_frames(views: int) -> float:
    """Frames ``bevt tokenize`` encodes once for both pretraining stages: every stored frame, once per view."""
    return views * (K400_TRAIN * K400_STORED["pretrain"] + IN1K_TRAIN)


def costs(mfu: float, views: int, measured: dict) -> dict:
    rate = mfu * PEAK_TFLOPS[GPU] * 1e12
    dalle = dalle_flops_per_frame()
    rows = []
    for s in stages():
        model = s.train_flops * s.samples + s.eval_flops * s.eval_views
        rows.append(
            {
                "stage": s.name,
                "recipe": s.recipe,
                "gflop_per_train_sample": s.train_flops / 1e9,
                "samples": s.samples,
                "model_pflop": model / 1e15,
                "gpu_hours": model / rate / 3600,
                "online_dalle_gpu_hours": s.dalle_frames * dalle / rate / 3600,
            }
        )
    jpeg, ids = measured["jpeg_bytes_per_frame"], measured["token_bytes_per_frame_view"]
    data = {
        "k400 pretrain shards (stride 8)": K400_TRAIN * K400_STORED["pretrain"] * jpeg,
        "k400 finetune shards (stride 2)": (K400_TRAIN + K400_VAL) * K400_STORED["finetune"] * jpeg,
        "ssv2 shards (every frame)": (SSV2_TRAIN + SSV2_VAL) * SSV2_STORED * jpeg,
        "in1k shards": IN1K_TRAIN * jpeg,
        f"tokens, {views} views (k400 + in1k)": stored_frames(views) * ids,
    }
    # One GPU of the joint stage at this MFU: clips per second, each read with its record and its 8 images.
    joint = next(r for r in rows if r["stage"] == "joint")
    clips_per_s = rate / (joint["gflop_per_train_sample"] * 1e9)
    clip_bytes = K400_STORED["pretrain"] * (jpeg + views * ids) + 8 * (jpeg + views * ids)
    k400 = next(r for r in rows if r["stage"] == "finetune K400")
    ft_per_s = rate / (k400["gflop_per_train_sample"] * 1e9)
    return {
        "gpu": GPU,
        "peak_tflops": PEAK_TFLOPS[GPU],
        "mfu": mfu,
        "views": views,
        "dalle_gflop_per_frame": dalle / 1e9,
        "stages": rows,
        "stored_tokenize_gpu_hours": stored_frames(views) * dalle / rate / 3600,
        "bytes": data,
        "bandwidth": {
            "joint_clips_per_s_per_gpu": clips_per_s,
            "joint_mb_per_s_per_gpu": clips_per_s * clip_bytes / 1e6,
            "k400_finetune_clips_per_s_per_gpu": ft_per_s,
            "k400_finetune_mb_per_s_per_gpu": ft_per_s * K400_STORED["finetune"] * jpeg / 1e6,
        },
    }


def write(record: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cost.json").write_text(json.dumps(record, indent=1) + "\n")
    mfu, views = record["mfu"], record["views"]
    lines = [
        "# What the official schedule costs",
        "",
        f"Computed {record['date']} (git {record['git']}) with `python -m tests.benchmarks.bench_cost --mfu {mfu} "
        f"--views {views}`: FLOPs counted by `torch.utils.flop_counter` at the official shapes; GPU-hours at "
        f"{mfu:.0%} MFU of the {record['gpu']}'s {record['peak_tflops']:.0f} TFLOP/s dense bf16 peak (DESIGN's target, "
        "not a measurement: `bench_model` on a GPU measures it). DALL-E's encoder: "
        f"{record['dalle_gflop_per_frame']:.1f} GFLOP per 112 px frame.",
        "",
        "| stage | recipe | GFLOP per training sample | training samples | PFLOP | GPU-hours | "
        "+ online DALL-E (official) |",
        "|---|---|---|---|---|---|---|",
    ]
    total = online = 0.0
    for r in record["stages"]:
        total += r["gpu_hours"]
        online += r["online_dalle_gpu_hours"]
        extra = f"{r['online_dalle_gpu_hours']:,.0f}" if r["online_dalle_gpu_hours"] else "-"
        lines.append(
            f"| {r['stage']} | {r['recipe']} | {r['gflop_per_train_sample']:,.0f} | {r['samples']:,.0f} | "
            f"{r['model_pflop']:,.0f} | {r['gpu_hours']:,.0f} | {extra} |"
        )
    stored = record["stored_tokenize_gpu_hours"]
    lines += [
        "",
        f"Total: {total:,.0f} GPU-hours of model work. The official setup adds {online:,.0f} GPU-hours of "
        f"DALL-E inside the pretraining steps ({online / total:.0%} on top); stored targets add {stored:,.0f} "
        f"GPU-hours once (`bevt tokenize`, {views} views of every stored K400 frame at stride 8 and of every "
        "IN-1K image), reused by both pretraining stages.",
        "",
        "| data | GB |",
        "|---|---|",
    ]
    lines += [f"| {name} | {size / 1e9:,.0f} |" for name, size in record["bytes"].items()]
    b = record["bandwidth"]
    lines += [
        "",
        "Shards at `--short-side 320`, the pipeline default; K400 finetuning starts with the official "
        "Resize(-1, 256), so its shards lose nothing at `--short-side 256` and take fewer bytes.",
        "",
        f"S3 reads per GPU at that MFU: joint pretraining {b['joint_clips_per_s_per_gpu']:.1f} clips/s, "
        f"each read whole (its stored frames and all {views} views of ids, and its 8 images): "
        f"{b['joint_mb_per_s_per_gpu']:.0f} MB/s; K400 finetuning {b['k400_finetune_clips_per_s_per_gpu']:.1f} "
        f"clips/s of 150 stored frames: {b['k400_finetune_mb_per_s_per_gpu']:.0f} MB/s.",
    ]
    (RESULTS / "cost.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--mfu", type=float, default=0.35, help="model FLOPs utilisation assumed for every stage (DESIGN's target)"
    )
    parser.add_argument("--views", type=int, default=4, help="stored views per sample (bevt tokenize --views)")
    args = parser.parse_args()
    measured = json.loads((RESULTS / "views.json").read_text())["measured"]
    record = costs(args.mfu, args.views, measured)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record |= {"date": time.strftime("%Y-%m-%d"), "git": git}
    write(record)
    print((RESULTS / "cost.md").read_text())


if __name__ == "__main__":
    main()
