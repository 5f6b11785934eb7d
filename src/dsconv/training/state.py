"""What a run carries between steps, epochs and processes: early stopping, counters, the history,
an epoch in flight, and the training-log CSV that mirrors the history."""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

LOG_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")


@dataclass
class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs (0 = never)."""

    monitor: str = "val_acc"
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    @property
    def mode(self) -> str:
        return "min" if self.monitor.endswith("loss") else "max"

    def update(self, metrics: dict[str, float], epoch: int) -> bool:
        value = metrics[self.monitor]
        sign = -1.0 if self.mode == "min" else 1.0
        improved = self.best is None or sign * (value - self.best) > self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def describe_stop(self) -> str:
        return (
            f"early stopping: {self.monitor} has not improved for {self.patience} epochs "
            f"(best {self.best:.4f} at epoch {self.best_epoch})"
        )


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    logits: torch.Tensor
    labels: torch.Tensor


@dataclass
class TrainerState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0  # steps dropped by nan_policy=skip
    train_time_s: float = 0.0  # wall time inside fit(), summed over resumed sessions


@dataclass
class EpochProgress:
    """The state of an epoch in flight; a mid-epoch checkpoint saves it, a resume continues it."""

    epoch: int
    lr: float  # at the start of the epoch (what the log row reports)
    generator_state: torch.Tensor | None  # data-order generator before the epoch's first draw
    loss_sum: torch.Tensor
    correct: torch.Tensor
    first_bad_step: torch.Tensor  # global step of the first non-finite loss, -1 if none
    batches_done: int = 0
    seen: int = 0
    elapsed_s: float = 0.0

    def to_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "lr": self.lr,
            "batches_done": self.batches_done,
            "seen": self.seen,
            "elapsed_s": self.elapsed_s,
            "loss_sum": self.loss_sum.detach().cpu(),
            "correct": self.correct.detach().cpu(),
            "first_bad_step": self.first_bad_step.detach().cpu(),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], generator_state: torch.Tensor | None, device: torch.device
    ) -> EpochProgress:
        return cls(
            int(state["epoch"]),
            float(state["lr"]),
            generator_state,
            state["loss_sum"].to(device),
            state["correct"].to(device),
            state["first_bad_step"].to(device),
            int(state["batches_done"]),
            int(state["seen"]),
            float(state["elapsed_s"]),
        )


def append_csv(path: Path, row: dict[str, float]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def rewrite_csv(path: Path, history: list[dict[str, float]]) -> None:
    """Replace the log with ``history`` (atomically): after a resume, rows past the checkpoint go."""
    if not history:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def epoch_line(row: dict[str, float], epochs: int, improved: bool) -> str:
    """The one console line per epoch."""
    return (
        f"epoch {int(row['epoch'])}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} | lr {row['lr']:.3g} | "
        f"{row['epoch_time_s']:.1f}s {row['images_per_s']:.0f} img/s{'  *best*' if improved else ''}"
    )
