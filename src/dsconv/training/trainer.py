"""The epoch loop: mixed precision, gradient clipping, LR schedule, early stopping, checkpoints.

Per-batch statistics stay on the device (no ``.item()`` inside the loop); one host sync per epoch
reads them. Everything needed to continue a run — model, optimizer, scheduler, grad scaler,
early-stopping state, RNG states and the data-order generator — is in ``state_dict()``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from dsconv.training.checkpoint import atomic_save, rng_state
from dsconv.training.optim import Schedule

log = logging.getLogger(__name__)
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


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    logits: torch.Tensor
    labels: torch.Tensor


@dataclass
class TrainerState:
    epoch: int = 0  # epochs completed
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        *,
        device: torch.device,
        epochs: int,
        precision: str = "fp32",
        grad_clip: float | None = None,
        early_stopping: EarlyStopping | None = None,
        run_dir: str | Path = ".",
        data_generator: torch.Generator | None = None,
        compile_model: bool = False,
        progress: bool = True,
        on_epoch_end: Callable[[dict[str, float]], None] | None = None,
        extra_state: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.device = device
        self.epochs = epochs
        self.precision = precision
        self.grad_clip = grad_clip
        self.early_stopping = early_stopping or EarlyStopping()
        self.run_dir = Path(run_dir)
        self.data_generator = data_generator
        self.forward = torch.compile(model) if compile_model else model
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.extra_state = extra_state or {}
        # fp16 needs loss scaling to keep small gradients representable; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.state = TrainerState()

    # ----------------------------------------------------------------- one epoch
    def train_epoch(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], epoch: int) -> dict[str, float]:
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        start = time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch}/{self.epochs}", leave=False, disable=None if self.progress else True,
                   total=len(batches) if hasattr(batches, "__len__") else None)
        for images, labels in bar:
            with autocast_context(self.device, self.precision):
                logits = self.forward(images)
                loss = F.cross_entropy(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.schedule.after_step()
            self.state.step += 1
            n = labels.shape[0]
            loss_sum += loss.detach() * n
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += n
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        train_loss = loss_sum.item() / max(seen, 1)
        return {
            "train_loss": train_loss,
            "train_acc": correct.item() / max(seen, 1),
            "epoch_time_s": elapsed,
            "images_per_s": seen / elapsed if elapsed > 0 else math.nan,
        }

    @torch.inference_mode()
    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> EvalResult:
        self.model.eval()
        all_logits, all_labels = [], []
        for images, labels in batches:
            with autocast_context(self.device, self.precision):
                all_logits.append(self.forward(images).float())
            all_labels.append(labels)
        logits, labels = torch.cat(all_logits), torch.cat(all_labels)
        loss = F.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return EvalResult(loss, accuracy, logits, labels)

    # ----------------------------------------------------------------- the loop
    def fit(self, train_batches, val_batches) -> list[dict[str, float]]:
        log_path = self.run_dir / "training_log.csv"
        first = self.state.epoch + 1
        for epoch in range(first, self.epochs + 1):
            row: dict[str, float] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self.train_epoch(train_batches, epoch))
            val = self.evaluate(val_batches)
            row.update(val_loss=val.loss, val_acc=val.accuracy)
            self.schedule.after_epoch(val.loss)
            self.state.epoch = epoch
            self.state.history.append(row)
            improved = self.early_stopping.update(row, epoch)
            _append_csv(log_path, row)
            log.info(
                "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.3g | %.1fs %.0f img/s%s",
                epoch, self.epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
                row["lr"], row["epoch_time_s"], row["images_per_s"], "  *best*" if improved else "",
            )
            if self.on_epoch_end is not None:
                self.on_epoch_end(row)
            self.save(self.run_dir / "checkpoints" / "last.pt")
            if improved:
                self.save(self.run_dir / "checkpoints" / "best.pt")
            if self.early_stopping.should_stop:
                log.info("early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                         self.early_stopping.monitor, self.early_stopping.patience,
                         self.early_stopping.best, self.early_stopping.best_epoch)
                break
        return self.state.history

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "early_stopping": asdict(self.early_stopping),
            "trainer": {"epoch": self.state.epoch, "step": self.state.step, "history": self.state.history},
            "rng": rng_state(),
            "data_generator": self.data_generator.get_state() if self.data_generator is not None else None,
            **self.extra_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from dsconv.training.checkpoint import set_rng_state

        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.early_stopping = EarlyStopping(**state["early_stopping"])
        trainer = state["trainer"]
        self.state = TrainerState(int(trainer["epoch"]), int(trainer["step"]), list(trainer["history"]))
        set_rng_state(state["rng"])
        if self.data_generator is not None and state.get("data_generator") is not None:
            self.data_generator.set_state(state["data_generator"])

    def save(self, path: Path) -> Path:
        return atomic_save(self.state_dict(), path)


def _append_csv(path: Path, row: dict[str, float]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
