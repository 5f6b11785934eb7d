"""Model complexity: parameter counts, fvcore multiply-accumulates, and a layer-by-layer summary.

fvcore's ``FlopCountAnalysis`` counts one fused multiply-add as one "flop"; we report that number
under its real name, MACs. FLOPs in the 2-per-MAC convention are ``2 * macs`` for conv/linear nets.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class ParamCount:
    total: int
    trainable: int


def count_params(model: nn.Module) -> ParamCount:
    params = list(model.parameters())
    return ParamCount(total=sum(p.numel() for p in params), trainable=sum(p.numel() for p in params if p.requires_grad))


def _flop_analysis(model: nn.Module, example: torch.Tensor):
    from fvcore.nn import FlopCountAnalysis

    # fvcore logs every op it has no formula for (relu, pooling...); those cost no MACs here.
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*torch.jit.*", category=FutureWarning)
    analysis = FlopCountAnalysis(model, (example,))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1) -> int:
    """fvcore MACs of one eval-mode forward pass on a ``batch_size`` batch (per batch, not per image)."""
    example = _example(model, input_shape, batch_size)
    was_training = model.training
    model.eval()
    try:
        return int(_flop_analysis(model, example).total())
    finally:
        model.train(was_training)


@torch.no_grad()
def macs_by_module(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int], str]:
    """Total MACs, MACs per module name, and fvcore's per-module table (for one image)."""
    from fvcore.nn import flop_count_table

    example = _example(model, input_shape, 1)
    was_training = model.training
    model.eval()
    try:
        analysis = _flop_analysis(model, example)
        table = flop_count_table(analysis, max_depth=4, show_param_shapes=False)
        return int(analysis.total()), {k: int(v) for k, v in analysis.by_module().items()}, table
    finally:
        model.train(was_training)


def _example(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> torch.Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.randn(batch_size, *input_shape, device=device, dtype=dtype)


@torch.no_grad()
def model_summary(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """A layer-by-layer table (module, type, output shape, parameters, MACs), like the seeds' diagrams."""
    total_macs, macs, _ = macs_by_module(model, input_shape)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    named = dict(model.named_modules())
    for name, module in named.items():
        if name and not isinstance(module, nn.Sequential | nn.ModuleList):
            handles.append(module.register_forward_hook(_shape_hook(shapes, name)))
    was_training = model.training
    model.eval()
    try:
        model(_example(model, input_shape, 1))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    rows = [("module", "type", "output shape", "params", "MACs")]
    for name in (n for n in named if n in shapes):  # pre-order: parents before children
        module = named[name]
        if isinstance(module, nn.Identity):
            continue
        depth = name.count(".")
        own_params = sum(p.numel() for p in module.parameters())
        rows.append(
            (
                "  " * depth + name.rsplit(".", 1)[-1] if depth else name,
                type(module).__name__,
                "x".join(str(d) for d in shapes[name]),
                f"{own_params:,}",
                f"{macs.get(name, 0):,}",
            )
        )
    params = count_params(model)
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("-" * len(lines[0]))
    lines.append(
        f"input 1x{'x'.join(map(str, input_shape))}  total params {params.total:,}  "
        f"trainable {params.trainable:,}  MACs/image {total_macs:,} (fvcore; FLOPs ~ 2x MACs)"
    )
    return "\n".join(lines)


def _shape_hook(shapes: dict[str, tuple[int, ...]], name: str):
    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            shapes[name] = tuple(output.shape[1:])

    return hook
