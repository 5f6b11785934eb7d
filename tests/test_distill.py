"""Knowledge distillation: the loss against a hand computation, a frozen teacher, teacher loading and its errors."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from dsconv.compression.distill import DistillationCriterion, build_distillation, distill_settings, distillation_loss
from dsconv.config_views import config_hash
from dsconv.errors import ConfigError
from dsconv.registry import build_model
from dsconv.training.checkpoint import atomic_save
from support import TINY_RUN, compose_config

TINY_SHAPE, TINY_CLASSES = (1, 16, 16), 10


def tiny_data(**changes) -> SimpleNamespace:
    """What build_distillation reads of a DatasetSplits, for TINY_RUN's synthetic data."""
    return SimpleNamespace(**{"name": "synthetic", "input_shape": TINY_SHAPE, "num_classes": TINY_CLASSES, **changes})


def write_run(run_dir: Path, overrides: list[str] | None = None, *, seed: int = 0, accuracy: float | None = 0.75):
    """A finished run dir as the trainer leaves it: config.yaml, checkpoints/best.pt, metrics.json."""
    cfg = compose_config([*TINY_RUN, *(overrides or [])])
    torch.manual_seed(seed)
    model = build_model(cfg.model, TINY_SHAPE, int(cfg.dataset.get("num_classes", 10)))
    with torch.no_grad():  # non-trivial BN statistics, as a trained model has
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    state = {"model": model.state_dict(), "trainer": {"epoch": 1, "step": 8}, "config_hash": config_hash(cfg)}
    atomic_save(state, run_dir / "checkpoints" / "best.pt")
    if accuracy is not None:
        (run_dir / "metrics.json").write_text(json.dumps({"test_accuracy": accuracy}))
    return cfg, model.eval()


def hand_loss(student, teacher, labels, alpha, temperature) -> float:
    """The Hinton loss written out with math only: mean over the batch of CE and T^2 * KL(p_t || p_s)."""

    def softmax(row, t):
        exps = [math.exp(v / t) for v in row]
        return [e / sum(exps) for e in exps]

    total = 0.0
    for s_row, t_row, y in zip(student, teacher, labels):
        ce = -math.log(softmax(s_row, 1.0)[y])
        p_s, p_t = softmax(s_row, temperature), softmax(t_row, temperature)
        kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
        total += (1 - alpha) * ce + alpha * temperature**2 * kl
    return total / len(labels)


STUDENT = [[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]]
TEACHER = [[1.5, 0.0, -0.5], [-1.0, 0.5, 2.5]]
LABELS = [0, 2]


@pytest.mark.parametrize(("alpha", "temperature"), [(0.5, 4.0), (0.9, 2.0), (0.0, 1.0), (1.0, 3.0)])
def test_loss_equals_hand_computation(alpha, temperature):
    loss = distillation_loss(
        torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS), alpha=alpha, temperature=temperature
    )
    assert loss.item() == pytest.approx(hand_loss(STUDENT, TEACHER, LABELS, alpha, temperature), rel=1e-6)


