"""``SeparableConv2d``: a drop-in for ``nn.Conv2d`` made of a depthwise and a pointwise stage.

Both stages are ordinary ``nn.Conv2d`` modules (the depthwise one with ``groups=in_channels``) so
FLOP counters, pruning tools and ``to_separable`` keep recognising them. Every optional part is an
``nn.Identity`` when off, which keeps ``forward`` one straight line.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from dsconv.layers.activations import ActLayer, get_act_layer, make_act
from dsconv.layers.norm import NormLayer, get_norm_layer, make_norm

_IntPair = int | tuple[int, int]
_Padding = _IntPair | str


def _pair(value: _IntPair | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, numbers.Integral):
        return (int(value), int(value))
    first, second = value  # configs hand over lists: accept any 2-sequence
    return (int(first), int(second))


def keeps_size(kernel_size: _IntPair, padding: _Padding, dilation: _IntPair = 1) -> bool:
    """Whether a stride-1 conv with this geometry returns its input's spatial size (residuals need it)."""
    if isinstance(padding, str):
        return padding == "same"
    kernel_size, dilation = _pair(kernel_size), _pair(dilation)
    return all(2 * p == d * (k - 1) for p, d, k in zip(_pair(padding), dilation, kernel_size))


class UnitNormFilters(nn.Module):
    """Parametrization that rescales every output filter of a conv weight to unit L2 norm.

    With ``learnable_gain`` the filter norm becomes a learned per-filter gain (weight normalization,
    Salimans & Kingma 2016); without it every filter stays exactly on the unit sphere. The norm is
    clamped away from zero so an all-zero filter yields zero gradients instead of NaNs.
    """

    def __init__(self, out_channels: int, learnable_gain: bool = False, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(out_channels)) if learnable_gain else None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        norm = weight.flatten(1).norm(dim=1).clamp_min(self.eps).view(-1, 1, 1, 1)
        unit = weight / norm
        return unit if self.gain is None else unit * self.gain.view(-1, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"learnable_gain={self.gain is not None}"


class Scale(nn.Module):
    """Multiply by a scalar that is either fixed (a buffer) or learned (a parameter)."""

    def __init__(self, value: float, learnable: bool = False) -> None:
        super().__init__()
        tensor = torch.tensor(float(value))
        if learnable:
            self.scale = nn.Parameter(tensor)
        else:
            self.register_buffer("scale", tensor)
        self.learnable = learnable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"{float(self.scale.detach()):g}, learnable={self.learnable}"


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channel gates from globally pooled features.

    ``se_ratio`` sizes the hidden layer relative to ``channels`` (at least one unit).
    """

    def __init__(self, channels: int, se_ratio: float = 0.25, act_layer: ActLayer = nn.ReLU) -> None:
        super().__init__()
        if not se_ratio > 0:
            raise ValueError(f"se_ratio must be > 0, got {se_ratio}: use e.g. 0.25, or None to disable SE")
        hidden = max(1, round(channels * se_ratio))
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = act_layer()
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.act(self.reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(gate)


def make_se(channels: int, se_ratio: float | None) -> nn.Module:
    """SE block, or ``nn.Identity`` for ``se_ratio`` None/0 (the usual "off" values in configs)."""
    if se_ratio is None or se_ratio == 0:
        return nn.Identity()
    return SqueezeExcite(channels, se_ratio)


class SeparableConv2d(nn.Module):
    """Depthwise conv (k x k, ``groups=in_channels``) -> pointwise conv (1 x 1).

    Stage order: depthwise conv -> norm -> depthwise scale -> depthwise activation -> [SE] ->
    pointwise conv -> norm -> pointwise activation, then ``+ shortcut(x)`` when ``skip``. The
    defaults (no norm, activation, scale, SE or skip) make it a true drop-in for ``nn.Conv2d``: its
    kernel equals a dense one with ``W[o, i] = P[o, i] * D[i]``.

    * ``bias`` belongs to the pointwise stage; the depthwise stage never has one because the
      pointwise stage (or a norm) absorbs it.
    * ``depthwise_scale`` multiplies the depthwise output by a constant (a learned scalar with
      ``learnable_scale``; ``learnable_scale`` alone starts the scalar at 1).
    * ``normalize_weights`` rescales every depthwise and pointwise filter to unit L2 norm at each
      forward (a parametrization, so the optimizer updates the raw weight and gradients flow through
      the normalization); ``learnable_gain`` adds a learned per-filter norm.
    * ``skip`` adds ``x`` when shapes match, else a learned 1x1 projection with the stride (plus
      ``norm`` when there is one; a bias otherwise), ResNet's option B.
    * ``se_ratio`` inserts squeeze-and-excitation on the depthwise output (MobileNetV3 placement).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntPair,
        stride: _IntPair = 1,
        padding: _Padding = 0,
        dilation: _IntPair = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        depth_multiplier: int = 1,
        depthwise_activation: str | ActLayer | None = None,
        pointwise_activation: str | ActLayer | None = None,
        norm: str | NormLayer | None = None,
        depthwise_scale: float | None = None,
        learnable_scale: bool = False,
        normalize_weights: bool = False,
        learnable_gain: bool = False,
        skip: bool = False,
        se_ratio: float | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be >= 1, got in={in_channels}, out={out_channels}")
        multiplier = depth_multiplier
        if isinstance(multiplier, bool) or int(multiplier) != multiplier or multiplier < 1:
            raise ValueError(f"depth_multiplier must be an integer >= 1, got {multiplier!r}")
        if learnable_gain and not normalize_weights:
            raise ValueError("learnable_gain=True needs normalize_weights=True: set both, or drop the gain")
        if depthwise_scale is None and learnable_scale:
            depthwise_scale = 1.0
        kernel_size, stride, dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if not isinstance(padding, str):
            padding = _pair(padding)
        mid_channels = in_channels * int(depth_multiplier)
        norm_layer = get_norm_layer(norm)
        self.depthwise = nn.Conv2d(
            in_channels,
            mid_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups=in_channels,
            bias=False,
            padding_mode=padding_mode,
        )
        self.depthwise_norm = make_norm(norm_layer, mid_channels)
        self.depthwise_scale = Scale(depthwise_scale, learnable_scale) if depthwise_scale is not None else nn.Identity()
        self.depthwise_act = make_act(get_act_layer(depthwise_activation))
        self.se = make_se(mid_channels, se_ratio)
        self.pointwise = nn.Conv2d(mid_channels, out_channels, 1, bias=bias)
        self.pointwise_norm = make_norm(norm_layer, out_channels)
        self.pointwise_act = make_act(get_act_layer(pointwise_activation))
        if normalize_weights:
            for conv in (self.depthwise, self.pointwise):
                unit_norm = UnitNormFilters(conv.out_channels, learnable_gain)
                parametrize.register_parametrization(conv, "weight", unit_norm)
        self.normalize_weights = bool(normalize_weights)
        self.skip = bool(skip)
        # None rather than Identity: an Identity shortcut means "add x", which differs from "no skip".
        self.shortcut = (
            _make_shortcut(in_channels, out_channels, kernel_size, stride, padding, dilation, norm_layer)
            if skip
            else None
        )

    # Readable attributes mirroring nn.Conv2d, so code written for it keeps working.
    @property
    def in_channels(self) -> int:
        return self.depthwise.in_channels

    @property
    def out_channels(self) -> int:
        return self.pointwise.out_channels

    @property
    def mid_channels(self) -> int:
        return self.depthwise.out_channels

    @property
    def depth_multiplier(self) -> int:
        return self.depthwise.out_channels // self.depthwise.in_channels

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.depthwise.kernel_size

    @property
    def stride(self) -> tuple[int, ...]:
        return self.depthwise.stride

    @property
    def padding(self) -> tuple[int, ...] | str:
        return self.depthwise.padding

    @property
    def dilation(self) -> tuple[int, ...]:
        return self.depthwise.dilation

    @property
    def padding_mode(self) -> str:
        return self.depthwise.padding_mode

    @property
    def has_bias(self) -> bool:
        return self.pointwise.bias is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.depthwise_act(self.depthwise_scale(self.depthwise_norm(self.depthwise(x))))
        out = self.pointwise_act(self.pointwise_norm(self.pointwise(self.se(out))))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return out

    def extra_repr(self) -> str:
        # Only what differs from nn.Conv2d's defaults; norms, activations, scale and SE print as children.
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"]
        parts.append(f"stride={self.stride}")
        if self.padding != (0, 0):
            parts.append(f"padding={self.padding}")
        if self.dilation != (1, 1):
            parts.append(f"dilation={self.dilation}")
        if not self.has_bias:
            parts.append("bias=False")
        if self.padding_mode != "zeros":
            parts.append(f"padding_mode={self.padding_mode}")
        if self.depth_multiplier != 1:
            parts.append(f"depth_multiplier={self.depth_multiplier}")
        if self.normalize_weights:
            parts.append("normalize_weights=True")
        if self.skip:
            parts.append("skip=" + ("identity" if isinstance(self.shortcut, nn.Identity) else "projection"))
        return ", ".join(parts)


# Geometry comes from the call site; SeparableConv2d's keyword-only extras are its options.
SEPARABLE_OPTIONS: tuple[str, ...] = tuple(
    name
    for name, param in inspect.signature(SeparableConv2d.__init__).parameters.items()
    if param.kind is inspect.Parameter.KEYWORD_ONLY
)


def _make_shortcut(
    in_ch: int,
    out_ch: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: _Padding,
    dilation: tuple[int, int],
    norm_layer: NormLayer | None,
) -> nn.Module:
    if not keeps_size(kernel_size, padding, dilation):
        raise ValueError(
            f"skip=True needs a padding that keeps the spatial size before striding "
            f"(dilation*(kernel_size-1)/2 per side), got padding={padding} for kernel_size={kernel_size}: "
            f"use padding='same' or kernel_size//2 with an odd kernel"
        )
    if in_ch == out_ch and stride == (1, 1):
        return nn.Identity()
    # With the same "keeps size" padding, a strided kxk conv and a strided 1x1 conv give the same
    # output size (floor((H - 1) / s) + 1), so the projection always lines up with the branch.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=norm_layer is None),
        make_norm(norm_layer, out_ch),
    )
