"""Classification metrics and the fit diagnosis, from predictions gathered on the device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro and per-class precision/recall/F1, and the confusion matrix.

    Computed from the confusion matrix with numpy, in the layout and with the zero-division rule
    (0.0) of scikit-learn's ``classification_report(output_dict=True)``; importing scikit-learn would
    cost every run about a second. A test checks equality with scikit-learn.
    """
    y_pred = logits.argmax(1).cpu().numpy().astype(np.int64)
    y_true = labels.cpu().numpy().astype(np.int64)
    n = len(classes)
    confusion = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    tp = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(0), confusion.sum(1)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    accuracy = float(tp.sum() / max(len(y_true), 1))
    report: dict[str, Any] = {
        name: {"precision": p, "recall": r, "f1-score": f, "support": float(c)}
        for name, p, r, f, c in zip(classes, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist())
    }
    total = float(support.sum())
    report["accuracy"] = accuracy
    report["macro avg"] = {
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1-score": float(f1.mean()),
        "support": total,
    }
    weights = support / total if total else np.zeros(n)
    report["weighted avg"] = {
        "precision": float((precision * weights).sum()),
        "recall": float((recall * weights).sum()),
        "f1-score": float((f1 * weights).sum()),
        "support": total,
    }
    return {
        "accuracy": accuracy,
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "report": report,
        "confusion_matrix": confusion.tolist(),
        "per_class_f1": {name: float(report[name]["f1-score"]) for name in classes},
    }


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def fit_diagnosis(history: Sequence[dict[str, float]], best_epoch: int) -> dict[str, Any]:
    """Over/underfitting verdict from the learning curves at the selected (best) epoch.

    Rule: *overfitting* when the validation loss ends more than 10% above its minimum, reached at
    least 2 epochs before the end (one noisy epoch is not a trend), while the training loss kept
    falling, or when train accuracy exceeds validation accuracy by more than 5
    points at the best epoch; *underfitting* when train accuracy at the best epoch is below 80%, or
    the training loss was still falling by more than 5% per epoch over the last 3 epochs when
    training stopped; otherwise a good fit.
    """
    if not history:
        return {"verdict": "unknown", "reason": "no epochs recorded"}
    rows = {int(r["epoch"]): r for r in history}
    best = rows.get(best_epoch, history[-1])
    last = history[-1]
    val_losses = np.array([r["val_loss"] for r in history])
    min_val = float(val_losses.min())
    epochs_since_min = len(history) - 1 - int(val_losses.argmin())
    gap_acc = float(best["train_acc"] - best["val_acc"])
    rise = float(last["val_loss"] / min_val - 1) if min_val > 0 else 0.0
    recent = [r["train_loss"] for r in history[-4:]]
    falling = len(recent) >= 4 and all(b < a * 0.95 for a, b in zip(recent, recent[1:]))
    details = {
        "train_val_acc_gap_at_best": gap_acc,
        "val_loss_rise_after_min": rise,
        "epochs_since_val_loss_min": epochs_since_min,
        "train_loss_still_falling": bool(falling),
        "train_acc_at_best": float(best["train_acc"]),
    }
    if (rise > 0.10 and epochs_since_min >= 2 and last["train_loss"] < best["train_loss"]) or gap_acc > 0.05:
        verdict, reason = (
            "overfitting",
            "validation loss rose after its minimum while training loss fell, "
            "or train accuracy exceeds validation accuracy by more than 5 points",
        )
    elif best["train_acc"] < 0.8 or falling:
        verdict, reason = (
            "underfitting",
            "training accuracy below 80% or training loss still falling "
            ">5%/epoch when training stopped (train longer or use a bigger model)",
        )
    else:
        verdict, reason = "good fit", "small train/val gap and validation loss near its minimum"
    return {"verdict": verdict, "reason": reason, **details}
