"""Checks on a composed config, run before any data is loaded or any step is taken.

Each failure is a ``ConfigError`` whose one line names the key, the bad value and the fix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dsconv.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
NAN_POLICIES = ("stop", "skip")
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
    "trainer.deterministic",
    "trainer.early_stopping",
    "trainer.fast",
)
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
    _require_int(trainer.get("eval_batch_size", 1), "trainer.eval_batch_size", minimum=1)
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
    if trainer.get("grad_clip") is not None:
        _require_number(
            trainer.grad_clip, "trainer.grad_clip", minimum=0.0, strict=True, hint="use a positive max norm or null"
        )
    _validate_reliability(trainer)


def _validate_model_shape(model: DictConfig) -> None:
    kernel = model.get("kernel_size")
    if kernel is not None:
        _require_int(kernel, "model.kernel_size", minimum=1)
        padding = (model.get("conv_options") or {}).get("padding")
        # The models pad by (k - 1) // 2, which keeps H x W only for odd k.
        if kernel % 2 == 0 and padding is None:
            raise ConfigError(
                f"model.kernel_size={kernel} is even: 'same' padding is impossible with the default "
                "(k - 1) // 2 padding; use an odd kernel size (3, 5, 7)"
            )
    if "growth_rate" in model:
        _require_int(model.growth_rate, "model.growth_rate", minimum=1)


def _validate_dataset(dataset: DictConfig) -> None:
    _require_int(dataset.get("val_size", 1), "dataset.val_size", minimum=1)
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
    policy = str(trainer.get("nan_policy", "stop"))
    if policy not in NAN_POLICIES:
        raise ConfigError(f"trainer.nan_policy={policy!r} is unknown: choose one of {', '.join(NAN_POLICIES)}")
    _require_int(trainer.get("max_skipped_steps", 0), "trainer.max_skipped_steps", minimum=0)
    every = trainer.get("checkpoint_every_steps")
    if every is not None:
        _require_int(every, "trainer.checkpoint_every_steps", minimum=0)
    resume = trainer.get("resume")
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
    for key in keys:
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
    if value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ConfigError(f"{key}={value} must be {bound}: {hint or 'change it'}")


def _require_int(value: Any, key: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} is not an integer: give an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
