"""Numerical faults, bad input and failing sweep jobs: one clear line, a non-zero exit, nothing lost.

Bad-input cases call the real Hydra entry point (``dsconv.train.main``) in this process — the same code
as the CLI minus interpreter start-up; sweeps run the CLI in a subprocess (``test_resume`` covers signals).
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dsconv.data import DeviceBatches, Normalize
from dsconv.data.datasets import Split
from dsconv.paths import REPO_ROOT
from dsconv.training.checkpoint import load_checkpoint
from dsconv.training.faults import NonFiniteLossError
from dsconv.training.optim import Schedule
from dsconv.training.trainer import CrossEntropyCriterion, Trainer, TrainerSettings
from support import TINY_RUN, cli_env

TRAIN = [sys.executable, str(REPO_ROOT / "scripts" / "train.py")]
FAST = [*TINY_RUN, "tensorboard=false"]
OTHER_DATA = [o for o in FAST if not o.startswith("dataset")]  # TINY_RUN's dataset keys are synthetic-only


# ------------------------------------------------------------------ numerical faults
class Poisoned(nn.Module):
    """Returns NaN logits on the chosen training forward passes (1-based)."""

    def __init__(self, bad_calls: set[int]) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
        self.bad_calls, self.calls = bad_calls, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls in self.bad_calls:
                out = out * float("nan")
        return out


def _trainer(
    tmp_path: Path, bad_calls: set[int], criterion=None, **options
) -> tuple[Trainer, DeviceBatches, DeviceBatches]:
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=gen), torch.arange(64) % 4)
    norm = Normalize((0.5,), (0.5,), "cpu")
    train = DeviceBatches(split, 16, norm, shuffle=True, drop_last=True, generator=gen)  # 4 steps per epoch
    model = Poisoned(bad_calls)
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        Schedule(None, per_epoch=False),
        TrainerSettings(epochs=3, progress=False, **options),
        device=torch.device("cpu"),
        run_dir=tmp_path,
        data_generator=gen,
        criterion=criterion,
    )
    return trainer, train, DeviceBatches(split, 64, norm)


@pytest.mark.parametrize(("every", "last_step"), [(None, 4), (1, 5)])
def test_nan_loss_stops_naming_epoch_step_and_last_good_checkpoint(tmp_path, every, last_step):
    trainer, train, val = _trainer(tmp_path, {6}, checkpoint_every_steps=every or 0)  # epoch 2, step 6
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(train, val)
    message = str(info.value)
    assert "epoch 2, step 6" in message
    assert f"last good checkpoint {tmp_path / 'checkpoints' / 'last.pt'} (step {last_step})" in message
    # The stop policy checks before every checkpoint: none holds weights trained on the NaN.
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["trainer"]["step"] == last_step
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    rows = list(csv.DictReader((tmp_path / "training_log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"]  # what was written before stays


def test_nan_policy_skip_skips_up_to_the_limit(tmp_path):
    trainer, train, val = _trainer(tmp_path / "ok", {3, 6}, nan_policy="skip", max_skipped_steps=2)
    history = trainer.fit(train, val)
    assert len(history) == 3 and trainer.state.skipped_steps == 2 and trainer.state.step == 3 * 4 - 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    trainer, train, val = _trainer(tmp_path / "over", {3, 6}, nan_policy="skip", max_skipped_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 2 .*2 steps skipped.*max_skipped_steps=1"):
        trainer.fit(train, val)


def test_the_training_loss_is_the_injected_criterion_on_the_augmented_batch(tmp_path):
    """The trainer trains on what the criterion returns, given the images the model saw; evaluation is plain CE."""
    calls, inputs = [], []

    def criterion(logits, labels, images):
        loss = CrossEntropyCriterion(label_smoothing=0.3)(logits, labels, images)
        calls.append((images, loss.detach()))
        return loss

    trainer, train, val = _trainer(tmp_path, set(), criterion=criterion)
    trainer.model.register_forward_pre_hook(lambda module, args: inputs.append(args[0]) if module.training else None)
    history = trainer.fit(train, val)
    assert len(calls) == len(inputs) == 3 * 4
    assert all(images is seen for (images, _), seen in zip(calls, inputs))
    for epoch, row in enumerate(history):
        losses = torch.stack([loss for _, loss in calls[4 * epoch : 4 * epoch + 4]])
        assert row["train_loss"] == pytest.approx(losses.mean().item(), rel=1e-6)
    result = trainer.evaluate(val)
    assert result.loss == F.cross_entropy(result.logits, result.labels).item()


# ------------------------------------------------------------------ the CLI, in process
@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run ``dsconv.train.main`` with argv; returns (exit code, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    from dsconv.train import main

    for key in ("DSCONV_OUTPUT_DIR", "DSCONV_DATA_DIR"):
        monkeypatch.setenv(key, cli_env(tmp_path)[key])
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(args: list[str]) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["train.py", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            GlobalHydra.instance().clear()
            torch.use_deterministic_algorithms(False)
        return code, capsys.readouterr().err

    yield run
    for handler in root.handlers[:]:  # Hydra's job logging replaced the root handlers
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def _assert_one_line_failure(code: int, err: str, needle: str, tmp_path: Path) -> None:
    assert code != 0
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], err
    written = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file() and ".hydra" not in p.parts]
    assert not [p for p in written if p.suffix != ".log"], written  # only Hydra's own job log


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optimizer.lr=0", "optimizer.lr=0 must be > 0"),
        ("optimizer.lr=fast", "optimizer.lr='fast' is not a number"),
        ("trainer.batch_size=0", "trainer.batch_size=0 must be >= 1"),
        ("trainer.batch_size=1.5", "trainer.batch_size=1.5 is not an integer"),
        ("model.dropout=1.0", "model.dropout=1.0 is outside [0, 1)"),
        ("dataset.val_size=240", "dataset.val_size=240 must be smaller than dataset.num_train=240"),
        ("trainer.epochs=-1", "trainer.epochs=-1 must be >= 1"),
        ("model.kernel_size=4", "model.kernel_size=4 is even"),
        ("trainer.nan_policy=ignore", "trainer.nan_policy='ignore' is unknown"),
        ("objective=test_accuracy", "objective=test_accuracy cannot be optimised"),
        ("optimizer.lr=nan", "optimizer.lr=nan is not a finite number"),
    ],
)
def test_bad_values_give_one_line_and_write_nothing(cli, tmp_path, override, needle):
    code, err = cli([*FAST, override])
    assert code == 2
    _assert_one_line_failure(code, err, needle, tmp_path)


def test_growth_rate_zero(cli, tmp_path):
    not_model = [o for o in FAST if not o.startswith("model")]
    code, err = cli([*not_model, "model=densenet4", "model.growth_rate=0"])
    _assert_one_line_failure(code, err, "model.growth_rate=0 must be >= 1", tmp_path)


def test_unknown_group_option_lists_the_valid_ones(cli):
    code, err = cli([*FAST, "model=resnet9000"])
    assert code != 0 and "Traceback" not in err
    assert "Could not find 'model/resnet9000'" in err and "mnist_cnn" in err and "densenet4" in err


def test_missing_dataset_offline_says_where_and_how(cli, tmp_path):
    code, err = cli([*OTHER_DATA, "dataset=mnist", "dataset.download=false"])
    where = tmp_path / "data" / "MNIST" / "raw"
    _assert_one_line_failure(code, err, f"MNIST files not found or corrupt in {where}", tmp_path)
    assert "DSCONV_DATA_DIR" in err and "dataset.download=true" in err


def test_dataset_file_failing_its_checksum(cli, tmp_path, tiny_cifar_dir):
    # The fixture's batches are real-format pickles whose md5 is not the official one.
    code, err = cli(
        [
            *OTHER_DATA,
            "dataset=cifar10",
            "dataset.download=false",
            f"paths.data_dir={tiny_cifar_dir}",
            "dataset.val_size=10",
        ]
    )
    _assert_one_line_failure(code, err, "CIFAR10 files not found or corrupt", tmp_path)
    assert "corrupted" in err


def test_output_dir_not_writable(cli, tmp_path, monkeypatch):
    blocker = tmp_path / "outputs_file"
    blocker.write_text("a file, so nothing can be created below it (chmod does not stop root)")
    monkeypatch.setenv("DSCONV_OUTPUT_DIR", str(blocker / "sub"))
    code, err = cli(FAST)
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: output dir {blocker / 'sub'}") and "is a file, not a directory" in err
    assert blocker.is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(cli, tmp_path):
    code, err = cli([*FAST, "trainer.device=cuda"])
    _assert_one_line_failure(code, err, "trainer.device=cuda but no CUDA GPU is visible", tmp_path)


def test_debug_flag_shows_the_traceback(cli):
    code, err = cli([*FAST, "trainer.batch_size=0", "debug=true"])
    assert code != 0 and "Traceback" in err and "ConfigError" in err


def test_nan_in_a_real_run_exits_3_and_keeps_curves(cli, tmp_path, monkeypatch):
    real, calls = F.cross_entropy, []

    def poisoned(*args, **kwargs):  # call 9: epoch 2, step 2 (6 steps per epoch, then 1 validation call)
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 9 else loss

    monkeypatch.setattr(F, "cross_entropy", poisoned)
    code, err = cli([*FAST, "trainer.epochs=3"])
    assert code == 3 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "epoch 2, step 8" in line and "last.pt (step 6)" in line
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").rglob("training_log.csv")]
    assert [r["epoch"] for r in csv.DictReader((run_dir / "training_log.csv").open())] == ["1"]
    assert (run_dir / "curves.png").is_file() and not (run_dir / "metrics.json").exists()


# ------------------------------------------------------------------ sweeps
def _sweep(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRAIN, "-m", *FAST, "trainer.epochs=1", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )


def _check_failure_record(path: Path, override: str) -> None:
    record = json.loads(path.read_text())
    assert {"error", "type", "overrides", "config"} <= set(record)
    assert record["type"] == "ConfigError" and "\n" not in record["error"]
    assert record["error"].startswith(override) and override in record["overrides"]
    assert record["config"]["model"]["kernel_size"] == int(override.split("=")[1])
    assert record["traceback"] is None


@pytest.mark.slow
def test_sweep_with_a_failing_job_finishes_the_others_and_exits_nonzero(tmp_path):
    result = _sweep(tmp_path, ["model.kernel_size=4,3"])
    assert result.returncode == 1, result.stderr[-2000:]
    assert "error: 1 of 2 sweep jobs failed" in result.stderr and "Traceback" not in result.stderr
    (failure,) = (tmp_path / "outputs").rglob("failure.json")
    assert failure.parent.name == "0"
    _check_failure_record(failure, "model.kernel_size=4")
    (metrics,) = (tmp_path / "outputs").rglob("metrics.json")
    assert metrics.parent.name == "1"
    collect = pytest.importorskip("dsconv.report.collect")
    runs = collect.find_runs([failure.parent.parent])
    assert sorted(r.status for r in runs) == ["failed", "ok"]


@pytest.mark.slow
def test_sweep_failures_are_recorded_with_the_joblib_launcher(tmp_path):
    result = _sweep(tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.kernel_size=4,6"])
    assert result.returncode == 1, result.stderr[-2000:]
    assert "error: 2 of 2 sweep jobs failed" in result.stderr
    failures = sorted((tmp_path / "outputs").rglob("failure.json"))
    assert [p.parent.name for p in failures] == ["0", "1"]
    for path, override in zip(failures, ("model.kernel_size=4", "model.kernel_size=6")):
        _check_failure_record(path, override)


# ------------------------------------------------------------------ the two hook points of a run
def test_distillation_and_model_hooks_reach_training_and_metrics(tmp_path, monkeypatch):
    """``distill.teacher`` swaps the training loss (never validation's), ``model.match`` the model builder;
    what each returns about itself lands in metrics.json."""
    import dsconv.compression
    import dsconv.compression.distill
    from dsconv.registry import build_model
    from dsconv.train import train
    from support import compose_config

    calls = []

    def fake_distillation(distill_cfg, data, device):
        assert str(distill_cfg.teacher) == "/teacher/run"
        criterion = CrossEntropyCriterion()

        def recording(logits, labels, images):
            calls.append(images.shape)
            return criterion(logits, labels, images)

        return recording, {"teacher": "/teacher/run", "teacher_test_accuracy": 0.5}

    def fake_build_run_model(cfg, data, act_layer):
        plain = {k: v for k, v in cfg.model.items() if k not in ("match", "match_to")}
        return build_model(plain, data.input_shape, data.num_classes, act_layer), {"by": "macs", "width": 1.0}

    monkeypatch.setattr(dsconv.compression.distill, "build_distillation", fake_distillation)
    monkeypatch.setattr(dsconv.compression, "build_run_model", fake_build_run_model)
    cfg = compose_config([*FAST, "+distill.teacher=/teacher/run", "+model.match=macs", "+model.match_to=mnist_cnn"])
    metrics = train(cfg, tmp_path / "run")
    assert len(calls) == 2 * 6 and all(shape == (32, 1, 16, 16) for shape in calls)  # training batches only
    assert metrics["distill"] == {"teacher": "/teacher/run", "teacher_test_accuracy": 0.5}
    assert metrics["match"] == {"by": "macs", "width": 1.0}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["distill"]["teacher"] == "/teacher/run"
