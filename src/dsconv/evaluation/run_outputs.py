"""Files and TensorBoard records written by every run.

What TensorBoard shows a reader, and why it is written this way:

- Scalars: ``loss/{train,val}`` and ``accuracy/{train,val}``, plus a custom-scalar layout that puts
  train and val of each on one chart (TensorBoard otherwise draws one chart per tag).
- HParams: the run's own event dir gets a session start (its hyper-parameters) and a session end
  (its status), and the final metrics as scalars next to the curves. ``SummaryWriter.add_hparams``
  would instead open a sub-run per call, whose metrics are not the run's scalars. No experiment
  summary is written: TensorBoard takes the first one it finds as the column list of the whole
  logdir, so a sweep mixing models with different keys would lose columns; without one it builds
  the table from the union of every run's hyper-parameters and scalar tags.
- PR curves per class on the test set, from softmax probabilities.
- The figures, each rendered once: the PNG written next to the run is the image TensorBoard gets.

matplotlib is imported by ``write_figures`` only, so the TensorBoard graph at the start of a run
does not pay for it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch

log = logging.getLogger(__name__)

# train and val of one quantity on one chart; the tags are the ones RunWriter.on_epoch_end writes.
SCALAR_LAYOUT = {
    "train vs val": {
        "loss": ["Multiline", ["loss/train", "loss/val"]],
        "accuracy": ["Multiline", ["accuracy/train", "accuracy/val"]],
    }
}
FINAL_PREFIX = "final/"  # final metrics as scalars: the HParams table's metric columns
PR_PREFIX = "pr_test/"


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
    writer: Any = None,
) -> None:
    from dsconv.evaluation.plots import (
        confusion_matrix_figure,
        curves_figure,
        figure_png,
        sample_predictions_figure,
    )

    figures = {
        "confusion_matrix": lambda: confusion_matrix_figure(confusion, classes, f"{title} — test confusion matrix"),
        "sample_predictions": lambda: sample_predictions_figure(test_images, test_labels, test_logits, classes),
        "curves": lambda: curves_figure(history, best_epoch, title),
    }
    step = int(history[-1]["epoch"]) if history else 0
    for name, draw in figures.items():
        png = figure_png(draw())  # one render each, drawn and freed in turn
        (run_dir / f"{name}.png").write_bytes(png)
        if writer is not None:
            writer.file_writer.add_summary(png_summary(f"test/{name}", png), step)


def png_summary(tag: str, png: bytes):
    """An image summary carrying already-encoded PNG bytes (``add_figure`` would render the figure again)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk, always first in a PNG
    image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)  # 4: RGBA
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def log_scalar_layout(writer: Any) -> None:
    writer.add_custom_scalars(SCALAR_LAYOUT)


def log_session_start(writer: Any, hparams: Mapping[str, Any]) -> None:
    """The HParams row of this run: its hyper-parameters, in its own event dir."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    # torch files booleans as numbers (bool is an int); as "true"/"false" they filter as a discrete choice.
    values = {key: str(value).lower() if isinstance(value, bool) else value for key, value in hparams.items()}
    _, session_start, _ = hparams_summaries(values, {})
    writer.file_writer.add_summary(session_start)


def log_session_end(writer: Any, final: Mapping[str, float], step: int, *, succeeded: bool = True) -> None:
    """Final metrics as scalars of this run (the HParams metric columns) and the session's status."""
    for key, value in final.items():
        writer.add_scalar(f"{FINAL_PREFIX}{key}", float(value), step)
    writer.file_writer.add_summary(_session_end_summary("STATUS_SUCCESS" if succeeded else "STATUS_FAILURE"))
    writer.flush()


def _session_end_summary(status: str):
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(status)))
    content.version = PLUGIN_DATA_VERSION
    plugin = SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content.SerializeToString())
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=SummaryMetadata(plugin_data=plugin))])


def log_pr_curves(writer: Any, logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], step: int) -> None:
    """One precision-recall curve per class on the test set (one-vs-rest on the softmax probability)."""
    probs = torch.softmax(logits.float(), dim=1).cpu()
    labels = labels.cpu()
    for index, name in enumerate(classes):
        writer.add_pr_curve(pr_curve_tag(index, name), labels == index, probs[:, index], step)


def pr_curve_tag(index: int, name: str) -> str:
    # Class names such as "T-shirt/top" would otherwise nest in TensorBoard's tag tree.
    return f"{PR_PREFIX}{index}_{re.sub(r'[^0-9A-Za-z_.-]+', '_', str(name))}"


def log_tensorboard_summary(writer: Any, *, report_text: str, flop_table: str, summary: str) -> None:
    writer.add_text("test/classification_report", _code_block(report_text))
    writer.add_text("model/flop_table", _code_block(flop_table))
    writer.add_text("model/summary", _code_block(summary))


def log_graph(writer: Any, model: torch.nn.Module, example: torch.Tensor) -> None:
    """TensorBoard's graph of ``model``, traced without torch.jit's check run.

    The check runs the model again and compares outputs through ``torch.testing``, which imports
    ``torch.distributed.tensor`` (~0.5 s here) for a model whose outputs the run has just evaluated.
    """
    trace = functools.partial(torch.jit.trace, check_trace=False)
    try:
        with warnings.catch_warnings(), mock.patch.object(torch.jit, "trace", trace):
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit warns that it is deprecated
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
