"""Equal-budget twins: widen (or narrow) a model until it spends another model's MACs or parameters.

``+model.match=macs +model.match_to=mnist_cnn`` on a DS model finds the ``width`` multiplier whose
conv+linear MACs (or parameter count) equal those of the named conf/model option within 2%. The
count is a step function of ``width`` (channels are whole numbers) but never decreases with it, so
a bisection on ``log(width)`` converges; it stops at the first width inside the tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch.nn as nn

from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import count_macs, count_params
from dsconv.registry import build_model, model_options

# Keys of the model group that steer how the model is built rather than being builder options.
MODEL_META_KEYS = ("match", "match_to")
MATCH_BY = ("macs", "params")
WIDTH_RANGE = (1.0 / 64, 64.0)
MAX_STEPS = 40


def builder_config(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The model config without the keys only this package reads, ready for ``build_model``."""
    return {k: v for k, v in dict(model_cfg).items() if k not in MODEL_META_KEYS}


def model_cost(model: nn.Module, input_shape: tuple[int, int, int], by: str) -> int:
    """Conv+linear MACs per image (``count_macs``) or the total parameter count."""
    if by == "macs":
        return count_macs(model, input_shape)
    return count_params(model).total


def _check_by(by: str) -> None:
    if by not in MATCH_BY:
        raise ConfigError(f"model.match={by!r} is unknown: choose macs or params")


def build_with_width(
    model_cfg: Mapping[str, Any], width: float, input_shape: tuple[int, int, int], num_classes: int, act_layer=None
) -> nn.Module:
    cfg = {**builder_config(model_cfg), "width": float(width)}
    accepted = model_options(str(cfg["name"]))
    if accepted is not None and "width" not in accepted:
        raise ConfigError(
            f"model.match needs a model with a `width` option, and model.name={cfg['name']} has none: "
            "use a family that has it (mnist_cnn, cifar_cnn, densenet4) or drop model.match"
        )
    return build_model(cfg, input_shape, num_classes, act_layer)


def match_width(
    model_cfg: Mapping[str, Any],
    target_cfg: Mapping[str, Any],
    input_shape: tuple[int, int, int],
    num_classes: int,
    by: str = "macs",
    tol: float = 0.02,
) -> tuple[float, int, int]:
    """``(width, budget, achieved)``: the width of ``model_cfg`` whose cost is within ``tol`` of ``target_cfg``'s."""
    _check_by(by)
    input_shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
    budget = model_cost(build_model(builder_config(target_cfg), input_shape, num_classes), input_shape, by)

    def cost(width: float) -> int:
        return model_cost(build_with_width(model_cfg, width, input_shape, num_classes), input_shape, by)

    width, achieved = bisect_budget(cost, budget, tol, start=1.0, bounds=WIDTH_RANGE, log_scale=True)
    if abs(achieved - budget) > tol * budget:
        raise ConfigError(
            f"model.match={by}: no width of {model_cfg.get('name')} lands within {tol:.0%} of {budget:,} "
            f"(closest: width {width:.4f} gives {achieved:,}); the channel counts are too small to tune "
            "finely, so widen the base model or match the other budget"
        )
    return width, budget, achieved


def bisect_budget(
    cost: Callable[[float], int],
    budget: int,
    tol: float,
    *,
    start: float,
    bounds: tuple[float, float],
    log_scale: bool = False,
) -> tuple[float, int]:
    """The knob value whose (non-decreasing) ``cost`` is closest to ``budget``, stopping inside ``tol``.

    Brackets the budget by doubling/halving from ``start`` within ``bounds``, then bisects (in log
    space for multiplicative knobs such as a width). Returns the best value seen and its cost.
    """
    seen: dict[float, int] = {}

    def measure(x: float) -> int:
        if x not in seen:
            seen[x] = cost(x)
        return seen[x]

    def best() -> tuple[float, int]:
        x = min(seen, key=lambda v: (abs(seen[v] - budget), v))
        return x, seen[x]

    def close(x: float) -> bool:
        return abs(measure(x) - budget) <= tol * budget

    lo = hi = start
    while measure(hi) < budget and hi < bounds[1] and not close(hi):
        lo, hi = hi, min(hi * 2, bounds[1])
    while measure(lo) > budget and lo > bounds[0] and not close(lo):
        lo, hi = max(lo / 2, bounds[0]), lo
    for _ in range(MAX_STEPS):
        if close(lo) or close(hi) or not measure(lo) <= budget <= measure(hi):
            break
        mid = math.sqrt(lo * hi) if log_scale else (lo + hi) / 2
        if mid in (lo, hi):
            break
        if measure(mid) < budget:
            lo = mid
        else:
            hi = mid
    return best()
