"""Optimizers and LR schedulers from the ``optimizer`` and ``scheduler`` config groups.

Every scheduler except ``plateau`` is stepped once per *batch*, so warm-up and cosine/one-cycle
shapes are smooth and independent of the epoch length; ``step``'s ``step_size`` is still given in
epochs (converted here). ``plateau`` needs the validation loss and is stepped once per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from torch.optim import lr_scheduler

from dsconv.errors import ConfigError
from dsconv.training.dynamo_import import optimizer_class

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULERS = ("none", "cosine", "onecycle", "step", "plateau")
# Module types whose parameters are normalization scales/shifts (CpuSyncBatchNorm is a _BatchNorm too).
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def split_weight_decay(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters that get weight decay, and of those that do not.

    No decay on normalization layers (found by module type) and on every 1-D parameter (biases),
    as torchvision's ``--norm-weight-decay`` and timm's ``param_groups_weight_decay`` do: decaying a
    BatchNorm scale shrinks nothing the next layer cannot undo, and a separable twin has more of
    them, so a decay there would weigh on one side of the standard-vs-separable comparison.
    """
    decay, no_decay, seen = [], [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(prefix=module_name, recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if isinstance(module, NORM_LAYERS) or param.ndim <= 1 else decay).append(name)
    return decay, no_decay


def parameter_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float | None) -> list[dict[str, Any]]:
    """One group per weight decay: ``norm_weight_decay`` for normalization parameters and biases, or
    a single group when it is None (every parameter decayed alike)."""
    if norm_weight_decay is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    params = dict(model.named_parameters())
    decay, no_decay = split_weight_decay(model)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": norm_weight_decay},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: nn.Module | Iterable[torch.Tensor], cfg: Any, fused: bool | None = None, compiled: bool = False
) -> torch.optim.Optimizer:
    """The ``optimizer`` group's optimizer. Given a module, its parameters are grouped by weight decay
    (``optimizer.norm_weight_decay``); given bare parameters, they form one group. Unless the run
    compiles, the class skips torch.optim's import of ``torch._dynamo`` (see ``dynamo_import``)."""
    name = str(cfg.name)
    lr, weight_decay = float(cfg.lr), float(cfg.weight_decay)
    if isinstance(model, nn.Module):
        norm_decay = None if cfg.norm_weight_decay is None else float(cfg.norm_weight_decay)
        params: Any = parameter_groups(model, weight_decay, norm_decay)
    else:
        params = [{"params": list(model), "weight_decay": weight_decay}]
    # foreach/fused kernels update all parameters in a few launches instead of one per tensor.
    impl = {"fused": True} if fused else {"foreach": True}
    if name in ("adam", "adamw"):
        cls = optimizer_class(torch.optim.Adam if name == "adam" else torch.optim.AdamW, compiled)
        return cls(params, lr=lr, betas=tuple(cfg.betas), eps=float(cfg.eps), **impl)
    if name == "sgd":
        momentum, nesterov = float(cfg.momentum), bool(cfg.nesterov)
        if nesterov and momentum <= 0:
            raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0")
        return optimizer_class(torch.optim.SGD, compiled)(params, lr=lr, momentum=momentum, nesterov=nesterov, **impl)
    if name == "rmsprop":
        return optimizer_class(torch.optim.RMSprop, compiled)(
            params, lr=lr, alpha=float(cfg.alpha), momentum=float(cfg.momentum), eps=float(cfg.eps), foreach=True
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
    # Neither plateau nor onecycle has a warm-up key in its YAML; one added with + would silently do nothing.
    if name in ("plateau", "onecycle") and "warmup_epochs" in cfg and cfg.warmup_epochs:
        raise ConfigError(f"scheduler.warmup_epochs is not supported with {name}: remove it or set it to 0")
    if name == "plateau":
        return Schedule(
            lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=float(cfg.factor), patience=int(cfg.patience), min_lr=float(cfg.min_lr)
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
                pct_start=float(cfg.pct_start),
                div_factor=float(cfg.div_factor),
                final_div_factor=float(cfg.final_div_factor),
            ),
            per_epoch=False,
        )
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    warmup = round(float(cfg.warmup_epochs) * steps_per_epoch)
    main: Any
    if name == "none":
        main = lr_scheduler.LambdaLR(optimizer, lambda _: 1.0) if warmup else None
    elif name == "cosine":
        min_factor = float(cfg.min_lr_factor)
        span = max(1, total - warmup)
        main = lr_scheduler.LambdaLR(
            optimizer, lambda s: min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(s, span) / span))
        )
    else:  # step
        main = lr_scheduler.StepLR(
            optimizer, step_size=max(1, int(cfg.step_size) * steps_per_epoch), gamma=float(cfg.gamma)
        )
    if warmup and main is not None:
        start = float(cfg.warmup_start_factor)
        warm = lr_scheduler.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
        main = lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])
    return Schedule(main, per_epoch=False)
