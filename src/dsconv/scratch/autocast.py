"""``torch.autocast`` support for the scratch autograd Functions.

Autocast rewrites the dtypes of the native ops it sees. Inside a custom ``autograd.Function`` it
would cast the forward's matmuls but not the backward's (autocast is off while backward runs), so
a half-precision output gradient would meet fp32 weights. The scratch wrappers therefore do what
autocast does for their torch.nn twins *before* entering the Function: conv and linear inputs go
to the autocast dtype (torch's lower-precision op list), softmax and layer-norm inputs to fp32
(its fp32 list), and the Function runs with autocast off so forward and backward see one dtype.
Autograd records the casts, so fp32 parameters still receive fp32 gradients.
"""

from __future__ import annotations

import contextlib

import torch

_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)  # autocast never touches fp64


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast is casting to on ``device_type``, or ``None`` when it is off."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4 only had per-device functions
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        return None


def autocast_inputs(tensors: tuple, full_precision: bool = False):
    """``(cast tensors, context)``: the context disables autocast around the Function call."""
    first = next(t for t in tensors if t is not None)
    dtype = autocast_dtype(first.device.type)
    if dtype is None:
        return tensors, contextlib.nullcontext()
    target = torch.float32 if full_precision else dtype
    cast = tuple(t.to(target) if t is not None and t.dtype in _ELIGIBLE else t for t in tensors)
    return cast, torch.autocast(first.device.type, enabled=False)
