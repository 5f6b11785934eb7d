"""``trainer.resume``: find the checkpoint to continue from, refuse incompatible ones, explain how.

* ``null``: a fresh run; a run dir that already holds checkpoints is refused (nothing written over).
* ``auto``: the newest good checkpoint in this run's own ``checkpoints/`` (``last.pt``, then its
  predecessor ``last.prev.pt`` and ``best.pt`` when it is corrupt); none there starts a fresh run.
  Hydra gives every launch a new run dir, so continuing means pointing Hydra at the old one:
  ``hydra.run.dir=<old run dir> trainer.resume=auto``.
* ``PATH``: a checkpoint file, or a run directory (its newest good checkpoint); outputs go to the
  current run dir.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from dsconv.config_views import config_hash, flat_training_config
from dsconv.distributed import LaunchEnv
from dsconv.errors import ConfigError
from dsconv.training.checkpoint import CheckpointError, load_checkpoint, previous_path, remove_stale_temporaries

log = logging.getLogger(__name__)
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "scaler", "early_stopping", "trainer", "rng")
CANDIDATES = ("last.pt", previous_path("last.pt").name, "best.pt")


@dataclass
class ResumePoint:
    path: Path
    state: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.state["trainer"]["epoch"])

    @property
    def step(self) -> int:
        return int(self.state["trainer"]["step"])

    def describe(self) -> str:
        where = (
            f"epoch {self.epoch + 1} after step {self.step}"
            if self.state.get("in_epoch")
            else (f"the end of epoch {self.epoch} (step {self.step})")
        )
        return f"{self.path} at {where}"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def load_training_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    state = load_checkpoint(path, map_location=map_location)
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a dsconv training checkpoint (no {', '.join(missing)})")
    return state


def find_resume_point(
    spec: str | None, run_dir: Path, map_location: str | torch.device = "cpu", *, tidy: bool = True
) -> ResumePoint | None:
    """Resolve ``trainer.resume``; ``None`` means start from scratch. ``tidy=False`` (data-parallel ranks
    other than 0) leaves half-written temporaries for rank 0 to remove."""
    run_dir = Path(run_dir)
    own = checkpoint_dir(run_dir)
    if spec is None or str(spec).strip().lower() in ("", "null", "none"):
        existing = [name for name in CANDIDATES if (own / name).is_file()]
        if existing:
            raise ConfigError(
                f"run dir {run_dir} already holds checkpoints ({', '.join(existing)}): continue it with "
                "trainer.resume=auto, or start the new run in another hydra.run.dir"
            )
        return None
    if str(spec) == "auto":
        if not any((own / name).is_file() for name in CANDIDATES):
            log.warning(
                "trainer.resume=auto: no checkpoint in %s, starting from scratch (to continue an earlier "
                "run, launch with hydra.run.dir=<its run dir> trainer.resume=auto)",
                own,
            )
            return None
        if tidy:
            remove_stale_temporaries(own)
        return _newest_good(own, map_location)
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        directory = checkpoint_dir(path) if checkpoint_dir(path).is_dir() else path
        if not any((directory / name).is_file() for name in CANDIDATES):
            raise CheckpointError(f"trainer.resume={spec}: no checkpoint ({', '.join(CANDIDATES)}) in {directory}")
        return _newest_good(directory, map_location)
    return ResumePoint(path, load_training_checkpoint(path, map_location))


def _newest_good(directory: Path, map_location: str | torch.device) -> ResumePoint:
    errors: list[str] = []
    points: list[ResumePoint] = []
    for name in CANDIDATES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            point = ResumePoint(path, load_training_checkpoint(path, map_location))
        except CheckpointError as exc:
            log.warning("skipping unusable checkpoint: %s", exc)
            errors.append(f"{name}: {exc}")
            continue
        if name == "last.pt":
            return point  # always the newest one written
        points.append(point)
    if not points:
        raise CheckpointError(f"no usable checkpoint in {directory}: {'; '.join(errors)}")
    best = max(points, key=lambda p: (p.epoch, p.step))
    log.warning("resuming from the previous good checkpoint %s", best.path)
    return best


def check_compatible(point: ResumePoint, cfg: DictConfig, current: dict[str, Any] | None = None) -> None:
    """Refuse a checkpoint trained with different training-relevant settings, naming the keys.
    ``current``: this run's flat training config, if it has more than ``flat_training_config``."""
    saved = point.state.get("training_config")
    current = flat_training_config(cfg) if current is None else current
    if isinstance(saved, dict):
        missing = object()
        keys = sorted(k for k in set(saved) | set(current) if saved.get(k, missing) != current.get(k, missing))
        if keys:
            shown = ", ".join(f"{k} ({_show(saved.get(k))} -> {_show(current.get(k))})" for k in keys[:6])
            more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
            raise ConfigError(
                f"cannot resume from {point.path}: it was trained with different settings: {shown}"
                f"{more}; resume with the original values or start a new run (trainer.resume=null)"
            )
    elif point.state.get("config_hash") not in (None, config_hash(cfg)):
        raise ConfigError(
            f"cannot resume from {point.path}: its training config hash differs from this run's; "
            "resume with the original settings or start a new run"
        )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def adopt_best(point: ResumePoint, run_dir: Path) -> None:
    """Resuming into another run dir: bring the source's best.pt along, since test uses the best epoch."""
    target = checkpoint_dir(run_dir) / "best.pt"
    source = point.path.parent / "best.pt"
    if source.resolve() == target.resolve() or not source.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def resume_command(argv0: str, overrides: list[str], run_dir: Path, launch: LaunchEnv | None = None) -> str:
    """The command that continues ``run_dir`` in place: the same overrides, Hydra pointed at it, and
    the same torchrun shape for a data-parallel run."""
    import shlex

    name = Path(argv0).name
    # In launcher workers (joblib) argv[0] is the worker's own script: fall back to the entry point.
    program = f"python {argv0}" if name == "train.py" else name if name.startswith("dsconv-train") else "dsconv-train"
    if launch is not None and launch.launcher == "torchrun":
        shape = f"--standalone --nproc_per_node={launch.local_world_size}"
        if launch.nodes > 1:  # the rendezvous endpoint is the user's to give
            shape = (
                f"--nnodes={launch.nodes} --nproc_per_node={launch.local_world_size} --rdzv-backend=c10d "
                "--rdzv-endpoint=HOST:PORT"
            )
        program = f"torchrun {shape} " + (argv0 if program.startswith("python ") else f"--no-python {program}")
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("hydra.run.dir", "trainer.resume")]
    return shlex.join([*program.split(), *kept, f"hydra.run.dir={run_dir}", "trainer.resume=auto"])
