"""MobileNetV2's inverted residual block (Sandler et al. 2018), registered as conv kind ``inverted_residual``.

1x1 expansion to ``expand_ratio * in`` channels -> norm -> act -> k x k depthwise -> norm -> act ->
[squeeze-and-excitation] -> 1x1 projection -> norm, with no activation after the projection (the
"linear bottleneck": a ReLU on the narrow output would destroy information), plus the input when
shapes match (stride 1 and ``in == out``). The block carries its own norms and activations, so
``conv_norm_act`` returns it unwrapped.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from dsconv.errors import ConfigError
from dsconv.layers.activations import ActLayer, get_act_layer, make_act
from dsconv.layers.factory import default_padding, register_conv
from dsconv.layers.norm import NormLayer, get_norm_layer, make_norm
from dsconv.layers.separable import keeps_size, make_se


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (k x k, stride) -> [SE] -> project (1x1, linear) [+ x].

    ``expand_ratio`` 1 drops the expansion conv (MobileNetV2's first block). ``se_ratio`` sizes the
    SE hidden layer relative to the expanded channels it gates. ``bias=None`` gives each conv a
    bias only when no norm follows it; ``act_layer`` None leaves the block fully linear.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | str | None = None,
        dilation: int = 1,
        bias: bool | None = None,
        *,
        expand_ratio: float = 6,
        se_ratio: float | None = None,
        norm: str | NormLayer | None = "batch",
        act_layer: str | ActLayer | None = nn.ReLU6,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be >= 1, got in={in_channels}, out={out_channels}")
        if not expand_ratio > 0:
            raise ValueError(f"expand_ratio must be > 0, got {expand_ratio}: MobileNetV2 uses 6, 1 = none")
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
        padding = default_padding(kernel_size, dilation) if padding is None else padding
        hidden = max(1, round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        if self.use_residual and not keeps_size(kernel_size, padding, dilation):
            raise ValueError(
                f"inverted_residual adds its input, so padding must keep the size: got padding={padding}, "
                f"kernel_size={kernel_size}, dilation={dilation}; use an odd kernel and leave padding unset"
            )
        norm_layer = get_norm_layer(norm)
        act = get_act_layer(act_layer)
        conv_bias = norm_layer is None if bias is None else bool(bias)
        self.in_channels = in_channels
        if expand_ratio != 1:
            expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=conv_bias)
            self.expand = nn.Sequential(expand_conv, make_norm(norm_layer, hidden), make_act(act))
        else:
            self.expand = nn.Identity()
        self.depthwise = nn.Conv2d(
            hidden, hidden, kernel_size, stride, padding, dilation, groups=hidden, bias=conv_bias
        )
        self.depthwise_norm = make_norm(norm_layer, hidden)
        self.depthwise_act = make_act(act)
        self.se = make_se(hidden, se_ratio)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=conv_bias)
        self.project_norm = make_norm(norm_layer, out_channels)

    @property
    def out_channels(self) -> int:
        return self.project.out_channels

    @property
    def hidden_channels(self) -> int:
        return self.depthwise.out_channels

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.depthwise.kernel_size

    @property
    def stride(self) -> tuple[int, ...]:
        return self.depthwise.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.depthwise_act(self.depthwise_norm(self.depthwise(self.expand(x))))
        out = self.project_norm(self.project(self.se(out)))
        return out + x if self.use_residual else out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"hidden={self.hidden_channels}, residual={self.use_residual}"
        )


_OPTIONS = ("padding", "dilation", "bias", "act_layer", "expand_ratio", "se_ratio", "norm")


@register_conv("inverted_residual")
def _inverted_residual(
    in_ch: int,
    out_ch: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | str | None = None,
    dilation: int = 1,
    bias: bool | None = None,
    act_layer: str | ActLayer | None = nn.ReLU6,
    expand_ratio: float = 6,
    se_ratio: float | None = None,
    norm: str | NormLayer | None = "batch",
    **unknown: Any,
) -> nn.Module:
    if unknown:
        raise ConfigError(
            f"conv options {sorted(unknown)} do not apply to inverted_residual: "
            f"use only {', '.join(_OPTIONS)} (model.conv_options)"
        )
    return InvertedResidual(
        in_ch,
        out_ch,
        kernel_size,
        stride,
        padding,
        dilation,
        bias,
        expand_ratio=expand_ratio,
        se_ratio=se_ratio,
        norm=norm,
        act_layer=act_layer,
    )
