"""Model complexity: parameter counts, multiply-accumulates (MACs) and a layer-by-layer summary.

MACs follow the MobileNet paper's convention: the multiply-adds of convolutions (dense, grouped and
depthwise) and fully connected layers, plus the matrix products of attention (the transformer's
fully connected work), counted from forward hooks on those modules, ``torch.nn``'s and the
from-scratch ones of :mod:`dsconv.scratch` alike. Batch norm, pooling, activations and bias adds
cost no MACs by this convention. fvcore's total (which counts eval-mode batch norm as 2 per
element, and pooling) stays available as ``count_fvcore_macs`` and as the table of
``macs_by_module``. FLOPs in the 2-per-MAC convention are ``2 * macs``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn


@dataclass(frozen=True)
class ParamCount:
    total: int
    trainable: int


@dataclass
class LayerCall:
    """One call of a conv / linear / attention module during a forward pass, and its MACs."""

    name: str
    module: nn.Module
    op: str  # conv | conv_transpose | linear | attention
    macs: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    # The call's arguments, kept only when asked for (the roofline re-times each layer on them).
    args: tuple[Any, ...] = field(default=(), repr=False)
    kwargs: dict[str, Any] = field(default_factory=dict, repr=False)


def count_params(model: nn.Module) -> ParamCount:
    params = list(model.parameters())
    return ParamCount(total=sum(p.numel() for p in params), trainable=sum(p.numel() for p in params if p.requires_grad))


def _scratch_types() -> dict[str, type]:
    # Lazy: the scratch package is heavy to read and most callers never meet its layers.
    from dsconv.scratch import Conv2d, Linear, MultiHeadAttention

    return {"conv": Conv2d, "linear": Linear, "attention": MultiHeadAttention}


def layer_op(module: nn.Module) -> str | None:
    """Which MAC formula applies to ``module`` (None: it does no conv/linear/attention work itself)."""
    scratch = _scratch_types()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "conv_transpose"
    if isinstance(module, nn.modules.conv._ConvNd | scratch["conv"]):
        return "conv"
    if isinstance(module, nn.Linear | scratch["linear"]):
        return "linear"
    if isinstance(module, nn.MultiheadAttention | scratch["attention"]):
        return "attention"
    return None


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        return next((t for t in map(_first_tensor, value) if t is not None), None)
    return None


def _attention_macs(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """q/k/v projections + ``q k^T`` + ``weights @ v`` (+ the output projection of ``nn.MultiheadAttention``,
    whose forward uses ``out_proj``'s weight without calling it; the scratch twin calls it as a Linear)."""
    names = ("query", "key", "value")
    q, k, v = (args[i] if len(args) > i else kwargs[name] for i, name in enumerate(names))
    embed = int(module.embed_dim)
    seq_dim = 0 if q.dim() == 2 or not getattr(module, "batch_first", False) else 1
    src_len = int(k.shape[seq_dim])
    macs = (q.numel() + k.numel() + v.numel()) * embed + 2 * q.numel() * src_len
    if isinstance(module, nn.MultiheadAttention):
        macs += q.numel() * embed
    return int(macs)


def _call_macs(op: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> int:
    if op == "attention":
        return _attention_macs(module, args, kwargs)
    x, out = _first_tensor(args), _first_tensor(output)
    assert x is not None and out is not None
    if op == "linear":
        return out.numel() * int(module.in_features)
    kernel = math.prod(module.kernel_size)
    if op == "conv_transpose":
        return x.numel() * (int(module.out_channels) // int(module.groups)) * kernel
    return out.numel() * (int(module.in_channels) // int(module.groups)) * kernel


@contextmanager
def record_layer_calls(model: nn.Module, keep_inputs: bool = False) -> Iterator[list[LayerCall]]:
    """Within the block, every forward call of a conv/linear/attention module inside ``model`` is
    appended to the yielded list (shared modules once per call)."""
    calls: list[LayerCall] = []
    handles = []

    def hook_for(name: str, op: str):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            x, out = _first_tensor(args) if args else _first_tensor(list(kwargs.values())), _first_tensor(output)
            calls.append(
                LayerCall(
                    name,
                    module,
                    op,
                    _call_macs(op, module, args, kwargs, output),
                    tuple(x.shape) if x is not None else (),
                    tuple(out.shape) if out is not None else (),
                    args if keep_inputs else (),
                    dict(kwargs) if keep_inputs else {},
                )
            )

        return hook

    for name, module in model.named_modules():
        op = layer_op(module)
        if op is not None:
            handles.append(module.register_forward_hook(hook_for(name, op), with_kwargs=True))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def layer_calls(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1) -> list[LayerCall]:
    """The conv/linear/attention calls of one eval-mode forward pass on a random ``batch_size`` batch."""
    with eval_mode(model), record_layer_calls(model) as calls:
        model(_example(model, input_shape, batch_size))
    return calls


def count_macs(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1) -> int:
    """Conv + linear (+ attention) MACs of one eval-mode forward pass on a ``batch_size`` batch (per batch)."""
    return sum(call.macs for call in layer_calls(model, input_shape, batch_size))


def _flop_analysis(model: nn.Module, example: torch.Tensor):
    warnings.filterwarnings("ignore", message=".*torch.jit.*", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis

    # fvcore logs every op it has no formula for (relu, pooling...); those cost no MACs here.
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    analysis = FlopCountAnalysis(model, (example,))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


@torch.no_grad()
def count_fvcore_macs(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1) -> int:
    """fvcore's total for one eval-mode forward pass (per batch): conv/linear plus batch norm and pooling."""
    with eval_mode(model):
        return int(_flop_analysis(model, _example(model, input_shape, batch_size)).total())


@torch.no_grad()
def macs_by_module(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int], str]:
    """Conv + linear MACs of one image, those MACs per conv/linear/attention module name, and fvcore's
    per-module table (which also counts batch norm and pooling)."""
    description = describe(model, input_shape)
    return description.macs, description.per_module, description.flop_table


def _example(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> torch.Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.randn(batch_size, *input_shape, device=device, dtype=dtype)


@dataclass(frozen=True)
class ModelDescription:
    """Everything a run reports about its model's size, from one hooked forward pass and one fvcore trace."""

    params: ParamCount
    macs: int  # conv + linear (+ attention) MACs of one image
    per_module: dict[str, int]
    fvcore_macs: int | None  # None: fvcore could not trace the model
    flop_table: str
    summary: str


@torch.no_grad()
def describe(model: nn.Module, input_shape: tuple[int, ...]) -> ModelDescription:
    """Parameters, MACs, fvcore's total and table, and the layer-by-layer summary of one image.

    Each is derived once: a single forward pass records both the layer calls and every module's output
    shape, and a single fvcore trace gives both its total and its table (tracing is most of the cost).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    named = dict(model.named_modules())
    handles = [
        module.register_forward_hook(_shape_hook(shapes, name))
        for name, module in named.items()
        if name and not isinstance(module, nn.Sequential | nn.ModuleList)
    ]
    example = _example(model, input_shape, 1)
    try:
        with eval_mode(model), record_layer_calls(model) as calls:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    per_module: dict[str, int] = {}
    for call in calls:
        per_module[call.name] = per_module.get(call.name, 0) + call.macs
    fvcore_macs, flop_table = _fvcore(model, example)
    params = count_params(model)
    total = sum(per_module.values())
    summary = _summary_text(named, shapes, per_module, input_shape, params, total, fvcore_macs)
    return ModelDescription(params, total, per_module, fvcore_macs, flop_table, summary)


def _fvcore(model: nn.Module, example: torch.Tensor) -> tuple[int | None, str]:
    from fvcore.nn import flop_count_table

    try:
        with eval_mode(model):
            analysis = _flop_analysis(model, example)
            return int(analysis.total()), flop_count_table(analysis, max_depth=4, show_param_shapes=False)
    except Exception as exc:  # fvcore's tracer fails on some dynamic models; the hook-counted MACs stand
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logging.getLogger(__name__).warning("fvcore MAC count skipped: %s", reason)
        return None, f"fvcore could not trace this model: {reason}"


def model_summary(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """A layer-by-layer table (module, type, output shape, parameters, MACs), like the seeds' diagrams.

    A container's MACs are those of the conv/linear modules inside it."""
    return describe(model, input_shape).summary


def _summary_text(
    named: dict[str, nn.Module],
    shapes: dict[str, tuple[int, ...]],
    macs: dict[str, int],
    input_shape: tuple[int, ...],
    params: ParamCount,
    total_macs: int,
    fvcore_total: int | None,
) -> str:
    rows = [("module", "type", "output shape", "params", "MACs")]
    for name in (n for n in named if n in shapes):  # pre-order: parents before children
        module = named[name]
        if isinstance(module, nn.Identity):
            continue
        depth = name.count(".")
        own_params = sum(p.numel() for p in module.parameters())
        inside = sum(v for k, v in macs.items() if k == name or k.startswith(name + "."))
        rows.append(
            (
                "  " * depth + name.rsplit(".", 1)[-1] if depth else name,
                type(module).__name__,
                "x".join(str(d) for d in shapes[name]),
                f"{own_params:,}",
                f"{inside:,}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("-" * len(lines[0]))
    fvcore = "n/a (fvcore could not trace the model)" if fvcore_total is None else f"{fvcore_total:,}"
    lines.append(
        f"input 1x{'x'.join(map(str, input_shape))}  total params {params.total:,}  "
        f"trainable {params.trainable:,}  MACs/image {total_macs:,} (conv + linear; FLOPs = 2x MACs)  "
        f"fvcore MACs/image {fvcore} (also batch norm, pooling)"
    )
    return "\n".join(lines)


def _shape_hook(shapes: dict[str, tuple[int, ...]], name: str):
    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            shapes[name] = tuple(output.shape[1:])

    return hook
