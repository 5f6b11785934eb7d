"""``TrainerSettings``: how the epoch loop runs, as one small object instead of a row of keyword arguments."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

NAN_POLICIES = ("stop", "skip")


@dataclass(frozen=True)
class TrainerSettings:
    """``from_config`` fills every field from the ``trainer`` group (the YAML holds the defaults); the
    defaults here are for library use (tests, benchmarks) and mean "off"."""

    epochs: int
    precision: str = "fp32"
    grad_clip: float | None = None
    compile: bool = False
    eval_hflip: bool = False  # flip test-time augmentation in validation and test
    progress: bool = True
    checkpoint_every_steps: int = 0  # 0: checkpoints at epoch ends only
    nan_policy: str = "stop"
    max_skipped_steps: int = 0
    handle_signals: bool = True
    resume_hint: str | None = None  # the command shown when a signal interrupts training

    def __post_init__(self) -> None:
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")

    @classmethod
    def from_config(cls, tcfg: Any, precision: str, compile_model: bool, resume_hint: str) -> TrainerSettings:
        """``precision``/``compile_model``: as resolved for the device (``trainer.fast``, see ``SpeedSettings``)."""
        return cls(
            epochs=int(tcfg.epochs),
            precision=precision,
            grad_clip=None if tcfg.grad_clip is None else float(tcfg.grad_clip),
            compile=compile_model,
            eval_hflip=bool(tcfg.eval_hflip),
            progress=bool(tcfg.progress_bar),
            checkpoint_every_steps=int(tcfg.checkpoint_every_steps or 0),
            nan_policy=str(tcfg.nan_policy),
            max_skipped_steps=int(tcfg.max_skipped_steps),
            resume_hint=resume_hint,
        )


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
