"""The test metrics of a run come from checkpoints/best.pt (the best validation epoch), never from last.pt."""

from __future__ import annotations

import json

import pytest
import torch

from support import TINY_RUN, compose_config

# min_delta above any possible accuracy gain: epoch 1 stays the best by validation, so the final
# weights (epoch 3, last.pt) are not the selected ones and the two checkpoints differ.
SELECTION_RUN = [
    *TINY_RUN,
    "trainer.epochs=3",
    "trainer.early_stopping.monitor=val_acc",
    "trainer.early_stopping.patience=0",
    "trainer.early_stopping.min_delta=1.0",
    "optimizer.lr=0.01",
    "tensorboard=false",
    "profile_inference=false",
]


def _evaluate_on_test(cfg, checkpoint: dict, scratch_dir):
    """Test loss and accuracy of a checkpoint's weights, through the same data pipeline as the run."""
    from dsconv.training.pipeline import build_run

    run = build_run(cfg, scratch_dir)
    run.model.load_state_dict(checkpoint["model"])
    result = run.trainer.evaluate(run.parts.test_batches)
    return result.loss, result.accuracy


def test_test_metrics_come_from_best_checkpoint(tmp_path):
    from dsconv.train import train

    cfg = compose_config(SELECTION_RUN)
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (metrics["best_epoch"], best["trainer"]["epoch"], last["trainer"]["epoch"]) == (1, 1, 3)

    best_loss, best_acc = _evaluate_on_test(compose_config(SELECTION_RUN), best, tmp_path / "eval_best")
    last_loss, _ = _evaluate_on_test(compose_config(SELECTION_RUN), last, tmp_path / "eval_last")
    assert metrics["test_loss"] == pytest.approx(best_loss, rel=1e-6, abs=1e-7)
    assert metrics["test_accuracy"] == pytest.approx(best_acc, abs=1e-6)  # float32 vs float64; one image is 0.0125
    # The check discriminates: two more epochs of training moved the test loss well beyond the tolerance.
    assert abs(last_loss - best_loss) > 1e-3, (last_loss, best_loss)
    assert metrics["test_loss"] != pytest.approx(last_loss, rel=1e-6, abs=1e-7)
    report = json.loads((run_dir / "classification_report.json").read_text())
    assert report["accuracy"] == pytest.approx(best_acc, abs=1e-6)  # float32 vs float64; one image is 0.0125
    # The validation numbers reported are the best epoch's too.
    assert metrics["best_val_acc"] == pytest.approx(best["trainer"]["history"][0]["val_acc"])
