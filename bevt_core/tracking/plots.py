"""PNG figures (matplotlib, Agg: no display needed), each returned as bytes to log or store."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _pyplot().close(fig)
    return buf.getvalue()


# Panels of the training curves: title, and which logged keys go in it.
CURVE_PANELS = (
    ("loss", lambda k: k == "loss" or k.startswith("loss_")),
    ("masked-token / train accuracy", lambda k: k == "acc" or k.startswith("acc_")),
    ("learning rate", lambda k: k == "lr"),
    ("throughput (samples/s)", lambda k: k == "samples_per_s"),
    ("memory (GB: GPU peak, or process RSS on CPU)", lambda k: k == "memory_gb"),
    ("grad norm", lambda k: k == "grad_norm"),
    ("validation, one view per video", lambda k: k in ("val_top1", "val_top5")),
)


def training_curves(history: list[dict[str, float]]) -> bytes | None:
    """One panel per quantity (loss and accuracy per stream, lr, throughput, memory, grad norm)
    against the optimizer step; None when nothing was logged."""
    if not history:
        return None
    keys = sorted({k for h in history for k in h if k != "step"})
    panels = [(title, [k for k in keys if wanted(k)]) for title, wanted in CURVE_PANELS]
    panels = [(title, ks) for title, ks in panels if ks]
    if not panels:
        return None
    plt = _pyplot()
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3 * rows), squeeze=False)
    for ax, (title, ks) in zip(axes.flat, panels):
        for k in ks:
            points = [(h["step"], h[k]) for h in history if k in h]
            ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=k)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if len(ks) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return _png(fig)


def rejects_histogram(counts: dict[str, int], items: int) -> bytes:
    """Rejected inputs per reason (horizontal bars), titled with the reject rate."""
    plt = _pyplot()
    reasons = sorted(counts, key=lambda r: (-counts[r], r))
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.4 * max(1, len(reasons))))
    total = sum(counts.values())
    ax.set_title(f"rejected {total} of {items} inputs ({total / max(items, 1):.1%})", fontsize=10)
    if reasons:
        ax.barh(reasons[::-1], [counts[r] for r in reasons[::-1]], color="tab:red")
        ax.set_xlabel("inputs")
    else:
        ax.text(0.5, 0.5, "no input rejected", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig)


def per_class_accuracy(accuracy: list[float | None], classes: list[str]) -> bytes:
    """Accuracy per class (classes without samples are marked, not drawn as zero)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.3 * len(classes)))
    values = [a if a is not None else 0.0 for a in accuracy]
    colors = ["tab:blue" if a is not None else "lightgrey" for a in accuracy]
    labels = [c if a is not None else f"{c} (no samples)" for c, a in zip(classes, accuracy)]
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title("per-class accuracy", fontsize=10)
    return _png(fig)


@dataclass
class MaskedExample:
    """One masked-prediction example at the token grid: the input crop, which cells were masked,
    the target ids and the model's ids; ``*_pixels`` when the tokenizer can draw its ids."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (G, G) bool, True = masked
    target: np.ndarray  # (G, G) int
    predicted: np.ndarray  # (G, G) int
    target_pixels: np.ndarray | None = None  # (h, w, 3) uint8
    predicted_pixels: np.ndarray | None = None


def masked_prediction(examples: list[MaskedExample], vocab_size: int, title: str) -> bytes:
    """A row per example: input, masked input, target tokens, predicted tokens (ids colour-coded,
    masked cells framed, the masked-cell accuracy in the title), and the tokens drawn back as
    pixels when the tokenizer can."""
    plt = _pyplot()
    drawn = all(e.target_pixels is not None for e in examples)
    cols = 6 if drawn else 4
    fig, axes = plt.subplots(len(examples), cols, figsize=(2.2 * cols, 2.3 * len(examples)), squeeze=False)
    cmap = plt.get_cmap("nipy_spectral", vocab_size)
    for row, e in zip(axes, examples):
        g = e.mask.shape[0]
        h, w = e.image.shape[:2]
        cell = np.kron(e.mask, np.ones((h // g, w // g), bool))[:h, :w]
        masked = e.image.copy()
        masked[cell] = (masked[cell] * 0.25 + 96).astype(np.uint8)
        hits = (e.predicted == e.target)[e.mask]
        panels = [
            (e.image, "input"),
            (masked, f"masked ({int(e.mask.sum())}/{e.mask.size})"),
            (e.target, "target ids"),
            (e.predicted, f"predicted ({hits.mean() if hits.size else 0:.0%} of masked)"),
        ]
        if drawn:
            panels += [(e.target_pixels, "target drawn"), (e.predicted_pixels, "predicted drawn")]
        for ax, (img, name) in zip(row, panels):
            ids = img.ndim == 2
            ax.imshow(
                img,
                cmap=cmap if ids else None,
                vmin=0 if ids else None,
                vmax=vocab_size - 1 if ids else None,
                interpolation="nearest",
            )
            if ids:
                for y, x in zip(*np.nonzero(e.mask)):
                    ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, lw=0.6, ec="white"))
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _png(fig)
