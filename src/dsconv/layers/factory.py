"""One factory per concern: ``make_conv`` picks the convolution kind, ``conv_norm_act`` wraps it.

Every conv-based model in the registry builds its k x k convolutions through these two functions,
so a single config key (``model.conv``) turns a network into its depthwise-separable twin.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from dsconv.errors import ConfigError
from dsconv.layers.activations import ActLayer, make_act
from dsconv.layers.norm import NormLayer, get_norm_layer, make_norm
from dsconv.layers.separable import SEPARABLE_OPTIONS, SeparableConv2d

ConvBuilder = Callable[..., nn.Module]
_CONV_KINDS: dict[str, ConvBuilder] = {}


def register_conv(kind: str) -> Callable[[ConvBuilder], ConvBuilder]:
    def decorator(builder: ConvBuilder) -> ConvBuilder:
        _CONV_KINDS[kind] = builder
        return builder

    return decorator


def conv_kinds() -> list[str]:
    return sorted(_CONV_KINDS)


# Geometry that models choose per layer; everything else a kind accepts is a user option (model.conv_options).
_GEOMETRY = ("in_ch", "out_ch", "kernel_size", "stride")


def conv_kind_options(kind: str) -> tuple[str, ...]:
    """Keyword options a conv kind accepts beyond its geometry, read from its builder's signature.

    A builder that forwards ``**options`` to a layer declares them with a ``declared_options``
    attribute, so models can route each ``model.conv_options`` key to the kinds that take it.
    """
    if kind not in _CONV_KINDS:
        raise ConfigError(f"unknown conv kind {kind!r}: choose one of {', '.join(conv_kinds())} (model.conv)")
    builder = _CONV_KINDS[kind]
    declared = getattr(builder, "declared_options", ())
    named = [
        name
        for name, param in inspect.signature(builder).parameters.items()
        if name not in _GEOMETRY and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL)
    ]
    return tuple(dict.fromkeys([*named, *declared]))


def default_padding(kernel_size: int, dilation: int = 1) -> int:
    return dilation * (kernel_size - 1) // 2


@register_conv("standard")
def _standard(in_ch, out_ch, kernel_size, stride=1, padding=None, dilation=1, bias=True, **options) -> nn.Module:
    if options:
        raise ConfigError(
            f"conv options {sorted(options)} apply to separable convs only: drop them or use model.conv=separable"
        )
    padding = default_padding(kernel_size, dilation) if padding is None else padding
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, bias=bias)


@register_conv("separable")
def _separable(in_ch, out_ch, kernel_size, stride=1, padding=None, dilation=1, bias=True, **options) -> nn.Module:
    padding = default_padding(kernel_size, dilation) if padding is None else padding
    return SeparableConv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, bias=bias, **options)


_separable.declared_options = SEPARABLE_OPTIONS  # type: ignore[attr-defined]


def make_conv(kind: str, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, **options: Any) -> nn.Module:
    """Build a bare convolution of ``kind`` (``standard`` | ``separable`` | ``inverted_residual``).

    ``inverted_residual`` is this package's MobileNetV2 block (``dsconv.layers.InvertedResidual``),
    the one every registry model uses under that name (``tv_mobilenet_v2`` included).

    ``padding`` defaults to the size-preserving ``dilation * (k - 1) // 2``; other ``options`` go
    to the layer (e.g. ``depth_multiplier``, ``skip`` for separable convs).
    """
    if kind not in _CONV_KINDS:
        raise ConfigError(f"unknown conv kind {kind!r}: choose one of {', '.join(conv_kinds())} (model.conv)")
    if kernel_size < 1:
        raise ConfigError(f"kernel size must be >= 1, got {kernel_size}")
    return _CONV_KINDS[kind](in_ch, out_ch, kernel_size, stride, **options)


def conv_norm_act(
    kind: str,
    in_ch: int,
    out_ch: int,
    kernel_size: int,
    stride: int = 1,
    *,
    norm_layer: str | NormLayer | None = "batch",
    act_layer: ActLayer | None = nn.ReLU,
    **options: Any,
) -> nn.Module:
    """A conv unit: conv -> norm -> act, whatever the conv kind.

    For a standard conv this is ``Sequential(Conv2d, norm, act)`` with a conv bias only when there
    is no norm. A separable unit puts a norm and an activation after *each* stage (MobileNet's
    ``conv_dw``), with no conv biases. Kinds that carry their own norms (``inverted_residual``)
    receive ``norm_layer`` and ``act_layer`` and are returned unwrapped.
    """
    norm_layer = get_norm_layer(norm_layer)
    if kind == "standard":
        options.setdefault("bias", norm_layer is None)
        return nn.Sequential(
            make_conv(kind, in_ch, out_ch, kernel_size, stride, **options),
            make_norm(norm_layer, out_ch),
            make_act(act_layer),
        )
    if kind == "separable":
        options.setdefault("bias", False)
        options.setdefault("norm", norm_layer)
        options.setdefault("depthwise_activation", act_layer)
        options.setdefault("pointwise_activation", act_layer)
        return make_conv(kind, in_ch, out_ch, kernel_size, stride, **options)
    # Other kinds (inverted_residual) place their own norms and activations; hand both over.
    options.setdefault("norm", norm_layer)
    options.setdefault("act_layer", act_layer)
    return make_conv(kind, in_ch, out_ch, kernel_size, stride, **options)
