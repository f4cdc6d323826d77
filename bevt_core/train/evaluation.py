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
from bevt_core.train.distributed import all_reduce_sum


@dataclass
class Metrics:
    samples: int
    top1: float
    top5: float
    mean_class_accuracy: float
    per_class_accuracy: list[float | None]  # None for a class with no samples
    confusion: list[list[int]]  # rows: true class, columns: predicted


@dataclass
class Counts:
    """What metrics are computed from, summable across ranks: the confusion matrix and the top-5 hits."""

    confusion: torch.Tensor  # (classes, classes) int64, rows: true class
    top5_hits: torch.Tensor  # () int64

    @classmethod
    def of(cls, probs: torch.Tensor, labels: torch.Tensor, classes: int) -> Counts:
        if not len(labels):  # a rank whose share of the videos is empty
            return cls(torch.zeros(classes, classes, dtype=torch.long), torch.zeros((), dtype=torch.long))
        topk = probs.topk(min(5, classes), dim=1).indices
        confusion = torch.zeros(classes, classes, dtype=torch.long)
        confusion.index_put_((labels, topk[:, 0]), torch.ones_like(labels), accumulate=True)
        return cls(confusion, (topk == labels[:, None]).any(1).sum())

    def summed(self) -> Counts:
        """Summed over the ranks of the job (each counted its share of the videos)."""
        flat = all_reduce_sum(torch.cat([self.confusion.flatten(), self.top5_hits.reshape(1)]))
        return Counts(flat[:-1].reshape(self.confusion.shape), flat[-1])

    def metrics(self) -> Metrics:
        samples = int(self.confusion.sum())
        totals = self.confusion.sum(1)
        per_class = [(self.confusion[c, c] / totals[c]).item() if totals[c] else None for c in range(len(totals))]
        present = [a for a in per_class if a is not None]
        return Metrics(
            samples,
            self.confusion.diagonal().sum().item() / samples,
            self.top5_hits.item() / samples,
            sum(present) / len(present),
            per_class,
            self.confusion.tolist(),
        )


def metrics(probs: torch.Tensor, labels: torch.Tensor) -> Metrics:
    return Counts.of(probs, labels, probs.shape[1]).metrics()


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
    if not labels:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
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
