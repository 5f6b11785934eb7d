"""Faults during training: preemption signals and non-finite losses, each ending in a clear message.

SIGTERM (SLURM preemption, ``kill``) and SIGINT (Ctrl-C) only set a flag; the training loop polls it
after each optimizer step, writes a checkpoint there and raises ``TrainingInterrupted``, so the
checkpoint resumes to exactly the weights an uninterrupted run would have. A second Ctrl-C stops at
once (the last checkpoint on disk is still whole: writes are atomic).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from dsconv.errors import DsconvError


class TrainingInterrupted(DsconvError):
    """Training stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        # The shell convention for "terminated by signal N", so schedulers see a killed job.
        self.exit_code = 128 + signum


class NonFiniteLossError(DsconvError):
    """The loss became NaN or Inf (or too many steps had to be skipped)."""

    exit_code = 3


class GracefulStop:
    """Context manager that turns SIGTERM/SIGINT into ``self.signum`` while it is active.

    Previous handlers are restored on exit, so code around ``Trainer.fit`` (tests, notebooks,
    sweepers) keeps its own signal behaviour. Outside the main thread Python cannot install
    handlers; there the context does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "-"

    def __enter__(self) -> GracefulStop:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user does not want to wait for the step
        # Only a flag: logging or writing here could re-enter code the main thread is inside of.
        self.signum = signum
