"""Early stopping: which epochs count as improvements, when training stops, which epoch is the best."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict

import pytest
import torch

from dsconv.training.state import EarlyStopping
from support import TINY_RUN, compose_config


def _feed(stopper: EarlyStopping, values: list[float], key: str | None = None) -> tuple[list[bool], int | None]:
    """Improvement flags per epoch and the epoch after which training stops (None: it never does)."""
    flags = []
    for epoch, value in enumerate(values, start=1):
        flags.append(stopper.update({key or stopper.monitor: value}, epoch))
        if stopper.should_stop:
            return flags, epoch
    return flags, None


def test_val_acc_stops_after_patience_epochs_without_improvement():
    stopper = EarlyStopping("val_acc", patience=2)
    flags, stopped = _feed(stopper, [0.5, 0.6, 0.6, 0.59, 0.9])
    # An equal value is no improvement; the 0.9 of epoch 5 is never seen.
    assert (flags, stopped) == ([True, True, False, False], 4)
    assert (stopper.best, stopper.best_epoch, stopper.bad_epochs) == (0.6, 2, 2)


def test_val_loss_is_minimised_and_an_improvement_resets_the_count():
    stopper = EarlyStopping("val_loss", patience=3)
    flags, stopped = _feed(stopper, [1.0, 0.9, 0.95, 0.91, 0.8, 0.85, 0.81, 0.82])
    assert stopper.mode == "min"
    assert (flags, stopped) == ([True, True, False, False, True, False, False, False], 8)
    assert (stopper.best, stopper.best_epoch) == (0.8, 5)


def test_min_delta_is_measured_from_the_best_value_and_is_strict():
    stopper = EarlyStopping("val_acc", patience=0, min_delta=0.05)
    flags, stopped = _feed(stopper, [0.5, 0.54, 0.56, 0.60, 0.66])
    # 0.54 is +0.04 (no); 0.56 is +0.06 over 0.5 (yes); 0.60 is +0.04 over 0.56 (no); 0.66 is +0.06 (yes).
    assert (flags, stopped) == ([True, False, True, False, True], None)
    assert stopper.best_epoch == 5
    exact = EarlyStopping("val_loss", patience=1, min_delta=0.25)
    assert _feed(exact, [1.0, 0.75]) == ([True, False], 2)  # exactly min_delta better is not enough


def test_monitor_selects_which_metric_is_read():
    rows = [{"val_acc": 0.5, "val_loss": 1.0}, {"val_acc": 0.7, "val_loss": 1.2}, {"val_acc": 0.8, "val_loss": 1.5}]
    by_loss, by_acc = EarlyStopping("val_loss", patience=2), EarlyStopping("val_acc", patience=2)
    for epoch, row in enumerate(rows, start=1):
        by_loss.update(row, epoch)
        by_acc.update(row, epoch)
    assert (by_loss.best_epoch, by_loss.should_stop) == (1, True)
    assert (by_acc.best_epoch, by_acc.should_stop) == (3, False)


def test_patience_zero_never_stops():
    stopper = EarlyStopping("val_acc", patience=0)
    flags, stopped = _feed(stopper, [0.9] + [0.1] * 50)
    assert flags == [True] + [False] * 50
    assert stopped is None and stopper.bad_epochs == 50 and stopper.best_epoch == 1


def test_state_survives_a_checkpoint_round_trip():
    stopper = EarlyStopping("val_loss", patience=3, min_delta=0.01)
    _feed(stopper, [1.0, 0.8, 0.85])
    restored = EarlyStopping(**asdict(stopper))
    assert restored == stopper
    assert _feed(restored, [0.9, 0.9], key="val_loss") == ([False, False], 2)  # continues the count: 1 + 2 = 3


def test_a_run_stops_at_the_right_epoch_and_records_the_best(tmp_path):
    """End to end: min_delta larger than any accuracy gain makes epoch 1 the only improvement, so
    patience=2 must stop the run after epoch 3 of 10, with epoch 1 as the best."""
    from dsconv.train import train

    overrides = [
        *TINY_RUN,
        "trainer.epochs=10",
        "trainer.early_stopping.monitor=val_acc",
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.min_delta=1.0",
        "tensorboard=false",
        "profile_inference=false",
    ]
    run_dir = tmp_path / "run"
    metrics = train(compose_config(overrides), run_dir)
    rows = list(csv.DictReader((run_dir / "training_log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert (saved["best_epoch"], saved["epochs_run"]) == (1, 3) == (metrics["best_epoch"], metrics["epochs_run"])
    assert saved["best_val_acc"] == pytest.approx(float(rows[0]["val_acc"]))
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (best["trainer"]["epoch"], last["trainer"]["epoch"]) == (1, 3)
    assert last["early_stopping"]["bad_epochs"] == 2
