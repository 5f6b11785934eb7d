"""The Pareto search's space, suggested per trial through the Optuna sweeper's ``custom_search_space``.

The sweeper turns every suggested parameter into the override ``<name>=<value>``, one per parameter, so a
per-stage list cannot be one suggestion. Instead each stage's kind is its own categorical, named
``+search.conv.stage_NN``, which fills the dict ``search.conv``; ``conf/hparams_search/pareto.yaml`` sets
``model.conv: ${oc.dict.values:search.conv}``, so the model sees the list in stage order. The per-stage
kernel list is built the same way from constant entries that pick, by the stage's kind, either the searched
depthwise kernel (``search.dw_kernel``) or ``search.standard_kernel``: a standard stage keeps its usual
kernel, and a 7x7 standard conv never enters the search by accident. Parameters that only matter for some
kinds (the depthwise kernel, the depth multiplier) are suggested only when a stage of that kind is present,
which Optuna's NSGA-II and TPE samplers handle per parameter.

``search.trial`` carries the trial number into the run's config (a one-value distribution: never sampled),
so each trial's run dir is ``<sweep dir>/<trial number>`` even when a resumed search restarts Hydra's job
numbering at 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dsconv.errors import ConfigError

TRIAL_PARAM = "search.trial"
DW_KERNEL_PARAM = "search.dw_kernel"
DEPTH_MULTIPLIER_PARAM = "search.depth_multiplier"
WIDTH_PARAM = "search.width"
CONV_PREFIX = "+search.conv."
KERNEL_PREFIX = "+search.kernel."
DEPTHWISE_KINDS = ("separable", "inverted_residual")  # kinds whose k x k conv is depthwise


def stage_key(stage: int) -> str:
    """``stage_01`` ...: zero-padded so the name order is the stage order wherever names get sorted."""
    return f"stage_{stage + 1:02d}"


def conv_param(stage: int) -> str:
    return CONV_PREFIX + stage_key(stage)


def kernel_param(stage: int) -> str:
    return KERNEL_PREFIX + stage_key(stage)


def kernel_entry(stage: int) -> str:
    # Quoted: Hydra's override grammar rejects nested interpolations unless the value is a string.
    return f"'${{search.kernel_by_kind.${{search.conv.{stage_key(stage)}}}}}'"


@dataclass(frozen=True)
class SearchSpace:
    """The choices of one search; ``stages`` is the model's number of swappable stages."""

    stages: int
    kinds: tuple[str, ...]
    kernel_sizes: tuple[int, ...]
    standard_kernel: int
    depth_multipliers: tuple[int, ...]
    widths: tuple[float, ...]

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SearchSpace:
        """Read and check ``search.*`` of a composed config (``stages: null`` asks the model)."""
        search = cfg.search
        kinds = tuple(str(k) for k in _choices(search, "kinds"))
        from dsconv.layers import conv_kinds

        unknown = sorted(set(kinds) - set(conv_kinds()))
        if unknown:
            raise ConfigError(f"search.kinds names unknown conv kinds {unknown}: choose from {', '.join(conv_kinds())}")
        kernels = tuple(_int(k, "search.kernel_sizes", odd=True) for k in _choices(search, "kernel_sizes"))
        multipliers = tuple(_int(m, "search.depth_multipliers") for m in _choices(search, "depth_multipliers"))
        widths = tuple(_width(w) for w in _choices(search, "widths"))
        standard_kernel = _int(search.standard_kernel, "search.standard_kernel", odd=True)
        stages = search.stages
        stages = _int(stages, "search.stages") if stages is not None else model_stage_count(cfg)
        return cls(stages, kinds, kernels, standard_kernel, multipliers, widths)

    def describe(self) -> dict[str, Any]:
        """The space as plain data, stored with the study so a search can be read back without its config."""
        return {
            "stages": self.stages,
            "kinds": list(self.kinds),
            "kernel_sizes": list(self.kernel_sizes),
            "standard_kernel": self.standard_kernel,
            "depth_multipliers": list(self.depth_multipliers),
            "widths": list(self.widths),
        }


