"""The epoch loop: mixed precision, gradient clipping, LR schedule, early stopping, checkpoints.

Per-batch statistics stay on the device (no ``.item()`` inside the loop); one host sync per epoch
reads them. Everything needed to continue a run — model, optimizer, scheduler, grad scaler,
early-stopping state, RNG states, the data-order generator and, for a checkpoint taken inside an
epoch, that epoch's partial statistics — is in ``state_dict()``, and a resumed run is bit-identical
to an uninterrupted one on CPU.

Mid-epoch checkpoints (``checkpoint_every_steps`` or a SIGTERM/SIGINT) store the data generator as
it was *before* the epoch's permutation was drawn plus the number of batches already trained on.
Resuming rewinds the generator and replays those batches without training on them: the replay
draws the same permutation and augmentation random numbers, so the remaining batches are exactly
the ones the interrupted run would have seen, whatever the batch iterable does internally.

Non-finite losses: with ``nan_policy="stop"`` the loop records the first bad step in a device-side
tensor (no per-step host sync) and checks it at the epoch end and before every checkpoint, so a
checkpoint never holds weights trained on a NaN; training stops naming the epoch, step and last good
checkpoint. ``nan_policy="skip"`` must decide before ``optimizer.step`` whether to apply a step, so
it reads ``isfinite(loss)`` every step (one host sync per step, the price of skipping).

The loss is an injected ``criterion(logits, labels, images) -> scalar`` (cross-entropy by default;
distillation passes the augmented images on to its teacher), computed under the run's autocast.

Execution (``dsconv.distributed``): one process, or a DDP group where every decision that ends or
skips a step is agreed on by all ranks, epoch sums are summed and evaluation outputs gathered in split
order; only rank 0 writes. A group's checkpoint holds every rank's RNG and in-epoch sums (``ranks``).
"""

from __future__ import annotations

import itertools
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from dsconv.distributed import Execution, SingleProcess, own_rank_state
from dsconv.training.checkpoint import atomic_save, rng_state
from dsconv.training.criterion import Criterion, CrossEntropyCriterion
from dsconv.training.faults import GracefulStop, NonFiniteLossError, TrainingInterrupted
from dsconv.training.optim import Schedule
from dsconv.training.settings import TrainerSettings, autocast_context
from dsconv.training.state import (  # noqa: F401  (EvalResult, LOG_FIELDS: re-exported)
    LOG_FIELDS,
    EarlyStopping,
    EpochProgress,
    EvalResult,
    TrainerState,
    append_csv,
    epoch_line,
    rewrite_csv,
)

