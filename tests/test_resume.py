"""Exact resume: killed (SIGKILL, also inside a checkpoint write), preempted (SIGTERM/SIGINT) and
corrupted runs continue to bit-identical weights and metrics; unsafe or mismatched checkpoints are refused.

Faults are injected by a tiny wrapper around the real CLI (``FAULT_RUNNER``): it counts calls of
``F.cross_entropy`` (one per training step, one per evaluation) or ``torch.save`` and sends the signal at a
chosen call, so every kill point is exact and reproducible. With 200 training images, batch 32 and
``drop_last``, an epoch is 6 steps: calls 1-6 train epoch 1, call 7 validates it, 8-13 train epoch 2, ...
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsconv.errors import ConfigError
from dsconv.train import train
from dsconv.training.checkpoint import CheckpointError, load_checkpoint
from dsconv.training.resume import find_resume_point
from support import TINY_RUN, cli_env, compose_config, iter_tensors

RUN = [
    *TINY_RUN,
    "trainer.epochs=3",
    "tensorboard=false",
    "trainer.deterministic=true",
    "trainer.checkpoint_every_steps=2",
]
TIME_KEYS = {
    "startup_s",
    "train_time_s",
    "mean_epoch_time_s",
    "train_images_per_s",
    "test_eval_time_s",
    "run_dir",
    "epoch_time_s",
    "images_per_s",
    "latency_ms_b1",
    "latency_ms_b1_p90",
    "throughput_img_s",
    "inference_profile",
}

FAULT_RUNNER = """
import os, signal, sys
import torch
import torch.nn.functional as F

AT, KIND = int(os.environ["FAULT_AT"]), os.environ["FAULT_KIND"]
calls = 0
if KIND == "kill_in_save":
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        global calls
        calls += 1
        real_save(obj, f, *args, **kwargs)
        if calls == AT:  # the temporary file is written, the rename has not happened
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save
else:
    real_ce, signum = F.cross_entropy, getattr(signal, KIND)

    def cross_entropy(*args, **kwargs):
        global calls
        calls += 1
        if calls == AT:
            os.kill(os.getpid(), signum)
        return real_ce(*args, **kwargs)

    F.cross_entropy = cross_entropy
