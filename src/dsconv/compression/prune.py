"""Pruning as the rival compression: a trained standard model cut down to the DS twin's budget.

``+prune.method=structured`` removes whole filters (L1 norm, one keep ratio for all layers, see
``structured``) until the conv+linear MACs match ``prune.match_to``'s, giving a really smaller model.
``+prune.method=unstructured`` zeroes single weights (global magnitude, ``torch.nn.utils.prune``)
until the non-zero parameters match ``prune.match_to``'s parameter count. Either result is then
fine-tuned for ``prune.finetune_epochs`` epochs by the ordinary trainer.

``sparsity`` in the info: structured, the share of the source's parameters removed; unstructured,
the share of its conv/linear weights set to zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from dsconv.compression.runs import group_defaults, load_run_model, resolve_run
from dsconv.compression.sparse import prune_to_params
from dsconv.compression.structured import prune_to_macs
from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import count_macs, count_params

METHODS = ("structured", "unstructured")


def prune_settings(prune_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``prune`` keys over conf/prune/default.yaml, checked."""
    defaults = group_defaults("prune")
    settings = {**defaults, **dict(prune_cfg or {})}
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ConfigError(f"prune.{unknown[0]} is not a pruning key: use {', '.join(defaults)}")
    if settings["method"] not in METHODS:
        raise ConfigError(f"prune.method={settings['method']!r} is unknown: choose structured or unstructured")
    if not settings.get("from"):
        raise ConfigError("prune.from is not set: give +prune.from=<finished run dir of the standard model>")
    if not settings.get("match_to"):
        raise ConfigError("prune.match_to is not set: give +prune.match_to=<conf/model option>, e.g. the DS twin")
    epochs = settings["finetune_epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"prune.finetune_epochs={epochs!r} must be an integer >= 1: the pruned model is fine-tuned")
    return settings


def prune_structured(
    model: nn.Module, input_shape: tuple[int, int, int], budget_macs: int, *, tol: float = 0.02
) -> tuple[nn.Module, dict[str, Any]]:
    """A smaller copy of ``model`` whose ``count_macs`` is within ``tol`` of ``budget_macs``.

    Info: ``keep_ratio``, ``channels`` (kept filters per pruned layer), ``achieved`` (its MACs),
    ``sparsity`` and, for checking against the unpruned model, ``groups`` and ``keep``.
    """
    pruned, info = prune_to_macs(model, input_shape, budget_macs, lambda m: count_macs(m, input_shape), tol=tol)
    info["sparsity"] = 1.0 - count_params(pruned).total / count_params(model).total
    return pruned, info


def prune_unstructured(model: nn.Module, budget_params: int) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` itself with masks zeroing its smallest weights down to ``budget_params`` non-zero parameters."""
    return prune_to_params(model, budget_params)


def load_pruned_model(run_dir: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """A pruned (or any) run's model for evaluation or benchmarking; see ``runs.load_run_model``."""
    return load_run_model(run_dir, device, key="run")


def _model_dict(model_cfg: Any) -> dict[str, Any]:
    plain = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else model_cfg
    return dict(plain or {})


def build_pruned(cfg: DictConfig, data: Any, act_layer=None) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``prune.from``, prune it to ``prune.match_to``'s budget, return it ready for fine-tuning."""
    from dsconv.benchmark.targets import compose_model_group
    from dsconv.compression.match import builder_config
    from dsconv.registry import build_model

    settings = prune_settings(cfg.get("prune"))
    source_run = resolve_run(settings["from"], key="prune.from")
    source_model = _model_dict(source_run.config.model)
    run_model = _model_dict(cfg.model)
    if run_model.get("match"):
        raise ConfigError("model.match and prune cannot be combined: prune a standard run, or match a DS twin")
    if builder_config(run_model) != builder_config(source_model):
        raise ConfigError(
            f"prune.from={settings['from']} trained model {source_model.get('name')} with other options than "
            f"this run's model ({run_model.get('name')}): select the source's model so the run is labelled by it"
        )
    shape, classes = tuple(data.input_shape), int(data.num_classes)
    source = load_run_model(
        source_run.run_dir,
        checkpoint=source_run.checkpoint,
        expect_input_shape=shape,  # type: ignore[arg-type]
        expect_num_classes=classes,
        expect_dataset=str(data.name),
        key="prune.from",
    )
    target = build_model(builder_config(compose_model_group(str(settings["match_to"]))), shape, classes, act_layer)
    if settings["method"] == "structured":
        budget = count_macs(target, shape)
        pruned, details = prune_structured(source, shape, budget)  # type: ignore[arg-type]
        extra = {"keep_ratio": details["keep_ratio"], "channels": details["channels"]}
    else:
        budget = count_params(target).total
        pruned, details = prune_unstructured(source, budget)
        extra = {"weights_pruned": details["weights_pruned"]}
    info = {
        "method": settings["method"],
        "from": str(source_run.run_dir),
        "to": str(settings["match_to"]),
        "sparsity": details["sparsity"],
        "finetune_epochs": int(settings["finetune_epochs"]),
        "budget": int(budget),
        "achieved": int(details["achieved"]),
        **extra,
    }
    return pruned.train(), info
