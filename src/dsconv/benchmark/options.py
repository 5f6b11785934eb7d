"""Reading numbers and lists out of ``conf/bench.yaml`` keys: a wrong type is a user error that names
the key, never a ``ValueError`` traceback from ``int()``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from dsconv.errors import ConfigError

T = TypeVar("T", int, float)


def number(value: Any, key: str, kind: Callable[[Any], T] = float) -> T:
    """``value`` as an int or a finite float; one line naming ``key`` otherwise."""
    name = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{key}={value}: must be {name}")
    try:
        result = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: must be {name}") from None
    if kind is int and float(value) != result:
        raise ConfigError(f"{key}={value}: must be {name}")
    if isinstance(result, float) and not math.isfinite(result):
        raise ConfigError(f"{key}={value}: must be a finite number")
    return result


def listed(value: Any, key: str) -> list[Any]:
    """A list key (a lone value counts as a one-element list)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
