"""Closing the accuracy gap of DS convolutions: distillation, equal-budget twins, and pruning as the rival.

``build_run_model`` is what training calls instead of ``build_model``: it builds the widened DS twin
for ``model.match`` or the pruned source model for ``prune``, and says what it did in a small dict
for metrics.json. Distillation changes the loss, not the model: see ``distill.build_distillation``.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from dsconv.compression.distill import DistillationCriterion, build_distillation, distillation_loss
from dsconv.compression.match import match_width
from dsconv.compression.prune import load_pruned_model, prune_structured, prune_unstructured
from dsconv.compression.runs import load_run_model

__all__ = [
    "DistillationCriterion",
    "build_distillation",
    "build_run_model",
    "distillation_loss",
    "load_pruned_model",
    "load_run_model",
    "match_width",
    "prune_structured",
    "prune_unstructured",
]


def build_run_model(cfg: DictConfig, data: Any, act_layer=None) -> tuple[nn.Module, dict[str, Any]]:
    """The model this run trains and what was done to it: ``({by, to, width, budget, achieved})`` for
    ``model.match``, ``({method, from, sparsity, finetune_epochs, budget, achieved, ...})`` for ``prune``,
    ``{}`` for a plain model."""
    from dsconv.benchmark.targets import compose_model_group
    from dsconv.compression.match import build_with_width, builder_config
    from dsconv.compression.prune import build_pruned
    from dsconv.errors import ConfigError
    from dsconv.registry import build_model

    if cfg.get("prune") is not None:
        return build_pruned(cfg, data, act_layer)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model_cfg, dict)
    shape, classes = tuple(data.input_shape), int(data.num_classes)
    by = model_cfg.get("match")
    if not by:
        if model_cfg.get("match_to"):
            raise ConfigError("model.match_to is set without model.match: add +model.match=macs (or params)")
        return build_model(builder_config(model_cfg), shape, classes, act_layer), {}
    to = model_cfg.get("match_to")
    if not to:
        raise ConfigError(f"model.match={by} needs +model.match_to=<conf/model option> to match, e.g. mnist_cnn")
    width, budget, achieved = match_width(model_cfg, compose_model_group(str(to)), shape, classes, by=str(by))
    model = build_with_width(model_cfg, width, shape, classes, act_layer)
    return model, {"by": str(by), "to": str(to), "width": width, "budget": budget, "achieved": achieved}
