"""im2col / col2im on channels-last (NHWC) tensors, written with ``as_strided`` and slicing.

Layout choice: the scratch conv works on NHWC memory. Its im2col then gathers ``kh*kw`` runs of
``C`` contiguous values per output pixel, the column matrix is ``(N*Ho*Wo, kh*kw*C)`` with the
batch folded into the rows (one GEMM per conv), and the GEMM result ``(N*Ho*Wo, O)`` *is* the
NHWC output: no transpose afterwards. A 1x1 stride-1 unpadded conv needs no im2col at all.

``col2im`` (the adjoint of im2col, used for the conv input gradient and the max-pool gradient)
scatters the column gradient back with one strided add per kernel tap (``kh*kw`` slice-adds, 9 for
3x3). That small Python loop beat ``index_add_`` with precomputed indices (about 1-3x slower) and
``F.fold`` (which needs an NCHW copy first; 2-10x slower) on CPU here; when windows do not overlap
(stride >= dilated kernel, e.g. patch embedding, 2x2/2 pooling) it is a single strided copy.

Column matrices are temporaries kh*kw times the size of the input. On CPU a fresh allocation that
large (above glibc's 32 MiB mmap threshold) is page-faulted in on every call, which cost more
than the GEMM itself in measurements here; so CPU columns live in a per-thread workspace that is
reused across calls (as cuDNN/oneDNN keep scratchpads). :func:`workspace_bytes` reports it and
:func:`clear_workspace` frees it. CUDA tensors use the caching allocator, which already reuses.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch

IntPair = int | tuple[int, int] | Sequence[int]
Pads = tuple[int, int, int, int]  # top, bottom, left, right


_WORKSPACE = threading.local()


def workspace(shape: Sequence[int], like: torch.Tensor, slot: str) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` (dtype/device of ``like``) for a temporary result.

    The caller must not let the tensor escape (return it or save it for backward): the next call
    with the same ``slot`` overwrites it.
    """
    numel = 1
    for size in shape:
        numel *= int(size)
    if like.device.type != "cpu":
        return like.new_empty(tuple(shape))
    cache: dict = getattr(_WORKSPACE, "buffers", None) or {}
    _WORKSPACE.buffers = cache
    key = (slot, like.dtype)
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        cache.pop(key, None)  # free the old buffer before allocating the bigger one
        # A buffer born under inference_mode could never be written outside it again.
        with torch.inference_mode(False):
            buf = cache[key] = torch.empty(numel, dtype=like.dtype)
    return buf[:numel].view(tuple(shape))


def workspace_bytes() -> int:
    """Bytes held by this thread's CPU workspace."""
    cache = getattr(_WORKSPACE, "buffers", None) or {}
    return sum(buf.numel() * buf.element_size() for buf in cache.values())


def clear_workspace() -> None:
    """Release this thread's CPU workspace (it is re-created on the next scratch conv)."""
    _WORKSPACE.buffers = {}


def pair(value: IntPair, name: str, minimum: int = 1) -> tuple[int, int]:
    """``3 -> (3, 3)``; validates that both entries are ints >= ``minimum``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        out = (value, value)
    else:
        try:
            out = tuple(int(v) for v in value)
        except TypeError as exc:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from exc
        if len(out) != 2 or any(int(v) != v for v in value):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out  # type: ignore[return-value]


def conv_pads(
    padding: IntPair | str, kernel: tuple[int, int], dilation: tuple[int, int], stride: tuple[int, int]
) -> Pads:
    """Resolve ``padding`` (ints, ``"valid"`` or ``"same"``) to explicit (top, bottom, left, right).

    ``"same"`` follows torch: total padding ``d*(k-1)``, the odd pixel (even kernels) at the end.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same'; got {padding!r}")
    ph, pw = pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


def out_size(size: int, pad: int, kernel: int, stride: int, dilation: int, what: str = "input") -> int:
    span = dilation * (kernel - 1) + 1
    if size + pad < span:
        raise ValueError(f"{what} of size {size} (padded {size + pad}) is smaller than the dilated kernel ({span})")
    return (size + pad - span) // stride + 1


def pad_nhwc(x: torch.Tensor, pads: Pads, value: float = 0.0) -> torch.Tensor:
    """NCHW-shaped ``x`` (any memory layout) -> contiguous NHWC tensor padded with ``value``.

    No copy when ``x`` already has channels-last memory and there is nothing to pad, which is
    what a scratch conv/pool returns, so stacked scratch layers pass NHWC memory along untouched.
    """
    n, c, h, w = x.shape
    xh = x.permute(0, 2, 3, 1)
    top, bottom, left, right = pads
    if not any(pads):
        return xh.contiguous()
    out = x.new_full((n, h + top + bottom, w + left + right, c), value)
    out[:, top : top + h, left : left + w] = xh
    return out


def windows(
    xp: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """Zero-copy view ``(N, Ho, Wo, kh, kw, C)`` of every receptive field of NHWC tensor ``xp``."""
    n, _, _, c = xp.shape
    sn, sh, sw, sc = xp.stride()
    return xp.as_strided(
        (n, out_hw[0], out_hw[1], kernel[0], kernel[1], c),
        (sn, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc),
        xp.storage_offset(),
    )


def col2im(
    cols: torch.Tensor, padded_hw: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> torch.Tensor:
    """Adjoint of :func:`windows`: sum ``cols (N, Ho, Wo, kh, kw, *C)`` into a ``(N, Hp, Wp, prod(C))``
    tensor. The channel dims may be split (``G, C/G`` for grouped convs) and ``cols`` any view."""
    n, ho, wo, kh, kw = cols.shape[:5]
    channels = tuple(cols.shape[5:])
    c = math.prod(channels)
    overlapping = stride[0] < dilation[0] * (kh - 1) + 1 or stride[1] < dilation[1] * (kw - 1) + 1
    if not overlapping:
        # Every input pixel belongs to at most one window: one strided copy does the scatter,
        # and when the windows tile the whole input (patches, 2x2/2 pooling) nothing needs zeroing.
        tiles = dilation == (1, 1) and tuple(stride) == (kh, kw) and tuple(padded_hw) == (ho * kh, wo * kw)
        out = cols.new_empty if tiles else cols.new_zeros
        out = out((n, padded_hw[0], padded_hw[1], c))
        windows(out, (kh, kw), stride, dilation, (ho, wo)).view(n, ho, wo, kh, kw, *channels).copy_(cols)
        return out
    out = cols.new_zeros((n, padded_hw[0], padded_hw[1], c))
    h_end, w_end = stride[0] * (ho - 1) + 1, stride[1] * (wo - 1) + 1
    for i in range(kh):
        top = i * dilation[0]
        for j in range(kw):
            left = j * dilation[1]
            dst = out[:, top : top + h_end : stride[0], left : left + w_end : stride[1]]
            dst.view(n, ho, wo, *channels).add_(cols[:, :, :, i, j])
    return out