def test_loss_with_teacher_equal_to_student_is_the_hard_term():
    logits = torch.tensor(STUDENT)
    loss = distillation_loss(logits, logits.clone(), torch.tensor(LABELS), alpha=0.3, temperature=4.0)
    expected = 0.7 * torch.nn.functional.cross_entropy(logits, torch.tensor(LABELS))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_teacher_gets_no_gradient_and_is_not_updated(tmp_path):
    cfg, teacher = write_run(tmp_path / "teacher")
    before = copy.deepcopy(teacher.state_dict())
    criterion = DistillationCriterion(teacher, alpha=0.7, temperature=4.0)
    criterion.train()  # a trainer may switch every module to train mode
    torch.manual_seed(1)
    student = build_model(cfg.model, TINY_SHAPE, TINY_CLASSES).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5, momentum=0.9)
    assert not {id(p) for p in teacher.parameters()} & {id(p) for g in optimizer.param_groups for p in g["params"]}
    student_before = copy.deepcopy(student.state_dict())
    for _ in range(3):
        images, labels = torch.randn(8, *TINY_SHAPE), torch.arange(8) % TINY_CLASSES
        loss = criterion(student(images), labels, images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not criterion.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # weights and BN running statistics alike
    assert any(not torch.equal(t, student_before[n]) for n, t in student.state_dict().items())


def test_build_from_run_dir_and_checkpoint_path(tmp_path):
    cfg, teacher = write_run(tmp_path / "teacher", accuracy=0.8125)
    images = torch.randn(4, *TINY_SHAPE)
    for given in (tmp_path / "teacher", tmp_path / "teacher" / "checkpoints" / "best.pt"):
        criterion, info = build_distillation({"teacher": str(given)}, tiny_data(), "cpu")
        assert info == {
            "teacher": str(tmp_path / "teacher"),
            "teacher_config_hash": config_hash(cfg),
            "teacher_test_accuracy": 0.8125,
            "alpha": 0.5,
            "temperature": 4.0,
        }
        with torch.no_grad():
            assert torch.allclose(criterion.teacher(images), teacher(images), atol=1e-6)


def test_hydra_overrides_compose_with_group_defaults():
    alone = compose_config(["+distill.teacher=/runs/t"])
    assert distill_settings(alone.distill) == {"teacher": "/runs/t", "alpha": 0.5, "temperature": 4.0}
    grouped = compose_config(["+distill=default", "+distill.teacher=/runs/t", "distill.alpha=0.9"])
    assert distill_settings(grouped.distill) == {"teacher": "/runs/t", "alpha": 0.9, "temperature": 4.0}
    assert "distill" not in compose_config([])


def _corrupt(run: Path) -> None:
    (run / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint at all")


BAD_TEACHERS = {
    "missing dir": (lambda run: None, "missing", {}, "does not exist"),
    "no checkpoint": (lambda run: (run / "checkpoints" / "best.pt").unlink(), "", {}, "has no checkpoint"),
    "no config": (lambda run: (run / "config.yaml").unlink(), "", {}, "config.yaml is missing"),
    "corrupt checkpoint": (_corrupt, "", {}, "cannot be loaded safely"),
    "other classes": (lambda run: None, "", {"num_classes": 5}, "predicts 10 classes, the data has 5"),
    "other input shape": (lambda run: None, "", {"input_shape": (3, 16, 16)}, "takes 1x16x16 input"),
    "other dataset": (lambda run: None, "", {"name": "mnist"}, "was trained on synthetic"),
}


@pytest.mark.parametrize("case", sorted(BAD_TEACHERS))
def test_bad_teacher_is_one_line_error_and_writes_nothing(tmp_path, case):
    damage, suffix, data_changes, expected = BAD_TEACHERS[case]
    run = tmp_path / "teacher"
    write_run(run)
    damage(run)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ConfigError) as error:
        build_distillation({"teacher": str(run) + suffix}, tiny_data(**data_changes), "cpu")
    message = str(error.value)
    assert "\n" not in message and message.startswith("distill.teacher=") and expected in message
    assert sorted(tmp_path.rglob("*")) == before


def test_teacher_trained_for_other_classes_is_refused_even_on_unknown_geometry(tmp_path):
    # Synthetic data with 5 classes: the config says so, and the weights do too.
    write_run(tmp_path / "teacher", ["dataset.num_classes=5"])
    with pytest.raises(ConfigError, match="predicts 5 classes, the data has 10"):
        build_distillation({"teacher": str(tmp_path / "teacher")}, tiny_data(), "cpu")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"teacher": None}, "distill.teacher is not set"),
        ({"teacher": "/x", "alpha": 1.5}, "distill.alpha=1.5"),
        ({"teacher": "/x", "temperature": 0}, "distill.temperature=0"),
        ({"teacher": "/x", "temprature": 2}, "distill.temprature is not"),
    ],
)
def test_bad_settings(settings, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        distill_settings(settings)
