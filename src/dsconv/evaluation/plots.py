"""Figures written next to every run: confusion matrix, sample predictions, learning curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
import torch


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = ""):
    cm = np.asarray(matrix)
    size = max(5.0, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xlabel="predicted",
        ylabel="true",
        title=title or "confusion matrix",
    )
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if cm[i, j] > threshold else "black",
            )
    fig.tight_layout()
    return fig


def sample_predictions_figure(
    images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, classes: Sequence[str], count: int = 24
):
    """Misclassified examples first (they are the informative ones), then correct ones."""
    preds = logits.argmax(1).cpu()
    labels = labels.cpu()
    wrong = torch.nonzero(preds != labels).flatten()
    right = torch.nonzero(preds == labels).flatten()
    order = torch.cat([wrong[: count // 2], right])[:count]
    cols = 8
    rows = max(1, -(-len(order) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.75))
    for ax in np.atleast_1d(axes).flat:
        ax.axis("off")
    for ax, idx in zip(np.atleast_1d(axes).flat, order.tolist()):
        img = images[idx].cpu()
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        ok = preds[idx] == labels[idx]
        ax.set_title(
            f"{classes[preds[idx]]}\n(true {classes[labels[idx]]})", fontsize=7, color="green" if ok else "red"
        )
    fig.suptitle("sample test predictions (red = wrong)", fontsize=9)
    fig.tight_layout()
    return fig


def curves_figure(history: Sequence[dict[str, float]], best_epoch: int | None = None, title: str = ""):
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_acc.plot(epochs, [r["train_acc"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r["val_acc"] for r in history], "o-", label="val")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        if best_epoch:
            ax.axvline(best_epoch, color="gray", linestyle="--", linewidth=1, label="best")
        ax.set(xlabel="epoch", ylabel=name, title=f"{title} {name}".strip())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


FIGURE_DPI = 110


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(figure_png(fig))
    return path


def figure_png(fig) -> bytes:
    """The figure as PNG bytes, then closed: one render serves both the file and TensorBoard."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    finally:
        plt.close(fig)
    return buffer.getvalue()
