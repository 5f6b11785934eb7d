"""Finished run directories as model sources: teachers, prune sources, pruned and width-matched runs.

A run dir holds the resolved ``config.yaml`` and ``checkpoints/best.pt`` (the Trainer's state, read
weights-only). ``load_run_model`` rebuilds whatever the run trained: a registry model, a width-matched
twin (``model.match``: the width is recomputed, it is deterministic), a structurally pruned model (its
channel counts are the checkpoint's tensor shapes) or a magnitude-pruned one (its masks are in the
checkpoint). Problems are one-line ``ConfigError``s naming the config key that pointed at the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from dsconv.errors import ConfigError, DsconvError
from dsconv.paths import CONF_DIR

# Input geometry of each dataset loader (dsconv.data.datasets), known without loading any data.
FIXED_GEOMETRY = {"mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}


@dataclass(frozen=True)
class RunRef:
    run_dir: Path
    checkpoint: Path
    config: DictConfig


def group_defaults(group: str) -> dict[str, Any]:
    """conf/<group>/default.yaml as a dict: the defaults behind ``+<group>.<key>=...`` overrides."""
    return dict(OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / "default.yaml")))  # type: ignore[arg-type]


def resolve_run(path: str | Path, *, key: str) -> RunRef:
    """A run dir, or a checkpoint inside one (``<run>/checkpoints/<name>.pt``), and its config."""
    given = Path(str(path)).expanduser()
    if given.is_dir():
        run_dir, checkpoint = given, given / "checkpoints" / "best.pt"
    elif given.is_file():
        checkpoint = given
        run_dir = given.parent.parent if given.parent.name == "checkpoints" else given.parent
    else:
        raise ConfigError(f"{key}={path} does not exist: give a finished run dir or its checkpoints/best.pt")
    if not checkpoint.is_file():
        raise ConfigError(f"{key}={path} has no checkpoint {checkpoint}: give a run dir whose training finished")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{key}={path}: {config_path} is missing, so the model cannot be rebuilt: give a run dir")
    try:
        config = OmegaConf.load(config_path)
    except Exception as exc:
        raise ConfigError(f"{key}={path}: {config_path} is not readable YAML ({type(exc).__name__})") from exc
    if not isinstance(config, DictConfig) or "model" not in config:
        raise ConfigError(f"{key}={path}: {config_path} has no model section: give a dsconv run dir")
    return RunRef(run_dir, checkpoint, config)


def run_identity(run: RunRef) -> dict[str, Any]:
    """The run's config hash (``dsconv.config_views.config_hash``) and test accuracy (metrics.json; None if absent)."""
    from dsconv.config_views import config_hash

    accuracy = None
    metrics_path = run.run_dir / "metrics.json"
    if metrics_path.is_file():
        try:
            accuracy = json.loads(metrics_path.read_text()).get("test_accuracy")
        except (OSError, ValueError):
            accuracy = None
    return {"config_hash": config_hash(run.config), "test_accuracy": accuracy}


def dataset_geometry(dataset_cfg: Mapping[str, Any]) -> tuple[tuple[int, int, int], int] | None:
    """``(input_shape, num_classes)`` a dataset config produces, or None for a loader not known here."""
    name = str(dataset_cfg.get("name"))
    if name in FIXED_GEOMETRY:
        return FIXED_GEOMETRY[name]
    size = int(dataset_cfg.get("image_size", 28))
    if name == "digits":
        return (1, size, size), 10
    if name == "synthetic":
        return (int(dataset_cfg.get("channels", 3)), size, size), int(dataset_cfg.get("num_classes", 10))
    return None


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(v) for v in shape)


def _check_expectations(
    run: RunRef, key: str, geometry, input_shape: tuple | None, num_classes: int | None, dataset: str | None
) -> None:
    where = f"{key}={run.run_dir}"
    trained_on = str(OmegaConf.select(run.config, "dataset.name"))
    if dataset is not None and trained_on != dataset:
        raise ConfigError(f"{where} was trained on {trained_on}, this run uses {dataset}: use a run on {dataset}")
    if geometry is None:
        return
    shape, classes = geometry
    if num_classes is not None and classes != num_classes:
        raise ConfigError(f"{where} predicts {classes} classes, the data has {num_classes}: use a run on this data")
    if input_shape is not None and tuple(shape) != tuple(input_shape):
        raise ConfigError(
            f"{where} takes {_shape_text(shape)} input, the data is {_shape_text(input_shape)}: use a run on this data"
        )


