"""Files and TensorBoard records written at the end of every run.

matplotlib is imported by ``write_figures`` only, so the TensorBoard graph at the start of a run
does not pay for it.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def write_json(path: Path, payload: Any) -> Path:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def write_figures(
    run_dir: Path,
    *,
    history: Sequence[dict[str, float]],
    best_epoch: int,
    confusion: Sequence[Sequence[int]],
    classes: Sequence[str],
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    test_logits: torch.Tensor,
    title: str,
    writer=None,
) -> None:
    from dsconv.evaluation.plots import confusion_matrix_figure, curves_figure, sample_predictions_figure, save_figure

    figures = {
        "confusion_matrix": confusion_matrix_figure(confusion, classes, f"{title} — test confusion matrix"),
        "sample_predictions": sample_predictions_figure(test_images, test_labels, test_logits, classes),
        "curves": curves_figure(history, best_epoch, title),
    }
    for name, fig in figures.items():
        if writer is not None:
            # add_figure renders and closes the figure, so save the PNG first.
            fig.savefig(run_dir / f"{name}.png", dpi=110)
            writer.add_figure(f"test/{name}", fig, close=True)
        else:
            save_figure(fig, run_dir / f"{name}.png")


def log_tensorboard_summary(
    writer, *, hparams: dict[str, Any], final: dict[str, float], report_text: str, flop_table: str, summary: str
) -> None:
    writer.add_text("test/classification_report", _code_block(report_text))
    writer.add_text("model/flop_table", _code_block(flop_table))
    writer.add_text("model/summary", _code_block(summary))
    # run_name="." keeps the hparams record in this run's event dir, so the HParams tab lines up
    # one row per run across a sweep.
    writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()}, run_name=".")


def log_graph(writer, model: torch.nn.Module, example: torch.Tensor) -> None:
    try:
        with warnings.catch_warnings():  # add_graph traces with torch.jit, which warns that it is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            writer.add_graph(model, example)
    except Exception as exc:  # tracing fails for some dynamic models; the run is still useful
        log.warning("TensorBoard graph skipped: %s", str(exc).splitlines()[0] if str(exc) else exc)


def _code_block(text: str) -> str:
    # TensorBoard renders text as Markdown; indenting keeps tables monospaced.
    return "\n".join("    " + line for line in text.splitlines())


def classification_report_text(report: dict[str, Any]) -> str:
    lines = [f"{'class':>16} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name, row in report.items():
        if isinstance(row, dict):
            lines.append(
                f"{name:>16} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1-score']:9.4f} "
                f"{int(row['support']):8d}"
            )
        else:
            lines.append(f"{name:>16} {row:9.4f}")
    return "\n".join(lines)