from dsconv.train import main
main()
"""


def _faulty_run(tmp_path: Path, run_dir: Path, kind: str, at: int, extra: list[str]) -> subprocess.CompletedProcess:
    runner = tmp_path / "fault_runner.py"
    runner.write_text(FAULT_RUNNER)
    env = cli_env(tmp_path) | {"FAULT_KIND": kind, "FAULT_AT": str(at)}
    return subprocess.run(
        [sys.executable, str(runner), *RUN, *extra, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _train(run_dir: Path, extra: list[str] = ()) -> dict:
    try:
        return train(compose_config([*RUN, *extra]), run_dir)
    finally:
        torch.use_deterministic_algorithms(False)  # seed_everything set it process-wide


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """One uninterrupted run: the reference every interrupted run must match bit for bit."""
    run_dir = tmp_path_factory.mktemp("baseline") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(run_dir)
    finally:
        torch.set_num_threads(threads)
    return run_dir


def assert_same_run(run_dir: Path, reference: Path) -> None:
    for name in ("last.pt", "best.pt"):
        got = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        want = torch.load(reference / "checkpoints" / name, weights_only=True)
        parts = ("model", "optimizer", "rng", "data_generator")
        pairs = dict(iter_tensors({k: want[k] for k in parts}))
        got_tensors = dict(iter_tensors({k: got[k] for k in parts}))
        assert got_tensors.keys() == pairs.keys() and len(pairs) > 20
        for key, tensor in pairs.items():
            assert torch.equal(got_tensors[key], tensor), f"{name}{key} differs"
        for key in ("scheduler", "early_stopping", "scaler"):
            assert got[key] == want[key], f"{name} {key} differs"
        assert got["trainer"]["step"] == want["trainer"]["step"]
    metrics = [
        {k: v for k, v in json.loads((d / "metrics.json").read_text()).items() if k not in TIME_KEYS}
        for d in (run_dir, reference)
    ]
    assert metrics[0] == metrics[1]
    logs = [
        [
            {k: v for k, v in row.items() if k not in TIME_KEYS}
            for row in csv.DictReader((d / "training_log.csv").open())
        ]
        for d in (run_dir, reference)
    ]
    assert [int(r["epoch"]) for r in logs[0]] == [1, 2, 3]
    assert logs[0] == logs[1]


@pytest.mark.slow
def test_sigkill_mid_step_and_mid_checkpoint_write_then_resume_is_bit_identical(tmp_path, baseline):
    run_dir = tmp_path / "run"
    # 1. Killed inside step 4 of epoch 1: only the step-2 checkpoint exists.
    result = _faulty_run(tmp_path, run_dir, "SIGKILL", 4, [])
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["trainer"]["step"] == 2 and state["in_epoch"]["batches_done"] == 2
    # 2. Resumed, then killed inside the 3rd checkpoint write (epoch 1's last.pt): a half-written temp file.
    result = _faulty_run(tmp_path, run_dir, "kill_in_save", 3, ["trainer.resume=auto"])
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert list((run_dir / "checkpoints").glob(".last.pt.*.tmp"))
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["trainer"]["step"] == 4
    # Epoch 1's log row was written before the kill: the resume must not log epoch 1 twice.
    assert [r["epoch"] for r in csv.DictReader((run_dir / "training_log.csv").open())] == ["1"]
    # 3. Resumed to the end (the stale temp file is removed).
    _train(run_dir, ["trainer.resume=auto"])
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    assert_same_run(run_dir, baseline)


@pytest.mark.slow
def test_sigterm_and_sigint_checkpoint_and_resume_bit_identical(tmp_path, baseline):
    run_dir = tmp_path / "run"
    # Epoch-end checkpoints only: the one written on the signal is the only mid-epoch state.
    extra = ["trainer.checkpoint_every_steps=null"]
    result = _faulty_run(tmp_path, run_dir, "SIGTERM", 9, extra)  # during step 8 (epoch 2)
    assert result.returncode == 128 + signal.SIGTERM
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "interrupted by SIGTERM at epoch 2, step 8" in lines[0]
    assert f"hydra.run.dir={run_dir} trainer.resume=auto" in lines[0] and "Traceback" not in result.stderr
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["trainer"]["step"] == 8 and state["in_epoch"]["batches_done"] == 2
    # Ctrl-C while validating epoch 2 (call 5 after resuming at step 8): the epoch is finished first.
    result = _faulty_run(tmp_path, run_dir, "SIGINT", 5, [*extra, "trainer.resume=auto"])
    assert result.returncode == 128 + signal.SIGINT, result.stderr[-2000:]
    assert "interrupted by SIGINT at the end of epoch 2" in result.stderr
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (state["trainer"]["epoch"], state["in_epoch"]) == (2, None)
    assert [r["epoch"] for r in csv.DictReader((run_dir / "training_log.csv").open())] == ["1", "2"]
    _train(run_dir, [*extra, "trainer.resume=auto"])
    assert_same_run(run_dir, baseline)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after fit


def test_corrupt_last_checkpoint_falls_back_under_auto(tmp_path, baseline, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated, e.g. a partial copy
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        find_resume_point(str(last), run_dir)
    point = find_resume_point("auto", run_dir)
    assert point is not None and point.path.name in ("last.prev.pt", "best.pt")
    assert "skipping unusable checkpoint" in caplog.text
    # Resuming from an older good checkpoint (mid epoch 3) re-trains the tail and lands on the same weights.
    # A best.pt of epoch 3 is newer than last.prev.pt and would be picked: remove it (the resumed run
    # rewrites it). An older one stays: nothing after last.prev.pt rewrites it.
    best = run_dir / "checkpoints" / "best.pt"
    if load_checkpoint(best)["trainer"]["epoch"] == 3:
        best.unlink()
    assert find_resume_point("auto", run_dir).path.name == "last.prev.pt"
    _train(run_dir, ["trainer.resume=auto"])
    assert_same_run(run_dir, baseline)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling would create the marker file


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        find_resume_point(str(path), tmp_path / "run")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: the payload is live when unpickled unsafely
    assert marker.exists()


def test_resume_with_changed_training_config_names_the_keys(tmp_path, baseline):
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError) as info:
        _train(run_dir, ["trainer.resume=auto", "optimizer.lr=0.01", "model.hidden=32", "trainer.progress_bar=true"])
    message = str(info.value)
    assert "optimizer.lr (0.001 -> 0.01)" in message and "model.hidden (16 -> 32)" in message
    assert "progress_bar" not in message and "\n" not in message
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # nothing written over
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        _train(run_dir)  # resume=null into a used run dir


def test_resume_from_checkpoint_path_into_new_run_dir(tmp_path, baseline):
    run_dir = tmp_path / "new"
    _train(run_dir, [f"trainer.resume={baseline / 'checkpoints' / 'last.prev.pt'}"])
    assert_same_run(run_dir, baseline)


def test_deterministic_runs_are_identical(tmp_path, baseline):
    _train(tmp_path / "again")
    assert_same_run(tmp_path / "again", baseline)
