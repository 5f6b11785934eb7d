"""``SearchSetup``: the Hydra callback that makes ``+hparams_search=pareto`` resumable and checked up front.

The pinned Optuna sweeper (hydra-optuna-sweeper 1.3.0) loads an existing study (``load_if_exists``) but
then runs ``n_trials`` *more* trials, leaves the trial a killed process was running in state RUNNING
forever, and restarts its random sampler at the same seed (so a resumed search would replay its first
draws). Hydra calls ``on_multirun_start`` with the very config it instantiates the sweeper from, so this
callback fixes all three before the sweeper exists: it marks stale RUNNING trials failed (recording them as
``interrupted_trials``, and queueing an interrupted enqueued trial again), sets ``hydra.sweeper.n_trials``
to the trials still missing, and offsets the sampler's seed by the trials already in the study. A new
study also gets the all-standard and all-separable networks enqueued as its first trials, the corners
every front is read against.

It also refuses a bad search before anything runs (unknown cost, latency without ``profile_inference``,
a relaunch with other overrides than the study was started with) and, at the end, writes ``front.json``.
One process per study: a second process running the same study would see the first one's trial as stale.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from dsconv.errors import ConfigError, DsconvError
from dsconv.search.space import SearchSpace, corner_params
from dsconv.search.storage import prepare_sqlite

log = logging.getLogger(__name__)

FRONT_FILE = "front.json"
EXIT_BAD_SEARCH = 2
# Model keys pareto.yaml points at the trial's suggestions, and the search key that narrows each instead.
SEARCHED_KEYS = {
    "conv": "search.kinds=[...]",
    "kernel_size": "search.kernel_sizes=[...] / search.standard_kernel",
    "depth_multiplier": "search.depth_multipliers=[...]",
    "width": "search.widths=[...]",
}


@dataclass(frozen=True)
class ResumePlan:
    requested: int  # hydra.sweeper.n_trials: finished trials the search should end with
    finished: int  # trials already finished (complete, or failed by their own run)
    interrupted: tuple[int, ...]  # trial numbers found RUNNING and marked failed now
    remaining: int
    seed: int | None  # the sampler seed to use in this process


class SearchSetup(Callback):
    """Registered by ``conf/hparams_search/pareto.yaml`` in ``hydra.callbacks``."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Without -m the per-stage lists stay empty and the model would fail with a puzzling message.
        sys.stderr.write("error: +hparams_search=pareto is a search: run it as a sweep, with -m\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_BAD_SEARCH)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            plan = prepare(config)
        except DsconvError as exc:
            sys.stderr.write(f"error: {exc}\n")
            sys.stderr.flush()
            raise SystemExit(EXIT_BAD_SEARCH) from None
        except Exception:
            # Hydra would only warn about a callback's exception and run the sweep unprepared.
            log.exception("could not prepare the Pareto search")
            raise SystemExit(1) from None
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweeper.n_trials = plan.remaining
            if plan.seed is not None:
                config.hydra.sweeper.sampler.seed = plan.seed
        if plan.interrupted:
            log.warning("trials %s were left running by a stopped process: marked failed", list(plan.interrupted))
        log.info(
            "Pareto search %s: %d of %d trials finished, %d to run",
            config.hydra.sweep.dir,
            plan.finished,
            plan.requested,
            plan.remaining,
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dsconv.search.front import front, load_trials

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            best = front(load_trials(sweep_dir))
        except DsconvError as exc:  # e.g. every trial failed: SweepGuard reports those failures
            log.warning("no Pareto front for %s: %s", sweep_dir, exc)
            return
        (sweep_dir / FRONT_FILE).write_text(json.dumps(best, indent=2, default=str) + "\n")
        log.info("Pareto front (%d trials) in %s", len(best), sweep_dir / FRONT_FILE)
        for trial in best:
            log.info("  trial %d  %s  %s", trial["number"], trial["label"], trial["objectives"])


def prepare(config: DictConfig) -> ResumePlan:
    """Check the search config, open (or create) its study and work out what this launch must run."""
    from optuna.trial import TrialState

    sweeper = config.hydra.sweeper
    cost = check_objectives(config)
    requested = sweeper.n_trials
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={requested!r}: use the number of trials to run, >= 1")
    for key, instead in SEARCHED_KEYS.items():
        if not OmegaConf.is_interpolation(config.model, key):
            raise ConfigError(
                f"model.{key} is what the search varies: drop model.{key}=... and restrict it with {instead}"
            )
    space = SearchSpace.from_config(config)
    study = open_search_study(config, cost, space)
    trials = study.get_trials(deepcopy=False)
    if not trials and config.search.corners:
        for kind in ("standard", "separable"):
            if kind in space.kinds:
                _enqueue(study, corner_params(space, kind))
    stale = recover_interrupted(study, trials)
    interrupted = set(study.user_attrs.get("interrupted_trials", []))
    done_states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    finished = sum(1 for t in trials if t.state in done_states and t.number not in interrupted)
    seed = sweeper.sampler.get("seed")
    if seed is not None and trials:
        seed = int(seed) + len(trials)
    return ResumePlan(requested, finished, tuple(stale), max(0, requested - finished), seed)


def open_search_study(config: DictConfig, cost: str, space: SearchSpace) -> Any:
    """The sweeper's study, created with the search's description or checked against it when it exists."""
    import optuna

    sweeper = config.hydra.sweeper
    storage = str(sweeper.storage)
    prepare_sqlite(storage)
    directions = [str(d) for d in sweeper.direction]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=str(sweeper.study_name), storage=storage, directions=directions, load_if_exists=True
    )
    wanted = [optuna.study.StudyDirection[d.upper()] for d in directions]
    if list(study.directions) != wanted:
        raise ConfigError(
            f"study {study.study_name} in {storage} optimises {[d.name for d in study.directions]}, not "
            f"{directions}: start a new search with search.name=<new name>"
        )
    # The sweep dir is named after model, dataset and cost only: other overrides must match to resume.
    overrides = sorted(str(o) for o in config.hydra.overrides.task)
    stored = study.user_attrs.get("task_overrides")
    if stored is None:
        study.set_user_attr("task_overrides", overrides)
        study.set_user_attr("objectives", [str(o) for o in config.objective])
        study.set_user_attr("cost", cost)
        study.set_user_attr("search_space", space.describe())
    elif sorted(stored) != overrides:
        changed = sorted(set(stored) ^ set(overrides))
        raise ConfigError(
            f"the search in {config.hydra.sweep.dir} was started with other overrides (differing: "
            f"{' '.join(changed)}): relaunch it with the same ones, or start a new search with search.name=<new name>"
        )
    return study


def recover_interrupted(study: Any, trials: list[Any]) -> list[int]:
    """Mark the trials a stopped process left RUNNING as failed; returns their numbers.

    They are listed in the study's ``interrupted_trials`` (so they do not count as finished), and an
    enqueued one (a corner) is queued again so a crash cannot drop it from the search.
    """
    from optuna.trial import TrialState

    stale = [t for t in trials if t.state == TrialState.RUNNING]
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        fixed = trial.system_attrs.get("fixed_params")
        if fixed:
            _enqueue(study, fixed)
    numbers = [t.number for t in stale]
    if numbers:
        previous = study.user_attrs.get("interrupted_trials", [])
        study.set_user_attr("interrupted_trials", sorted(set(previous) | set(numbers)))
    return numbers


def check_objectives(config: DictConfig) -> str:
    """The cost key, after checking that ``objective`` is (validation accuracy, that cost's metric)."""
    search = config.search
    cost = str(search.cost)
    metrics = search.cost_metrics
    if cost not in metrics:
        raise ConfigError(f"search.cost={cost} is unknown: choose one of {', '.join(metrics)}")
    if cost == "latency" and not config.profile_inference:
        raise ConfigError(
            "search.cost=latency needs profile_inference=true: each trial measures its latency after training"
        )
    objective = list(config.objective)
    if len(objective) != len(config.hydra.sweeper.direction):
        raise ConfigError(
            f"objective={objective} has {len(objective)} metrics but hydra.sweeper.direction has "
            f"{len(config.hydra.sweeper.direction)}: keep objective=[best_val_acc, <cost metric>]"
        )
    return cost


def _enqueue(study: Any, params: dict[str, Any]) -> None:
    import optuna

    with warnings.catch_warnings():  # experimental in Optuna 2.10, and exactly what is needed here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.enqueue_trial(params)
