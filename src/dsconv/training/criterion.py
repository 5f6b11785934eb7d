"""The training loss as an object: ``criterion(logits, labels, images) -> scalar tensor``.

The trainer calls it under the run's autocast with the batch's augmented images, so a criterion that
needs more than the logits (distillation's frozen teacher) sees exactly what the student saw.
Validation and test never go through it: they are plain cross-entropy on the student's logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dsconv.errors import ConfigError

Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CrossEntropyCriterion:
    """The default training loss: cross-entropy in fp32 (logits are cast up under autocast)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = float(label_smoothing)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        # F.cross_entropy is looked up per call, so tests can patch it to inject faults.
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)


def build_criterion(cfg: DictConfig, data: Any, device: torch.device) -> tuple[Criterion, dict[str, Any] | None]:
    """The run's training loss, and the teacher's identity when it distils (None otherwise).

    Distillation is an optional group (``+distill.teacher=<run dir or checkpoint>``); without a
    teacher the loss is cross-entropy with ``trainer.label_smoothing``.
    """
    if "distill" not in cfg or cfg.distill.teacher is None:
        return CrossEntropyCriterion(float(cfg.trainer.label_smoothing)), None
    try:
        from dsconv.compression.distill import build_distillation
    except ImportError as exc:
        raise ConfigError(
            f"distill.teacher={cfg.distill.teacher} needs dsconv.compression.distill, which this install lacks "
            f"({exc}): drop the distill group or update dsconv"
        ) from exc
    criterion, teacher = build_distillation(cfg.distill, data, device)
    return criterion, teacher
