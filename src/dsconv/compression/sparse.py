"""Unstructured global magnitude pruning (``torch.nn.utils.prune``) to a parameter budget.

The smallest-|w| conv and linear weights of the whole network are zeroed until the non-zero
parameter count equals the budget. The masks stay attached (``weight_orig`` * ``weight_mask``)
during fine-tuning, so pruned weights stay exactly zero; the checkpoint then holds both tensors and
``apply_saved_masks`` re-attaches them on reload. The model keeps its dense shapes: on a dense CPU
kernel the zeros are multiplied like any other number, so this buys no speed, only compressibility.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune

from dsconv.errors import ConfigError

MASK_SUFFIX = "_mask"


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def nonzero_params(model: nn.Module) -> int:
    """Parameters that can be non-zero: masked weights count only their kept entries."""
    total = 0
    for module in model.modules():
        masked = {name[: -len("_orig")] for name, _ in module.named_parameters(recurse=False) if name.endswith("_orig")}
        for name, param in module.named_parameters(recurse=False):
            base = name[: -len("_orig")] if name.endswith("_orig") else name
            if base in masked:
                total += int(getattr(module, base + MASK_SUFFIX).count_nonzero())
            else:
                total += param.numel()
    return total


def prune_to_params(model: nn.Module, budget: int, *, what: str = "prune.from") -> tuple[nn.Module, dict[str, Any]]:
    """Zero the ``params - budget`` smallest conv/linear weights (global L1), in place; masks stay attached."""
    targets = prunable_weights(model)
    weights = sum(m.weight.numel() for m, _ in targets)
    total = sum(p.numel() for p in model.parameters())
    remove = total - int(budget)
    if remove <= 0:
        raise ConfigError(
            f"prune.match_to: its budget of {budget:,} parameters is not below the source model's {total:,}: "
            "nothing to prune; match a smaller model"
        )
    if remove >= weights:
        raise ConfigError(
            f"prune.match_to: a budget of {budget:,} parameters would remove every conv/linear weight of {what} "
            f"({weights:,} of {total:,}): match a larger model"
        )
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=int(remove))
    achieved = nonzero_params(model)
    return model, {"sparsity": remove / weights, "achieved": achieved, "weights_pruned": remove}


def apply_saved_masks(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Re-attach the pruning masks a checkpoint holds (``<layer>.<param>_mask``) so it loads strictly."""
    for key in state:
        if not key.endswith(MASK_SUFFIX) or f"{key[: -len(MASK_SUFFIX)]}_orig" not in state:
            continue
        module_name, _, param = key[: -len(MASK_SUFFIX)].rpartition(".")
        module = model.get_submodule(module_name)
        if not torch_prune.is_pruned(module) or not hasattr(module, param + "_orig"):
            torch_prune.custom_from_mask(module, param, state[key].to(getattr(module, param).device))
    return model


def make_masks_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight (plain ``weight`` tensors with zeros), e.g. for export or benchmarking."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
    return model
