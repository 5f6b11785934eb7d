"""Scratch 2-D convolution: im2col + GEMM forward, hand-written backward (GEMMs + col2im).

Three contractions of the same im2col view ``(N, Ho, Wo, kh, kw, C)``:

* ``groups == 1``: one GEMM ``(N*Ho*Wo, kh*kw*C) @ (kh*kw*C, O)`` with the batch folded into the
  rows; the result already is the NHWC output. A 1x1 stride-1 conv skips im2col entirely.
* grouped (``C/groups > 1``): one batched GEMM over the groups, ``(G, N*Ho*Wo, kh*kw*C/G) @
  (G, kh*kw*C/G, O/G)``, on columns stored ``(N*Ho*Wo, G, kh*kw*C/G)``: bmm takes the groups as a
  strided batch and writes the NHWC output directly, so nothing is copied groups-first.
* depthwise (``C/groups == 1``): the GEMM degenerates into G matrix-vector products with an inner
  dimension of kh*kw (9), which ran 40-130x slower than ``nn.Conv2d`` as a bmm here. The same
  contraction is done tap by tap instead: ``out += window[..., i, j, :] * w[i, j]`` over the kh*kw
  zero-copy tap views (9 fused multiply-adds for 3x3), with no column matrix at all.

Backward: ``dW = g^T cols``, ``dcols = g W^T`` then col2im for ``dX``, ``db = sum g``; the
depthwise path mirrors its forward tap by tap. Under ``torch.jit.trace`` every conv takes the
(batched) GEMM path so that fvcore sees and counts the matmuls.
"""

from __future__ import annotations

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from dsconv.scratch.autocast import autocast_inputs
from dsconv.scratch.im2col import (
    IntPair,
    Pads,
    col2im,
    conv_pads,
    out_size,
    pad_nhwc,
    pair,
    windows,
    workspace,
)

Tensor = torch.Tensor


