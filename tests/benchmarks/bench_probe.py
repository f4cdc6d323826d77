"""What the pool-pretrained trunks carry before any finetuning: a linear probe of their frozen features.

    python -m tests.benchmarks.bench_probe [--study work/study-labels] [--seeds 0 1 2]

For every seed of a finished label-efficiency study (``bevt study --design label-efficiency``) and every
initialisation (scratch: the recognizer's random init under that seed; image, video, joint: the seed's
pretraining weights, loaded as its finetunes load them), the frozen trunk's pooled features of each clip
of a task's training shards (all labels) and of its val shards, one validation view per clip (what
validation scores); then an L2 logistic regression, its strength chosen by 4-fold cross-validation on
the training features alone, fit on train and scored on val. camera-motion's val sources are not its
training sources, so a probe above chance there reads motion from features that no label shaped.

Writes ``tests/benchmarks/results/probe.json`` and ``probe.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

from bevt_core.config import from_dict
from bevt_core.loading.clips import clip_stream
from bevt_core.loading.streams import loader
from bevt_core.models import load_checkpoint
from bevt_core.recipes import FINETUNE, resolve
from bevt_core.stages.finetune import FinetuneConfig
from bevt_core.stages.training import build_from
from bevt_core.study.common import ARMS, TASKS
from tests.benchmarks.machine import describe

RESULTS = Path(__file__).parent / "results"
INITS = {  # arm -> its pretraining weights in a seed's directory (scratch has none)
    "image": "pretrain-image/image_encoder.pt",
    "video": "pretrain-video/bevt_pretrain.pt",
    "joint": "pretrain-joint/bevt_pretrain.pt",
}


def trunk(task: str, seed: int, init: Path | None) -> tuple[torch.nn.Module, FinetuneConfig]:
    """The task's recognizer with ``init``'s weights (None: its random init under ``seed``); its head is unused."""
    cfg = from_dict(FinetuneConfig, {"preset": TASKS[task], "train": "-", "run": {"work_dir": "-"}})
    resolve(cfg, FINETUNE)
    spec = cfg.clip.spec()
    torch.manual_seed(seed)
    model = build_from(cfg.model, cfg.run, num_classes=1, num_frames=spec.clip_len, image_size=spec.crop)
    if init is not None:
        load_checkpoint(model, str(init), strict=False)
    return model.eval(), cfg


@torch.no_grad()
def features(model: torch.nn.Module, cfg: FinetuneConfig, shards: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Pooled trunk features (clips, channels) and labels of every clip's validation view, and how far the
    features move when the clip is played backwards (mean of |f(clip) - f(reversed)| / |f(clip)|)."""
    stream = clip_stream(str(shards), cfg.clip.spec(), "validation", 8, 0, 1, 0)
    pooled, labels, moved = [], [], []
    for batch in loader(stream, 0):
        clips = batch["views"].flatten(0, 1)  # one view per clip: (B, 3, T, H, W)
        forward, backward = (model.backbone(x).mean((2, 3, 4)) for x in (clips, clips.flip(2)))
        pooled.append(forward)
        moved.append((forward - backward).norm(dim=1) / forward.norm(dim=1))
        labels.append(batch["label"])
    return torch.cat(pooled).numpy(), torch.cat(labels).numpy(), torch.cat(moved).mean().item()


def probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]) -> float:
    scale = StandardScaler().fit(train[0])
    fit = LogisticRegressionCV(
        Cs=8, cv=4, max_iter=3000, scoring="accuracy", l1_ratios=(0.0,), use_legacy_attributes=False
    ).fit(scale.transform(train[0]), train[1])
    return float((fit.predict(scale.transform(val[0])) == val[1]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="work/study-labels", help="A finished label-efficiency study's work dir.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    study = Path(args.study)
    shards = study / "data" / "val"
    rows: dict[str, dict[str, list[float]]] = {task: {arm: [] for arm in ARMS} for task in TASKS}
    reversal: dict[str, dict[str, list[float]]] = {task: {arm: [] for arm in ARMS} for task in TASKS}
    started = time.monotonic()
    for seed in args.seeds:
        for task in TASKS:
            for arm in ARMS:
                init = study / f"seed{seed}" / INITS[arm] if arm in INITS else None
                model, cfg = trunk(task, seed, init)
                *train, _ = features(model, cfg, shards / task / "train-all")
                *val, moved = features(model, cfg, shards / task / "eval")
                rows[task][arm].append(probe(train, val))
                reversal[task][arm].append(moved)
                print(f"seed {seed}: {task}, {arm}: probe val top-1 {rows[task][arm][-1]:.1%}, reversal {moved:.3f}")
    seconds = round(time.monotonic() - started, 1)
    record = {"study": str(study), "seeds": args.seeds, "top1": rows, "reversal": reversal, "seconds": seconds}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "probe.json").write_text(json.dumps(record | {"machine": describe()}, indent=2) + "\n")
    header = [f"{t} probe top-1" for t in TASKS] + ["camera-motion reversal"]
    lines = ["| initialisation | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for arm in ARMS:
        cells = [spread(rows[task][arm], "{:.1%}") for task in TASKS] + [
            spread(reversal["camera-motion"][arm], "{:.3f}")
        ]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (RESULTS / "probe.md").write_text(f"# Linear probe of the label-efficiency study's frozen trunks\n\n{table}\n")
    print(table)


def spread(values: list[float], fmt: str) -> str:
    """Mean ± sample std (per seed in brackets)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    each = ", ".join(fmt.format(v) for v in values)
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(std)} ({each})"


if __name__ == "__main__":
    main()
