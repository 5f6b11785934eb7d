"""Structured L1-norm filter pruning (Li et al. 2017) of plain conv/linear chains into a smaller model.

Written here rather than with torch-pruning's DependencyGraph (installable, 1.6.1): the families this
project prunes (mnist_cnn, cifar_cnn with standard convs) are single chains of
conv -> BN -> act -> pool ... -> linear, where the dependency analysis is a few lines, and a model
pruned here is reloaded from its checkpoint's tensor shapes alone (``resize_to_state_dict``), so a
weights-only checkpoint is enough and no pickled module or extra library is ever needed to evaluate
or benchmark it. Models with branches (residuals, dense concatenation) or grouped convs are refused
with a one-line error; they would need the dependency graph.

A chain is found by tracing one forward pass: every leaf module must consume exactly the tensor the
previous leaf produced. Each conv/linear layer except the last (the logits) is a producer whose
filters can be dropped; the BatchNorms after it lose the same channels and the next conv/linear
loses the matching input channels (``spatial`` inputs per channel after a ``Flatten``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from dsconv.errors import ConfigError

# Leaves that map channel c to channel c and send zeros to zeros, so a dropped channel stays dropped.
PASS_THROUGH = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.ELU,
    nn.Hardswish,
    nn.Mish,
    nn.Tanh,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
RESIZABLE = (nn.Conv2d, nn.Linear, *NORMS)


@dataclass
class PruneGroup:
    """One producer's filters, the norms that follow it, and the layer that consumes them."""

    producer: str
    consumer: str
    norms: list[str] = field(default_factory=list)
    spatial: int = 1  # consumer inputs per producer channel (H*W when a Flatten lies between)


def _leaf_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name and not list(m.children())}


@dataclass(frozen=True)
class LayerCost:
    """A conv/linear layer's MACs as ``out * in * per_pair``, with ``in`` fed by ``source``'s kept filters."""

    name: str
    source: str | None  # the producer whose filters are this layer's inputs (None: the model input)
    spatial: int  # inputs per source filter
    in_features: int
    out_features: int
    per_pair: int  # MACs per (input, output) channel pair: kernel size x output pixels for a conv

    def macs(self, counts: dict[str, int]) -> int:
        inputs = counts[self.source] * self.spatial if self.source in counts else self.in_features
        return counts.get(self.name, self.out_features) * inputs * self.per_pair


def plan_groups(model: nn.Module, input_shape: tuple[int, int, int], what: str = "prune.from") -> list[PruneGroup]:
    """Trace one eval forward pass and split the chain into prune groups (``ConfigError`` if not a chain)."""
    return _plan(model, input_shape, what)[0]


@torch.no_grad()
def _plan(model: nn.Module, input_shape: tuple[int, int, int], what: str) -> tuple[list[PruneGroup], list[LayerCost]]:
    leaves = _leaf_modules(model)
    calls: list[tuple[str, Any, Any]] = []
    handles = [
        module.register_forward_hook(lambda mod, inputs, output, name=name: calls.append((name, inputs, output)))
        for name, module in leaves.items()
    ]
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
        result = model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    kind = type(model).__name__
    previous: Any = example
    for name, inputs, output in calls:
        if len(inputs) != 1 or inputs[0] is not previous:
            raise ConfigError(
                f"{what}: structured pruning handles plain layer chains, but {kind}.{name} does not take the "
                "previous layer's output (a residual, concatenation or functional op): use prune.method=unstructured"
            )
        previous = output
    if result is not previous or len({name for name, _, _ in calls}) != len(calls):
        raise ConfigError(f"{what}: {kind} is not a single chain of layers: use prune.method=unstructured")
    return _split_groups(calls, leaves, kind, what)


