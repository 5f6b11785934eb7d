"""Scratch layers with torch.nn's constructor arguments, parameter names, shapes and default init.

Each layer is an ``nn.Module`` holding ``nn.Parameter``s (so optimizers, ``.to()`` and state_dicts
work) whose ``forward`` calls :mod:`dsconv.scratch.functional`; a state_dict saved from one of these
loads into the torch.nn layer of the same name, and back. Initialisation reproduces torch.nn's
defaults (uniform in +-1/sqrt(fan_in) for conv and linear weights and biases) with plain tensor ops.
Options torch.nn has but the scratch ops do not implement raise ``ValueError`` instead of being
silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from dsconv.scratch import functional as SF
from dsconv.scratch.im2col import IntPair, pair

Tensor = torch.Tensor


def _uniform_(tensor: Tensor, bound: float) -> None:
    with torch.no_grad():
        tensor.uniform_(-bound, bound)


class Conv2d(nn.Module):
    """``nn.Conv2d`` twin: weight ``(out, in/groups, kh, kw)``, bias ``(out,)``; zero padding only."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair | str = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        if padding_mode != "zeros":
            raise ValueError(f"scratch Conv2d supports padding_mode='zeros' only, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int, a pair, 'same' or 'valid'; got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding: tuple[int, int] | str = padding
        else:
            self.padding = pair(padding, "padding", minimum=0)
        factory = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torch.nn: kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)), same bias bound.
        bound = 1.0 / math.sqrt(self.weight[0].numel())
        _uniform_(self.weight, bound)
        if self.bias is not None:
            _uniform_(self.bias, bound)

    def forward(self, x: Tensor) -> Tensor:
        return SF.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}"
        )


class Linear(nn.Module):
    """``nn.Linear`` twin: weight ``(out_features, in_features)``, bias ``(out_features,)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features, self.out_features = in_features, out_features
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        _uniform_(self.weight, bound)
        if self.bias is not None:
            _uniform_(self.bias, bound)

    def forward(self, x: Tensor) -> Tensor:
        return SF.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class MaxPool2d(nn.Module):
    """``nn.MaxPool2d`` twin (``ceil_mode=False``, no ``return_indices``); stride defaults to the kernel."""

    def __init__(
        self,
        kernel_size: IntPair,
        stride: IntPair | None = None,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        if return_indices or ceil_mode:
            raise ValueError("scratch MaxPool2d supports neither return_indices nor ceil_mode")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = pair(padding, "padding", minimum=0)
        self.dilation = pair(dilation, "dilation")
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(f"padding {self.padding} must be at most half the kernel size {self.kernel_size}")

    def forward(self, x: Tensor) -> Tensor:
        return SF.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}"


class ReLU(nn.Module):
    """``nn.ReLU`` twin; always out of place (``inplace=True`` is refused rather than ignored)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        if inplace:
            raise ValueError("scratch ReLU is out of place: use inplace=False")

    def forward(self, x: Tensor) -> Tensor:
        return SF.relu(x)


class GELU(nn.Module):
    """``nn.GELU()`` twin, exact (erf) form only; its gradient is left to autograd."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate != "none":
            raise ValueError(f"scratch GELU supports approximate='none' only, got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return SF.gelu(x)


class Dropout(nn.Module):
    """``nn.Dropout`` twin: inverted dropout in training mode, identity in eval mode."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        if inplace:
            raise ValueError("scratch Dropout is out of place: use inplace=False")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return SF.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Flatten(nn.Module):
    """``nn.Flatten`` twin: flattens dims ``start_dim..end_dim`` (NCHW order, as torch.nn does)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)


class LayerNorm(nn.Module):
    """``nn.LayerNorm`` twin (weight/bias over ``normalized_shape``); autograd does its backward."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"normalized_shape must be non-empty positive sizes, got {normalized_shape!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.normalized_shape, self.eps, self.elementwise_affine = shape, float(eps), elementwise_affine
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(shape, **factory)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(shape, **factory)) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-len(self.normalized_shape) :]) != self.normalized_shape:
            raise ValueError(f"LayerNorm over {self.normalized_shape} got input of shape {tuple(x.shape)}")
        return SF.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