__all__ = ["CrossEntropyCriterion", "EarlyStopping", "EvalResult", "Trainer", "TrainerSettings"]
log = logging.getLogger(__name__)


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        settings: TrainerSettings,
        *,
        device: torch.device,
        run_dir: str | Path = ".",
        data_generator: torch.Generator | None = None,
        early_stopping: EarlyStopping | None = None,
        criterion: Criterion | None = None,
        execution: Execution | None = None,
        on_epoch_end: Callable[[dict[str, float]], None] | None = None,
        extra_state: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.optimizer, self.schedule, self.settings = model, optimizer, schedule, settings
        self.device = device
        self.epochs = settings.epochs
        self.precision = settings.precision
        self.early_stopping = early_stopping or EarlyStopping()
        self.run_dir = Path(run_dir)
        self.data_generator = data_generator
        self.criterion = criterion or CrossEntropyCriterion()
        self.execution = execution or SingleProcess(device)
        self.is_main = self.execution.is_main
        self._train_module = self.execution.wrap(model)
        self.forward = torch.compile(self._train_module) if settings.compile else self._train_module
        # DDP's forward joins collectives (buffer broadcast); evaluation shards may differ in batch count.
        self._eval_forward = (
            self.forward if self._train_module is model else torch.compile(model) if settings.compile else model
        )
        self.progress = settings.progress and self.is_main
        self.on_epoch_end = on_epoch_end
        self.extra_state = extra_state or {}
        # fp16 needs loss scaling to keep small gradients representable; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        self.state = TrainerState()
        self.last_checkpoint: Path | None = None  # the newest checkpoint known to hold finite weights
        self.last_checkpoint_step = 0
        self._epoch: EpochProgress | None = None  # set while an epoch is in flight
        self._pending: EpochProgress | None = None  # a mid-epoch checkpoint's epoch, to continue
        self._stop: GracefulStop | None = None
        self._fit_started: float | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    # ----------------------------------------------------------------- one epoch
    def train_epoch(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], epoch: int) -> dict[str, float]:
        self._train_module.train()
        progress = self._begin_epoch(epoch)
        iterator = iter(batches)
        # Replay, without training, the batches a mid-epoch checkpoint had already consumed.
        for _ in itertools.islice(iterator, progress.batches_done):
            pass
        start = time.perf_counter() - progress.elapsed_s
        total = len(batches) if hasattr(batches, "__len__") else None
        bar = tqdm(
            iterator,
            desc=f"epoch {epoch}/{self.epochs}",
            leave=False,
            disable=None if self.progress else True,
            total=total,
            initial=progress.batches_done,
        )
        for images, labels in bar:
            self._train_step(images, labels, progress)
            progress.batches_done += 1
            progress.elapsed_s = time.perf_counter() - start
            every = self.settings.checkpoint_every_steps
            interrupted = self._stop_requested()
            if interrupted or (every and self.state.step % every == 0 and progress.batches_done != total):
                path = self._save_mid_epoch()
                if interrupted:
                    self._interrupt(path)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        self._raise_if_nonfinite(progress)
        loss_sum, correct, seen = self.execution.sum([progress.loss_sum.item(), progress.correct.item(), progress.seen])
        self._epoch = None
        return {
            "lr": progress.lr,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "epoch_time_s": elapsed,
            "images_per_s": seen / elapsed if elapsed > 0 else math.nan,
        }

    def _begin_epoch(self, epoch: int) -> EpochProgress:
        pending, self._pending = self._pending, None
        if pending is not None and pending.epoch == epoch:
            if self.data_generator is not None and pending.generator_state is not None:
                self.data_generator.set_state(pending.generator_state)
            self._epoch = pending
            return pending
        zeros = dict(device=self.device)
        self._epoch = EpochProgress(
            epoch,
            float(self.optimizer.param_groups[0]["lr"]),
            self.data_generator.get_state() if self.data_generator is not None else None,
            torch.zeros((), **zeros),
            torch.zeros((), dtype=torch.long, **zeros),
            torch.full((), -1, dtype=torch.long, **zeros),
        )
        return self._epoch

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor, progress: EpochProgress) -> None:
        with autocast_context(self.device, self.precision):
            logits = self.forward(images)
            loss = self.criterion(logits, labels, images)
        if self.settings.nan_policy == "skip" and self.execution.any(not bool(torch.isfinite(loss.detach()))):
            self._skip_step(float(loss.detach()), progress)  # every rank skips when any saw a non-finite loss
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.settings.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.after_step()
        self.state.step += 1
        n = labels.shape[0]
        loss = loss.detach()
        progress.loss_sum += loss * n
        progress.correct += (logits.detach().argmax(1) == labels).sum()
        progress.seen += n
        if self.settings.nan_policy == "stop":
            bad = (progress.first_bad_step < 0) & ~torch.isfinite(loss)
            progress.first_bad_step = torch.where(bad, self.state.step, progress.first_bad_step)

    def _skip_step(self, value: float, progress: EpochProgress) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.state.skipped_steps += 1
        where = f"epoch {progress.epoch}, batch {progress.batches_done + 1} (after step {self.state.step})"
        limit = self.settings.max_skipped_steps
        if self.state.skipped_steps > limit:
            raise NonFiniteLossError(
                f"training loss was {value} at {where}: {self.state.skipped_steps} steps skipped, more than "
                f"trainer.max_skipped_steps={limit}; {self._last_good()}. "
                "Lower optimizer.lr or set trainer.grad_clip"
            )
        log.warning(
            "non-finite training loss (%s) at %s: step skipped (%d of at most %d)",
            value,
            where,
            self.state.skipped_steps,
            limit,
        )

    def _raise_if_nonfinite(self, progress: EpochProgress) -> None:
        bad_step = int(progress.first_bad_step)  # the one host sync this policy costs per check
        none = 2**62  # every rank stops, naming the first bad step of any
        bad_step = self.execution.min(bad_step if bad_step >= 0 else none)
        bad_step = -1 if bad_step == none else bad_step
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"training loss became NaN/Inf at epoch {progress.epoch}, step {bad_step}; training stopped, "
                f"{self._last_good()}. Lower optimizer.lr, set trainer.grad_clip, or use trainer.nan_policy=skip"
            )

    def _stop_requested(self) -> bool:
        local = self._stop is not None and self._stop.requested
        # A signal reaches the ranks between different steps: all stop at the first step any saw it.
        return self.execution.any(local)

    def _last_good(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written before it"
        return f"last good checkpoint {self.last_checkpoint} (step {self.last_checkpoint_step})"

    @torch.inference_mode()
    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> EvalResult:
        self.model.eval()
        all_logits, all_labels = [], []
        for images, labels in batches:
            with autocast_context(self.device, self.precision):
                logits = self._eval_forward(images).float()
                if self.settings.eval_hflip:  # the mean of the image's and its mirror image's logits
                    logits = (logits + self._eval_forward(images.flip(-1)).float()) / 2
            all_logits.append(logits)
            all_labels.append(labels)
        # Every rank gets the whole split's outputs, in split order.
        logits = self.execution.gather_rows(torch.cat(all_logits))
        labels = self.execution.gather_rows(torch.cat(all_labels))
        loss = F.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return EvalResult(loss, accuracy, logits, labels)

    # ----------------------------------------------------------------- the loop
    def fit(self, train_batches, val_batches) -> list[dict[str, float]]:
        log_path = self.run_dir / "training_log.csv"
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # The log mirrors the history being continued: rows written after that checkpoint go.
            rewrite_csv(log_path, self.state.history)
        self._fit_started, base_time = time.perf_counter(), self.state.train_time_s
        with GracefulStop(self.settings.handle_signals) as stop:
            self._stop = stop
            try:
                for epoch in range(self.state.epoch + 1, self.epochs + 1):
                    if self.early_stopping.should_stop:
                        break  # a checkpoint written on the stopping epoch: nothing left to train
                    if not self._run_epoch(epoch, train_batches, val_batches, log_path):
                        break
            finally:
                self._stop = None
                self.state.train_time_s = base_time + time.perf_counter() - self._fit_started
                self._fit_started = None
        self.execution.barrier()  # rank 0's last checkpoints are on disk before any rank reads best.pt
        return self.state.history

    def _run_epoch(self, epoch: int, train_batches, val_batches, log_path: Path) -> bool:
        row: dict[str, float] = {"epoch": epoch}
        row.update(self.train_epoch(train_batches, epoch))
        val = self.evaluate(val_batches)
        row.update(val_loss=val.loss, val_acc=val.accuracy)
        if not math.isfinite(val.loss):
            raise NonFiniteLossError(
                f"validation loss is {val.loss} after epoch {epoch} (step {self.state.step}): the weights diverged; "
                f"training stopped, {self._last_good()}. Lower optimizer.lr or set trainer.grad_clip"
            )
        self.schedule.after_epoch(val.loss)
        self.state.epoch = epoch
        self.state.history.append(row)
        improved = self.early_stopping.update(row, epoch)
        if self.is_main:
            append_csv(log_path, row)
        log.info("%s", epoch_line(row, self.epochs, improved))
        if self.on_epoch_end is not None:
            self.on_epoch_end(row)
        # best.pt first: a crash between the two leaves an older last.pt, whose resume redoes this epoch
        # and rewrites best.pt identically; the other order could leave a last.pt whose best epoch has none.
        if improved:
            self.save(self.checkpoint_dir / "best.pt")
        self.save(self.checkpoint_dir / "last.pt")
        if self._stop_requested():
            self._interrupt(self.checkpoint_dir / "last.pt")
        if self.early_stopping.should_stop:
            log.info("%s", self.early_stopping.describe_stop())
            return False
        return True

    def _save_mid_epoch(self) -> Path:
        assert self._epoch is not None
        self._raise_if_nonfinite(self._epoch)  # never checkpoint weights trained on a NaN
        return self.save(self.checkpoint_dir / "last.pt")

    def _interrupt(self, path: Path) -> None:
        assert self._stop is not None
        where = (
            f"epoch {self._epoch.epoch}, step {self.state.step}"
            if self._epoch is not None
            else f"the end of epoch {self.state.epoch}"
        )
        hint = self.settings.resume_hint or f"trainer.resume={path}"
        self.execution.barrier()  # rank 0's checkpoint is complete before any rank exits
        signum = self._stop.signum or int(signal.SIGTERM)  # no signal here: another rank was signalled
        name = signal.Signals(signum).name
        message = f"interrupted by {name} at {where}: checkpoint written to {path}; resume with: {hint}"
        if self.is_main:
            log.warning(message)
        raise TrainingInterrupted(message, int(signum))

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        progress = self._epoch
        generator = self.data_generator.get_state() if self.data_generator is not None else None
        train_time = self.state.train_time_s
        if self._fit_started is not None:
            train_time += time.perf_counter() - self._fit_started
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "early_stopping": asdict(self.early_stopping),
            "trainer": {
                "epoch": self.state.epoch,
                "step": self.state.step,
                "history": self.state.history,
                "skipped_steps": self.state.skipped_steps,
                "train_time_s": train_time,
            },
            "rng": rng_state(),
            # Inside an epoch: the generator as of the epoch start (see the module docstring).
            "data_generator": progress.generator_state if progress is not None else generator,
            "in_epoch": progress.to_state() if progress is not None else None,
            **self.extra_state,
        }
        if self.execution.world_size > 1:  # a collective: every rank calls save(), rank 0 writes
            state["ranks"] = self.execution.all_gather_object({"rng": state["rng"], "in_epoch": state["in_epoch"]})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from dsconv.training.checkpoint import set_rng_state

        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.early_stopping = EarlyStopping(**state["early_stopping"])
        trainer = state["trainer"]
        self.state = TrainerState(
            int(trainer["epoch"]),
            int(trainer["step"]),
            list(trainer["history"]),
            int(trainer.get("skipped_steps", 0)),
            float(trainer.get("train_time_s", 0.0)),
        )
        own = own_rank_state(state, self.execution)
        if own["rng"] is not None:
            set_rng_state(own["rng"])
        generator = state.get("data_generator")
        if self.data_generator is not None and generator is not None:
            self.data_generator.set_state(generator)
        in_epoch = own["in_epoch"]
        self._pending = EpochProgress.from_state(in_epoch, generator, self.device) if in_epoch else None

    def save(self, path: Path) -> Path:
        path = Path(path)
        state = self.state_dict()
        if self.is_main:
            # last.pt keeps its predecessor so resume=auto survives a checkpoint that is later found corrupt.
            atomic_save(state, path, keep_previous=path.name == "last.pt")
        self.last_checkpoint, self.last_checkpoint_step = path, self.state.step
        return path