def _split_groups(
    calls: list, leaves: dict[str, nn.Module], kind: str, what: str
) -> tuple[list[PruneGroup], list[LayerCost]]:
    groups: list[PruneGroup] = []
    costs: list[LayerCost] = []
    current: PruneGroup | None = None
    for name, inputs, output in calls:
        module = leaves[name]
        if isinstance(module, nn.Conv2d | nn.Linear):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise ConfigError(
                    f"{what}: {kind}.{name} is a grouped/depthwise conv, which filter pruning here does not "
                    "handle: prune the standard-conv model (model.conv=standard) or use prune.method=unstructured"
                )
            if isinstance(module, nn.Conv2d):
                in_features, out_features = module.in_channels, module.out_channels
                per_pair = int(torch.tensor(module.kernel_size).prod()) * int(torch.tensor(output.shape[2:]).prod())
            else:
                in_features, out_features, per_pair = module.in_features, module.out_features, 1
            source, spatial = (current.producer, current.spatial) if current is not None else (None, 1)
            costs.append(LayerCost(name, source, spatial, in_features, out_features, per_pair))
            if current is not None:
                current.consumer = name
                groups.append(current)
            current = PruneGroup(producer=name, consumer="")
        elif isinstance(module, NORMS):
            if current is not None:
                current.norms.append(name)
        elif isinstance(module, nn.Flatten):
            shape = inputs[0].shape
            if current is not None:
                current.spatial = int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else 1
        elif not isinstance(module, PASS_THROUGH):
            raise ConfigError(
                f"{what}: structured pruning does not know layer {kind}.{name} ({type(module).__name__}): "
                "use prune.method=unstructured"
            )
    return groups, costs  # the last producer makes the logits: its outputs are the classes, never pruned


def filter_counts(model: nn.Module, groups: list[PruneGroup], ratio: float) -> dict[str, int]:
    """``max(1, round(ratio * filters))`` per producer: one keep ratio for every layer."""
    counts = {}
    for group in groups:
        filters = model.get_submodule(group.producer).weight.shape[0]
        counts[group.producer] = max(1, min(filters, round(ratio * filters)))
    return counts


def l1_keep(model: nn.Module, groups: list[PruneGroup], counts: dict[str, int]) -> dict[str, torch.Tensor]:
    """Per producer, the ``counts[producer]`` filters of largest L1 norm, in their original order."""
    keep: dict[str, torch.Tensor] = {}
    for group in groups:
        norms = model.get_submodule(group.producer).weight.detach().abs().flatten(1).sum(1)
        # A stable sort: equal norms keep the lower index, so the choice is deterministic.
        order = torch.sort(norms, descending=True, stable=True).indices[: counts[group.producer]]
        keep[group.producer] = torch.sort(order).values
    return keep


def _consumer_index(index: torch.Tensor, spatial: int) -> torch.Tensor:
    if spatial == 1:
        return index
    offsets = torch.arange(spatial, device=index.device)
    return (index[:, None] * spatial + offsets[None, :]).flatten()


