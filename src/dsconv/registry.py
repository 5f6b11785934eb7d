"""Model registry: ``@register_model("name")`` and ``build_model(cfg, input_shape, num_classes)``.

Configs name a registered builder instead of a free ``_target_`` so that a typo fails before
training with the list of valid names, and so users cannot instantiate arbitrary classes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch.nn as nn

from dsconv.errors import ConfigError

ModelBuilder = Callable[..., nn.Module]
_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str, options: Sequence[str] | None = None) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder(input_shape, num_classes, **model_options) -> nn.Module`` under ``name``.

    ``builder`` may be an ``nn.Module`` class (its ``__init__`` declares the options). ``options`` names
    the keys a ``**options`` builder forwards, so ``build_model`` can reject the others in one line.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS and _MODELS[name] is not builder:
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__module__}")
        if options is not None:
            builder.declared_options = tuple(options)  # type: ignore[attr-defined]
        _MODELS[name] = builder
        return builder

    return decorator


def registered_models() -> list[str]:
    _import_builtin_models()
    return sorted(_MODELS)


def get_model_builder(name: str) -> ModelBuilder:
    _import_builtin_models()
    if name not in _MODELS:
        raise ConfigError(
            f"unknown model {name!r}: registered models are {', '.join(sorted(_MODELS))} "
            "(set model.name to one of them)"
        )
    return _MODELS[name]


# Keys of a model config that are not builder options: ``name`` picks the builder; ``match``/``match_to``
# ask dsconv.compression for an equal-budget twin (it sets ``width`` before building).
NON_BUILDER_KEYS = ("name", "match", "match_to")
# Set by build_model's caller (the activation group), never by model.* keys.
_SUPPLIED = ("input_shape", "num_classes", "act_layer")


def model_options(name: str) -> tuple[str, ...] | None:
    """The ``model.*`` keys the builder ``name`` accepts, from its signature; None if it takes anything.

    A class registered as a builder is read through its ``__init__``; a function that forwards
    ``**options`` declares the keys it forwards with a ``declared_options`` attribute (or ``options=``
    in ``register_model``). A builder with a bare ``**options`` and no declaration accepts every key.
    """
    builder = get_model_builder(name)
    declared = getattr(builder, "declared_options", None)
    params = inspect.signature(builder).parameters
    named = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in _SUPPLIED]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if takes_any and declared is None:
        return None
    return tuple(dict.fromkeys([*named, *(declared or ())]))


def build_model(
    model_cfg: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int, act_layer: Any = None
) -> nn.Module:
    """Build the model named by ``model_cfg['name']``; every other key is passed to the builder.

    Options are checked once, here, against what the builder declares; a value its layers reject
    (``ValueError``/``TypeError`` from a constructor) becomes a one-line ``ConfigError``.
    """
    name = str(model_cfg["name"])
    builder = get_model_builder(name)
    options = {k: v for k, v in dict(model_cfg).items() if k not in NON_BUILDER_KEYS}
    accepted = model_options(name)
    if accepted is not None:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"unknown option model.{unknown[0]} for model {name}: accepted options are {', '.join(accepted)}"
            )
    if act_layer is not None:
        options["act_layer"] = act_layer
    try:
        return builder(input_shape=tuple(input_shape), num_classes=int(num_classes), **options)
    except ConfigError:
        raise
    except (ValueError, TypeError, ArithmeticError, RuntimeError, IndexError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(f"model {name} rejected its options ({message}): fix {_blame(options, message)}") from error


def check_model(model_cfg: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Raise the ``ConfigError`` that ``build_model`` would, without allocating or initialising weights.

    The model is built on the meta device, so this costs milliseconds even for 18M parameters: callers
    can check a config before anything is written to disk.
    """
    import torch

    with torch.device("meta"):
        build_model(model_cfg, input_shape, num_classes)


def _blame(options: Mapping[str, Any], message: str) -> str:
    """The ``model.*`` keys a constructor's message names (best effort), else every key that was set."""
    named = []
    for key, value in options.items():
        if key == "act_layer":
            continue
        inner = [f"model.{key}.{sub}" for sub in value if str(sub) in message] if isinstance(value, Mapping) else []
        named.extend(inner or ([f"model.{key}"] if key in message else []))
    if not named:
        named = [f"model.{key}" for key in options if key != "act_layer"]
    return ", ".join(named) or "the model options"


def _import_builtin_models() -> None:
    # Importing the package runs every @register_model decorator in it.
    import dsconv.models  # noqa: F401
