"""Model registry: ``@register_model("name")`` and ``build_model(cfg, input_shape, num_classes)``.

Configs name a registered builder instead of a free ``_target_`` so that a typo fails before
training with the list of valid names, and so users cannot instantiate arbitrary classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.nn as nn

from dsconv.errors import ConfigError

ModelBuilder = Callable[..., nn.Module]
_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder(input_shape, num_classes, **model_options) -> nn.Module`` under ``name``."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS and _MODELS[name] is not builder:
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__module__}")
        _MODELS[name] = builder
        return builder

    return decorator


def registered_models() -> list[str]:
    _import_builtin_models()
    return sorted(_MODELS)


def get_model_builder(name: str) -> ModelBuilder:
    _import_builtin_models()
    if name not in _MODELS:
        raise ConfigError(
            f"unknown model {name!r}: registered models are {', '.join(sorted(_MODELS))} "
            "(set model.name to one of them)"
        )
    return _MODELS[name]


def build_model(
    model_cfg: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int, act_layer=None
) -> nn.Module:
    """Build the model named by ``model_cfg['name']``; every other key is passed to the builder."""
    options = {k: v for k, v in dict(model_cfg).items() if k != "name"}
    builder = get_model_builder(str(model_cfg["name"]))
    if act_layer is not None:
        options["act_layer"] = act_layer
    return builder(input_shape=tuple(input_shape), num_classes=int(num_classes), **options)


def _import_builtin_models() -> None:
    # Importing the package runs every @register_model decorator in it.
    import dsconv.models  # noqa: F401
