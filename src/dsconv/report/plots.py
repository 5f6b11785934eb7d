"""Report figures: learning curves, accuracy-vs-cost with its Pareto front, confusion matrices, per-class F1.

Every figure colours a configuration by what it is (``PALETTE``: standard blue, separable orange, ...), so
a colour means the same thing in all of them; titles say the dataset, the epochs and the seeds; legends
sit outside the axes, where they cannot hide data.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from dsconv.report.collect import Group, _conv_label
from dsconv.report.comparison import budget_text, role
from dsconv.report.pareto import non_dominated
from dsconv.report.stats import group_table, mean_history, mean_per_class_f1
from dsconv.report.timing import BenchResults, group_timing

PALETTE = {
    "standard": "#1f77b4",  # blue
    "separable": "#ff7f0e",  # orange
    "inverted_residual": "#8c564b",  # brown
    "hybrid": "#e377c2",  # pink
    "DS + KD": "#d62728",  # red
    "DS at equal budget": "#2ca02c",  # green
    "pruned": "#9467bd",  # purple
    "other": "#7f7f7f",  # grey
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0, "fontsize": 7}


def legend_text(label: str, width: int = 48) -> str:
    """A label wrapped onto lines of ``width`` characters: a long configuration must not squeeze the axes."""
    return textwrap.fill(label, width, break_on_hyphens=False)


def colour(group: Group) -> str:
    """The palette entry for a group: by its role first (KD, budget-matched, pruned), else its conv kind."""
    text = role(group)
    if "pruned" in text:
        return PALETTE["pruned"]
    if " at equal " in text:
        return PALETTE["DS at equal budget"]
    if text.endswith("+ KD"):
        return PALETTE["DS + KD"]
    conv = _conv_label(group.settings.get("model.conv", "standard"))
    return PALETTE["hybrid"] if conv.startswith("hybrid") else PALETTE.get(conv, PALETTE["other"])


def context(groups: list[Group]) -> str:
    """``mnist, 3 epochs, 3 seeds``: what every title says about the data and budget behind it."""
    datasets = sorted({str(g.settings.get("dataset.name", "?")) for g in groups})
    return f"{'/'.join(datasets)}, {budget_text(groups)}"


def human(value: float, _pos: object = None) -> str:
    """Tick text with at most 3 significant digits: 950k, 7.55M, 0.52."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def readable_log_axis(axis, values: Sequence[float]) -> None:
    """A log axis with a few labelled ticks: decades when the data span one, else 3-4 round values
    inside the data range (matplotlib's default labels every minor tick there, and they overlap)."""
    positive = [v for v in values if v and v > 0]
    axis.set_minor_formatter(NullFormatter())
    if not positive:
        return
    lo, hi = min(positive), max(positive)
    if hi / lo >= 10:
        axis.set_major_locator(LogLocator(base=10, numticks=6))
    else:
        raw = np.geomspace(lo, hi, 4) if hi > lo else np.asarray([lo])
        ticks = sorted({float(f"{v:.2g}") for v in raw})
        axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(human))


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def learning_curves(groups: list[Group], path: Path) -> Path | None:
    if not any(run.history for group in groups for run in group.ok_runs):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for index, group in enumerate(groups):
        marker = MARKERS[index % len(MARKERS)]
        for ax, metric in zip(axes, ("loss", "acc")):
            for split, style in (("train", "--"), ("val", "-")):
                epochs, values = mean_history(group, f"{split}_{metric}")
                if epochs:
                    ax.plot(
                        epochs,
                        values,
                        style,
                        color=colour(group),
                        marker=marker,
                        markersize=4,
                        label=legend_text(f"{group.label} ({split})"),
                    )
    for ax, name in zip(axes, ("loss", "accuracy")):
        ax.set(xlabel="epoch", ylabel=name, title=f"{name}: train (dashed) vs val (solid), mean over seeds")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    fig.suptitle(context(groups), fontsize=10)
    axes[1].legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    return _save(fig, path)


