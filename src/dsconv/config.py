"""Checks on a composed config, run before any data is loaded or any step is taken.

Each failure is a ``ConfigError`` whose one line names the key, the bad value and the fix.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from dsconv.config_views import walk_config
from dsconv.errors import ConfigError
from dsconv.training.settings import NAN_POLICIES

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
# What a sweeper may optimise: selection metrics (validation) and costs. A test metric never: the test
# set would then choose the model it is meant to judge.
OBJECTIVE_METRICS = ("best_val_acc", "best_val_loss", "macs_per_image", "params_total", "latency_ms_b1")


def validate_config(cfg: DictConfig) -> None:
    """Every check that needs no data: raises the first ``ConfigError`` found, writes nothing."""
    from dsconv.data.datasets import _LOADERS
    from dsconv.layers.activations import get_act_layer
    from dsconv.registry import get_model_builder
    from dsconv.training.optim import OPTIMIZERS, SCHEDULERS

    _validate_resolvable(cfg)
    _validate_structure(cfg)
    trainer, optimizer = cfg.trainer, cfg.optimizer
    for key in NAME_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} is not a name: give a {key.split('.')[0]} option's name")
    if str(optimizer.name) not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer.name {optimizer.name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if str(cfg.scheduler.name) not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler.name {cfg.scheduler.name!r}: choose one of {', '.join(SCHEDULERS)}")
    if str(cfg.dataset.name) not in _LOADERS:
        raise ConfigError(f"unknown dataset.name {cfg.dataset.name!r}: choose one of {', '.join(sorted(_LOADERS))}")
    get_model_builder(str(cfg.model.name))
    get_act_layer(str(cfg.activation.name))
    _validate_numbers(cfg)
    _validate_model_shape(cfg.model)
    _validate_dataset(cfg.dataset)
    for key, value in walk_config(cfg.model, "model"):
        if key.rsplit(".", 1)[-1].endswith("dropout") and value is not None:
            _require_fraction(value, key, hint="use a dropout probability in [0, 1)")
    if str(trainer.precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={trainer.precision!r} is unknown: choose one of {', '.join(PRECISIONS)}")
    device = resolve_device(str(trainer.device))
    if str(trainer.precision) == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs a CUDA device: use auto (bf16 on AVX-512 CPUs) or fp32")
    monitor = str(trainer.early_stopping.monitor)
    if monitor not in ("val_acc", "val_loss"):
        raise ConfigError(f"trainer.early_stopping.monitor={monitor!r}: choose val_acc or val_loss")
    _validate_reliability(trainer)
    validate_objective(cfg)
    _check_model(cfg)


def _validate_resolvable(cfg: DictConfig) -> None:
    """An override such as ``optimizer.lr=${nope}`` fails on first access; Hydra's callbacks turn that into
    a warning and carry on, so it is found here, as one line, before any key is read."""
    from omegaconf.errors import OmegaConfBaseException

    for key in cfg:
        if key == "hydra":  # Hydra's own node resolves at run time (now:, hydra.job ...)
            continue
        try:
            node = cfg[key]
            if isinstance(node, DictConfig | ListConfig):
                OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as exc:
            where = getattr(exc, "full_key", None) or key
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"{where} cannot be resolved ({reason}): fix the ${{...}} interpolation or its target"
            ) from exc


def _validate_structure(cfg: DictConfig) -> None:
    """Groups replaced by a scalar (``trainer.early_stopping=5``) would fail later as an AttributeError."""
    for key in GROUP_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, DictConfig):
            raise ConfigError(f"{key}={value!r} is not a group of keys: remove the override or pick a {key} option")
    for key in ("model.conv_options", "distill", "prune"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, DictConfig):
            raise ConfigError(f"{key}={value!r} is not a group of keys: use {{key: value, ...}} or remove it")


def _check_model(cfg: DictConfig) -> None:
    from dsconv.registry import check_model

    # Last: the checks above give more precise messages for the keys they know. The registry turns a
    # constructor's ValueError/TypeError into a ConfigError; other arithmetic a bad size trips (a zero
    # divisor, a negative dimension) is the same user error.
    try:
        check_model(cfg.model, *nominal_input(cfg.dataset))  # unknown or rejected options, on the meta device
    except (ArithmeticError, RuntimeError, IndexError, KeyError, AttributeError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(
            f"model {cfg.model.name} rejected its options ({message}): fix the model.* sizes of this run"
        ) from exc


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
    """Types, signs and ranges of every numeric and boolean key the composed config has (``RANGES``,
    ``FLAGS``): out-of-range values would otherwise train silently wrong or fail deep inside torch."""
    for key, (kind, interval, hint) in RANGES.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING or (value is None and key in NULLABLE):
            continue
        values = list(value) if kind == "ints" and OmegaConf.is_list(value) else [value]
        if kind == "ints" and key in ("model.channels", "model.block_layers") and not OmegaConf.is_list(value):
            raise ConfigError(f"{key}={value!r} is not a list: {hint}")
        for i, item in enumerate(values):
            name = f"{key}[{i}]" if len(values) > 1 or OmegaConf.is_list(value) else key
            _require_interval(item, name, "num" if kind == "num" else "int", interval, hint)
    for key in FLAGS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not a boolean: use true or false")
    for key, options in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is not _MISSING and value not in options:
            raise ConfigError(f"{key}={value!r} is unknown: choose one of {', '.join(options)}")
    optimizer = cfg.optimizer
    if "betas" in optimizer:
        betas = optimizer.betas
        if not OmegaConf.is_list(betas) or len(betas) != 2:
            raise ConfigError(f"optimizer.betas={betas!r} must hold two numbers, e.g. [0.9, 0.999]")
        for i, beta in enumerate(betas):
            _require_fraction(beta, f"optimizer.betas[{i}]", hint="use betas in [0, 1), e.g. [0.9, 0.999]")
    if optimizer.get("nesterov") and not optimizer.get("momentum"):
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0: set a momentum (e.g. 0.9)")


# Numeric keys, each checked where the composed config has it (the options of a group differ in keys).
# kind: "int", "num" (finite int or float) or "ints" (an int or a list of them); interval in math notation
# ("[1," = at least 1, "(0,1)" = strictly between); the hint is the fix the one-line error suggests.
RANGES: dict[str, tuple[str, str, str]] = {
    "optimizer.lr": ("num", "(0,", "use a positive learning rate"),
    "optimizer.weight_decay": ("num", "[0,", "use 0 or a positive decay"),
    "optimizer.norm_weight_decay": ("num", "[0,", "use 0, a decay, or null"),
    "optimizer.momentum": ("num", "[0,1)", "use a momentum in [0, 1)"),
    "optimizer.eps": ("num", "[0,", "use a small positive epsilon, e.g. 1e-8"),
    "optimizer.alpha": ("num", "[0,1]", "use a smoothing constant in [0, 1], e.g. 0.99"),
    "trainer.epochs": ("int", "[1,", "train at least one epoch"),
    "trainer.batch_size": ("int", "[1,", "use a batch size of 1 or more"),
    "trainer.eval_batch_size": ("int", "[1,", "use a batch size of 1 or more"),
    "trainer.grad_clip": ("num", "(0,", "use a positive max norm or null"),
    "trainer.label_smoothing": ("num", "[0,1)", "use a smoothing in [0, 1), e.g. 0.1"),
    "trainer.seed": ("int", "[0,", "use a seed of 0 or more"),
    "trainer.checkpoint_every_steps": ("int", "[0,", "use a number of steps, or null"),
    "trainer.max_skipped_steps": ("int", "[0,", "use 0 or more steps"),
    "trainer.num_threads": ("int", "[1,", "use 1 or more threads, or null"),
    "trainer.early_stopping.patience": ("int", "[0,", "use 0 (never stop early) or more epochs"),
    "trainer.early_stopping.min_delta": ("num", "[0,", "use 0 or more"),
    "scheduler.warmup_epochs": ("num", "[0,", "use 0 or more epochs"),
    "scheduler.warmup_start_factor": ("num", "(0,1]", "use a fraction in (0, 1], e.g. 0.01"),
    "scheduler.min_lr_factor": ("num", "[0,1]", "use a fraction in [0, 1]"),
    "scheduler.step_size": ("int", "[1,", "use 1 or more epochs"),
    "scheduler.gamma": ("num", "(0,", "use a positive factor, e.g. 0.1"),
    "scheduler.factor": ("num", "(0,1)", "use a factor in (0, 1), e.g. 0.1"),
    "scheduler.patience": ("int", "[0,", "use 0 or more epochs"),
    "scheduler.min_lr": ("num", "[0,", "use 0 or a positive learning rate"),
    "scheduler.pct_start": ("num", "(0,1)", "use a fraction in (0, 1), e.g. 0.25"),
    "scheduler.div_factor": ("num", "(0,", "use a positive factor, e.g. 25"),
    "scheduler.final_div_factor": ("num", "(0,", "use a positive factor, e.g. 1e4"),
    "dataset.val_size": ("int", "[1,", "use 1 or more validation images"),
    "dataset.split_seed": ("int", "[0,", "use a seed of 0 or more"),
    "dataset.data_seed": ("int", "[0,", "use a seed of 0 or more"),
    "dataset.image_size": ("int", "[1,", "use a side length in pixels, e.g. 28 or 32"),
    "dataset.channels": ("int", "[1,", "use 1 (grayscale) or 3 (RGB)"),
    "dataset.num_classes": ("int", "[2,", "use 2 or more classes"),
    "dataset.num_train": ("int", "[2,", "use 2 or more training images"),
    "dataset.num_test": ("int", "[1,", "use 1 or more test images"),
    "dataset.limit_train": ("int", "[1,", "use 1 or more images, or null"),
    "dataset.noise": ("num", "[0,", "use a noise level of 0 or more, e.g. 0.25"),
    "dataset.test_fraction": ("num", "(0,1)", "use a fraction in (0, 1), e.g. 0.2"),
    "dataset.augment.crop_padding": ("int", "[0,", "use 0 (no crop) or a padding in pixels"),
    "model.channels": ("ints", "[1,", "use a list of positive channel counts, e.g. [32, 64, 128]"),
    "model.block_layers": ("ints", "[1,", "use a list of positive layer counts, e.g. [4, 6, 8, 6]"),
    "model.kernel_size": ("ints", "[1,", "use an odd kernel size (3, 5, 7) or one per stage"),
    "model.depth_multiplier": ("ints", "[1,", "use 1 (plain) or 2, 3 ... depthwise filters per input channel"),
    "model.hidden": ("int", "[1,", "use a positive layer width"),
    "model.growth_rate": ("int", "[1,", "use a positive growth rate, e.g. 16"),
    "model.bottleneck_width": ("int", "[1,", "use a positive factor, e.g. 4, or null"),
    "model.stem_channels": ("int", "[1,", "use a positive channel count, or null"),
    "model.last_channels": ("int", "[1,", "use a positive channel count"),
    "model.patch_size": ("int", "[1,", "use a patch size that divides the image side, e.g. 4"),
    "model.dim": ("int", "[1,", "use a positive token width divisible by model.heads"),
    "model.depth": ("int", "[1,", "use 1 or more encoder layers"),
    "model.heads": ("int", "[1,", "use 1 or more heads that divide model.dim"),
    "model.mlp_ratio": ("num", "(0,", "use a positive ratio, e.g. 2.0"),
    "model.compression": ("num", "(0,1]", "use a fraction in (0, 1], e.g. 0.5"),
    "distill.alpha": ("num", "[0,1]", "use a weight in [0, 1] such as 0.5"),
    "distill.temperature": ("num", "(0,", "use a positive temperature, e.g. 4.0"),
    "prune.finetune_epochs": ("int", "[1,", "fine-tune the pruned model for 1 or more epochs"),
}
# Keys where null means "off" or "the default".
NULLABLE = {"optimizer.norm_weight_decay", "trainer.grad_clip", "trainer.checkpoint_every_steps", "trainer.num_threads"}
NULLABLE |= {"dataset.limit_train", "model.bottleneck_width", "model.stem_channels"}
# Booleans: a string such as "abc" would otherwise be truthy and switch the feature on.
FLAGS = ["profile_inference", "tensorboard", "debug", "optimizer.nesterov", "trainer.distributed.sync_bn"]
FLAGS += [
    f"trainer.{key}"
    for key in ("channels_last", "compile", "eval_hflip", "fast", "deterministic", "progress_bar", "verbose")
]
FLAGS += ["trainer.keep_freed_memory", "model.pool_first"]
FLAGS += ["dataset.download", "dataset.verify_checksums", "dataset.augment.hflip"]
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset.normalize": ("half", "stats"),
    "trainer.distributed.batch_size_semantics": ("global", "per_rank"),
    "trainer.distributed.backend": ("auto", "gloo", "nccl"),
}
# Keys that must hold a name (a str) before the name is looked up in a registry.
NAME_KEYS = ("optimizer.name", "scheduler.name", "dataset.name", "model.name", "activation.name")
GROUP_KEYS = ("trainer", "trainer.early_stopping", "trainer.distributed", "optimizer", "scheduler", "dataset")
GROUP_KEYS += ("dataset.augment", "model", "activation")
_MISSING = object()


def _validate_model_shape(model: DictConfig) -> None:
    # Model groups differ in their keys: only check the ones this model has.
    kernel = model.kernel_size if "kernel_size" in model else None
    if kernel is not None:
        sizes = list(kernel) if OmegaConf.is_list(kernel) else [kernel]  # one size, or one per stage
        options = model.conv_options if "conv_options" in model else None
        padding = options["padding"] if options and "padding" in options else None
        for size in sizes:
            # The models pad by (k - 1) // 2, which keeps H x W only for odd k.
            if size % 2 == 0 and padding is None:
                raise ConfigError(
                    f"model.kernel_size={kernel} is even: 'same' padding is impossible with the default "
                    "(k - 1) // 2 padding; use an odd kernel size (3, 5, 7)"
                )


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
    # Real datasets are checked against their size once loaded; synthetic ones are known now.
    if "num_train" in dataset and dataset.val_size >= dataset.num_train:
        raise ConfigError(
            f"dataset.val_size={dataset.val_size} must be smaller than dataset.num_train="
            f"{dataset.num_train}: the validation split is carved out of the training set"
        )


def _validate_reliability(trainer: DictConfig) -> None:
    policy = str(trainer.nan_policy)
    if policy not in NAN_POLICIES:
        raise ConfigError(f"trainer.nan_policy={policy!r} is unknown: choose one of {', '.join(NAN_POLICIES)}")
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


def _require_interval(value: Any, key: str, kind: str, interval: str, hint: str) -> None:
    """``value`` is an int (kind "int") or a finite number ("num") inside ``interval``, e.g. "[0,1)" or "(0,"."""
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r} is not an integer: {hint}")
    low_text, high_text = interval[1:].rstrip(")]").split(",")
    minimum = float(low_text) if low_text else -math.inf
    _require_number(value, key, minimum=minimum, strict=interval[0] == "(", hint=hint)
    if high_text:
        high = float(high_text)
        if value > high or (interval[-1] == ")" and value == high):
            raise ConfigError(f"{key}={value} is outside {interval[0]}{low_text}, {high_text}{interval[-1]}: {hint}")


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
    _require_interval(value, key, "num", "[0,1)", hint)
