"""Eager optimizers without the ~1.2 s import of ``torch._dynamo``.

Two places in ``torch.optim`` import all of ``torch._dynamo`` (sympy, the bytecode tracer, ...) on
their first call, only to serve ``torch.compile``: ``Optimizer.add_param_group``, ``zero_grad``,
``state_dict`` and ``load_state_dict`` are wrapped in ``torch._disable_dynamo``, a lazy "never trace
this" mark that torch caches on the wrapped function as ``__dynamo_disable``; and every ``step`` runs
inside ``_use_grad``, which imports it to place a graph break. This project compiles models, never an
optimizer step, so in a run that compiles nothing both are dead weight: a third of a speed-run's
start-up on this 2-core CPU. :func:`optimizer_class` returns a subclass whose ``step`` does exactly
what ``_use_grad`` does minus the graph break, and caches the plain functions as their marks.

Should torch's wrappers change shape, nothing here matches and the import simply happens as before.
A compiled run gets torch's own classes and marks (:func:`restore`).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Iterator
from typing import Any

import torch

CACHE_ATTRIBUTE = "__dynamo_disable"  # where torch._compile._disable_dynamo keeps the marked function
_EAGER_CLASSES: dict[type, type] = {}


def optimizer_class(cls: type[torch.optim.Optimizer], compiled: bool) -> type[torch.optim.Optimizer]:
    """``cls`` for a compiled run (or once ``torch._dynamo`` is imported anyway); else :func:`eager_class`."""
    if compiled or "torch._dynamo" in sys.modules:
        restore()
        return cls
    _skip_disable_marks()
    return eager_class(cls)


def eager_class(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """A subclass of ``cls`` (same name, same state dict) whose ``step`` places no graph break."""
    if cls not in _EAGER_CLASSES:
        # cls.step is _use_grad(step), or, once an instance exists, torch's hook wrapper around that.
        function = getattr(cls, "step", None)
        while function is not None and getattr(function, "__code__", None) is not None:
            if function.__code__.co_name == "_use_grad" and hasattr(function, "__wrapped__"):
                break
            function = getattr(function, "__wrapped__", None)
        else:
            return cls
        _EAGER_CLASSES[cls] = type(cls.__name__, (cls,), {"step": _step_without_graph_break(function.__wrapped__)})
    return _EAGER_CLASSES[cls]


def _step_without_graph_break(step: Any) -> Any:
    @functools.wraps(step)
    def eager_step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        previous = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return step(self, *args, **kwargs)
        finally:
            torch.set_grad_enabled(previous)

    return eager_step


def _lazily_disabled(owner: type) -> Iterator[Any]:
    """The functions of ``owner`` (and its bases) that torch wrapped in ``_disable_dynamo``."""
    seen: set[int] = set()
    for klass in inspect.getmro(owner):
        for value in vars(klass).values():
            wrapped = getattr(value, "__wrapped__", None)
            code = getattr(value, "__code__", None)
            if wrapped is None or code is None or id(wrapped) in seen:
                continue
            if code.co_name == "inner" and code.co_filename.endswith("_compile.py"):
                seen.add(id(wrapped))
                yield wrapped


def _skip_disable_marks() -> None:
    for function in _lazily_disabled(torch.optim.Optimizer):
        if getattr(function, CACHE_ATTRIBUTE, None) is None:
            setattr(function, CACHE_ATTRIBUTE, function)


def restore() -> None:
    """Put torch's own marks back, so compiled code graph-breaks at these functions as torch intends."""
    for function in _lazily_disabled(torch.optim.Optimizer):
        if getattr(function, CACHE_ATTRIBUTE, None) is function:
            delattr(function, CACHE_ATTRIBUTE)
