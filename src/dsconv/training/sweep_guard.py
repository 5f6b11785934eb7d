"""Sweeps that survive a failed job, and an output dir checked before Hydra writes into it.

Hydra's launchers stop a multirun at the first job that raises, so ``dsconv.train.main`` catches a
job's error in MULTIRUN mode, records it as ``<job dir>/failure.json`` (``write_failure``) and lets
the sweep go on. ``SweepGuard.on_multirun_end`` then finds every ``failure.json`` under the sweep
dir — on disk, so it also sees jobs that ran in joblib or SLURM worker processes — prints a summary
and makes the process exit non-zero. Register it in ``hydra.callbacks`` *before* callbacks that
must still run at the end of a sweep (Hydra calls ``on_multirun_end`` in reverse order).

This module is imported when Hydra instantiates the callback (also for ``--help``), so it imports no torch.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dsconv.errors import DsconvError

FAILURE_FILE = "failure.json"
EXIT_BAD_OUTPUT_DIR = 2
EXIT_SWEEP_FAILED = 1
EXIT_BAD_CONFIG = 2
# Optuna sweeper counts (conf/hparams_search): key under hydra.sweeper -> smallest allowed value.
SWEEPER_COUNTS = {"n_trials": 1, "n_jobs": 1, "sampler.seed": 0, "sampler.n_startup_trials": 0}


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_failure(job_dir: Path, exc: BaseException, overrides: list[str], cfg: DictConfig) -> Path:
    """``failure.json``: ``error`` (one line), ``type``, ``overrides``, ``config`` (resolved), and a
    ``traceback`` for errors that are bugs rather than bad input (null otherwise)."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation error may be the failure itself
        config = OmegaConf.to_container(cfg, resolve=False)
    user_error = isinstance(exc, DsconvError)
    payload = {
        "error": one_line(exc),
        "type": type(exc).__name__,
        "overrides": [str(o) for o in overrides],
        "config": config,
        "traceback": None if user_error else "".join(traceback.format_exception(exc)),
    }
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / FAILURE_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{FAILURE_FILE}.", suffix=".tmp", dir=job_dir)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def clear_failure(job_dir: Path) -> None:
    """A job that runs again (a resumed sweep) must not keep reporting its old failure."""
    (Path(job_dir) / FAILURE_FILE).unlink(missing_ok=True)


def unwritable_reason(directory: str | Path) -> str | None:
    """Why ``directory`` could not be created and written, or None; creates nothing."""
    path = Path(directory).absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"no existing parent of {path}"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def bad_output_dir_message(directory: str | Path, reason: str) -> str:
    return (
        f"output dir {directory} is not writable ({reason}): set paths.output_dir (or DSCONV_OUTPUT_DIR), "
        "hydra.run.dir or hydra.sweep.dir to a writable directory"
    )


def sweeper_problem(sweeper: Any) -> str | None:
    """One line for an Optuna count that would fail inside the sweeper (or run nothing), else None."""
    if not isinstance(sweeper, DictConfig):
        return None
    for key, minimum in SWEEPER_COUNTS.items():
        value = OmegaConf.select(sweeper, key, default=None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            return f"hydra.sweeper.{key}={value!r} must be an integer >= {minimum}: set it to {minimum} or more"
    return None


def summarize_failures(sweep_dir: Path) -> tuple[list[Path], str]:
    failures = sorted(sweep_dir.rglob(FAILURE_FILE))
    jobs = {p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml")} | {p.parent for p in failures}
    lines = [f"error: {len(failures)} of {len(jobs)} sweep jobs failed (details in each job's {FAILURE_FILE}):"]
    for path in failures:
        try:
            record: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {"error": "unreadable failure record", "overrides": []}
        overrides = " ".join(record.get("overrides") or []) or "(no overrides)"
        lines.append(f"  {path.parent}: [{overrides}] {record.get('type', '?')}: {record.get('error')}")
    return failures, "\n".join(lines)


class SweepGuard(Callback):
    """Checks the output dir before a run or sweep starts; fails a sweep that had failed jobs."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A single run is checked whole before Hydra creates its run dir, so a refused config leaves
        # nothing behind. (A sweep's jobs are checked one by one in train(): one bad job must not stop
        # the others, and its failure.json is the record the summary lists.)
        if OmegaConf.select(config, "search") is None:  # a search's own callback explains a missing -m
            self._validate(config)
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)
        message = sweeper_problem(OmegaConf.select(config, "hydra.sweeper"))
        if message is None and "objective" in config:
            # What a sweeper optimises is the same for every job: refuse a test metric before the first one.
            from dsconv.config import validate_objective
            from dsconv.errors import DsconvError

            try:
                validate_objective(config)
            except DsconvError as exc:
                message = one_line(exc)
        if message is not None:
            sys.stderr.write(f"error: {message}\n")
            sys.stderr.flush()
            raise SystemExit(EXIT_BAD_CONFIG)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        failures, summary = summarize_failures(sweep_dir)
        if failures:
            sys.stderr.write(summary + "\n")
            sys.stderr.flush()
            # SystemExit passes through Hydra's callback wrapper (it only catches Exception).
            raise SystemExit(EXIT_SWEEP_FAILED)

    @staticmethod
    def _validate(config: DictConfig) -> None:
        from dsconv.config import validate_config
        from dsconv.errors import DsconvError

        try:
            validate_config(config)
        except DsconvError as exc:
            if config.get("debug", False):
                raise
            sys.stderr.write(f"error: {one_line(exc)}\n")
            sys.stderr.flush()
            raise SystemExit(getattr(exc, "exit_code", 2)) from None

    @staticmethod
    def _check(directory: Any) -> None:
        reason = unwritable_reason(str(directory))
        if reason is not None:
            sys.stderr.write(f"error: {bad_output_dir_message(directory, reason)}\n")
            sys.stderr.flush()
            raise SystemExit(EXIT_BAD_OUTPUT_DIR)