def _geometry(x: Tensor, weight: Tensor, stride, pads: Pads, dilation, groups: int):
    if x.dim() != 4:
        raise ValueError(f"conv2d expects a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"conv2d expects a 4-D (O, C/groups, kh, kw) weight, got {tuple(weight.shape)}")
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if groups < 1 or c % groups or o % groups or c // groups != cg:
        raise ValueError(
            f"conv2d: input has {c} channels and weight {tuple(weight.shape)} with groups={groups}; "
            "need in_channels == groups * weight.shape[1] and out_channels divisible by groups"
        )
    ho = out_size(h, pads[0] + pads[1], kh, stride[0], dilation[0], "input height")
    wo = out_size(w, pads[2] + pads[3], kw, stride[1], dilation[1], "input width")
    return n, c, h, w, o, kh, kw, ho, wo


def _is_depthwise(weight: Tensor, groups: int) -> bool:
    return groups > 1 and weight.shape[1] == 1 and not torch.jit.is_tracing()


def _is_pointwise(kernel, stride, groups: int) -> bool:
    return tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and groups == 1


def _columns(xp: Tensor, kernel, stride, dilation, out_hw, groups: int) -> Tensor:
    """im2col matrix ``(N*Ho*Wo, kh*kw*C)``; for grouped convs a ``(G, N*Ho*Wo, kh*kw*C/G)`` view
    of ``(N*Ho*Wo, G, kh*kw*C/G)`` memory, which bmm takes as is (a strided batch), so neither the
    columns nor the output need a groups-first copy.

    The result may live in the CPU workspace: it must not outlive the caller.
    """
    n, c = xp.shape[0], xp.shape[3]
    rows = n * out_hw[0] * out_hw[1]
    if _is_pointwise(kernel, stride, groups):
        return xp.reshape(rows, c)  # the NHWC input already is the column matrix
    win = windows(xp, kernel, stride, dilation, out_hw)
    if groups > 1:
        win = win.unflatten(5, (groups, c // groups)).permute(0, 1, 2, 5, 3, 4, 6)  # (N,Ho,Wo,G,kh,kw,Cg)
    if torch.jit.is_tracing():  # keep the workspace out of traced graphs
        buf = win.contiguous()
    else:
        buf = workspace(win.shape, xp, "cols")
        buf.copy_(win)
    return buf.view(rows, groups, -1).transpose(0, 1) if groups > 1 else buf.view(rows, -1)


def _weight_matrix(weight: Tensor, groups: int) -> Tensor:
    """``(O, Cg, kh, kw)`` -> ``(kh*kw*C, O)``, or ``(G, kh*kw*Cg, O/G)``, matching ``_columns``."""
    o = weight.shape[0]
    if groups == 1:
        return weight.permute(2, 3, 1, 0).reshape(-1, o)
    wg = weight.unflatten(0, (groups, o // groups))  # (G, Og, Cg, kh, kw)
    return wg.permute(0, 3, 4, 2, 1).reshape(groups, -1, o // groups)


def _depthwise_views(xp: Tensor, weight: Tensor, groups: int, stride, dilation, out_hw):
    """Per-tap operands of the depthwise path: ``win(i, j)`` gives the input view of kernel tap
    (i, j) and ``taps[i, j]`` its weights, shaped so ``win(i, j) * taps[i, j]`` is that tap's
    contribution to the NHWC output.

    The layout is chosen for the elementwise kernels: broadcasting a per-channel weight over an
    NHWC view limits each inner loop to C elements. With one output per channel and unit column
    stride the Wo and C dims of every tap view merge, so the weights are tiled Wo times and the
    inner loop runs over Wo*C elements (rows mode); otherwise the plain broadcast is used, and a
    depth multiplier gets its own trailing dim.
    """
    n, kh, kw = xp.shape[0], weight.shape[2], weight.shape[3]
    og, (ho, wo) = weight.shape[0] // groups, out_hw
    win6 = windows(xp, (kh, kw), stride, dilation, out_hw)
    taps = weight.view(groups, og, kh, kw).permute(2, 3, 0, 1)  # (kh, kw, G, Og)
    if og == 1 and stride[1] == 1:
        taps = taps[..., 0].unsqueeze(2).expand(kh, kw, wo, groups).reshape(kh, kw, wo * groups)
        return (lambda i, j: win6[:, :, :, i, j].view(n, ho, wo * groups)), taps, "rows"
    if og == 1:
        return (lambda i, j: win6[:, :, :, i, j]), taps[..., 0], "channels"
    return (lambda i, j: win6[:, :, :, i, j].unsqueeze(-1)), taps, "multiplier"


def _depthwise_forward(xp: Tensor, weight: Tensor, groups: int, stride, dilation, out_hw) -> Tensor:
    win, taps, _ = _depthwise_views(xp, weight, groups, stride, dilation, out_hw)
    kh, kw = taps.shape[:2]
    out = win(0, 0) * taps[0, 0]
    for i in range(kh):
        for j in range(kw):
            if i or j:
                out.addcmul_(win(i, j), taps[i, j])
    return out


def _depthwise_backward(g: Tensor, xp: Tensor, weight: Tensor, conf, out_hw, needs):
    stride, _, dilation, groups, _, _ = conf
    o, _, kh, kw = weight.shape
    n, (ho, wo), og = xp.shape[0], out_hw, o // groups
    win, taps, mode = _depthwise_views(xp, weight, groups, stride, dilation, out_hw)
    # The output gradient in the same layout as the forward's output.
    gt = {
        "rows": lambda: g.reshape(n, ho, wo * groups),
        "channels": lambda: g.reshape(n, ho, wo, groups),
        "multiplier": lambda: g.reshape(n, ho, wo, groups, og),
    }[mode]()
    gxp = grad_w = None
    if needs[0]:
        gxp = xp.new_zeros(xp.shape)
        h_end, w_end = stride[0] * (ho - 1) + 1, stride[1] * (wo - 1) + 1
        for i in range(kh):
            for j in range(kw):
                top, left = i * dilation[0], j * dilation[1]
                dst = gxp[:, top : top + h_end : stride[0], left : left + w_end : stride[1]]
                if mode == "rows":
                    dst.view(n, ho, wo * groups).addcmul_(gt, taps[i, j])
                elif mode == "channels":
                    dst.addcmul_(gt, taps[i, j])
                else:
                    dst += (gt * taps[i, j]).sum(-1)
    if needs[1]:
        reduce_dims = (0, 1) if mode == "rows" else (0, 1, 2)
        # One product buffer for all taps: a fresh output-sized tensor per tap was page-faulted in
        # each time and made this loop the slowest part of the depthwise backward.
        product = torch.empty_like(gt if mode != "multiplier" else gt.expand(n, ho, wo, groups, og))
        per_tap = []
        for i in range(kh):
            for j in range(kw):
                per_tap.append(torch.mul(win(i, j), gt, out=product).sum(reduce_dims))
        gw = torch.stack(per_tap)
        if mode == "rows":
            gw = gw.view(kh * kw, wo, groups).sum(1)
        grad_w = gw.view(kh * kw, groups, og).permute(1, 2, 0).reshape(o, 1, kh, kw)
    return gxp, grad_w


def conv_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride, pads: Pads, dilation, groups: int
) -> tuple[Tensor, Tensor]:
    """NCHW-shaped output with NHWC memory, and the padded NHWC input (kept for backward)."""
    n, _, _, _, o, kh, kw, ho, wo = _geometry(x, weight, stride, pads, dilation, groups)
    xp = pad_nhwc(x, pads)
    if _is_depthwise(weight, groups):
        out = _depthwise_forward(xp, weight, groups, stride, dilation, (ho, wo)).view(n, ho, wo, o)
        if bias is not None:
            out += bias
    elif groups == 1:
        cols = _columns(xp, (kh, kw), stride, dilation, (ho, wo), 1)
        wmat = _weight_matrix(weight, 1)
        out = torch.matmul(cols, wmat) if bias is None else torch.addmm(bias, cols, wmat)
    else:
        cols = _columns(xp, (kh, kw), stride, dilation, (ho, wo), groups)  # (G, N*L, Kg)
        wmat = _weight_matrix(weight, groups)  # (G, Kg, Og)
        if torch.jit.is_tracing():
            out = torch.matmul(cols, wmat).transpose(0, 1).reshape(-1, o)
        else:  # one batched GEMM over the groups, written straight into NHWC (N*L, G, Og) memory
            out = cols.new_empty((cols.shape[1], groups, o // groups))
            torch.bmm(cols, wmat, out=out.transpose(0, 1))
            out = out.view(-1, o)
        if bias is not None:
            out = out + bias
    return out.view(n, ho, wo, o).permute(0, 3, 1, 2), xp


def conv_backward(grad_out: Tensor, xp: Tensor, weight: Tensor, conf, needs: tuple[bool, ...]):
    """Gradients w.r.t. (input, weight, bias) of :func:`conv_forward`; ``None`` where not needed."""
    stride, pads, dilation, groups, (n, c, h, w), has_bias = conf
    o, _, kh, kw = weight.shape
    ho, wo = grad_out.shape[2:]
    rows = n * ho * wo
    g = grad_out.permute(0, 2, 3, 1).reshape(rows, o)  # NHWC rows; a view for channels-last grads
    grad_x = grad_w = grad_b = None
    if has_bias and needs[2]:
        grad_b = g.sum(0)
    if _is_depthwise(weight, groups):
        gxp, grad_w = _depthwise_backward(g, xp, weight, conf, (ho, wo), needs)
    else:
        gxp = None
        if groups > 1:
            g = g.contiguous().view(rows, groups, o // groups).transpose(0, 1)  # (G, N*L, Og) view
        if needs[0] and _is_pointwise((kh, kw), stride, groups):
            # 1x1 stride-1 conv: the column gradient already is the (padded) NHWC input gradient.
            gxp = torch.matmul(g, _weight_matrix(weight, 1).t()).view(xp.shape)
        elif needs[0]:
            wmat = _weight_matrix(weight, groups)
            if groups == 1:
                gcols = torch.matmul(g, wmat.t(), out=workspace((rows, wmat.shape[0]), g, "cols"))
                gcols = gcols.view(n, ho, wo, kh, kw, c)
            else:  # (N*L, G, Kg) memory again, handed to col2im as (N, Ho, Wo, kh, kw, G, Cg)
                gcols = workspace((rows, groups, wmat.shape[1]), g, "cols")
                torch.bmm(g, wmat.transpose(1, 2), out=gcols.transpose(0, 1))
                gcols = gcols.view(n, ho, wo, groups, kh, kw, c // groups).permute(0, 1, 2, 4, 5, 3, 6)
            gxp = col2im(gcols, xp.shape[1:3], stride, dilation)
        if needs[1]:
            cols = _columns(xp, (kh, kw), stride, dilation, (ho, wo), groups)
            gw = torch.matmul(g.transpose(-1, -2), cols)  # (O, K) or (G, Og, Kg)
            grad_w = gw.reshape(o, kh, kw, c // groups).permute(0, 3, 1, 2).contiguous()
    if gxp is not None:
        grad_x = gxp[:, pads[0] : pads[0] + h, pads[2] : pads[2] + w].permute(0, 3, 1, 2)
    return grad_x, grad_w, grad_b


class Conv2dFunction(torch.autograd.Function):
    """2-D cross-correlation (as ``torch.nn.functional.conv2d``) with a hand-written backward."""

    @staticmethod
    def forward(ctx: FunctionCtx, x, weight, bias, stride, pads, dilation, groups):  # type: ignore[override]
        out, xp = conv_forward(x, weight, bias, stride, pads, dilation, groups)
        # Keep the padded NHWC input, not the kh*kw times larger column matrix: backward rebuilds
        # the columns with one copy, so the memory held for backward matches nn.Conv2d's.
        ctx.save_for_backward(xp, weight)
        ctx.conf = (stride, pads, dilation, groups, tuple(x.shape), bias is not None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        xp, weight = ctx.saved_tensors
        grads = conv_backward(grad_out, xp, weight, ctx.conf, ctx.needs_input_grad[:3])
        return (*grads, None, None, None, None)


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> Tensor:
    """Same contract as ``torch.nn.functional.conv2d`` (zero padding; int, pair, 'same' or 'valid')."""
    stride_, dilation_ = pair(stride, "stride"), pair(dilation, "dilation")
    if weight.dim() != 4:
        raise ValueError(f"conv2d expects a 4-D (O, C/groups, kh, kw) weight, got {tuple(weight.shape)}")
    pads = conv_pads(padding, (weight.shape[2], weight.shape[3]), dilation_, stride_)
    (x, weight, bias), no_autocast = autocast_inputs((x, weight, bias))
    with no_autocast:
        if torch.jit.is_tracing():
            return conv_forward(x, weight, bias, stride_, pads, dilation_, groups)[0]
        return Conv2dFunction.apply(x, weight, bias, stride_, pads, dilation_, groups)