def build_architecture(
    cfg: DictConfig, input_shape: tuple[int, int, int], num_classes: int, act_layer=None
) -> nn.Module:
    """The unpruned model a run config describes, with ``model.match`` resolved to its width."""
    from dsconv.benchmark.targets import compose_model_group
    from dsconv.compression.match import build_with_width, builder_config, match_width
    from dsconv.registry import build_model

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model_cfg, dict)
    if model_cfg.get("match"):
        target = compose_model_group(str(model_cfg.get("match_to")))
        width, _, _ = match_width(model_cfg, target, input_shape, num_classes, by=str(model_cfg["match"]))
        return build_with_width(model_cfg, width, input_shape, num_classes, act_layer)
    return build_model(builder_config(model_cfg), input_shape, num_classes, act_layer)


def _first_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    own = model.state_dict()
    for name, tensor in state.items():
        if name not in own:
            return f"the checkpoint has {name}, the model does not"
        if own[name].shape != tensor.shape:
            return f"{name} is {list(tensor.shape)} in the checkpoint, {list(own[name].shape)} in the model"
    missing = next((name for name in own if name not in state), None)
    return f"the checkpoint lacks {missing}" if missing else "unknown mismatch"


def load_run_model(
    run_dir: str | Path,
    device: torch.device | str = "cpu",
    *,
    checkpoint: str | Path | None = None,
    expect_input_shape: tuple[int, int, int] | None = None,
    expect_num_classes: int | None = None,
    expect_dataset: str | None = None,
    key: str = "run",
) -> nn.Module:
    """The model a finished run trained, with its best (or the given) checkpoint's weights, in eval mode.

    Magnitude-pruning masks are folded into the weights (zeros stay zeros, no mask hooks remain).

    ``expect_*`` are what the caller will feed it; a run trained for other data fails with one line.
    """
    from dsconv.compression.sparse import apply_saved_masks, make_masks_permanent
    from dsconv.compression.structured import resize_to_state_dict
    from dsconv.layers.activations import act_layer_from_config
    from dsconv.training.checkpoint import load_checkpoint

    run = resolve_run(checkpoint if checkpoint is not None else run_dir, key=key)
    geometry = dataset_geometry(run.config.get("dataset") or {})
    _check_expectations(run, key, geometry, expect_input_shape, expect_num_classes, expect_dataset)
    input_shape = expect_input_shape or (geometry[0] if geometry else None)
    num_classes = expect_num_classes or (geometry[1] if geometry else None)
    if input_shape is None or num_classes is None:
        raise ConfigError(f"{key}={run.run_dir}: its dataset's input shape is unknown here: pass it explicitly")
    try:
        state = load_checkpoint(run.checkpoint, map_location="cpu")
    except DsconvError as exc:
        raise ConfigError(f"{key}={run.checkpoint}: {exc}") from exc
    weights = state.get("model")
    if not isinstance(weights, dict):
        raise ConfigError(f"{key}={run.checkpoint} is not a dsconv training checkpoint (no model state)")
    activation = run.config.get("activation") or {"name": "relu"}
    model = build_architecture(run.config, tuple(input_shape), int(num_classes), act_layer_from_config(activation))
    try:
        resize_to_state_dict(model, weights)
        apply_saved_masks(model, weights)
        model.load_state_dict(weights)
    except (RuntimeError, KeyError) as exc:  # size mismatches, missing keys
        raise ConfigError(
            f"{key}={run.checkpoint} does not fit a {run.config.model.get('name')} for "
            f"{_shape_text(tuple(input_shape))} input and {num_classes} classes: {_first_mismatch(model, weights)}; "
            "use a run trained on this data"
        ) from exc
    _probe(model, tuple(input_shape), int(num_classes), f"{key}={run.checkpoint}")
    # Evaluation and benchmarks want plain weights: a mask multiply on every forward would cost time.
    return make_masks_permanent(model).to(device).eval()


@torch.no_grad()
def _probe(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int, where: str) -> None:
    # Pruned checkpoints are loaded by resizing layers to the stored shapes, which would also accept
    # a model for other classes or channels: one forward pass shows what it really takes and gives.
    model.eval()
    try:
        out = model(torch.zeros(1, *input_shape))
    except RuntimeError as exc:
        shape = _shape_text(input_shape)
        raise ConfigError(f"{where} cannot take {shape} input: use a run trained on this data") from exc
    if tuple(out.shape) != (1, num_classes):
        raise ConfigError(
            f"{where} predicts {out.shape[-1]} classes, the data has {num_classes}: use a run trained on this data"
        )
