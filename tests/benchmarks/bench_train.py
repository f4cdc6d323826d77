"""Joint pretraining step throughput through the training engine's pieces: stored vs online
targets, reference vs fused (SDPA) window attention.

One step = the official micro-step: a batch of clips (tube masks) and a batch of images (block
masks) through the same backbone, summed losses, one backward, AdamW. ``stored`` reads target
ids as the token shards give them; ``online`` runs a DALL-E encoder inside the step on the uint8
crops, through the same ``online_ids`` path ``--targets online`` uses (Lanczos resize + encoder
+ argmax). The "official-style" row is reference attention + fp16 autocast + online DALL-E; the
"ours" row is SDPA + bf16 + stored targets: the DESIGN §5 target is >= 3x on a GPU.

On a GPU: Swin-B, 4 clips of 16x224 + 32 images of 224 (the official per-GPU micro-batch), the
full-size DALL-E encoder (random weights: the official file cannot be downloaded here), MFU of
the model FLOPs (FlopCounterMode, x3 for forward + backward) against the dense bf16 peak.
On CPU (``--device cpu``): the tiny model (bevt-tiny, 4 clips of 8x64 + 8 images of 64) and a
reduced DALL-E encoder (n_hid 64, vocab 256); only ratios between rows mean anything there.

    python tests/benchmarks/bench_train.py                 # GPU
    python tests/benchmarks/bench_train.py --device cpu
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bevt_core.loading.pretrain import online_ids
from bevt_core.masking import BlockMaskGenerator, TubeMaskGenerator
from bevt_core.models import build_model
from bevt_core.tokenizers.dalle import DalleTokenizer
from bevt_core.train.engine import known_peak_tflops
from bevt_core.train.optim import adamw, param_groups, pretrain_keys
from tests.benchmarks.machine import describe

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    label: str
    attention: str
    targets: str
    dtype: str
    step_median_s: float
    step_best_s: float
    clips_per_s: float
    images_per_s: float
    model_tflops: float | None
    mfu: float | None
    peak_mem_gib: float | None


def setup(gpu: bool):
    if gpu:
        return dict(preset="bevt-swin-b", clips=4, frames=16, images=32, size=224, n_hid=256, vocab=8192)
    return dict(preset="bevt-tiny", clips=4, frames=8, images=8, size=64, n_hid=64, vocab=256)


def tokenizer(s: dict, device: str, precision: str) -> DalleTokenizer:
    from dall_e.encoder import Encoder

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(Encoder(n_hid=s["n_hid"], vocab_size=s["vocab"]), buf)
    path = Path("/tmp/bench_train_encoder.pkl")
    path.write_bytes(buf.getvalue())
    return DalleTokenizer.load(str(path), device=device, precision=precision, batch_size=512)


def batch(s: dict, device: torch.device, rng: np.random.Generator):
    g, t, size = s["size"] // 16, s["frames"], s["size"]
    block = BlockMaskGenerator.scaled(g)
    tube = TubeMaskGenerator(num_frames=t, block=block)
    tubes = [tube(rng) for _ in range(s["clips"])]
    crops_v = torch.from_numpy(rng.integers(0, 256, (s["clips"], t, size, size, 3), dtype=np.uint8)).to(device)
    crops_i = torch.from_numpy(rng.integers(0, 256, (s["images"], size, size, 3), dtype=np.uint8)).to(device)
    return {
        "clip": torch.randn(s["clips"], 3, t, size, size, device=device),
        "in_mask": torch.from_numpy(np.stack([a for a, _ in tubes])).to(device),
        "out_mask": torch.from_numpy(np.stack([b for _, b in tubes])).to(device),
        "image": torch.randn(s["images"], 3, size, size, device=device),
        "mask": torch.from_numpy(np.stack([block(rng) for _ in range(s["images"])])).to(device),
        "ids_v": torch.randint(0, s["vocab"], (s["clips"], t, g, g), device=device),
        "ids_i": torch.randint(0, s["vocab"], (s["images"], g, g), device=device),
        "crops_v": crops_v,
        "crops_i": crops_i,
    }


def measure(
    s: dict,
    device: torch.device,
    attention: str,
    targets: str,
    dtype: str,
    steps: int,
    warmup: int,
    tok: DalleTokenizer | None,
) -> Row:
    torch.manual_seed(0)
    model = build_model(s["preset"], vocab_size=s["vocab"], attn_impl=attention).to(device)
    opt = adamw(param_groups(model, 5e-4, 0.05, pretrain_keys()), 5e-4, (0.9, 0.999), 1e-8)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    scaler = torch.amp.GradScaler("cuda") if amp is torch.float16 else None
    ids = online_ids(tok) if targets == "online" else None
    b = batch(s, device, np.random.default_rng(0))

    def step():
        ids_v = ids(b["crops_v"]) if ids else b["ids_v"]
        ids_i = ids(b["crops_i"]) if ids else b["ids_i"]
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model.loss(
                video=(b["clip"], b["in_mask"], b["out_mask"], ids_v), image=(b["image"], b["mask"], ids_i)
            )
        (scaler.scale(out["loss"]) if scaler else out["loss"]).backward()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.loss(
            video=(b["clip"], b["in_mask"], b["out_mask"], b["ids_v"]), image=(b["image"], b["mask"], b["ids_i"])
        )
    model_flops = 3.0 * fc.get_total_flops()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med, best = statistics.median(times), min(times)
    peak = 0.0
    if device.type == "cuda":
        peak = known_peak_tflops(torch.cuda.get_device_name(device)) * 1e12
    label = {("reference", "online", "fp16"): "official-style", ("sdpa", "stored", "bf16"): "ours"}.get(
        (attention, targets, dtype), ""
    )
    return Row(
        label,
        attention,
        targets,
        dtype,
        med,
        best,
        s["clips"] / med,
        s["images"] / med,
        model_flops / med / 1e12 if device.type == "cuda" else None,
        model_flops / med / peak if peak else None,
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per row (default 10 GPU, 5 CPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    s = setup(gpu)
    steps, warmup = args.steps or (10 if gpu else 5), 3 if gpu else 1
    dtypes = ("bf16", "fp16") if gpu else ("fp32",)
    tok = tokenizer(s, "cuda" if gpu else "cpu", "fp16" if gpu else "fp32")
    rows = []
    for dtype in dtypes:
        for attention in ("reference", "sdpa"):
            for targets in ("stored", "online"):
                row = measure(s, device, attention, targets, dtype, steps, warmup, tok)
                print(json.dumps(asdict(row)), flush=True)
                rows.append(row)
    write(rows, s, device, steps)


def write(rows: list[Row], s: dict, device: torch.device, steps: int) -> None:
    gpu = device.type == "cuda"
    name = describe(torch.cuda.get_device_name(device) if gpu else "")
    by = {(r.attention, r.targets, r.dtype): r for r in rows}
    base_dtype = rows[0].dtype
    ratios = {
        "stored_vs_online (reference attention)": by[("reference", "online", base_dtype)].step_best_s
        / by[("reference", "stored", base_dtype)].step_best_s,
        "stored_vs_online (sdpa)": by[("sdpa", "online", base_dtype)].step_best_s
        / by[("sdpa", "stored", base_dtype)].step_best_s,
        "sdpa_vs_reference (stored targets)": by[("reference", "stored", base_dtype)].step_best_s
        / by[("sdpa", "stored", base_dtype)].step_best_s,
    }
    if gpu:
        ratios["ours_vs_official_style"] = (
            by[("reference", "online", "fp16")].step_best_s / by[("sdpa", "stored", "bf16")].step_best_s
        )
    meta = {
        "device": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "setup": s,
        "timed_steps": steps,
        "note": ""
        if gpu
        else "CPU run with the tiny model and a reduced DALL-E encoder: only ratios mean "
        "anything; the Swin-B numbers and MFU need a GPU run of this script.",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(
        json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "speedups": ratios}, indent=1) + "\n"
    )

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [
        "# Training benchmark: joint pretraining step",
        "",
        f"- device: {name} ({meta['threads']} threads)",
        f"- torch {torch.__version__}, measured {meta['measured']}",
        f"- model {s['preset']}: {s['clips']} clips of {s['frames']}x{s['size']} + {s['images']} images of "
        f"{s['size']} per step; DALL-E encoder n_hid {s['n_hid']}, vocab {s['vocab']} (random weights)",
        "",
    ]
    if meta["note"]:
        lines += [f"> {meta['note']}", ""]
    lines += [
        "| row | attention | targets | dtype | step median (s) | best (s) | clips/s | images/s | model TFLOP/s | MFU "
        "| peak mem (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.attention} | {r.targets} | {r.dtype} | {r.step_median_s:.3f} | {r.step_best_s:.3f} | "
            f"{r.clips_per_s:.2f} | {r.images_per_s:.2f} | {fmt(r.model_tflops, '.1f')} | "
            f"{fmt(r.mfu, '.1%')} | {fmt(r.peak_mem_gib, '.1f')} |"
        )
    lines += ["", "Speed-ups (ratios of best step times):", ""] + [f"- {k}: {v:.2f}x" for k, v in ratios.items()]
    (RESULTS / "train.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
