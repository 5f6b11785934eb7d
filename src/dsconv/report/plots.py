"""Report figures: overlaid learning curves, Pareto fronts, side-by-side confusion matrices, per-class F1."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsconv.evaluation.plots import plt, save_figure
from dsconv.report.collect import Group
from dsconv.report.stats import group_table, mean_history, mean_per_class_f1


def learning_curves(groups: list[Group], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for index, group in enumerate(groups):
        color = f"C{index % 10}"
        for ax, metric in zip(axes, ("loss", "acc")):
            for split, style in (("train", "--"), ("val", "-")):
                epochs, values = mean_history(group, f"{split}_{metric}")
                if epochs:
                    ax.plot(epochs, values, style, color=color, label=f"{group.label} ({split})")
    for ax, name in zip(axes, ("loss", "accuracy")):
        ax.set(xlabel="epoch", ylabel=name, title=f"{name}: train (dashed) vs val (solid), mean over seeds")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def pareto(groups: list[Group], x_metric: str, path: Path, x_label: str) -> Path | None:
    points = []
    for group in groups:
        table = group_table(group)
        if table[x_metric].n and table["test_accuracy"].n:
            points.append((table[x_metric].mean, table["test_accuracy"].mean, table["test_accuracy"].std, group.label))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, (x, y, err, label) in enumerate(points):
        ax.errorbar(x, y, yerr=err, fmt="o", color=f"C{index % 10}", label=label, capsize=3)
    front = _pareto_front([(x, y) for x, y, _, _ in points])
    if len(front) > 1:
        ax.plot(*zip(*front), "k:", linewidth=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set(xlabel=x_label, ylabel="test accuracy", title=f"accuracy vs {x_label}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    front, best = [], -np.inf
    for x, y in sorted(points):
        if y > best:
            front.append((x, y))
            best = y
    return front


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
        ax.set(title=f"{group.label}\n(summed over {len(group.ok_runs)} seeds)", xlabel="predicted", ylabel="true")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)


def per_class_f1(standard: Group, separable: Group, path: Path) -> Path:
    f_std, f_sep = mean_per_class_f1(standard), mean_per_class_f1(separable)
    names = list(f_std)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.7), 3.8))
    ax.bar(x - 0.2, [f_std[n] for n in names], 0.4, label=standard.label)
    ax.bar(x + 0.2, [f_sep.get(n, 0) for n in names], 0.4, label=separable.label)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right")
    low = min(min(f_std.values()), min(f_sep.values()))
    ax.set(ylabel="F1 (mean over seeds)", ylim=(max(0.0, low - 0.05), 1.0), title="per-class F1")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
