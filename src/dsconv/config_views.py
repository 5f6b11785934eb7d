"""What a run's config says about its training: the hash a checkpoint is tied to, and flat views of it.

``config_hash`` / ``flat_training_config`` decide whether a checkpoint may be resumed under a config
(and name the keys that differ); ``flat_hparams`` is the HParams row TensorBoard shows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

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
        for key, value in walk_config(cfg[group], group):
            if isinstance(value, bool | int | float | str):
                out[key] = value
            elif value is not None:
                out[key] = str(value)
    return out


def walk_config(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, DictConfig):
        for key in node:
            yield from walk_config(node[key], f"{prefix}.{key}")
    else:
        yield prefix, OmegaConf.to_container(node) if OmegaConf.is_list(node) else node
