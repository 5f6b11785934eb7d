"""The Pareto plot of a search: every trial faint, the front as a labelled staircase, the corners marked."""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure

from dsconv.report.plots import LEGEND_OUTSIDE, PALETTE, readable_log_axis
from dsconv.report.search import COST_LABELS

CORNER_STYLE = {
    "all-standard": {"marker": "*", "color": PALETTE["standard"], "s": 180},
    "all-separable": {"marker": "*", "color": PALETTE["separable"], "s": 180},
}


def pareto_search_figure(trials: list[dict[str, Any]], best: list[dict[str, Any]]) -> Figure:
    done = [t for t in trials if t["accuracy"] is not None and t["cost"] is not None]
    metric = best[0]["cost_metric"]
    fig = Figure(figsize=(10, 5.2))
    ax = fig.add_subplot()
    ax.scatter(
        [t["cost"] for t in done],
        [100 * t["accuracy"] for t in done],
        s=22,
        color=PALETTE["other"],
        alpha=0.5,
        linewidths=0,
        label=f"all {len(done)} completed trials",
    )
    xs, ys = [t["cost"] for t in best], [100 * t["accuracy"] for t in best]
    # A staircase: between two front points, the cheaper one's accuracy is all that cost can buy.
    ax.step(xs, ys, where="post", color="black", linewidth=1, zorder=2)
    ax.scatter(xs, ys, s=30, color="black", zorder=3, label=f"front ({len(best)}, labelled by configuration)")
    labelled: set[str] = set()
    middle = math.sqrt(min(xs) * max(xs)) if min(xs) > 0 else 0.0
    for trial in best:
        if trial["label"] in labelled:  # the same configuration drawn twice: one label is enough
            continue
        labelled.add(trial["label"])
        # Alternate above and below the staircase so neighbouring labels do not collide; labels of the
        # costlier half go to the left of their point so they stay inside the axes.
        above = len(labelled) % 2 == 1
        left = trial["cost"] > middle and len(best) > 1
        ax.annotate(
            trial["label"],
            (trial["cost"], 100 * trial["accuracy"]),
            xytext=(-4 if left else 4, 7 if above else -11),
            textcoords="offset points",
            fontsize=7,
            ha="right" if left else "left",
        )
    for name, style in CORNER_STYLE.items():
        corners = [t for t in done if t["corner"] == name]
        if corners:
            ax.scatter(
                [t["cost"] for t in corners],
                [100 * t["accuracy"] for t in corners],
                zorder=4,
                edgecolors="black",
                linewidths=0.6,
                label=f"{name} corner (trial {', '.join(str(t['number']) for t in corners)})",
                **style,
            )
    ax.margins(x=0.06, y=0.08)  # room for the labels of the extreme points
    ax.set_xscale("log")
    readable_log_axis(ax.xaxis, [t["cost"] for t in done])
    cost = COST_LABELS.get(metric, metric)
    ax.set(
        xlabel=f"{cost} (log scale)", ylabel="best validation accuracy (%)", title=f"Pareto search: accuracy vs {cost}"
    )
    ax.grid(alpha=0.3, which="major")
    ax.legend(**LEGEND_OUTSIDE)
    return fig
