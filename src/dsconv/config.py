"""Checks on a composed config, run before any data is loaded or any step is taken.

Each failure is a ``ConfigError`` whose one line names the key, the bad value and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dsconv.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
NAN_POLICIES = ("stop", "skip")
# What a sweeper may optimise: selection metrics (validation) and costs. A test metric never: the test
# set would then choose the model it is meant to judge.
OBJECTIVE_METRICS = ("best_val_acc", "best_val_loss", "macs_per_image", "params_total", "latency_ms_b1")
# Keys whose change makes a checkpoint meaningless for this run (used by resume checks).
TRAINING_KEYS = (
    "dataset",
    "model",
    "optimizer",
    "scheduler",
    "activation",
    "trainer.batch_size",
    "trainer.epochs",
    "trainer.seed",
    "trainer.precision",
    "trainer.grad_clip",
    "trainer.label_smoothing",
    "trainer.deterministic",
    "trainer.early_stopping",
    "trainer.fast",
)
# Optional groups (added with +): part of the training view only when present, so runs without them
# keep the checkpoints they had.
OPTIONAL_TRAINING_KEYS = ("distill", "prune")  # model.match / model.match_to are inside "model"
# Inside TRAINING_KEYS, but changing them cannot change what is trained.
RESUME_IGNORED = ("dataset.download",)


def validate_config(cfg: DictConfig) -> None:
    from dsconv.data.datasets import _LOADERS
    from dsconv.layers.activations import get_act_layer
    from dsconv.registry import get_model_builder
    from dsconv.training.optim import OPTIMIZERS, SCHEDULERS

    trainer, optimizer = cfg.trainer, cfg.optimizer
    _require_number(optimizer.lr, "optimizer.lr", minimum=0.0, strict=True, hint="use a positive learning rate")
    _require_int(trainer.epochs, "trainer.epochs", minimum=1)
    _require_int(trainer.batch_size, "trainer.batch_size", minimum=1)
    _require_int(trainer.eval_batch_size, "trainer.eval_batch_size", minimum=1)
    if str(optimizer.name) not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer.name {optimizer.name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if str(cfg.scheduler.name) not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler.name {cfg.scheduler.name!r}: choose one of {', '.join(SCHEDULERS)}")
    if str(cfg.dataset.name) not in _LOADERS:
        raise ConfigError(f"unknown dataset.name {cfg.dataset.name!r}: choose one of {', '.join(sorted(_LOADERS))}")
    get_model_builder(str(cfg.model.name))
    get_act_layer(str(cfg.activation.name))
    _validate_model_shape(cfg.model)
    _validate_dataset(cfg.dataset)
    for key, value in _walk(cfg.model, "model"):
        if key.rsplit(".", 1)[-1].endswith("dropout") and value is not None:
            _require_number(value, key, minimum=0.0, hint="use a dropout probability in [0, 1)")
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"{key}={value} is outside [0, 1): use a dropout probability in [0, 1)")
    if str(trainer.precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={trainer.precision!r} is unknown: choose one of {', '.join(PRECISIONS)}")
    device = resolve_device(str(trainer.device))
    if str(trainer.precision) == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs a CUDA device: use bf16 (fast on this CPU) or fp32")
    patience = trainer.early_stopping.patience
    _require_int(patience, "trainer.early_stopping.patience", minimum=0)
    monitor = str(trainer.early_stopping.monitor)
    if monitor not in ("val_acc", "val_loss"):
        raise ConfigError(f"trainer.early_stopping.monitor={monitor!r}: choose val_acc or val_loss")
    if trainer.grad_clip is not None:
        _require_number(
            trainer.grad_clip, "trainer.grad_clip", minimum=0.0, strict=True, hint="use a positive max norm or null"
        )
    _validate_reliability(trainer)
    _validate_numbers(cfg)
    validate_objective(cfg)
    from dsconv.registry import check_model

    # Last: the checks above give more precise messages for the keys they know.
    check_model(cfg.model, *nominal_input(cfg.dataset))  # unknown or rejected options, on the meta device


def validate_objective(cfg: DictConfig) -> None:
    """``objective``: one metric name or a list of them (multi-objective search), each a selection or cost metric."""
    names = objective_names(cfg.objective)
    if not names:
        raise ConfigError(f"objective={cfg.objective!r} names no metric: use one of {', '.join(OBJECTIVE_METRICS)}")
    for name in names:
        if name not in OBJECTIVE_METRICS:
            raise ConfigError(
                f"objective={name} cannot be optimised: use a validation or cost metric "
                f"({', '.join(OBJECTIVE_METRICS)}), never a test metric"
            )
    if "latency_ms_b1" in names and not cfg.profile_inference:
        raise ConfigError("objective=latency_ms_b1 needs profile_inference=true: the latency is measured there")


def objective_names(objective: Any) -> list[str]:
    if isinstance(objective, str):
        return [objective]
    if OmegaConf.is_list(objective) or isinstance(objective, list | tuple):
        return [str(name) for name in objective]
    raise ConfigError(f"objective={objective!r} is neither a metric name nor a list of them")


def _validate_numbers(cfg: DictConfig) -> None:
    """Signs and ranges of the numeric keys whose out-of-range values would otherwise train silently wrong."""
    trainer, optimizer, scheduler = cfg.trainer, cfg.optimizer, cfg.scheduler
    _require_number(optimizer.weight_decay, "optimizer.weight_decay", minimum=0.0, hint="use 0 or a positive decay")
    if optimizer.norm_weight_decay is not None:
        _require_number(
            optimizer.norm_weight_decay, "optimizer.norm_weight_decay", minimum=0.0, hint="use 0, a decay, or null"
        )
    if "momentum" in optimizer:
        _require_fraction(optimizer.momentum, "optimizer.momentum", hint="use a momentum in [0, 1)")
    _require_fraction(trainer.label_smoothing, "trainer.label_smoothing", hint="use a smoothing in [0, 1), e.g. 0.1")
    _require_number(
        trainer.early_stopping.min_delta, "trainer.early_stopping.min_delta", minimum=0.0, hint="use 0 or more"
    )
    if trainer.num_threads is not None:
        _require_int(trainer.num_threads, "trainer.num_threads", minimum=1)
    if "warmup_epochs" in scheduler:
        _require_number(scheduler.warmup_epochs, "scheduler.warmup_epochs", minimum=0.0, hint="use 0 or more epochs")
    _require_int(cfg.dataset.augment.crop_padding, "dataset.augment.crop_padding", minimum=0)
    _validate_optimizer_options(optimizer)
    _validate_scheduler_options(scheduler)


def _validate_optimizer_options(optimizer: DictConfig) -> None:
    """What torch.optim's constructors would reject with a traceback, as one line naming the key."""
    if "betas" in optimizer:
        betas = list(optimizer.betas)
        if len(betas) != 2:
            raise ConfigError(f"optimizer.betas={betas} must hold two numbers, e.g. [0.9, 0.999]")
        for i, beta in enumerate(betas):
            _require_fraction(beta, f"optimizer.betas[{i}]", hint="use betas in [0, 1), e.g. [0.9, 0.999]")
    if "eps" in optimizer:
        _require_number(optimizer.eps, "optimizer.eps", minimum=0.0, hint="use a small positive epsilon, e.g. 1e-8")
    if "alpha" in optimizer:
        _require_number(optimizer.alpha, "optimizer.alpha", minimum=0.0, hint="use a smoothing constant, e.g. 0.99")


