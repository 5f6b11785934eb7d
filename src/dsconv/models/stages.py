"""Per-stage conv kinds, so ``model.conv`` can name one kind or a hybrid list.

``model.conv=separable`` switches every swappable stage; ``model.conv=[standard,separable,separable]``
keeps the first stage standard and makes the rest separable (the comparison document's "hybrid models").
"""

from __future__ import annotations

from collections.abc import Sequence

from dsconv.errors import ConfigError


def stage_kinds(conv: str | Sequence[str], num_stages: int) -> list[str]:
    if isinstance(conv, str):
        return [conv] * num_stages
    kinds = [str(kind) for kind in conv]
    if len(kinds) != num_stages:
        raise ConfigError(
            f"model.conv lists {len(kinds)} kinds but this model has {num_stages} swappable stages: "
            f"give one kind or exactly {num_stages}"
        )
    return kinds


def describe_conv(conv: str | Sequence[str]) -> str:
    """A short label for reports: ``separable`` or ``hybrid(standard,separable,...)``."""
    if isinstance(conv, str):
        return conv
    kinds = [str(kind) for kind in conv]
    return kinds[0] if len(set(kinds)) == 1 else f"hybrid({','.join(kinds)})"
