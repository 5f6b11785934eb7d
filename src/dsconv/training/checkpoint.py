"""Checkpoints written atomically and read back with ``weights_only=True``.

A checkpoint is written to a temporary file in the same directory, fsynced, then renamed over the
old one: a crash mid-write leaves the previous good file in place. With ``keep_previous`` the old
file is first renamed to ``<name>.prev.pt``, so a checkpoint that is later found corrupt (bad disk,
copied half-way) still has a good predecessor for ``trainer.resume=auto``. Loading never unpickles
arbitrary objects, so a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsconv.errors import DsconvError


class CheckpointError(DsconvError):
    """A checkpoint is missing, truncated, corrupt, or holds more than tensors and plain data."""


TMP_SUFFIX = ".tmp"


def previous_path(path: str | Path) -> Path:
    """Where ``atomic_save(..., keep_previous=True)`` keeps the file it replaces."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def atomic_save(obj: Any, path: str | Path, *, keep_previous: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        # A crash between the two renames leaves only <name>.prev.pt, which resume=auto also reads.
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete half-written ``.<name>.*.tmp`` files left by a process killed inside ``atomic_save``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path or use trainer.resume=auto")
    try:
        # weights_only=True: the unpickler accepts tensors and plain containers only, so a crafted
        # file fails here instead of running its payload.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely ({first[:200]}): it is truncated, corrupt, "
            "or holds pickled objects other than tensors and plain data"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict of state")
    return state


def rng_state() -> dict[str, Any]:
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np.asarray(np_state["keys"], dtype=np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _to_plain(python_state: tuple) -> list:
    # weights_only loading accepts lists/tuples of ints, so the Mersenne state survives as is.
    version, internal, gauss = python_state
    return [version, list(internal), gauss]
