"""Activation layers by name, so one config group can set every activation of a model."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from dsconv.errors import ConfigError

ActLayer = Callable[[], nn.Module]

_ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "swish": nn.SiLU,  # swish with beta=1 is SiLU
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "hardswish": nn.Hardswish,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def activation_names() -> list[str]:
    return sorted(_ACTIVATIONS)


def get_act_layer(spec: str | ActLayer | None, **kwargs: Any) -> ActLayer | None:
    """Turn a name (``"relu"``), a layer type or factory, or ``None`` into a zero-argument factory."""
    if spec is None:
        return None
    if isinstance(spec, str):
        key = spec.lower()
        if key not in _ACTIVATIONS:
            raise ConfigError(f"unknown activation {spec!r}: choose one of {', '.join(activation_names())}")
        return functools.partial(_ACTIVATIONS[key], **kwargs)
    if kwargs:
        return functools.partial(spec, **kwargs)
    return spec


def act_layer_from_config(cfg: Any) -> ActLayer:
    """``activation`` config group -> factory: ``{name: leaky_relu, negative_slope: 0.1}``."""
    options = {k: v for k, v in dict(cfg).items() if k != "name"}
    layer = get_act_layer(str(cfg["name"]), **options)
    assert layer is not None
    return layer


# Clamps (slope 0 or 1, non-decreasing): max-pooling commutes with them exactly, values and gradients alike,
# since a tie that the clamp creates carries a zero gradient whichever element the pool picks.
_CLAMPS = (nn.ReLU, nn.Hardtanh, nn.Identity)  # nn.ReLU6 is an nn.Hardtanh


def commutes_with_max_pool(act: nn.Module) -> bool:
    """True when ``max_pool(act(x))`` equals ``act(max_pool(x))`` bit for bit, gradients included.

    LeakyReLU and the smooth activations are left out: a leaky slope can round two distinct inputs to
    one output, and the pool would then route the gradient to another element."""
    return isinstance(act, _CLAMPS)


def make_act(act_layer: ActLayer | None) -> nn.Module:
    """Instantiate ``act_layer``, or ``nn.Identity`` when there is none, so forward stays straight."""
    return act_layer() if act_layer is not None else nn.Identity()
