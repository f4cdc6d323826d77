"""Multi-view video classification metrics: top-1/top-5, per-class accuracy, confusion matrix.

Views (clips x crops) are averaged as softmax probabilities, the official ``average_clips='prob'``.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from bevt_core import storage


@dataclass
class Metrics:
    samples: int
    top1: float
    top5: float
    mean_class_accuracy: float
    per_class_accuracy: list[float | None]  # None for a class with no samples
    confusion: list[list[int]]  # rows: true class, columns: predicted


def metrics(probs: torch.Tensor, labels: torch.Tensor) -> Metrics:
    num_classes = probs.shape[1]
    k = min(5, num_classes)
    topk = probs.topk(k, dim=1).indices
    pred = topk[:, 0]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    totals = confusion.sum(1)
    per_class = [(confusion[c, c] / totals[c]).item() if totals[c] else None for c in range(num_classes)]
    present = [a for a in per_class if a is not None]
    return Metrics(
        len(labels),
        (pred == labels).float().mean().item(),
        (topk == labels[:, None]).any(1).float().mean().item(),
        sum(present) / len(present),
        per_class,
        confusion.tolist(),
    )


@torch.no_grad()
def predict(
    model: nn.Module, batches, device: torch.device, max_views: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, labels) over batches of {'views': (B,V,3,T,H,W), 'label': (B,)}."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for batch in batches:
        probs.append(model.predict_views(batch["views"].to(device), max_views).cpu())
        labels.append(batch["label"])
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


def write_report(m: Metrics, classes: list[str], out_dir: str) -> dict[str, str]:
    """``metrics.json`` and ``confusion.png`` under ``out_dir``; returns their URIs."""
    uris = {"metrics": storage.join(out_dir, "metrics.json"), "confusion": storage.join(out_dir, "confusion.png")}
    storage.write_bytes(uris["metrics"], json.dumps(asdict(m) | {"classes": classes}, indent=1).encode())
    storage.write_bytes(uris["confusion"], confusion_png(m.confusion, classes))
    return uris


def confusion_png(confusion: list[list[int]], classes: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = max(4.0, 0.35 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i, row in enumerate(confusion):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