def pareto_figure(groups: list[Group], x_metric: str, x_label: str, bench: BenchResults | None = None):
    """Accuracy (mean ± std over seeds) against a cost; the non-dominated set is joined and labelled."""
    points = []
    for group in groups:
        table = group_table(group)
        if not table["test_accuracy"].n:
            continue
        if x_metric == "latency_ms_b1":
            timing = group_timing(group, x_metric, bench)
            if timing.median is None:
                continue
            x = timing.median
            xerr = (x - timing.low, timing.high - x) if timing.low is not None and timing.high is not None else (0, 0)
        elif table[x_metric].n:
            x, xerr = table[x_metric].mean, (0.0, 0.0)
        else:
            continue
        points.append((group, x, xerr, table["test_accuracy"].mean, table["test_accuracy"].std or 0.0))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for index, (group, x, xerr, y, yerr) in enumerate(points):
        ax.errorbar(
            x,
            y,
            xerr=[[max(xerr[0], 0)], [max(xerr[1], 0)]],
            yerr=yerr,
            fmt=MARKERS[index % len(MARKERS)],
            color=colour(group),
            label=legend_text(group.label),
            capsize=3,
        )
    front = sorted(
        non_dominated([(y, x) for _, x, _, y, _ in points], maximize=(True, False)), key=lambda i: points[i][1]
    )
    fx, fy = [points[i][1] for i in front], [points[i][3] for i in front]
    ax.plot(fx, fy, "k--", linewidth=1, zorder=0, label="Pareto front (best accuracy for its cost)")
    mid = float(np.sqrt(min(fx) * max(fx))) if fx and min(fx) > 0 else 0.0
    for i in front:
        # Names of points right of the middle go to their left, so they stay inside the axes.
        right = points[i][1] > mid and len(front) > 1
        ax.annotate(
            points[i][0].label,
            (points[i][1], points[i][3]),
            xytext=(-4 if right else 4, 6),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=7,
        )
    ax.set_xscale("log")
    readable_log_axis(ax.xaxis, [p[1] for p in points])
    ax.set(
        xlabel=f"{x_label} (log scale)",
        ylabel="test accuracy",
        title=f"test accuracy vs {x_label}\n{context([p[0] for p in points])}",
    )
    ax.grid(alpha=0.3, which="major")
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    return fig


def pareto(
    groups: list[Group], x_metric: str, path: Path, x_label: str, bench: BenchResults | None = None
) -> Path | None:
    fig = pareto_figure(groups, x_metric, x_label, bench)
    return None if fig is None else _save(fig, path)


def confusion_pair(standard: Group, separable: Group, path: Path) -> Path | None:
    mats = []
    for group in (standard, separable):
        runs = [r for r in group.ok_runs if r.confusion is not None]
        if not runs:
            return None
        mats.append(np.sum([np.asarray(r.confusion) for r in runs], axis=0))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, mat, group in zip(axes, mats, (standard, separable)):
        image = ax.imshow(mat, cmap="Blues")
        ax.set(xlabel="predicted", ylabel="true")
        ax.set_title(f"{group.label}\n(summed over {len(group.ok_runs)} seeds)", color=colour(group))
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"test confusion matrices: {context([standard, separable])}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def per_class_f1(standard: Group, separable: Group, path: Path) -> Path | None:
    f_std, f_sep = mean_per_class_f1(standard), mean_per_class_f1(separable)
    if not f_std or not f_sep:
        return None
    names = list(f_std)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.7), 3.8))
    ax.bar(x - 0.2, [f_std[n] for n in names], 0.4, label=legend_text(standard.label), color=colour(standard))
    ax.bar(x + 0.2, [f_sep.get(n, 0) for n in names], 0.4, label=legend_text(separable.label), color=colour(separable))
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right")
    low = min(min(f_std.values()), min(f_sep.values()))
    ax.set(
        ylabel="F1 (mean over seeds)",
        ylim=(max(0.0, low - 0.05), 1.0),
        title=f"per-class F1: {context([standard, separable])}",
    )
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    return _save(fig, path)
