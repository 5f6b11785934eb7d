"""The exact Pareto filter (against brute force) and figures a reader can use: ticks, colours, front, legend."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsconv.report.collect import Run, group_runs
from dsconv.report.pareto import non_dominated
from dsconv.report.plots import PALETTE, colour, pareto_figure


def brute_force(points, maximize):
    def better_or_equal(a, b, i):
        return a[i] >= b[i] if maximize[i] else a[i] <= b[i]

    def strictly(a, b, i):
        return a[i] > b[i] if maximize[i] else a[i] < b[i]

    return [
        i
        for i, p in enumerate(points)
        if not any(
            all(better_or_equal(q, p, k) for k in range(2)) and any(strictly(q, p, k) for k in range(2))
            for j, q in enumerate(points)
            if j != i
        )
    ]


# Few distinct values, so ties in one or both objectives are common.
coordinate = st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, float("inf"), -float("inf")])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(coordinate, coordinate), max_size=12), st.tuples(st.booleans(), st.booleans()))
def test_non_dominated_matches_brute_force(points, maximize):
    assert non_dominated(points, maximize) == brute_force(points, maximize)


def test_non_dominated_ties_and_errors():
    # (accuracy, cost): two identical points are both kept; a same-accuracy, higher-cost point is not.
    points = [(0.9, 10.0), (0.9, 10.0), (0.9, 12.0), (0.95, 20.0), (0.8, 5.0), (0.8, 6.0)]
    assert non_dominated(points) == [0, 1, 3, 4]
    assert non_dominated([]) == []
    with pytest.raises(ValueError, match="NaN"):
        non_dominated([(float("nan"), 1.0)])


def _groups(costs: dict[str, float]):
    runs = []
    for index, (conv, macs) in enumerate(costs.items()):
        for seed, acc in enumerate((0.90 + 0.01 * index, 0.91 + 0.01 * index)):
            config = {
                "model": {"name": "mnist_cnn", "conv": conv, "channels": [8 + index]},
                "dataset": {"name": "mnist"},
                "trainer": {"seed": seed, "epochs": 4},
            }
            metrics = {"test_accuracy": acc, "macs_per_image": macs, "params_total": macs / 10}
            runs.append(Run(Path(f"/runs/{conv}_{seed}"), config, metrics))
    return group_runs(runs)


def _visible_labels(ax):
    lo, hi = sorted(ax.get_xlim())
    ticks = ax.xaxis.get_major_ticks() + ax.xaxis.get_minor_ticks()
    return [t.label1 for t in ticks if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]


@pytest.mark.parametrize(
    "costs",
    [
        # less than a decade apart: matplotlib's default labels every minor tick here, and they overlap
        {"standard": 7_548_928.0, "separable": 1_017_424.0, "inverted_residual": 1_845_328.0},
        {"standard": 490_640_384.0, "separable": 1_017_424.0, "inverted_residual": 49_899_880.0},
    ],
)
def test_pareto_figure_is_readable(costs):
    groups = _groups(costs)
    fig = pareto_figure(groups, "macs_per_image", "MACs per image")
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in _visible_labels(ax)]
    assert 2 <= len(boxes) <= 8
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    # the front (max accuracy, min cost) is drawn and each of its points is named
    (front,) = [line for line in ax.get_lines() if line.get_label().startswith("Pareto front")]
    xs = list(front.get_xdata())
    assert xs == sorted(xs) and len(xs) >= 1
    assert {t.get_text() for t in ax.texts} <= {g.label for g in groups} and len(ax.texts) == len(xs)
    # title says dataset, budget and seeds; the legend sits right of the axes, outside the data
    assert "mnist, 4 epochs, 2 seeds" in ax.get_title()
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_one_palette_for_every_figure():
    groups = {g.settings["model.conv"]: g for g in _groups({"standard": 10.0, "separable": 2.0})}
    assert colour(groups["standard"]) == PALETTE["standard"] == "#1f77b4"
    assert colour(groups["separable"]) == PALETTE["separable"] == "#ff7f0e"
    assert len(set(PALETTE.values())) == len(PALETTE)