def _copy_like(module: nn.Module, **tensors: torch.Tensor | None) -> nn.Module:
    """A module of ``module``'s kind and settings whose tensors are ``tensors`` (shapes follow them)."""
    if isinstance(module, nn.Conv2d):
        weight = tensors["weight"]
        new: nn.Module = nn.Conv2d(
            weight.shape[1] * module.groups,
            weight.shape[0],
            module.kernel_size,  # type: ignore[arg-type]
            module.stride,  # type: ignore[arg-type]
            module.padding,  # type: ignore[arg-type]
            module.dilation,  # type: ignore[arg-type]
            module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    elif isinstance(module, nn.Linear):
        weight = tensors["weight"]
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
    elif isinstance(module, NORMS):
        channels = next(t for t in tensors.values() if t is not None and t.dim() == 1).shape[0]
        new = type(module)(channels, module.eps, module.momentum, module.affine, module.track_running_stats)
    else:
        raise TypeError(f"cannot resize {type(module).__name__}")
    param = next(module.parameters(), None)
    if param is not None:
        new = new.to(device=param.device, dtype=param.dtype)
    with torch.no_grad():
        for name, value in tensors.items():
            target = getattr(new, name, None)
            if value is not None and isinstance(target, torch.Tensor):
                target.copy_(value)
    return new


def _slice(module: nn.Module, out_index: torch.Tensor | None = None, in_index: torch.Tensor | None = None):
    tensors: dict[str, torch.Tensor | None] = {}
    for name, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        if value.dim() == 0:
            tensors[name] = value
            continue
        if out_index is not None:
            value = value.index_select(0, out_index.to(value.device))
        if in_index is not None and name == "weight" and value.dim() > 1:
            value = value.index_select(1, in_index.to(value.device))
        tensors[name] = value
    return _copy_like(module, **tensors)


def shrink(model: nn.Module, groups: list[PruneGroup], keep: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose layers hold only the kept filters: a really smaller ``nn.Module``."""
    pruned = copy.deepcopy(model)
    for group in groups:
        index = keep[group.producer]
        pruned.set_submodule(group.producer, _slice(pruned.get_submodule(group.producer), out_index=index))
        for norm in group.norms:
            pruned.set_submodule(norm, _slice(pruned.get_submodule(norm), out_index=index))
        consumer_index = _consumer_index(index, group.spatial)
        pruned.set_submodule(group.consumer, _slice(pruned.get_submodule(group.consumer), in_index=consumer_index))
    return pruned


@torch.no_grad()
def mask(model: nn.Module, groups: list[PruneGroup], keep: dict[str, torch.Tensor]) -> nn.Module:
    """A same-size copy whose dropped channels output exactly zero (weights, bias and BN affine zeroed).

    For activations with act(0) = 0 this computes what ``shrink`` does, so the two must agree.
    """
    masked = copy.deepcopy(model)
    for group in groups:
        layer = masked.get_submodule(group.producer)
        dropped = torch.ones(layer.weight.shape[0], dtype=torch.bool, device=layer.weight.device)
        dropped[keep[group.producer]] = False
        for name in (group.producer, *group.norms):
            module = masked.get_submodule(name)
            for attr in ("weight", "bias"):
                tensor = getattr(module, attr, None)
                if tensor is not None:
                    tensor[dropped] = 0
    return masked


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Give every conv/linear/BN layer of ``model`` the shapes stored in ``state`` (in place).

    A structurally pruned checkpoint records its channel counts in its tensor shapes, so the
    unpruned architecture plus this is enough to rebuild it for evaluation or benchmarking.
    """
    for name, module in list(_leaf_modules(model).items()):
        if not isinstance(module, RESIZABLE):
            continue
        local = {k: v for k, v in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]}
        stored = {k: state.get(f"{name}.{k}", state.get(f"{name}.{k}_orig")) for k in local}
        if all(stored[k] is None or stored[k].shape == v.shape for k, v in local.items()):
            continue
        model.set_submodule(name, _copy_like(module, **{k: v for k, v in stored.items() if v is not None}))
    return model


def prune_to_macs(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    budget: int,
    macs: Callable[[nn.Module], int],
    *,
    tol: float = 0.02,
    what: str = "prune.from",
) -> tuple[nn.Module, dict[str, Any]]:
    """Shrink ``model`` until ``macs`` of the result is within ``tol`` of ``budget``.

    First one keep ratio for every layer (the plain L1-norm baseline, no per-layer sensitivity
    analysis, so the architecture keeps its proportions), bisected to the largest ratio under the
    budget. Whole filters move the count in steps of a few percent on small models, so filters are
    then added back one at a time, each to the layer pruned hardest so far, while that stays
    within the tolerance.
    """
    groups, layers = _plan(model, input_shape, what)
    if not groups:
        raise ConfigError(f"{what}: {type(model).__name__} has no prunable layer (a single linear layer)")
    full = macs(model)
    if budget >= full:
        raise ConfigError(
            f"prune.match_to: its budget {budget:,} MACs is not below the source model's {full:,}: "
            "nothing to prune; match a smaller model"
        )
    filters = {g.producer: model.get_submodule(g.producer).weight.shape[0] for g in groups}

    def cost(counts: dict[str, int]) -> int:
        # Conv+linear MACs from the traced geometry: the search needs no model copies.
        return sum(layer.macs(counts) for layer in layers)

    lo, hi = 0.0, 1.0  # cost(lo) <= budget < cost(hi)
    for _ in range(30):
        mid = (lo + hi) / 2
        if cost(filter_counts(model, groups, mid)) <= budget:
            lo = mid
        else:
            hi = mid
    counts = filter_counts(model, groups, lo)
    achieved = cost(counts)
    ceiling = budget * (1 + tol)
    while achieved < budget * (1 - tol):
        for name in sorted(filters, key=lambda n: (counts[n] / filters[n], n)):
            trial = {**counts, name: counts[name] + 1}
            if counts[name] < filters[name] and cost(trial) <= ceiling:
                counts, achieved = trial, cost(trial)
                break
        else:
            break  # every possible filter would overshoot
    keep = l1_keep(model, groups, counts)
    pruned = shrink(model, groups, keep)
    achieved = macs(pruned)  # the reported number is the real module's count
    if abs(achieved - budget) > tol * budget:
        raise ConfigError(
            f"prune.match_to: no filter counts of {what} land within {tol:.0%} of {budget:,} MACs "
            f"(closest {achieved:,}): the layers are too narrow to tune finely; match a larger budget"
        )
    info = {"keep_ratio": lo, "channels": dict(counts), "achieved": achieved, "groups": groups, "keep": keep}
    return pruned, info