def suggest(cfg: DictConfig, trial: Any) -> None:
    """The sweeper's ``custom_search_space``: suggest one trial's architecture (see the module docstring)."""
    space = SearchSpace.from_config(cfg)
    trial.suggest_int(TRIAL_PARAM, trial.number, trial.number)
    kinds = [trial.suggest_categorical(conv_param(i), list(space.kinds)) for i in range(space.stages)]
    for i in range(space.stages):
        trial.suggest_categorical(kernel_param(i), [kernel_entry(i)])
    if any(kind in DEPTHWISE_KINDS for kind in kinds) and len(space.kernel_sizes) > 0:
        trial.suggest_categorical(DW_KERNEL_PARAM, list(space.kernel_sizes))
    if "separable" in kinds and len(space.depth_multipliers) > 0:
        trial.suggest_categorical(DEPTH_MULTIPLIER_PARAM, list(space.depth_multipliers))
    if space.widths:
        trial.suggest_categorical(WIDTH_PARAM, list(space.widths))


def corner_params(space: SearchSpace, kind: str) -> dict[str, Any]:
    """Fixed parameters of the all-``kind`` network at width 1 (the corners every front is compared with)."""
    params: dict[str, Any] = {conv_param(i): kind for i in range(space.stages)}
    if kind in DEPTHWISE_KINDS and space.kernel_sizes:
        params[DW_KERNEL_PARAM] = min(space.kernel_sizes, key=lambda k: (abs(k - space.standard_kernel), k))
    if kind == "separable" and space.depth_multipliers:
        params[DEPTH_MULTIPLIER_PARAM] = min(space.depth_multipliers)
    if space.widths:
        params[WIDTH_PARAM] = min(space.widths, key=lambda w: (abs(w - 1.0), w))
    return params


def decode(params: Mapping[str, Any], standard_kernel: int) -> dict[str, Any]:
    """A trial's architecture from its parameters: per-stage ``conv`` and ``kernel_size``, ``depth_multiplier``,
    ``width``. A parameter the trial did not need (no separable stage: no multiplier) reads as pareto.yaml's
    default for it (multiplier 1, width 1)."""
    keys = sorted(name for name in params if name.startswith(CONV_PREFIX))
    kinds = [str(params[name]) for name in keys]
    dw_kernel = params.get(DW_KERNEL_PARAM, standard_kernel)
    kernels = [int(dw_kernel) if kind in DEPTHWISE_KINDS else int(standard_kernel) for kind in kinds]
    return {
        "conv": kinds,
        "kernel_size": kernels,
        "depth_multiplier": int(params.get(DEPTH_MULTIPLIER_PARAM, 1)),
        "width": float(params.get(WIDTH_PARAM, 1.0)),
    }


def model_stage_count(cfg: DictConfig) -> int:
    """The model's swappable stages, asked of the model itself (built for a nominal input of the dataset)."""
    from dsconv.models.stages import STAGE_KEYS, stage_count

    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model, dict)
    model = {key: value for key, value in model.items() if key not in STAGE_KEYS}
    shape, classes = nominal_input(cfg.dataset)
    try:
        return stage_count(model, shape, classes)
    except ConfigError as exc:
        raise ConfigError(
            f"model={cfg.model.name} cannot be searched ({exc}): use a CNN family with swappable stages "
            "(mnist_cnn, cifar_cnn, densenet4, mobilenet_small)"
        ) from exc


def nominal_input(dataset: DictConfig) -> tuple[tuple[int, int, int], int]:
    """Input shape and class count from the dataset config alone: loading data only to count stages is waste."""
    name = str(dataset.name)
    if name == "cifar10":
        return (3, 32, 32), 10
    size = int(dataset.get("image_size", 28))
    return (int(dataset.get("channels", 1)), size, size), int(dataset.get("num_classes", 10))


def _choices(search: DictConfig, key: str) -> list[Any]:
    value = search.get(key)
    if value is None or isinstance(value, (str, int, float)) or len(value) == 0:
        raise ConfigError(f"search.{key}={value!r} must be a non-empty list: e.g. search.{key}=[...]")
    return list(value)


def _int(value: Any, key: str, *, odd: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (odd and value % 2 == 0):
        what = "an odd integer >= 1 (3, 5, 7)" if odd else "an integer >= 1"
        raise ConfigError(f"{key} has {value!r}: use {what}")
    return int(value)


def _width(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"search.widths has {value!r}: use width multipliers > 0, e.g. [0.5, 0.75, 1.0]")
    return float(value)
