"""``to_separable``: turn any model's dense k x k convolutions into ``SeparableConv2d`` in place.

A conv is eligible when it is an ``nn.Conv2d`` with ``groups == 1`` and a kernel side of at least
``min_kernel_size`` (a 1x1 conv is already pointwise, a grouped one already cheaper). Each is
replaced by a ``SeparableConv2d`` with the same channels, stride, padding, dilation, bias and
padding mode, so the model's shapes and interfaces are unchanged. New layers are freshly
initialised (PyTorch's defaults): the dense weights have no exact separable equivalent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from dsconv.layers.separable import SEPARABLE_OPTIONS, SeparableConv2d


@dataclass(frozen=True)
class ConversionReport:
    """What ``to_separable`` replaced; MACs (fvcore, one image) only when an ``input_shape`` was given."""

    replaced: tuple[str, ...]
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None

    @property
    def count(self) -> int:
        return len(self.replaced)

    @property
    def param_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else float("nan")

    @property
    def mac_ratio(self) -> float | None:
        if self.macs_before is None or self.macs_after is None or not self.macs_before:
            return None
        return self.macs_after / self.macs_before

    def __str__(self) -> str:
        text = (
            f"replaced {self.count} conv(s); params {self.params_before:,} -> {self.params_after:,} "
            f"(x{self.param_ratio:.3f})"
        )
        if self.mac_ratio is not None:
            text += f"; MACs {self.macs_before:,} -> {self.macs_after:,} (x{self.mac_ratio:.3f})"
        return text


def is_eligible(module: nn.Module, min_kernel_size: int = 3) -> bool:
    """A dense (``groups == 1``) ``nn.Conv2d`` whose larger kernel side is at least ``min_kernel_size``."""
    return (
        isinstance(module, nn.Conv2d)
        and not isinstance(module.weight, nn.parameter.UninitializedParameter)  # lazy convs: shape unknown
        and module.groups == 1
        and max(module.kernel_size) >= min_kernel_size
    )


def separable_like(conv: nn.Conv2d, **options: Any) -> SeparableConv2d:
    """A ``SeparableConv2d`` with ``conv``'s geometry, bias, device, dtype and train/eval mode."""
    _check_options(options)
    layer = SeparableConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        **options,
    )
    layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
    return layer.train(conv.training)


def replace_convs(model: nn.Module, kind: str, min_kernel_size: int = 3, **options: Any) -> list[str]:
    """Rebuild every eligible dense conv of ``model`` in place with ``make_conv(kind, ...)``; their names.

    The conv factory's twin of ``to_separable``: geometry and bias come from each replaced conv, ``options``
    (the kind's conv options) go to every new layer, so the registry's converted models build their convs
    the same way as the others. ``kind="standard"`` changes nothing.
    """
    from dsconv.layers.factory import make_conv  # lazy: the factory imports this package's layers

    if kind == "standard":
        return []
    replaced: list[str] = []
    for prefix, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):
            if child is None or not is_eligible(child, min_kernel_size):
                continue
            if len(set(child.kernel_size)) != 1 or child.padding_mode != "zeros" or isinstance(child.padding, str):
                raise ValueError(f"replace_convs handles square zero-padded convs only, got {child}")
            layer = make_conv(
                kind,
                child.in_channels,
                child.out_channels,
                child.kernel_size[0],
                child.stride[0],
                padding=child.padding[0],
                dilation=child.dilation[0],
                bias=child.bias is not None,
                **options,
            )
            setattr(parent, name, layer.to(device=child.weight.device, dtype=child.weight.dtype).train(child.training))
            replaced.append(f"{prefix}.{name}" if prefix else name)
    return replaced


def to_separable(
    model: nn.Module,
    min_kernel_size: int = 3,
    *,
    input_shape: tuple[int, ...] | None = None,
    **options: Any,
) -> ConversionReport:
    """Replace every eligible conv of ``model`` in place; ``options`` go to each ``SeparableConv2d``.

    ``input_shape`` (C, H, W) adds fvcore MACs before/after to the report. Convs inside existing
    ``SeparableConv2d`` layers are left alone, so converting twice changes nothing. A conv shared
    by several parents is replaced by one shared ``SeparableConv2d``.
    """
    if isinstance(min_kernel_size, bool) or not isinstance(min_kernel_size, int) or min_kernel_size < 2:
        raise ValueError(
            f"min_kernel_size must be an int >= 2, got {min_kernel_size!r}: a 1x1 conv is already pointwise"
        )
    _check_options(options)
    if is_eligible(model, min_kernel_size):
        raise ValueError("to_separable replaces convs inside a model, got a bare nn.Conv2d: use separable_like(conv)")

    from dsconv.evaluation.complexity import count_macs, count_params  # lazy: keeps layers free of fvcore

    params_before = count_params(model).total
    macs_before = count_macs(model, input_shape) if input_shape is not None else None
    new_layers: dict[int, SeparableConv2d] = {}
    replaced: list[str] = []
    # Snapshot the parents first: the new layers must not be visited (their depthwise conv has
    # groups == 1 when in_channels == 1 and would be converted again).
    for prefix, parent in list(model.named_modules()):
        if isinstance(parent, SeparableConv2d):
            continue
        # _modules, not named_children(): the latter skips a module registered twice in one parent.
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) in new_layers:
                setattr(parent, name, new_layers[id(child)])
            elif is_eligible(child, min_kernel_size):
                new_layers[id(child)] = separable_like(child, **options)
                setattr(parent, name, new_layers[id(child)])
                replaced.append(f"{prefix}.{name}" if prefix else name)
    return ConversionReport(
        replaced=tuple(replaced),
        params_before=params_before,
        params_after=count_params(model).total,
        macs_before=macs_before,
        macs_after=count_macs(model, input_shape) if input_shape is not None else None,
    )


def _check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(SEPARABLE_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown SeparableConv2d option(s) {unknown}: geometry is copied from each conv; "
            f"valid options are {', '.join(SEPARABLE_OPTIONS)}"
        )
