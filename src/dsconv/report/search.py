"""``dsconv-report`` on a Pareto search: every trial, the exact front, its re-runs, one readable plot.

A search's trials differ by up to a dozen ``search.*`` keys, so the ordinary grouped report (one group per
configuration, labelled by every differing key) is unreadable for it. Given a search sweep dir (it holds
``search.db``), or a folder of files this module wrote earlier (``trials.json``), the report instead is:

- ``trials.json``: every trial (number, state, per-stage conv kinds, kernel, multiplier, width, label,
  corner, the two objectives), so the plot can be redrawn from committed files without the database;
- ``front.json``: the non-dominated completed trials (validation accuracy up, cost down, ties kept);
- ``pareto_search.png``: all trials faint, the front joined as a staircase and labelled by configuration,
  the all-standard and all-separable corners marked, log cost axis with a few readable ticks;
- ``report.md``: the budget, the counts, the front table (with each stage's conv kind and, when
  ``dsconv-search-rerun`` has run, the re-runs' test accuracy), and the corners against the front.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from dsconv.search.front import SEARCH_DB, front, load_trials
from dsconv.search.rerun import RERUN_DIR, SUMMARY_FILE

TRIALS_FILE = "trials.json"
FRONT_FILE = "front.json"
PLOT_FILE = "pareto_search.png"
TRIAL_KEYS = (
    "number",
    "state",
    "conv",
    "kernel_size",
    "depth_multiplier",
    "width",
    "label",
    "corner",
    "accuracy",
    "cost",
    "cost_metric",
)
COST_LABELS = {
    "macs_per_image": "conv+linear MACs per image",
    "params_total": "parameters",
    "latency_ms_b1": "batch-1 latency (ms)",
}


def is_search(path: Path) -> bool:
    return (path / SEARCH_DB).is_file() or (path / TRIALS_FILE).is_file()


def read_search(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(trials, re-run summary or None) from a live sweep dir or from a folder this module wrote."""
    if (path / SEARCH_DB).is_file():
        trials = [{key: trial[key] for key in TRIAL_KEYS} for trial in load_trials(path)]
    else:
        trials = json.loads((path / TRIALS_FILE).read_text())
    rerun = None
    for candidate in (path / RERUN_DIR / SUMMARY_FILE, path / SUMMARY_FILE):
        if candidate.is_file():
            rerun = json.loads(candidate.read_text())
            break
    return trials, rerun


def write_search_report(path: Path, out: Path) -> dict[str, Any]:
    """Every file of the search report in ``out``; returns what was written (for the console line)."""
    trials, rerun = read_search(path)
    best = front(trials)  # raises SearchError when no trial finished
    out.mkdir(parents=True, exist_ok=True)
    (out / TRIALS_FILE).write_text(json.dumps(trials, indent=2) + "\n")
    (out / FRONT_FILE).write_text(json.dumps(best, indent=2) + "\n")
    if rerun is not None:
        (out / SUMMARY_FILE).write_text(json.dumps(rerun, indent=2) + "\n")
    from dsconv.report.search_plot import pareto_search_figure

    fig = pareto_search_figure(trials, best)
    fig.savefig(out / PLOT_FILE, dpi=110, bbox_inches="tight")
    (out / "report.md").write_text(search_markdown(trials, best, rerun))
    return {"trials": len(trials), "front": len(best), "plot": out / PLOT_FILE, "report": out / "report.md"}


def search_markdown(trials: list[dict[str, Any]], best: list[dict[str, Any]], rerun: dict[str, Any] | None) -> str:
    states = Counter(trial["state"] for trial in trials)
    metric = best[0]["cost_metric"]
    lines = [
        "# Pareto search",
        "",
        f"{len(trials)} trials ({', '.join(f'{n} {s.lower()}' for s, n in sorted(states.items()))}); objectives: "
        f"best validation accuracy (max) and {COST_LABELS.get(metric, metric)} (min). "
        f"{len(best)} configurations are on the front (ties kept).",
        "",
        f"![accuracy vs cost]({PLOT_FILE})",
        "",
        "## The front",
        "",
        front_table(best, rerun),
        "",
        "Labels: one letter per stage (S standard, D depthwise-separable, I inverted residual), then the "
        "depthwise kernel, the depth multiplier and the width. Validation accuracy is the search trial's (one "
        "seed); test accuracy comes only from the re-runs of `dsconv-search-rerun`.",
        "",
        "## The corners against the front",
        "",
        *corner_lines(trials, best),
        "",
    ]
    return "\n".join(lines)


def front_table(best: list[dict[str, Any]], rerun: dict[str, Any] | None) -> str:
    tested = {entry["number"]: entry for entry in (rerun or {}).get("configs", [])}
    stages = max(len(t["conv"]) for t in best)
    head = ["trial", "label", *(f"stage {i + 1}" for i in range(stages)), "val acc %", best[0]["cost_metric"]]
    head.append("test acc % of the re-runs")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for trial in best:
        kinds = [*trial["conv"], *([""] * (stages - len(trial["conv"])))]
        rows.append(
            "| "
            + " | ".join(
                [
                    str(trial["number"]),
                    f"`{trial['label']}`" + (f" ({trial['corner']})" if trial["corner"] else ""),
                    *kinds,
                    f"{100 * trial['accuracy']:.2f}",
                    f"{cost_text(trial['cost'])}",
                    rerun_cell(tested.get(trial["number"])),
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def cost_text(value: float) -> str:
    """MACs and parameters as whole numbers with separators, small costs (latency ms) to 3 digits."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def rerun_cell(entry: dict[str, Any] | None) -> str:
    if entry is None or entry.get("test_accuracy_mean") is None:
        return "—"
    std = entry.get("test_accuracy_std")
    spread = "" if std is None else f" ± {100 * std:.2f}"
    return f"{100 * entry['test_accuracy_mean']:.2f}{spread} (n={entry['n']})"


def corner_lines(trials: list[dict[str, Any]], best: list[dict[str, Any]]) -> list[str]:
    """For each corner: its objectives and the front point that beats it on both at the lowest cost."""
    lines = []
    for name in ("all-standard", "all-separable"):
        corner = next((t for t in trials if t["corner"] == name and t["accuracy"] is not None), None)
        if corner is None:
            lines.append(f"- {name}: not among the completed trials.")
            continue
        where = f"trial {corner['number']}: {100 * corner['accuracy']:.2f}% val at {cost_text(corner['cost'])}"
        if any(t["number"] == corner["number"] for t in best):
            lines.append(f"- {name} ({where}) is on the front.")
            continue
        beats = [t for t in best if t["accuracy"] >= corner["accuracy"] and t["cost"] <= corner["cost"]]
        winner = min(beats, key=lambda t: (t["cost"], -t["accuracy"]))
        ratio = corner["cost"] / winner["cost"] if winner["cost"] > 0 else math.inf
        lines.append(
            f"- {name} ({where}) is dominated: e.g. `{winner['label']}` (trial {winner['number']}) reaches "
            f"{100 * winner['accuracy']:.2f}% at {cost_text(winner['cost'])}, {ratio:.2f}x cheaper."
        )
    return lines


def search_report_or_none(dirs: list[Path], out: Path | None) -> dict[str, Any] | None:
    """The search report when the one directory given is a search; None for anything else."""
    if len(dirs) != 1 or not is_search(dirs[0]):
        return None
    return write_search_report(dirs[0], out or dirs[0])
