"""Optimizers and LR schedulers from the ``optimizer`` and ``scheduler`` config groups.

Every scheduler except ``plateau`` is stepped once per *batch*, so warm-up and cosine/one-cycle
shapes are smooth and independent of the epoch length; ``step``'s ``step_size`` is still given in
epochs (converted here). ``plateau`` needs the validation loss and is stepped once per epoch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import lr_scheduler

from dsconv.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULERS = ("none", "cosine", "onecycle", "step", "plateau")


def build_optimizer(params, cfg: Any, fused: bool | None = None) -> torch.optim.Optimizer:
    name = str(cfg.name)
    lr = float(cfg.lr)
    weight_decay = float(cfg.get("weight_decay", 0.0))
    # foreach/fused kernels update all parameters in a few launches instead of one per tensor.
    impl = {"fused": True} if fused else {"foreach": True}
    if name == "adam":
        return torch.optim.Adam(
            params,
            lr=lr,
            betas=tuple(cfg.get("betas", (0.9, 0.999))),
            eps=float(cfg.get("eps", 1e-8)),
            weight_decay=weight_decay,
            **impl,
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params,
            lr=lr,
            betas=tuple(cfg.get("betas", (0.9, 0.999))),
            eps=float(cfg.get("eps", 1e-8)),
            weight_decay=weight_decay,
            **impl,
        )
    if name == "sgd":
        momentum = float(cfg.get("momentum", 0.0))
        nesterov = bool(cfg.get("nesterov", False))
        if nesterov and momentum <= 0:
            raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0")
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, **impl)
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=lr,
            alpha=float(cfg.get("alpha", 0.99)),
            momentum=float(cfg.get("momentum", 0.0)),
            eps=float(cfg.get("eps", 1e-8)),
            weight_decay=weight_decay,
            foreach=True,
        )
    raise ConfigError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


class Schedule:
    """A per-step scheduler, or a per-epoch ``ReduceLROnPlateau``, behind one interface."""

    def __init__(self, scheduler: Any | None, per_epoch: bool) -> None:
        self.scheduler = scheduler
        self.per_epoch = per_epoch

    def after_step(self) -> None:
        if self.scheduler is not None and not self.per_epoch:
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.scheduler is not None and self.per_epoch:
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, epochs: int, steps_per_epoch: int) -> Schedule:
    name = str(cfg.name)
    total = max(1, epochs * steps_per_epoch)
    warmup = round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch)
    if name == "plateau":
        if warmup:
            raise ConfigError("scheduler.warmup_epochs is not supported with plateau: set it to 0")
        return Schedule(
            lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=float(cfg.get("factor", 0.1)),
                patience=int(cfg.get("patience", 5)),
                min_lr=float(cfg.get("min_lr", 0.0)),
            ),
            per_epoch=True,
        )
    if name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return Schedule(
            lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=max_lr,
                total_steps=total,
                pct_start=float(cfg.get("pct_start", 0.25)),
                div_factor=float(cfg.get("div_factor", 25.0)),
                final_div_factor=float(cfg.get("final_div_factor", 1e4)),
            ),
            per_epoch=False,
        )
    main: Any
    if name == "none":
        main = lr_scheduler.LambdaLR(optimizer, lambda _: 1.0) if warmup else None
    elif name == "cosine":
        min_factor = float(cfg.get("min_lr_factor", 0.0))
        span = max(1, total - warmup)
        main = lr_scheduler.LambdaLR(
            optimizer, lambda s: min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(s, span) / span))
        )
    elif name == "step":
        main = lr_scheduler.StepLR(
            optimizer, step_size=max(1, int(cfg.step_size) * steps_per_epoch), gamma=float(cfg.get("gamma", 0.1))
        )
    else:
        raise ConfigError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    if warmup and main is not None:
        start = float(cfg.get("warmup_start_factor", 0.01))
        warm = lr_scheduler.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
        main = lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])
    return Schedule(main, per_epoch=False)
