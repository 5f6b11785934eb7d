"""Normalization layers by name; ``None`` becomes ``nn.Identity``."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from dsconv.errors import ConfigError

NormLayer = Callable[[int], nn.Module]

_NORMS: dict[str, NormLayer] = {
    "batch": nn.BatchNorm2d,
    "batchnorm": nn.BatchNorm2d,
    "bn": nn.BatchNorm2d,
    "group": lambda c: nn.GroupNorm(_num_groups(c), c),
    "instance": lambda c: nn.InstanceNorm2d(c, affine=True),
}


def _num_groups(channels: int) -> int:
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


def get_norm_layer(spec: str | NormLayer | None) -> NormLayer | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        key = spec.lower()
        if key in ("none", ""):
            return None
        if key not in _NORMS:
            raise ConfigError(f"unknown norm {spec!r}: choose one of {', '.join(sorted(_NORMS))} or null")
        return _NORMS[key]
    return spec


def make_norm(norm_layer: NormLayer | None, channels: int) -> nn.Module:
    return norm_layer(channels) if norm_layer is not None else nn.Identity()
