"""Scratch ops: conv, linear, max-pool and ReLU as ``torch.autograd.Function``s with hand-written
backward passes; softmax and layer norm too (closed-form backwards, for speed); dropout and GELU
left to autograd.

Only tensor operations are used (``matmul``/``addmm``, ``as_strided``, slicing, reductions); no
``torch.nn.functional`` call and no ``torch.nn`` layer. Spatial ops run on channels-last memory
(see :mod:`dsconv.scratch.im2col`) and return NCHW-shaped tensors whose memory is NHWC, so a stack
of scratch layers never transposes between layers.

While ``torch.jit.trace`` runs (fvcore's MAC counter, ONNX export) the wrappers call the same
forward math without the ``autograd.Function``: a tracer records a custom Function as an opaque
``PythonOp``, which fvcore would count as zero MACs; the plain ops show it the real matmuls.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from dsconv.scratch.autocast import autocast_inputs
from dsconv.scratch.conv import Conv2dFunction, conv2d
from dsconv.scratch.im2col import IntPair, Pads, col2im, out_size, pad_nhwc, pair, windows

__all__ = [  # conv lives in dsconv.scratch.conv and is re-exported so every op is importable here
    "Conv2dFunction",
    "LayerNormFunction",
    "LinearFunction",
    "MaxPool2dFunction",
    "ReLUFunction",
    "SoftmaxFunction",
    "conv2d",
    "dropout",
    "gelu",
    "layer_norm",
    "linear",
    "max_pool2d",
    "relu",
    "softmax",
]

Tensor = torch.Tensor


# --------------------------------------------------------------------------- linear
def _linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features, weight expects {weight.shape[1]}")
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.matmul(x2, weight.t()) if bias is None else torch.addmm(bias, x2, weight.t())
    return out.view(*x.shape[:-1], weight.shape[0])


class LinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` over any leading dims; backward ``dx = g W``, ``dW = g^T x``, ``db = sum g``."""

    @staticmethod
    def forward(ctx: FunctionCtx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _linear_forward(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g = grad_out.reshape(-1, weight.shape[0])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(g, weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.matmul(g.t(), x.reshape(-1, weight.shape[1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    (x, weight, bias), no_autocast = autocast_inputs((x, weight, bias))
    with no_autocast:
        if torch.jit.is_tracing():
            return _linear_forward(x, weight, bias)
        return LinearFunction.apply(x, weight, bias)


# --------------------------------------------------------------------------- max pooling
def _pool_forward(x: Tensor, kernel, stride, pads: Pads, dilation) -> tuple[Tensor, Tensor]:
    if x.dim() != 4:
        raise ValueError(f"max_pool2d expects a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    ho = out_size(h, pads[0] + pads[1], kernel[0], stride[0], dilation[0], "input height")
    wo = out_size(w, pads[2] + pads[3], kernel[1], stride[1], dilation[1], "input width")
    xp = pad_nhwc(x, pads, value=-math.inf)
    win = windows(xp, kernel, stride, dilation, (ho, wo)).reshape(n, ho, wo, kernel[0] * kernel[1], c)
    # torch.max returns the first maximal index, which is also nn.MaxPool2d's tie rule (row-major).
    values, index = win.max(dim=3)
    return values.permute(0, 3, 1, 2), index


class MaxPool2dFunction(torch.autograd.Function):
    """Max over windows; backward routes each output gradient to its arg-max input (col2im)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x, kernel, stride, pads, dilation):  # type: ignore[override]
        out, index = _pool_forward(x, kernel, stride, pads, dilation)
        ctx.save_for_backward(index)
        ctx.conf = (kernel, stride, pads, dilation, x.shape)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        kernel, stride, pads, dilation, (n, c, h, w) = ctx.conf
        ho, wo = grad_out.shape[2:]
        g = grad_out.permute(0, 2, 3, 1).unsqueeze(3)  # (N, Ho, Wo, 1, C)
        gcols = g.new_zeros((n, ho, wo, kernel[0] * kernel[1], c)).scatter_(3, index.unsqueeze(3), g)
        hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
        gxp = col2im(gcols.view(n, ho, wo, kernel[0], kernel[1], c), (hp, wp), stride, dilation)
        grad_x = gxp[:, pads[0] : pads[0] + h, pads[2] : pads[2] + w].permute(0, 3, 1, 2)
        return grad_x, None, None, None, None


def max_pool2d(
    x: Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Tensor:
    """Same contract as ``torch.nn.functional.max_pool2d`` (``ceil_mode=False``); stride defaults
    to the kernel size."""
    kernel = pair(kernel_size, "kernel_size")
    stride_ = kernel if stride is None else pair(stride, "stride")
    dilation_ = pair(dilation, "dilation")
    ph, pw = pair(padding, "padding", minimum=0)
    if ph > kernel[0] // 2 or pw > kernel[1] // 2:
        # Same rule as torch: a larger pad could make a window see only padding (-inf).
        raise ValueError(f"max_pool2d padding {padding!r} must be at most half the kernel size {kernel}")
    pads = (ph, ph, pw, pw)
    if torch.jit.is_tracing():
        return _pool_forward(x, kernel, stride_, pads, dilation_)[0]
    return MaxPool2dFunction.apply(x, kernel, stride_, pads, dilation_)


# --------------------------------------------------------------------------- activations etc.
class ReLUFunction(torch.autograd.Function):
    """``max(x, 0)``; backward passes the gradient where the output is positive (as torch does)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x):  # type: ignore[override]
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        # sign(out) is exactly 1 where out > 0 and 0 elsewhere (out >= 0); one multiply was ~15x
        # faster on CPU than masked_fill/where with a bool mask.
        return grad_out * out.sign()


def relu(x: Tensor) -> Tensor:
    if torch.jit.is_tracing():
        return x.clamp_min(0)
    return ReLUFunction.apply(x)


def gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU, as ``nn.GELU()``; autograd differentiates it."""
    return 0.5 * x * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by ``1/(1-p)``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = torch.empty_like(x).bernoulli_(1.0 - p).div_(1.0 - p)
    return x * keep


def _softmax_forward(x: Tensor, dim: int) -> Tensor:
    e = (x - x.amax(dim=dim, keepdim=True)).exp()
    return e / e.sum(dim=dim, keepdim=True)


class SoftmaxFunction(torch.autograd.Function):
    """Softmax with the closed-form backward ``dx = y * (g - sum(g * y))``: autograd through
    exp / sum / div kept four intermediates per attention map and was the slowest part of the
    scratch transformer's backward."""

    @staticmethod
    def forward(ctx: FunctionCtx, x, dim):  # type: ignore[override]
        y = _softmax_forward(x, dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return y * (grad_out - (grad_out * y).sum(dim=ctx.dim, keepdim=True)), None


def softmax(x: Tensor, dim: int) -> Tensor:
    """Numerically stable softmax; rows that are all ``-inf`` give NaN, as ``torch.softmax`` does."""
    (x,), no_autocast = autocast_inputs((x,), full_precision=True)
    with no_autocast:
        if torch.jit.is_tracing():
            return _softmax_forward(x, dim)
        return SoftmaxFunction.apply(x, dim)


def _layer_norm_forward(x: Tensor, dims: tuple[int, ...], weight, bias, eps: float):
    mean = x.mean(dim=dims, keepdim=True)
    centered = x - mean
    rstd = torch.rsqrt((centered * centered).mean(dim=dims, keepdim=True) + eps)
    xhat = centered * rstd
    out = xhat
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out, xhat, rstd


class LayerNormFunction(torch.autograd.Function):
    """Layer norm with the closed-form backward
    ``dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))``, ``dxhat = g * weight``."""

    @staticmethod
    def forward(ctx: FunctionCtx, x, weight, bias, dims, eps):  # type: ignore[override]
        out, xhat, rstd = _layer_norm_forward(x, dims, weight, bias, eps)
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.dims, ctx.has_bias = dims, bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        xhat, rstd, weight = ctx.saved_tensors
        dims = ctx.dims
        leading = tuple(range(grad_out.dim() - len(dims)))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            dxhat = grad_out * weight if weight is not None else grad_out
            grad_x = rstd * (
                dxhat - dxhat.mean(dim=dims, keepdim=True) - xhat * (dxhat * xhat).mean(dim=dims, keepdim=True)
            )
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = (grad_out * xhat).sum(dim=leading)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=leading)
        return grad_x, grad_w, grad_b, None, None


def layer_norm(
    x: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` dims with the biased variance, as torch does."""
    dims = tuple(range(-len(normalized_shape), 0))
    (x, weight, bias), no_autocast = autocast_inputs((x, weight, bias), full_precision=True)
    with no_autocast:
        if torch.jit.is_tracing():
            return _layer_norm_forward(x, dims, weight, bias, eps)[0]
        return LayerNormFunction.apply(x, weight, bias, dims, eps)