def _validate_scheduler_options(scheduler: DictConfig) -> None:
    checks: dict[str, tuple[float, bool, str]] = {  # key: (minimum, strict, hint)
        "factor": (0.0, True, "use a factor in (0, 1), e.g. 0.1"),
        "patience": (0.0, False, "use 0 or more epochs"),
        "min_lr": (0.0, False, "use 0 or a positive learning rate"),
        "pct_start": (0.0, True, "use a fraction in (0, 1), e.g. 0.25"),
        "div_factor": (0.0, True, "use a positive factor, e.g. 25"),
        "final_div_factor": (0.0, True, "use a positive factor, e.g. 1e4"),
        "gamma": (0.0, True, "use a positive factor, e.g. 0.1"),
        "min_lr_factor": (0.0, False, "use a fraction in [0, 1]"),
        "warmup_start_factor": (0.0, True, "use a fraction in (0, 1], e.g. 0.01"),
    }
    for key, (minimum, strict, hint) in checks.items():
        if key in scheduler:
            _require_number(scheduler[key], f"scheduler.{key}", minimum=minimum, strict=strict, hint=hint)
    for key, upper in (("factor", 1.0), ("pct_start", 1.0)):
        if key in scheduler and scheduler[key] >= upper:
            raise ConfigError(f"scheduler.{key}={scheduler[key]} must be < {upper:g}: {checks[key][2]}")
    for key in ("min_lr_factor", "warmup_start_factor"):
        if key in scheduler and scheduler[key] > 1.0:
            raise ConfigError(f"scheduler.{key}={scheduler[key]} must be <= 1: {checks[key][2]}")
    if "step_size" in scheduler:
        _require_int(scheduler.step_size, "scheduler.step_size", minimum=1)


def _validate_model_shape(model: DictConfig) -> None:
    # Model groups differ in their keys: only check the ones this model has.
    kernel = model.kernel_size if "kernel_size" in model else None
    if kernel is not None:
        sizes = list(kernel) if OmegaConf.is_list(kernel) else [kernel]  # one size, or one per stage
        options = model.conv_options if "conv_options" in model else None
        padding = options["padding"] if options and "padding" in options else None
        for size in sizes:
            _require_int(size, "model.kernel_size", minimum=1)
            # The models pad by (k - 1) // 2, which keeps H x W only for odd k.
            if size % 2 == 0 and padding is None:
                raise ConfigError(
                    f"model.kernel_size={kernel} is even: 'same' padding is impossible with the default "
                    "(k - 1) // 2 padding; use an odd kernel size (3, 5, 7)"
                )
    if "growth_rate" in model:
        _require_int(model.growth_rate, "model.growth_rate", minimum=1)


