"""The Pareto plot of a search: every trial faint, the front as a labelled staircase, the corners marked."""

from __future__ import annotations

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
    for index, (anchor, text) in enumerate(label_groups(best)):
        # The staircase runs right, then up into each point, so the space up and to the left of a point
        # is free; the cheapest point's label goes to its right to stay inside the axes.
        first = index == 0
        ax.annotate(
            text,
            (anchor["cost"], 100 * anchor["accuracy"]),
            xytext=(4 if first else -4, 4),
            textcoords="offset points",
            fontsize=7,
            ha="left" if first else "right",
            va="bottom",
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


def label_groups(best: list[dict[str, Any]], near_cost: float = 1.3, near_accuracy: float = 0.04) -> list[tuple]:
    """(anchor trial, label text) per cluster of front points whose labels would overlap.

    Consecutive front points closer than ``near_cost`` (cost ratio) and ``near_accuracy`` (fraction of the
    front's accuracy range) share one multi-line label at the costliest of them; a configuration the
    search proposed twice is named once.
    """
    spread = max(t["accuracy"] for t in best) - min(t["accuracy"] for t in best) or 1.0
    clusters: list[list[dict[str, Any]]] = []
    for trial in best:
        last = clusters[-1][-1] if clusters else None
        close = (
            last is not None
            and trial["cost"] <= near_cost * last["cost"]
            and abs(trial["accuracy"] - last["accuracy"]) <= near_accuracy * spread
        )
        if close:
            clusters[-1].append(trial)
        else:
            clusters.append([trial])
    return [(cluster[-1], "\n".join(dict.fromkeys(t["label"] for t in reversed(cluster)))) for cluster in clusters]
