"""Swin-B training-step throughput: reference vs fused attention, eager vs compiled, fp32 vs bf16.

Two workloads, forward + backward of the real loss:

* ``pretrain``: the BEVT joint step, clips 16x224 with tube masks + 224 images with block masks
  (official micro-batch per GPU: 4 clips + 32 images);
* ``finetune``: the recognizer on 32x224 clips with cross-entropy;
* ``attention``: one shifted stage-1 WindowAttention3D of Swin-B on one 16x224 clip, alone.

On a GPU it records absolute throughput, peak memory, achieved TFLOP/s and MFU (bf16 against the
H100/H200 dense peak). FLOPs are counted once per workload with torch's FlopCounterMode on the
meta device (the Swin-B trunk comes to ~141 GMAC per 16x224 clip, docs/official-behaviour.md §2), times 3 for forward +
backward. ``--device cpu --quick`` shrinks the inputs (1 clip of 8x112, 1 image) so the whole run
fits in minutes on a small CPU; there only the ratios between variants mean anything.

    python tests/benchmarks/bench_model.py                    # GPU, full size
    python tests/benchmarks/bench_model.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bevt_core.masking import BlockMaskGenerator, TubeMaskGenerator
from bevt_core.models import build_model
from bevt_core.models.swin3d import WindowAttention3D, clip_window, compute_shift_mask
from bevt_core.train.engine import known_peak_tflops
from tests.benchmarks.machine import describe

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Workload:
    name: str
    preset: str
    clips: int
    frames: int
    images: int
    size: int


@dataclass(frozen=True)
class Variant:
    attn_impl: str
    compiled: bool
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.attn_impl}/{'compiled' if self.compiled else 'eager'}/{self.dtype}"


def workloads(quick: bool) -> list[Workload]:
    if quick:
        return [
            Workload("pretrain", "bevt-swin-b", 1, 8, 1, 112),
            Workload("finetune", "k400-swin-b", 1, 8, 0, 112),
            Workload("attention", "bevt-swin-b", 1, 8, 0, 112),
        ]
    return [
        Workload("pretrain", "bevt-swin-b", 4, 16, 32, 224),
        Workload("finetune", "k400-swin-b", 2, 32, 0, 224),
        Workload("attention", "bevt-swin-b", 4, 16, 0, 224),
    ]


def default_variants(device: str, workload: Workload) -> list[Variant]:
    eager = [Variant(impl, False, dtype) for impl in ("reference", "sdpa") for dtype in ("fp32", "bf16")]
    if device == "cuda":
        return eager + [Variant(impl, True, "bf16") for impl in ("reference", "sdpa")]
    if workload.name == "attention":
        return eager + [Variant(impl, True, "fp32") for impl in ("reference", "sdpa")]
    # Inductor needs ~2 min per Swin-B graph on a small CPU: one compiled point for the whole model.
    return eager + ([Variant("sdpa", True, "fp32")] if workload.name == "finetune" else [])


def attention_problem(workload: Workload, impl: str, device: torch.device):
    """Stage-1 Swin-B attention of the workload's clips: (module, windows, window, shift mask)."""
    grid = (workload.frames // 2, workload.size // 4, workload.size // 4)
    window, shift = clip_window(grid, (8, 7, 7), (4, 3, 3))
    num_windows = (grid[0] // window[0]) * (grid[1] // window[1]) * (grid[2] // window[2])
    module = WindowAttention3D(128, (8, 7, 7), 4, attn_impl=impl).to(device)
    x = torch.randn(workload.clips * num_windows, window[0] * window[1] * window[2], 128, device=device)
    mask = compute_shift_mask(grid, window, shift, device) if any(shift) else None
    return module, x.requires_grad_(), window, mask


def make_batch(workload: Workload, device: torch.device, seed: int = 0) -> dict:
    """Inputs of one step; masks from the real generators, token ids and labels random."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    grid = workload.size // 16
    if workload.name == "finetune":
        clip = torch.randn(workload.clips, 3, workload.frames, workload.size, workload.size, generator=generator)
        labels = torch.randint(0, 400, (workload.clips,), generator=generator)
        return {"clip": clip.to(device), "labels": labels.to(device)}
    block = BlockMaskGenerator.scaled(grid)
    tube = TubeMaskGenerator(num_frames=workload.frames, block=block)
    tubes = [tube(rng) for _ in range(workload.clips)]
    video = (
        torch.randn(workload.clips, 3, workload.frames, workload.size, workload.size, generator=generator),
        torch.from_numpy(np.stack([t[0] for t in tubes])) if tubes else None,
        torch.from_numpy(np.stack([t[1] for t in tubes])) if tubes else None,
        torch.randint(0, 8192, (workload.clips, workload.frames, grid, grid), generator=generator),
    )
    blocks = [block(rng) for _ in range(workload.images)]
    image = (
        torch.randn(workload.images, 3, workload.size, workload.size, generator=generator),
        torch.from_numpy(np.stack(blocks)) if blocks else None,
        torch.randint(0, 8192, (workload.images, grid, grid), generator=generator),
    )
    return {
        stream: tuple(t if t is None else t.to(device) for t in tensors)
        for stream, tensors in (("video", video), ("image", image))
    }


def step_loss(model, workload: Workload, batch: dict) -> torch.Tensor:
    if workload.name == "finetune":
        return F.cross_entropy(model(batch["clip"]).float(), batch["labels"])
    return model(video=batch["video"], image=batch["image"])["loss"]


def count_flops(workload: Workload) -> float:
    """Forward + backward model FLOPs of one step (backward counted as twice the forward)."""
    if workload.name == "attention":
        module, x, window, mask = attention_problem(workload, "reference", torch.device("meta"))
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(x, window, mask)
        return 3.0 * counter.get_total_flops()
    batch = make_batch(workload, torch.device("meta"))
    with torch.device("meta"):
        model = build_model(workload.preset, attn_impl="reference")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            if workload.name == "finetune":
                model(batch["clip"])
            else:
                # All tokens through lm_head here; the loss only classifies the masked ones, so
                # count those instead.
                for stream, count in (("video", workload.clips), ("image", workload.images)):
                    if count:
                        model.backbone(*batch[stream][:2])
        lm_head = model.cls_head.lm_head if workload.name == "pretrain" else None
    flops = counter.get_total_flops()
    if lm_head is not None:
        masked = int(batch_mask_tokens(workload))
        flops += 2 * masked * lm_head.in_features * lm_head.out_features
    return 3.0 * flops


def batch_mask_tokens(workload: Workload) -> float:
    """Expected masked target tokens per step: 37.5% of video targets, 50% of image cells."""
    grid = workload.size // 16
    return workload.clips * workload.frames * grid * grid * 0.375 + workload.images * grid * grid * 0.5


def run_variant(workload: Workload, variant: Variant, device: torch.device, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.dtype == "bf16")
    if workload.name == "attention":
        model, x, window, mask = attention_problem(workload, variant.attn_impl, device)
        runnable = torch.compile(model) if variant.compiled else model

        def loss_fn() -> torch.Tensor:
            return runnable(x, window, mask).float().square().mean()

    else:
        model = build_model(workload.preset, attn_impl=variant.attn_impl).to(device).train()
        runnable = torch.compile(model) if variant.compiled else model
        batch = make_batch(workload, device)

        def loss_fn() -> torch.Tensor:
            return step_loss(runnable, workload, batch)

    def step() -> None:
        with autocast:
            loss = loss_fn()
        loss.backward()
        for p in model.parameters():
            p.grad = None

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - started
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    result = {
        "step_s": statistics.median(times),
        "step_min_s": min(times),
        "warmup_s": round(warmup_s, 2),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }
    if variant.compiled:
        torch._dynamo.reset()
    return result


def ratios(rows: list[dict]) -> list[dict]:
    """Speed-ups between variants that differ in one respect only, from the best step of each: on a
    shared machine the slow steps measure the neighbours, not the code."""
    index = {(r["workload"], r["attn_impl"], r["compiled"], r["dtype"]): r for r in rows if "step_s" in r}
    comparisons = []
    for (workload, impl, compiled, dtype), row in index.items():
        for what, other in (
            ("sdpa vs reference", (workload, "reference", compiled, dtype) if impl == "sdpa" else None),
            ("compiled vs eager", (workload, impl, False, dtype) if compiled else None),
            ("bf16 vs fp32", (workload, impl, compiled, "fp32") if dtype == "bf16" else None),
        ):
            if other in index:
                speedup = index[other]["step_min_s"] / row["step_min_s"]
                comparisons.append(
                    {
                        "workload": workload,
                        "comparison": what,
                        "at": Variant(impl, compiled, dtype).label,
                        "speedup": round(speedup, 2),
                    }
                )
    return comparisons


def write_markdown(report: dict, path: Path) -> None:
    lines = [
        "# Model benchmark: Swin-B forward + backward",
        "",
        f"- device: {report['device']}",
        f"- mode: {report['mode']}",
        f"- torch {report['torch']}, measured {report['measured_at']}",
        "",
    ]
    lines += [f"> {note}" for note in report["notes"]] + [""]
    lines += [
        "| workload | attention | mode | dtype | step median (s) | best (s) | clips/s | images/s | TFLOP/s | MFU "
        "| peak mem (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        variant = f"| {r['workload']} | {r['attn_impl']} | {'compiled' if r['compiled'] else 'eager'} | {r['dtype']} |"
        if "error" in r:
            lines.append(f"{variant} {r['error']} | | | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        memory = r["peak_memory_gb"] if r["peak_memory_gb"] is not None else "-"
        images = f"{r['images_per_s']:.2f}" if r["images_per_s"] else "-"
        lines.append(
            f"{variant} {r['step_s']:.3f} | {r['step_min_s']:.3f} | "
            f"{r['clips_per_s']:.2f} | {images} | {r['tflops']:.3f} | {mfu} | {memory} |"
        )
    lines += [
        "",
        "Speed-ups are ratios of best steps.",
        "",
        "| workload | comparison | at | speed-up |",
        "|---|---|---|---|",
    ]
    lines += [f"| {c['workload']} | {c['comparison']} | {c['at']} | {c['speedup']}x |" for c in report["ratios"]]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="small inputs (1 clip of 8x112, 1 image): for CPUs")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10, quick 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workloads", default="pretrain,finetune,attention")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    steps = args.steps or (5 if args.quick else 10)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    name = describe(gpu)
    peak = known_peak_tflops(gpu) or None
    chosen = [w for w in workloads(args.quick) if w.name in args.workloads.split(",")]

    rows, forward_gflop = [], {}
    for workload in chosen:
        flops = count_flops(workload)
        forward_gflop[workload.name] = round(flops / 3e9, 1)
        print(f"{workload.name}: {workload}, {flops / 3e9:.1f} GFLOP forward per step", flush=True)
        for variant in default_variants(device.type, workload):
            row = {"workload": workload.name, **asdict(variant), "shape": asdict(workload)}
            try:
                row |= run_variant(workload, variant, device, steps, args.warmup)
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                rows.append(row)
                continue
            row["clips_per_s"] = workload.clips / row["step_s"]  # attention: clips' worth of windows
            row["images_per_s"] = workload.images / row["step_s"]
            row["tflops"] = flops / row["step_s"] / 1e12
            row["mfu"] = row["tflops"] / peak if peak and variant.dtype == "bf16" else None
            rows.append(row)
            print(f"  {variant.label:28s} {row['step_s']:.3f} s/step  {row['tflops']:.3f} TFLOP/s", flush=True)

    notes = []
    if device.type == "cpu":
        notes.append(
            "CPU run: absolute numbers say nothing about GPU training; only the ratios between variants are "
            "meaningful, and CPU kernels for attention, bf16 and inductor differ from the CUDA ones."
        )
    if args.quick:
        notes.append(
            "Quick mode: Swin-B at reduced input (1 clip of 8x112 and 1 image of 112 px; attention on that clip's "
            "16 stage-1 windows of 4x7x7), not the training shapes."
        )
    if peak:
        notes.append(f"MFU is model FLOPs (fwd+bwd = 3x forward) over the dense bf16 peak of {peak:.0f} TFLOP/s.")
    report = {
        "device": name,
        "mode": ("quick " if args.quick else "") + device.type,
        "torch": str(torch.__version__),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "forward_gflop_per_step": forward_gflop,
        "notes": notes,
        "results": rows,
        "ratios": ratios(rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "model.md")
    print(f"wrote {args.out / 'model.json'} and {args.out / 'model.md'}")


if __name__ == "__main__":
    main()
