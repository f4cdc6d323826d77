"""The benchmark report: every benchmark's latest results against the targets of DESIGN §5.

Reads what the four scripts wrote to ``tests/benchmarks/results/`` (data, model, tokenize,
train) and writes ``report.json`` and ``report.md`` beside them: one row per measurement with
its value, the target, whether it is met, and the device it came from. A GPU target measured on
a CPU is reported as "not assessed", never as met or missed: the CPU figures are ratios of one
run on a shared machine. ``make bench`` runs the scripts and then this.

    python tests/benchmarks/report.py
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
GPU_ONLY = "not assessed (GPU target, CPU run)"


@dataclass
class Row:
    area: str
    measurement: str
    value: str
    target: str
    met: str  # "yes" | "no" | GPU_ONLY | "-" (no target)
    device: str
    source: str


def verdict(ok: bool) -> str:
    return "yes" if ok else "no"


def on_gpu(device: str) -> bool:
    return any(name in device for name in ("NVIDIA", "H100", "H200", "A100", "cuda"))


def data_rows(d: dict) -> list[Row]:
    rows, dev, src = [], d["device"], "data.md"
    for s in d["shard"]:
        fi = s["frame_interval"]
        rows.append(
            Row(
                "shard",
                f"shard wall / pure decode, interval {fi}",
                f"{s['shard_over_decode']:.2f}x",
                "<= 1.5x",
                verdict(s["shard_over_decode"] <= 1.5),
                dev,
                src,
            )
        )
        rows.append(
            Row(
                "shard",
                f"`bevt shard` 1 -> 2 workers, interval {fi}",
                f"{s['speedup_2_workers']:.2f}x",
                "linear (2x)",
                verdict(s["speedup_2_workers"] >= 1.8),
                dev,
                src,
            )
        )
    scaling = d["decode_scaling"]
    rows.append(
        Row(
            "shard",
            "pure decode 1 -> 2 processes (what the machine allows)",
            f"{scaling['speedup_2_processes']:.2f}x",
            "-",
            "-",
            dev,
            src,
        )
    )
    loader = d["loader"]
    rows.append(
        Row(
            "loader",
            f"CPU per clip from shards / decord from the mp4 ({loader['clip']})",
            f"{loader['shard_over_decord']:.3f}",
            "<= 0.25",
            verdict(loader["shard_over_decord"] <= 0.25),
            dev,
            src,
        )
    )
    return rows


def model_rows(d: dict) -> list[Row]:
    dev, src, gpu = d["device"], "model.md", on_gpu(d["device"])
    rows = []
    for r in d["ratios"]:
        target, met = "-", "-"
        if r["comparison"] == "sdpa vs reference" and r["workload"] == "attention":
            target = ">= 2x (GPU)"
            met = verdict(r["speedup"] >= 2.0) if gpu else GPU_ONLY
        rows.append(
            Row(
                "model",
                f"{r['workload']}: {r['comparison']} ({r['at']})",
                f"{r['speedup']:.2f}x",
                target,
                met,
                dev,
                src,
            )
        )
    if gpu:  # absolute step figures mean something only on the accelerator they are for
        for r in d["results"]:
            if r.get("mfu") is not None:
                rows.append(
                    Row(
                        "model",
                        f"{r['workload']} {r['attn_impl']} {'compiled' if r['compiled'] else 'eager'} "
                        f"{r['dtype']}: MFU",
                        f"{r['mfu']:.1%} ({r['tflops']:.0f} TFLOP/s)",
                        "-",
                        "-",
                        dev,
                        src,
                    )
                )
    return rows


def tokenize_rows(d: dict) -> list[Row]:
    dev, src, gpu = d["device"], "tokenize.md", on_gpu(d["device"])
    rows = []
    for t in d["tokenizers"]:
        dalle = t["tokenizer"] == "dalle"
        met = (verdict(t["encoder_frames_per_s"] >= 5000) if gpu else GPU_ONLY) if dalle else "-"
        rows.append(
            Row(
                "tokenize",
                f"{t['tokenizer']} {t['precision']} encoder frames/s at {t['input_px']} px",
                f"{t['encoder_frames_per_s']:,.1f}",
                ">= 5,000 per H100" if dalle else "-",
                met,
                dev,
                src,
            )
        )
    step = d["step"]
    rows.append(
        Row(
            "tokenize",
            f"targets of one micro-batch ({step['frames']} frames): online / stored time",
            f"{step['online_over_stored']:,.0f}x",
            "-",
            "-",
            dev,
            src,
        )
    )
    return rows


def train_rows(d: dict) -> list[Row]:
    meta, src = d["meta"], "train.md"
    dev = f"{meta['device']} ({meta['setup']['preset']})"
    gpu = on_gpu(meta["device"])
    rows = [Row("joint step", name, f"{value:.2f}x", "-", "-", dev, src) for name, value in d["speedups"].items()]
    best = {(r["attention"], r["targets"], r["dtype"]): r["step_best_s"] for r in d["rows"]}
    official = next((v for (a, t, _), v in best.items() if a == "reference" and t == "online"), None)
    ours = min((v for (a, t, _), v in best.items() if a == "sdpa" and t == "stored"), default=None)
    if official and ours:
        ratio = official / ours
        rows.append(
            Row(
                "joint step",
                "ours (SDPA, stored targets) vs official-style (reference attention, online DALL-E)",
                f"{ratio:.2f}x",
                ">= 3x (GPU, Swin-B)",
                verdict(ratio >= 3.0) if gpu else GPU_ONLY,
                dev,
                src,
            )
        )
    for r in d["rows"]:
        if r.get("mfu") is not None:
            rows.append(
                Row(
                    "joint step",
                    f"{r['attention']} / {r['targets']} / {r['dtype']}: backbone MFU",
                    f"{r['mfu']:.1%}",
                    ">= 35%",
                    verdict(r["mfu"] >= 0.35),
                    dev,
                    src,
                )
            )
    return rows


READERS = {"data.json": data_rows, "model.json": model_rows, "tokenize.json": tokenize_rows, "train.json": train_rows}


def build(results: Path = RESULTS) -> tuple[list[Row], list[str]]:
    rows, missing = [], []
    for name, read in READERS.items():
        path = results / name
        if path.exists():
            rows += read(json.loads(path.read_text()))
        else:
            missing.append(name)
    return rows, missing


def markdown(rows: list[Row], missing: list[str]) -> str:
    lines = [
        "# Benchmark report",
        "",
        "Every benchmark's latest results (`make bench`; each row links the script's own table) against "
        "DESIGN §5. CPU rows are ratios from one run on a shared 2-core machine; a GPU target measured on a "
        "CPU is marked not assessed.",
        "",
        "| area | measurement | value | target | met | device | details |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.area} | {r.measurement} | {r.value} | {r.target} | {r.met} | {r.device} | [{r.source}]({r.source}) |"
        for r in rows
    ]
    if missing:
        lines += ["", f"Not yet measured: {', '.join(missing)} (run `make bench`)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    rows, missing = build()
    (RESULTS / "report.json").write_text(
        json.dumps({"rows": [asdict(r) for r in rows], "missing": missing}, indent=2) + "\n"
    )
    (RESULTS / "report.md").write_text(markdown(rows, missing))
    print(markdown(rows, missing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