def nominal_input(dataset: DictConfig) -> tuple[tuple[int, int, int], int]:
    """Input shape and class count from the dataset config alone, to check a model before data loads.

    An image folder's class count is only known from its files; two classes stand in for it (the class
    count changes nothing but the last layer's width).
    """
    name = str(dataset.name)
    if name in ("mnist", "fashion_mnist"):
        return (1, 28, 28), 10
    if name == "cifar10":
        return (3, 32, 32), 10
    size = int(dataset.image_size) if "image_size" in dataset else 28
    channels = int(dataset.channels) if "channels" in dataset else 1
    classes = int(dataset.num_classes) if "num_classes" in dataset else (2 if "root" in dataset else 10)
    return (channels, size, size), classes


def _validate_dataset(dataset: DictConfig) -> None:
    _require_int(dataset.val_size, "dataset.val_size", minimum=1)
    # Real datasets are checked against their size once loaded; synthetic ones are known now.
    if "num_train" in dataset:
        _require_int(dataset.num_train, "dataset.num_train", minimum=2)
        if dataset.val_size >= dataset.num_train:
            raise ConfigError(
                f"dataset.val_size={dataset.val_size} must be smaller than dataset.num_train="
                f"{dataset.num_train}: the validation split is carved out of the training set"
            )


def _validate_reliability(trainer: DictConfig) -> None:
    _require_int(trainer.seed, "trainer.seed", minimum=0)
    policy = str(trainer.nan_policy)
    if policy not in NAN_POLICIES:
        raise ConfigError(f"trainer.nan_policy={policy!r} is unknown: choose one of {', '.join(NAN_POLICIES)}")
    _require_int(trainer.max_skipped_steps, "trainer.max_skipped_steps", minimum=0)
    every = trainer.checkpoint_every_steps
    if every is not None:
        _require_int(every, "trainer.checkpoint_every_steps", minimum=0)
    resume = trainer.resume
    if resume is not None and (not isinstance(resume, str) or not resume.strip()):
        raise ConfigError(f"trainer.resume={resume!r}: use null, auto, a checkpoint file or a run directory")


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"trainer.device={spec!r} is not a device: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible: use trainer.device=cpu (or auto)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"trainer.device={spec!r} is not supported: use auto, cpu, cuda or cuda:N")
    return device


def config_hash(cfg: DictConfig, keys: tuple[str, ...] = TRAINING_KEYS) -> str:
    """A short hash of the training-relevant part of the config."""
    return hashlib.sha256(json.dumps(training_view(cfg, keys), sort_keys=True).encode()).hexdigest()[:16]


def training_view(cfg: DictConfig, keys: tuple[str, ...] = TRAINING_KEYS) -> dict[str, Any]:
    view = {}
    for key in (*keys, *(k for k in OPTIONAL_TRAINING_KEYS if k in cfg)):
        value = OmegaConf.select(cfg, key)
        view[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    return view


def flat_training_config(cfg: DictConfig) -> dict[str, Any]:
    """The training view as ``{"optimizer.lr": 0.001, ...}``: a checkpoint stores it so a resume can
    name exactly which keys differ."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}")
        elif not any(prefix == k or prefix.startswith(k + ".") for k in RESUME_IGNORED):
            out[prefix] = node

    for key, value in training_view(cfg).items():
        walk(value, key)
    return out


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """Scalar hyper-parameters for TensorBoard's HParams tab (lists become strings)."""
    out: dict[str, Any] = {}
    for group in ("dataset", "model", "optimizer", "scheduler", "activation", "trainer"):
        for key, value in _walk(cfg[group], group):
            if isinstance(value, bool | int | float | str):
                out[key] = value
            elif value is not None:
                out[key] = str(value)
    return out


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, DictConfig):
        for key in node:
            yield from _walk(node[key], f"{prefix}.{key}")
    else:
        yield prefix, OmegaConf.to_container(node) if OmegaConf.is_list(node) else node


def _require_number(value: Any, key: str, *, minimum: float, strict: bool = False, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}={value!r} is not a number: {hint or 'give a number'}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not a finite number: {hint or 'give a finite number'}")
    if value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ConfigError(f"{key}={value} must be {bound}: {hint or 'change it'}")


def _require_fraction(value: Any, key: str, *, hint: str) -> None:
    """A number in [0, 1)."""
    _require_number(value, key, minimum=0.0, hint=hint)
    if value >= 1.0:
        raise ConfigError(f"{key}={value} is outside [0, 1): {hint}")


def _require_int(value: Any, key: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} is not an integer: give an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
