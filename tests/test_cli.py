"""The real CLI end to end: outputs exist and parse, multirun, and bad input fails cleanly."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsconv.paths import REPO_ROOT
from support import TINY_RUN, cli_env

TRAIN = [sys.executable, str(REPO_ROOT / "scripts" / "train.py")]
RUN_FILES = (
    "config.yaml",
    "training_log.csv",
    "metrics.json",
    "classification_report.json",
    "confusion_matrix.png",
    "sample_predictions.png",
    "curves.png",
    "model_summary.txt",
    "checkpoints/best.pt",
    "checkpoints/last.pt",
)


def _run(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        TRAIN + args, cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=timeout
    )


def _run_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p.parent for p in (tmp_path / "outputs").rglob("metrics.json"))


@pytest.mark.slow
def test_single_run_writes_every_output(tmp_path):
    result = _run(TINY_RUN, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = _run_dirs(tmp_path)
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "test_precision_macro",
        "test_recall_macro",
        "test_f1_macro",
        "params_total",
        "params_trainable",
        "macs_per_image",
        "train_time_s",
        "best_epoch",
        "fit_diagnosis",
        "latency_ms_b1",
        "throughput_img_s",
    ):
        assert key in metrics, key
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["latency_ms_b1"] > 0 and metrics["throughput_img_s"] > 0
    # mnist_cnn, channels [4, 8, 8], hidden 16, 1 input channel: conv+bias and BN per block, then the head.
    convs = (1 * 4 * 9 + 4 + 2 * 4) + (4 * 8 * 9 + 8 + 2 * 8) + (8 * 8 * 9 + 8 + 2 * 8)
    assert metrics["params_total"] == convs + (8 * 16 + 16) + (16 * 10 + 10) == 1274
    rows = list(csv.DictReader((run_dir / "training_log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    report = json.loads((run_dir / "classification_report.json").read_text())
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"])
    for png in ("confusion_matrix.png", "sample_predictions.png", "curves.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["trainer"]["epoch"] == metrics["best_epoch"]
    assert "total params" in (run_dir / "model_summary.txt").read_text()
    # The console gets one line about the model; the table stays in model_summary.txt.
    console = result.stdout + result.stderr
    assert "total params" not in console
    (line,) = [line for line in console.splitlines() if "conv+linear MACs/image" in line]
    assert f"1,274 params, {metrics['macs_per_image']:,} conv+linear MACs/image" in line and "1x16x16" in line
    assert metrics["macs_fvcore_total"] > metrics["macs_per_image"]  # fvcore also counts batch norm
    _check_tensorboard(run_dir / "tensorboard")


def _check_tensorboard(event_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "speed/images_per_s"}
    assert scalars <= set(tags["scalars"])
    assert {"test/confusion_matrix", "test/sample_predictions", "test/curves"} <= set(tags["images"])
    assert any("classification_report" in t for t in tags["tensors"])
    assert any("flop_table" in t for t in tags["tensors"])
    assert acc.Graph() is not None
    plugins = acc.PluginTagToContent("hparams")
    assert plugins, "no hparams record"


@pytest.mark.slow
def test_two_job_multirun_gets_two_dirs(tmp_path):
    args = ["-m", *TINY_RUN, "trainer.epochs=1", "trainer.verbose=true", "model.conv=standard,separable"]
    result = _run(args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = _run_dirs(tmp_path)
    assert len(runs) == 2
    assert (result.stdout + result.stderr).count("total params") == 2  # trainer.verbose: each job's table
    convs = sorted(json.loads((r / "metrics.json").read_text())["conv"] for r in runs)
    assert convs == ["separable", "standard"]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model=nonexistent", "model"),
        ("dataset=imagenet", "dataset"),
        ("optimizer=lion", "optimizer"),
        ("optimizer.lr=0", "optimizer.lr=0 must be > 0"),
        ("trainer.batch_size=0", "trainer.batch_size=0 must be >= 1"),
        ("model.dropout=1.5", "model.dropout=1.5 is outside [0, 1)"),
        ("trainer.epochs=0", "trainer.epochs=0 must be >= 1"),
        ("model.name=nonexistent", "unknown model 'nonexistent'"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, override, needle):
    result = _run([*TINY_RUN, override], tmp_path, timeout=120)
    assert result.returncode != 0
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "outputs").rglob("training_log.csv"))


def test_help_lists_groups(tmp_path):
    result = _run(["--help"], tmp_path, timeout=120)
    assert result.returncode == 0
    for group in ("dataset:", "model:", "optimizer:", "scheduler:", "activation:", "trainer:"):
        assert group in result.stdout


# Runs the real entry point and reports, at exit, which heavy packages were imported.
IMPORT_PROBE = """
import atexit, sys
heavy = ("torch", "torchvision", "sklearn", "matplotlib", "tensorboard", "fvcore")
atexit.register(lambda: print("imported:" + ",".join(m for m in heavy if m in sys.modules), file=sys.stderr))
sys.argv = ["dsconv-train", *sys.argv[1:]]
from dsconv.train import main
main()
"""


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["--cfg", "job", "model=depthwise", "optimizer=sgd"]])
def test_help_and_cfg_job_import_no_training_stack(tmp_path, args):
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("imported:")]
    assert line == "imported:", line
    assert ("== Config groups ==" if args == ["--help"] else "optimizer:") in result.stdout


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(root)) + "/": (0, 0, b"") for p in root.rglob("*") if p.is_dir()}


def _earlier_outputs(tmp_path: Path) -> tuple[Path, Path]:
    """An outputs tree holding an earlier run and an earlier sweep (their files need not be real)."""
    run = tmp_path / "outputs" / "runs" / "2024-01-01" / "00-00-00_mnist_cnn_abc123"
    sweep = tmp_path / "outputs" / "multirun" / "2024-01-01" / "00-00-00_def456"
    for directory in (run, sweep / "0"):
        (directory / "checkpoints").mkdir(parents=True)
        (directory / "metrics.json").write_text('{"test_accuracy": 0.5}\n')
        (directory / "checkpoints" / "best.pt").write_bytes(b"earlier checkpoint")
        (directory / "training_log.csv").write_text("epoch\n1\n")
    (sweep / "report.md").write_text("# earlier report\n")
    return run, sweep


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["trainer.compile=abc"], "trainer.compile='abc' is not a boolean"),
        (["+distill.temperature=inf"], "distill.temperature=inf is not a finite number"),
        (["trainer.early_stopping=5"], "trainer.early_stopping=5 is not a group of keys"),
        (["optimizer.lr=${nope}"], "optimizer.lr cannot be resolved"),
        (["scheduler.warmup_epochs=-1", "trainer.resume=auto"], "scheduler.warmup_epochs=-1 must be >= 0"),
        (["-m", "+hparams_search=optuna", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 must be an integer"),
    ],
)
def test_refused_input_changes_nothing_on_disk(tmp_path, args, needle):
    run, sweep = _earlier_outputs(tmp_path)
    target = [f"hydra.sweep.dir={sweep}"] if "-m" in args else [f"hydra.run.dir={run}"]
    before = _snapshot(tmp_path / "outputs")
    flags, overrides = [a for a in args if a == "-m"], [a for a in args if a != "-m"]
    result = _run([*flags, *TINY_RUN, *overrides, *target], tmp_path, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert _snapshot(tmp_path / "outputs") == before


@pytest.mark.slow
def test_a_sweep_optimising_a_test_metric_is_refused_before_any_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [*TRAIN, "-m", "+hparams_search=optuna", "objective=test_accuracy", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: objective=test_accuracy cannot be optimised: use a validation or cost metric (best_val_acc, "
        "best_val_loss, macs_per_image, params_total, latency_ms_b1), never a test metric"
    ]
    assert not sweep_dir.exists()


@pytest.mark.parametrize(
    ("argv", "env", "skips_teardown"),
    [
        (["experiment=mnist_speedrun"], {}, True),
        (["experiment=mnist_speedrun"], {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, True),
        (["-m", "trainer.seed=0,1"], {}, False),
        (["--multirun", "trainer.seed=0,1"], {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, False),
    ],
)
def test_the_entry_point_skips_interpreter_teardown_except_for_sweeps(monkeypatch, argv, env, skips_teardown):
    import dsconv.train as train_module

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    exits = []
    monkeypatch.setattr(train_module, "main", lambda: None)
    monkeypatch.setattr(train_module.os, "_exit", exits.append)
    monkeypatch.setattr(train_module.logging, "shutdown", lambda: None)  # pytest's own handlers stay open
    monkeypatch.setattr(train_module.sys, "argv", ["dsconv-train", *argv])
    train_module.cli()
    assert exits == ([0] if skips_teardown else [])
