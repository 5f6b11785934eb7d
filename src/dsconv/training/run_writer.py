"""Everything a run writes besides checkpoints and the training log: one object, told when the run
starts, after each epoch, when it fails and when it ends.

Only rank 0 writes: the other ranks of a data-parallel run get the silent ``RunCallback``. Heavy
imports (TensorBoard, fvcore, matplotlib, scikit-learn's report helpers) happen here, when the file
that needs them is written, so neither ``--help`` nor a failing start pays for them. At the end
``metrics.json`` is on disk before any figure is drawn.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from dsconv.data import DatasetSplits
from dsconv.evaluation.complexity import ParamCount
from dsconv.training.state import EvalResult

log = logging.getLogger("dsconv")

# metrics.json keys that become the HParams table's metric columns (as scalars ``final/<key>``)
HPARAM_METRICS = (
    "test_accuracy",
    "test_f1_macro",
    "best_val_acc",
    "best_epoch",
    "train_time_s",
    "macs_per_image",
    "params_total",
    "latency_ms_b1",
)


@dataclass(frozen=True)
class ModelComplexity:
    params: ParamCount
    macs: int  # conv + linear multiply-accumulates per image (MobileNet convention)
    fvcore_macs: int | None  # fvcore's total (batch norm and pooling included), None if it could not trace
    summary: str  # the layer-by-layer table
    flop_table: str  # fvcore's per-module table


def describe_model(model: nn.Module, input_shape: tuple[int, ...]) -> ModelComplexity:
    """Parameters, MACs and the model tables, from one hooked forward pass and one fvcore trace."""
    from dsconv.evaluation import complexity

    with warnings.catch_warnings():
        # Importing fvcore runs torch.jit.script, which warns that it is deprecated: two lines of noise
        # on every run's console that the user can do nothing about.
        warnings.filterwarnings("ignore", message=".*torch.jit.*", category=FutureWarning)
        info = complexity.describe(model, input_shape)
    return ModelComplexity(info.params, info.macs, info.fvcore_macs, info.summary, info.flop_table)


class RunCallback:
    """The hooks a run calls; this base does nothing (the ranks of a data-parallel run other than 0)."""

    complexity: ModelComplexity | None = None

    def on_start(self, model: nn.Module, data: DatasetSplits, example: torch.Tensor, resume_epoch: int | None) -> None:
        pass

    def on_epoch_end(self, row: dict[str, float]) -> None:
        pass

    def on_failure(self, history: list[dict[str, float]]) -> None:
        pass

    def on_end(
        self, metrics: dict[str, Any], cls: dict[str, Any], history: list[dict[str, float]], test: EvalResult
    ) -> None:
        pass


class RunWriter(RunCallback):
    """``config.yaml``, ``model_summary.txt``, TensorBoard, ``metrics.json`` and the figures of one run dir."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.tensorboard: Any = None
        self.data: DatasetSplits | None = None
        self.model: nn.Module | None = None
        self.example: torch.Tensor | None = None
        self._board_args: tuple[int | None, bool] | None = None

    def on_start(self, model: nn.Module, data: DatasetSplits, example: torch.Tensor, resume_epoch: int | None) -> None:
        cfg, self.data, self.model = self.cfg, data, model
        (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        self.complexity = info = describe_model(model, data.input_shape)
        (self.run_dir / "model_summary.txt").write_text(info.summary + "\n\n" + info.flop_table + "\n")
        shape = "x".join(map(str, data.input_shape))
        log.info(
            "model %s (conv=%s) on %s %s: %s params, %s conv+linear MACs/image (layer table: %s)",
            cfg.model.name,
            conv_label(cfg.model, "-"),
            data.name,
            shape,
            f"{info.params.total:,}",
            f"{info.macs:,}",
            self.run_dir / "model_summary.txt",
        )
        if cfg.trainer.verbose:
            log.info("\n%s", info.summary)
        self.example = example
        if cfg.tensorboard:  # opened at the first epoch's end (see _board)
            self._board_args = (resume_epoch + 1 if resume_epoch is not None else None, resume_epoch is None)

    def _board(self) -> Any:
        """The run's SummaryWriter, opened on first use: after the first epoch, not before the first
        step, so importing TensorBoard (~0.2 s; a background thread does it while training runs) is
        not start-up. On resume, events past the checkpoint's epoch are hidden so curves do not fold back.
        """
        if self.tensorboard is None and self._board_args is not None:
            from torch.utils.tensorboard import SummaryWriter

            purge, fresh = self._board_args
            self._board_args = None
            self.tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)
            if fresh:  # a resumed run keeps the records of its first start
                from dsconv.config_views import flat_hparams
                from dsconv.evaluation.run_outputs import log_scalar_layout, log_session_start

                log_scalar_layout(self.tensorboard)
                log_session_start(self.tensorboard, flat_hparams(self.cfg))  # the HParams row shows while it trains
        return self.tensorboard

    def on_epoch_end(self, row: dict[str, float]) -> None:
        writer = self._board()
        if writer is None:
            return
        epoch = int(row["epoch"])
        for key in ("train_loss", "val_loss"):
            writer.add_scalar(f"loss/{key.split('_')[0]}", row[key], epoch)
        for key in ("train_acc", "val_acc"):
            writer.add_scalar(f"accuracy/{key.split('_')[0]}", row[key], epoch)
        writer.add_scalar("lr", row["lr"], epoch)
        writer.add_scalar("speed/images_per_s", row["images_per_s"], epoch)
        writer.add_scalar("speed/epoch_time_s", row["epoch_time_s"], epoch)
        writer.flush()

    def on_failure(self, history: list[dict[str, float]]) -> None:
        """A diverged run still leaves its curves up to the last good epoch (training_log.csv stays too)."""
        if self._board() is not None:  # the HParams row says the run failed instead of looking unfinished
            from dsconv.evaluation.run_outputs import log_session_end

            log_session_end(self.tensorboard, {}, int(history[-1]["epoch"]) if history else 0, succeeded=False)
            self.tensorboard.close()
            self.tensorboard = None
        if not history:
            return
        try:
            from dsconv.evaluation.plots import curves_figure, save_figure

            figure = curves_figure(history, None, f"{self.cfg.model.name} (stopped: non-finite loss)")
            save_figure(figure, self.run_dir / "curves.png")
        except Exception as exc:  # the figure is a courtesy; the error being raised matters more
            log.warning("could not draw curves.png: %s", exc)

    def on_end(
        self, metrics: dict[str, Any], cls: dict[str, Any], history: list[dict[str, float]], test: EvalResult
    ) -> None:
        from dsconv.evaluation.run_outputs import write_figures, write_json

        write_json(self.run_dir / "metrics.json", metrics)
        write_json(self.run_dir / "classification_report.json", cls["report"])
        write_json(self.run_dir / "confusion_matrix.json", cls["confusion_matrix"])
        assert self.data is not None
        write_figures(
            self.run_dir,
            history=history,
            best_epoch=int(metrics["best_epoch"]),
            confusion=cls["confusion_matrix"],
            classes=self.data.classes,
            test_images=self.data.test.images,
            test_labels=self.data.test.labels,
            test_logits=test.logits,
            title=f"{self.cfg.model.name} ({metrics['conv']})",
            writer=self._board(),
        )
        if self.tensorboard is not None:
            self._summarize(metrics, cls, history, test)
            self.tensorboard.close()

    def _summarize(
        self, metrics: dict[str, Any], cls: dict[str, Any], history: list[dict[str, float]], test: EvalResult
    ) -> None:
        from dsconv.evaluation.run_outputs import (
            classification_report_text,
            log_graph,
            log_pr_curves,
            log_session_end,
            log_tensorboard_summary,
        )

        assert self.complexity is not None and self.data is not None and self.model is not None
        step = int(history[-1]["epoch"]) if history else 0
        # Traced after the metrics are on disk, not before the first step.
        log_graph(self.tensorboard, self.model.eval(), self.example)
        log_pr_curves(self.tensorboard, test.logits, test.labels, self.data.classes, step)
        log_tensorboard_summary(
            self.tensorboard,
            report_text=classification_report_text(cls["report"]),
            flop_table=self.complexity.flop_table,
            summary=self.complexity.summary,
        )
        final = {key: float(metrics[key]) for key in HPARAM_METRICS if metrics.get(key) is not None}
        log_session_end(self.tensorboard, final, step)


def conv_label(model_cfg: DictConfig, missing: str) -> str:
    """``model.conv`` as a short label; ``missing`` for models without convolutions to switch."""
    from dsconv.models.stages import describe_conv

    return describe_conv(model_cfg.conv) if "conv" in model_cfg else missing
