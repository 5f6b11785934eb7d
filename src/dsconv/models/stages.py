"""Per-stage options shared by the CNN families, so one set of keys means the same thing in all of them.

A *stage* is a swappable convolution position of a model (a conv block of ``mnist_cnn``, a dense block of
``densenet4``, a row of ``mobilenet_small``'s table). Per stage, a model takes

* ``conv``: one kind or a list (``model.conv=[standard,separable,inverted_residual]``, the comparison
  document's "hybrid models");
* ``kernel_size``: the k x k (depthwise) kernel, one odd int or a list;
* ``depth_multiplier``: the separable stages' depthwise multiplier, one int or a list;

plus ``width``, one float that multiplies every stage's channels, and ``conv_options``, whose keys go to
every stage whose kind accepts them (``skip`` to separable stages, ``expand_ratio`` to inverted residuals),
so a search can mix kinds under one options dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsconv.errors import ConfigError
from dsconv.layers import conv_kind_options, conv_kinds

# Keys that describe stages rather than the model; stage_count drops them so any length of list is fine.
STAGE_KEYS = ("conv", "kernel_size", "depth_multiplier")


@dataclass(frozen=True)
class Stage:
    """What one swappable stage is built from: its conv kind, kernel size and that kind's options."""

    kind: str
    kernel_size: int
    options: dict[str, Any] = field(default_factory=dict)


def stage_kinds(conv: str | Sequence[str], num_stages: int) -> list[str]:
    kinds = [str(conv)] * num_stages if isinstance(conv, str) else [str(kind) for kind in conv]
    if len(kinds) != num_stages:
        raise ConfigError(
            f"model.conv lists {len(kinds)} kinds but this model has {num_stages} swappable stages: "
            f"give one kind or exactly {num_stages}"
        )
    unknown = sorted(set(kinds) - set(conv_kinds()))
    if unknown:
        raise ConfigError(f"model.conv names unknown conv kind(s) {unknown}: choose from {', '.join(conv_kinds())}")
    return kinds


def per_stage(value: Any, num_stages: int, key: str) -> list[Any]:
    """One value for every stage, or a list of exactly ``num_stages`` values."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value] * num_stages
    values = list(value)
    if len(values) != num_stages:
        raise ConfigError(
            f"model.{key} lists {len(values)} values but this model has {num_stages} swappable stages: "
            f"give one value or exactly {num_stages}"
        )
    return values


def _positive_int(value: Any, key: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ConfigError(f"model.{key}={value!r} is not a positive integer: {hint}")
    return int(value)


def stage_kernel_sizes(kernel_size: int | Sequence[int], num_stages: int) -> list[int]:
    sizes = [
        _positive_int(k, "kernel_size", "use 3, 5 or 7") for k in per_stage(kernel_size, num_stages, "kernel_size")
    ]
    even = sorted({k for k in sizes if k % 2 == 0})
    if even:
        what = "is even" if len(set(sizes)) == 1 else f"has even sizes {even}"
        raise ConfigError(
            f"model.kernel_size={kernel_size!r} {what}: the models pad by (k - 1) // 2, so use odd sizes (3, 5, 7)"
        )
    return sizes


def check_width(width: Any) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ConfigError(f"model.width={width!r} must be a finite number > 0: use e.g. 0.5, 1.0 or 1.5")
    return float(width)


def scale_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest int (at least 1): monotone in ``width``, exact at 1.0."""
    return max(1, round(channels * width))


def _check_conv_options(conv_options: Mapping[str, Any]) -> None:
    # Checked against every non-standard kind, not only the ones in use: a search may pick an all-standard
    # trial under options meant for its separable trials, but a typo must fail whatever the kinds are.
    by_kind = {kind: conv_kind_options(kind) for kind in conv_kinds() if kind != "standard"}
    accepted = {name for names in by_kind.values() for name in names}
    unknown = sorted(set(conv_options) - accepted)
    if unknown:
        listing = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in by_kind.items())
        raise ConfigError(f"unknown model.conv_options {unknown}: each conv kind accepts ({listing})")


def plan_stages(
    num_stages: int,
    conv: str | Sequence[str],
    kernel_size: int | Sequence[int] = 3,
    depth_multiplier: int | Sequence[int] = 1,
    conv_options: Mapping[str, Any] | None = None,
) -> list[Stage]:
    """The per-stage kinds, kernel sizes and conv options of a model, validated once for every family."""
    kinds = stage_kinds(conv, num_stages)
    sizes = stage_kernel_sizes(kernel_size, num_stages)
    hint = "use 1 (plain) or 2, 3 ... depthwise filters per input channel"
    multipliers = [
        _positive_int(m, "depth_multiplier", hint) for m in per_stage(depth_multiplier, num_stages, "depth_multiplier")
    ]
    options = dict(conv_options or {})
    _check_conv_options(options)
    if "depth_multiplier" in options and any(m != 1 for m in multipliers):
        raise ConfigError(
            "model.depth_multiplier and model.conv_options.depth_multiplier are both set: keep model.depth_multiplier"
        )
    stages = []
    for kind, size, multiplier in zip(kinds, sizes, multipliers):
        accepted = conv_kind_options(kind) if kind != "standard" else ()
        stage_options = {key: value for key, value in options.items() if key in accepted}
        if kind == "separable" and "depth_multiplier" not in stage_options:
            stage_options["depth_multiplier"] = multiplier
        stages.append(Stage(kind, size, stage_options))
    return stages


def stage_count(model_cfg: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int) -> int:
    """How many swappable stages the model of ``model_cfg`` has (the length its per-stage lists must have).

    The model itself is the single source: it is built (on the meta device, so no memory or init time is
    spent) with its per-stage keys dropped and asked for ``num_stages``.
    """
    import torch

    from dsconv.registry import build_model

    cfg = {key: value for key, value in dict(model_cfg).items() if key not in STAGE_KEYS}
    with torch.device("meta"):
        model = build_model(cfg, input_shape, num_classes)
    count = getattr(model, "num_stages", None)
    if count is None:
        raise ConfigError(f"model {model_cfg['name']} has no swappable stages: per-stage lists do not apply to it")
    return int(count)


def describe_conv(conv: str | Sequence[str]) -> str:
    """A short label for reports: ``separable`` or ``hybrid(standard,separable,...)``."""
    if isinstance(conv, str):
        return conv
    kinds = [str(kind) for kind in conv]
    return kinds[0] if len(set(kinds)) == 1 else f"hybrid({','.join(kinds)})"
