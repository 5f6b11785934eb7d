"""``metrics.json`` of a finished run, and the objective value(s) a sweeper gets from it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dsconv.config import objective_names
from dsconv.training.run_writer import conv_label

if TYPE_CHECKING:
    from dsconv.training.pipeline import FinalEvaluation, Run

MACS_UNIT = (
    "multiply-accumulates per image of convolutions and fully connected layers (MobileNet convention; "
    "1 fused multiply-add = 1); macs_fvcore_total is fvcore's count, batch norm and pooling included"
)


def collect_metrics(
    run: Run,
    history: list[dict[str, float]],
    test: FinalEvaluation,
    cls: dict[str, Any],
    inference: dict[str, Any],
    diagnosis: dict[str, Any],
) -> dict[str, Any]:
    cfg, complexity, speed = run.cfg, run.writer.complexity, run.parts.speed
    assert complexity is not None
    best_row = next(r for r in history if int(r["epoch"]) == test.best_epoch)
    metrics: dict[str, Any] = {
        "model": str(cfg.model.name),
        "conv": conv_label(cfg.model, "standard"),
        "dataset": run.data.name,
        "seed": int(cfg.trainer.seed),
        "test_accuracy": cls["accuracy"],
        "test_precision_macro": cls["precision_macro"],
        "test_recall_macro": cls["recall_macro"],
        "test_f1_macro": cls["f1_macro"],
        "test_loss": test.result.loss,
        "per_class_f1": cls["per_class_f1"],
        "best_epoch": test.best_epoch,
        "epochs_run": len(history),
        "best_val_acc": best_row["val_acc"],
        "best_val_loss": best_row["val_loss"],
        "params_total": complexity.params.total,
        "params_trainable": complexity.params.trainable,
        "macs_per_image": complexity.macs,
        "macs_fvcore_total": complexity.fvcore_macs,
        "macs_unit": MACS_UNIT,
        "startup_s": run.startup_s,
        "train_time_s": run.trainer.state.train_time_s,
        "mean_epoch_time_s": float(np.mean([r["epoch_time_s"] for r in history])),
        "train_images_per_s": float(np.median([r["images_per_s"] for r in history])),
        "test_eval_time_s": test.time_s,
        # Inference speed of the selected model, measured once here; dsconv-bench measures more.
        "latency_ms_b1": inference.get("latency_ms_b1_median"),
        "latency_ms_b1_p90": inference.get("latency_ms_b1_p90"),
        "throughput_img_s": inference.get("throughput_img_s"),
        "inference_profile": inference,
        "fit_diagnosis": diagnosis,
        "device": str(run.execution.device),
        "world_size": run.execution.world_size,
        "global_batch_size": run.parts.train_batches.batch_size * run.execution.world_size,
        "precision": speed.precision,
        "channels_last": speed.channels_last,
        "label_smoothing": float(cfg.trainer.label_smoothing),
        "eval_hflip": bool(cfg.trainer.eval_hflip),
        "torch_version": torch.__version__,
        "run_dir": str(run.run_dir),
    }
    metrics.update(run.provenance)  # distill / prune / match, when the run had them
    prune = run.provenance.get("prune") or {}
    if prune.get("method") == "unstructured":
        # Zeros are still stored and multiplied on a dense CPU: params_total stays the dense count.
        metrics["params_nonzero"] = int(prune["achieved"])
    return metrics


def objective_value(metrics: dict[str, Any], objective: Any) -> float | list[float]:
    """What the sweeper optimises: one float for a metric name, a list for a list of names (NaN where a
    metric could not be measured, which Optuna records as a failed trial)."""
    values = [_as_float(metrics.get(name)) for name in objective_names(objective)]
    return values[0] if isinstance(objective, str) else values


def _as_float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
