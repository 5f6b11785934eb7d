"""Knowledge distillation (Hinton et al. 2015): a frozen teacher's softened logits as extra targets.

The criterion runs the teacher on the very batch the student trains on (same augmentation, same
autocast context), so the two see identical images. It is called from the training step only:
validation and test evaluation use plain cross-entropy, so the teacher never influences selection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsconv.compression.runs import group_defaults, load_run_model, resolve_run, run_identity
from dsconv.errors import ConfigError

log = logging.getLogger(__name__)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``(1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's whatever T
    is (the soft gradients shrink as 1/T^2). Both logits are promoted to fp32: under bf16 autocast a
    softmax of logits / T loses most of the teacher's small probabilities, which carry the signal.
    """
    student = student_logits.float()
    teacher = teacher_logits.detach().float()
    hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


class DistillationCriterion(nn.Module):
    """``criterion(logits, labels, images) -> loss`` for the training step, with a frozen teacher.

    The teacher is a submodule (so ``.to(device)`` moves it) but its parameters have
    ``requires_grad=False`` and are never handed to the optimizer, and ``train()`` keeps it in eval
    mode: its BatchNorm statistics and dropout stay as they were when it was selected.
    """

    def __init__(self, teacher: nn.Module, *, alpha: float, temperature: float, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.teacher = teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.label_smoothing = float(label_smoothing)

    def train(self, mode: bool = True) -> DistillationCriterion:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return distillation_loss(
            logits,
            teacher_logits,
            labels,
            alpha=self.alpha,
            temperature=self.temperature,
            label_smoothing=self.label_smoothing,
        )


def distill_settings(distill_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``distill`` keys over conf/distill/default.yaml, checked: ``+distill.teacher=X`` alone is enough."""
    settings = {**group_defaults("distill"), **dict(distill_cfg or {})}
    unknown = sorted(set(settings) - set(group_defaults("distill")))
    if unknown:
        raise ConfigError(f"distill.{unknown[0]} is not a distillation key: use teacher, alpha, temperature")
    if not settings.get("teacher"):
        raise ConfigError("distill.teacher is not set: give +distill.teacher=<finished run dir or its best.pt>")
    alpha = settings["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distill.alpha={alpha!r} is outside [0, 1]: use a weight such as 0.5")
    temperature = settings["temperature"]
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 < temperature < float("inf"):
        raise ConfigError(f"distill.temperature={temperature!r} must be > 0: use e.g. 4.0")
    settings["alpha"], settings["temperature"] = float(alpha), float(temperature)
    return settings


def build_distillation(
    distill_cfg: Mapping[str, Any], data: Any, device: torch.device | str
) -> tuple[DistillationCriterion, dict[str, Any]]:
    """Load ``distill.teacher`` (a run dir or a checkpoint inside one), check it fits ``data``, freeze it.

    Every failure (missing or corrupt checkpoint, no config.yaml, other classes, other input shape,
    another dataset) is a one-line ``ConfigError`` naming ``distill.teacher``, raised before the
    caller writes anything.
    """
    settings = distill_settings(distill_cfg)
    run = resolve_run(settings["teacher"], key="distill.teacher")
    teacher = load_run_model(
        run.run_dir,
        device,
        checkpoint=run.checkpoint,
        expect_input_shape=tuple(data.input_shape),
        expect_num_classes=int(data.num_classes),
        expect_dataset=str(data.name),
        key="distill.teacher",
    )
    criterion = DistillationCriterion(teacher, alpha=settings["alpha"], temperature=settings["temperature"]).to(device)
    identity = run_identity(run)
    info = {
        "teacher": str(run.run_dir),
        "teacher_config_hash": identity["config_hash"],
        "teacher_test_accuracy": identity["test_accuracy"],
        "alpha": settings["alpha"],
        "temperature": settings["temperature"],
    }
    log.info("distilling from %s (test accuracy %s)", run.run_dir, identity["test_accuracy"])
    return criterion, info
