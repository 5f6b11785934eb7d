"""``train(cfg, run_dir) -> metrics``: one run from a composed config; ``main`` is the thin Hydra CLI.

The pure function is the pipeline (``dsconv.training.pipeline``): validate, build, start, fit,
evaluate the best checkpoint once, finish. ``main`` adds only Hydra's run directory and turns user
errors into a one-line message.

Data-parallel runs (``dsconv.distributed``): under torchrun only rank 0 runs Hydra and hands each job
(resolved config, run dir) to the other ranks, so a job has exactly one run dir; in a submitit job with
several tasks every task runs the job Hydra's launcher gave it, in the same job dir. Either way ``train``
runs on every rank and only rank 0 writes.

Module-level imports are Hydra, OmegaConf and the standard library only: ``--help`` and ``--cfg job``
never import torch; the task function imports the training stack when a job really runs.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from dsconv.errors import DsconvError
from dsconv.paths import CONF_DIR
from dsconv.training.launch import launch_env
from dsconv.training.sweep_guard import clear_failure, one_line, write_failure

if TYPE_CHECKING:
    from dsconv.distributed import Execution

log = logging.getLogger("dsconv")

# Run directories get a random suffix so jobs started in the same second never share one.
OmegaConf.register_new_resolver("dsconv_uid", lambda: secrets.token_hex(3), use_cache=True, replace=True)


def train(cfg: DictConfig, run_dir: str | Path, *, resume_hint: str | None = None) -> dict[str, Any]:
    """Train, select the best validation checkpoint, evaluate it once on test, write every output.

    Everything that can be checked is checked before the first file is written. ``resume_hint`` is
    the command shown when a signal interrupts training.
    """
    from dsconv.config import validate_config
    from dsconv.training.pipeline import build_run, evaluate_best, finish_run, fit_run, start_run

    validate_config(cfg)
    run = build_run(cfg, Path(run_dir), resume_hint)
    start_run(run)
    history = fit_run(run)
    test = evaluate_best(run)
    return finish_run(run, history, test)


def main() -> None:
    """``dsconv-train`` and ``scripts/train.py``. Under torchrun, rank 0 runs Hydra (one run dir per
    job) and hands every job to the other ranks, which wait for it."""
    env = launch_env()
    with _without_mode_probe(sys.argv[1:]):
        if env is None:
            _hydra_main()
            return
        from dsconv import distributed

        distributed.run_torchrun(
            env,
            _hydra_main,
            lambda cfg, job, ctx: _run_job(cfg, Path(job.run_dir), job.overrides, job.multirun, job.job_num, ctx),
        )


# Where a composed config could get a hydra.mode from: dsconv's own configs never set it (a test checks).
MODE_SOURCES = ("hydra.mode", "searchpath", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")


@contextmanager
def _without_mode_probe(argv: list[str]) -> Iterator[None]:
    """Skip Hydra's mode probe: before running, Hydra composes the whole config once only to read
    ``hydra.mode`` (~80 ms of every start on this CPU), then composes it again for the job. The probe can
    only answer None (run or -m decide) unless the command line sets the mode or brings other configs."""
    from hydra._internal.hydra import Hydra

    probe = getattr(Hydra, "get_mode", None)
    if probe is None or any(source in token for token in argv for source in MODE_SOURCES):
        yield
        return
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        yield
    finally:
        Hydra.get_mode = probe


def cli() -> None:
    """The console entry point: ``main()``, then leave without tearing the interpreter down.

    Freeing torch's and torch._dynamo's objects one by one at interpreter exit takes ~1 s on this CPU
    (README, "What each optimisation bought"); by the time ``main()`` returns every output file is
    closed, so the process flushes its logs and ends. Errors still exit through ``sys.exit``.

    A torchrun rank leaves the same way, its process group already destroyed (``run_torchrun``): a
    normal teardown runs torch's C++ destructors after the interpreter's, where a rank has aborted
    with "terminate called without an active exception" (once, in the two-process test of a full
    test run under load).
    """
    main()
    if any(arg in ("-m", "--multirun") for arg in sys.argv[1:]):
        return  # sweep launchers' workers hold our pipes: they need the normal shutdown
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _task(cfg: DictConfig) -> float | list[float] | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dsconv import distributed

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    overrides = [str(o) for o in OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)]
    job_num = int(hydra_cfg.job.num) if multirun else 0
    try:
        execution = distributed.for_job()
    except DsconvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if execution.leads_followers:
        job = distributed.Job(OmegaConf.to_container(cfg, resolve=True), str(run_dir), overrides, multirun, job_num)
        distributed.send_job(execution, job)
        execution.followers_idle = False
    result = _run_job(cfg, run_dir, overrides, multirun, job_num, execution)
    execution.followers_idle = True  # this job ended on every rank without ending the process
    return result


_hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)


def _run_job(
    cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool, job_num: int, execution: Execution
) -> float | list[float] | None:
    from dsconv.distributed import follower_failure
    from dsconv.training.faults import TrainingInterrupted
    from dsconv.training.resume import resume_command

    is_main = execution.is_main
    hint = resume_command(sys.argv[0], overrides, run_dir, execution.env)
    if multirun and is_main:
        clear_failure(run_dir)
    try:
        metrics = train(cfg, run_dir, resume_hint=hint)
    except TrainingInterrupted as exc:
        # Preemption ends the whole sweep too: the scheduler is taking the machine away.
        if is_main:
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if is_main:
            print(
                f"error: stopped by a second Ctrl-C; the newest checkpoint in {run_dir / 'checkpoints'} is "
                f"intact: resume with {hint}",
                file=sys.stderr,
            )
        sys.exit(130)
    except Exception as exc:
        user_error = isinstance(exc, DsconvError)
        debug = bool(cfg.debug)
        if not is_main:
            return follower_failure(exc, multirun, debug, execution)
        if not multirun:
            if not user_error or debug:
                raise
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(getattr(exc, "exit_code", 2))
        # In a sweep the other jobs go on; the failure is recorded for the summary and dsconv-report.
        path = write_failure(run_dir, exc, overrides, cfg)
        if user_error and not debug:
            print(f"error: job {job_num} [{' '.join(overrides)}]: {one_line(exc)} ({path})", file=sys.stderr)
        else:
            log.error("job %s [%s] failed (%s)", job_num, " ".join(overrides), path, exc_info=exc)
        # No value, not NaN: Optuna 2.10 (the version hydra-optuna-sweeper allows) records None as a
        # failed trial and goes on, while a NaN makes it raise and end the whole sweep.
        return None
    if not is_main:
        return None
    from dsconv.training.run_metrics import objective_value

    # Sweepers optimise this: validation or cost metrics only (validate_config refuses test metrics).
    return objective_value(metrics, cfg.objective)


if __name__ == "__main__":
    main()
