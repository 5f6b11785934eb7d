"""A finished (or running) Pareto search read back from its sweep dir: every trial, and the exact front.

``load_trials(sweep_dir)`` gives one plain dict per Optuna trial (architecture per stage, objectives, run
dir); ``front(trials)`` keeps the completed trials no other completed trial dominates (validation accuracy
up, cost down; ties are all kept), cheapest first. ``dsconv-report`` draws and tabulates them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dsconv.errors import DsconvError
from dsconv.search.space import TRIAL_PARAM, decode
from dsconv.search.storage import prepare_sqlite

SEARCH_DB = "search.db"
DEFAULT_STUDY = "pareto"
KIND_LETTERS = {"standard": "S", "separable": "D", "inverted_residual": "I"}


class SearchError(DsconvError):
    """A directory that does not hold a Pareto search (or one with no usable trial)."""


def storage_url(sweep_dir: str | Path) -> str:
    return f"sqlite:///{Path(sweep_dir) / SEARCH_DB}"


def open_study(sweep_dir: str | Path) -> Any:
    """The search's Optuna study, read-only in spirit (nothing here writes to it)."""
    import optuna

    path = Path(sweep_dir) / SEARCH_DB
    if not path.is_file():  # optuna would create an empty database here instead of failing
        raise SearchError(f"no {SEARCH_DB} in {sweep_dir}: give the sweep dir of a +hparams_search=pareto run")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(sweep_dir)
    prepare_sqlite(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    if not names:
        raise SearchError(f"{path} holds no study: the search never started a trial")
    name = DEFAULT_STUDY if DEFAULT_STUDY in names else names[0]
    return optuna.load_study(study_name=name, storage=url)


def load_trials(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every trial of the search, in trial order.

    Keys: ``number``, ``state`` (COMPLETE, FAIL, RUNNING, WAITING), ``interrupted`` (left running by a
    stopped process), ``conv`` / ``kernel_size`` (per stage), ``depth_multiplier``, ``width``, ``label``,
    ``corner`` (``all-standard`` / ``all-separable`` / None), ``objectives`` ({metric: value} or None),
    ``accuracy`` and ``cost`` (the two objectives, None unless complete), ``cost_metric`` and ``run_dir``
    (None when the trial has none on disk).
    """
    sweep_dir = Path(sweep_dir)
    study = open_study(sweep_dir)
    attrs = study.user_attrs
    space = attrs.get("search_space", {})
    standard_kernel = int(space.get("standard_kernel", 3))
    names = list(attrs.get("objectives", ["best_val_acc", "cost"]))
    interrupted = set(attrs.get("interrupted_trials", []))
    records = []
    for trial in study.get_trials(deepcopy=False):
        arch = decode(trial.params, standard_kernel)
        values = list(trial.values) if trial.values is not None and trial.state.name == "COMPLETE" else None
        run_dir = sweep_dir / str(trial.params.get(TRIAL_PARAM, trial.number))
        records.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "interrupted": trial.number in interrupted,
                **arch,
                "label": label(arch),
                "corner": corner(arch, standard_kernel),
                "objectives": dict(zip(names, values)) if values is not None else None,
                "accuracy": values[0] if values is not None else None,
                "cost": values[1] if values is not None else None,
                "cost_metric": names[1] if len(names) > 1 else None,
                "run_dir": str(run_dir) if run_dir.is_dir() else None,
            }
        )
    return records


def front(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated completed trials (accuracy max, cost min), exact and tie-keeping, cheapest first."""
    from dsconv.report.pareto import non_dominated

    done = [
        t
        for t in trials
        if t["accuracy"] is not None and t["cost"] is not None and math.isfinite(t["accuracy"])
        if math.isfinite(t["cost"])
    ]
    if not done:
        raise SearchError("no completed trial with finite objectives: nothing to put on a front")
    keep = non_dominated([(t["accuracy"], t["cost"]) for t in done], maximize=(True, False))
    return sorted((done[i] for i in keep), key=lambda t: (t["cost"], -t["accuracy"], t["number"]))


def label(arch: dict[str, Any]) -> str:
    """``S-D-I k5 m2 w0.75``: stage kinds (Standard, Depthwise-separable, Inverted residual), then the
    depthwise kernel and depth multiplier where a stage uses them, then the width."""
    kinds = arch["conv"]
    parts = ["-".join(KIND_LETTERS.get(k, k) for k in kinds)]
    dw = [size for kind, size in zip(kinds, arch["kernel_size"]) if kind != "standard"]
    if dw:
        parts.append(f"k{dw[0]}")
    if "separable" in kinds:
        parts.append(f"m{arch['depth_multiplier']}")
    parts.append(f"w{arch['width']:g}")
    return " ".join(parts)


def corner(arch: dict[str, Any], standard_kernel: int) -> str | None:
    """Which reference network a trial is: all-standard or all-separable, at width 1 and the usual kernel."""
    kinds = set(arch["conv"])
    if arch["width"] != 1.0 or len(kinds) != 1:
        return None
    if kinds == {"standard"}:
        return "all-standard"
    plain = arch["depth_multiplier"] == 1 and set(arch["kernel_size"]) == {standard_kernel}
    return "all-separable" if kinds == {"separable"} and plain else None
