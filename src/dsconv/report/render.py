"""Write ``report.md``, ``metrics_comparison.json`` and the figures for a set of runs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from dsconv.report.answers import answers_markdown
from dsconv.report.collect import Group, Run
from dsconv.report.comparison import ArchitectureComparison, as_json, build_comparisons
from dsconv.report.stats import PairComparison, compare, find_pairs, group_table, mean_per_class_f1
from dsconv.report.tables import comparison_markdown, p_text, timing_note
from dsconv.report.timing import RUN_SOURCE, BenchResults, group_timing


def diagnosis_rule() -> str:
    from dsconv.evaluation.metrics import fit_diagnosis  # torch + sklearn: only when a full report is written

    return (fit_diagnosis.__doc__ or "").split("Rule:", 1)[-1].strip().replace("\n    ", " ")


def speed_source(bench: BenchResults | None) -> str:
    return bench.source_note if bench is not None else RUN_SOURCE


def build_report(
    runs: list[Run], groups: list[Group], out_dir: Path, bench: BenchResults | None = None
) -> dict[str, Any]:
    from dsconv.report import plots  # matplotlib: seconds of import, only when figures are drawn

    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = [compare(s, d, bench) for s, d in find_pairs(groups)]
    comparisons = build_comparisons(groups, bench)
    figures: dict[str, str] = {}
    if groups:
        path = plots.learning_curves(groups, out_dir / "learning_curves.png")
        if path:
            figures["learning_curves"] = path.name
        for metric, label, name in (
            ("macs_per_image", "MACs per image", "pareto_accuracy_vs_macs"),
            (
                "latency_ms_b1",
                f"latency at batch 1 (ms, {'dsconv-bench' if bench else 'runs'})",
                "pareto_accuracy_vs_latency",
            ),
        ):
            path = plots.pareto(groups, metric, out_dir / f"{name}.png", label, bench)
            if path:
                figures[name] = path.name
    for pair in pairs:
        slug = _slug(pair.separable.label)
        path = plots.confusion_pair(pair.standard, pair.separable, out_dir / f"confusion_{slug}.png")
        if path:
            figures[f"confusion_{slug}"] = path.name
        path = plots.per_class_f1(pair.standard, pair.separable, out_dir / f"per_class_f1_{slug}.png")
        if path:
            figures[f"per_class_f1_{slug}"] = path.name
    rule = diagnosis_rule()
    payload = _payload(runs, groups, pairs, comparisons, figures, bench, rule)
    (out_dir / "metrics_comparison.json").write_text(json.dumps(_clean(payload), indent=2, default=str) + "\n")
    (out_dir / "report.md").write_text(_markdown(runs, groups, pairs, comparisons, figures, bench, rule))
    return payload


def _clean(value: Any) -> Any:
    """NaN is not JSON: a missing number is stored as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _diagnosis(run: Run) -> dict[str, Any]:
    """Re-derived from the learning curves, so every run in a report is judged by the same rule."""
    if run.metrics is None:
        return {}
    if run.history:
        from dsconv.evaluation.metrics import fit_diagnosis

        return fit_diagnosis(run.history, int(run.metrics.get("best_epoch", 0)))
    return run.metrics.get("fit_diagnosis", {})


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:80] or "pair"


def _payload(runs, groups, pairs, comparisons, figures, bench, rule) -> dict[str, Any]:
    return {
        "groups": [
            {
                "label": g.label,
                "settings": g.settings,
                "kinds": g.kinds,
                "runs": [str(r.path) for r in g.ok_runs],
                "seeds": [r.seed for r in g.ok_runs],
                "metrics": {k: v.as_json() for k, v in group_table(g).items()},
                "timings": {m: group_timing(g, m, bench).as_json() for m in ("latency_ms_b1", "throughput_img_s")},
                "per_class_f1": mean_per_class_f1(g),
            }
            for g in groups
        ],
        "pairs": [
            {
                "standard": p.standard.label,
                "separable": p.separable.label,
                "accuracy_diff": p.accuracy_diff,
                "f1_diff": p.f1_diff,
                "welch_p_value": p.test.welch_p,
                "mannwhitney_p_value": p.test.mannwhitney_p,
                "test": p.test.as_json(),
                "note": p.note,
                "param_ratio": p.param_ratio,
                "mac_ratio": p.mac_ratio,
                "latency_speedup": p.speed["latency_speedup"].value,
                "epoch_time_ratio": p.speed["epoch_time_speedup"].value,
                "speed": {k: v.as_json() for k, v in p.speed.items()},
            }
            for p in pairs
        ],
        "comparisons": [as_json(c) for c in comparisons],
        "speed_source": speed_source(bench),
        "diagnosis_rule": rule,
        "runs": [
            {
                "path": str(r.path),
                "status": r.status,
                "seed": r.seed,
                "diagnosis": _diagnosis(r).get("verdict"),
                "error": (r.failure or {}).get("error"),
            }
            for r in runs
        ],
        "figures": figures,
    }


def _pct(summary) -> str:
    return summary.fmt(100, 2)


def _markdown(
    runs: list[Run],
    groups: list[Group],
    pairs: list[PairComparison],
    comparisons: list[ArchitectureComparison],
    figures: dict[str, str],
    bench: BenchResults | None,
    rule: str,
) -> str:
    lines = ["# dsconv comparison report", ""]
    ok = sum(r.status == "ok" for r in runs)
    lines += [
        f"{len(runs)} runs found: {ok} finished, {len(runs) - ok} failed or unfinished; "
        f"{len(groups)} configurations (runs differing only by `trainer.seed` are grouped).",
        "",
        timing_note(speed_source(bench)),
        "",
        "## Results per configuration",
        "",
        "Mean ± sample std over seeds (n; no ± for one seed). Accuracy, precision, recall and F1 (macro) on the "
        "test set, in %; MACs per image as the runs' metrics.json report them.",
        "",
        "| configuration | accuracy | precision | recall | F1 | params | MACs/image | latency b=1 ms "
        "| throughput img/s | train time (s) | epochs to best |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group in groups:
        t = group_table(group)
        latency, throughput = (group_timing(group, m, bench) for m in ("latency_ms_b1", "throughput_img_s"))
        lines.append(
            f"| {group.label} | {_pct(t['test_accuracy'])} | {_pct(t['test_precision_macro'])} | "
            f"{_pct(t['test_recall_macro'])} | {_pct(t['test_f1_macro'])} | {t['params_total'].mean:,.0f} | "
            f"{t['macs_per_image'].mean:,.0f} | {latency.fmt(3)} | {throughput.fmt(0)} | "
            f"{t['train_time_s'].fmt(1, 1)} | {t['best_epoch'].fmt(1, 1)} |"
        )
    if comparisons and any(len(c.rows) > 1 for c in comparisons):
        lines += [
            "",
            "## Per architecture: every variant against plain DS",
            "",
            comparison_markdown(comparisons, speed_source(bench)),
            "## The study's questions, answered from the table above",
            "",
            answers_markdown(comparisons, bench),
        ]
    if pairs:
        lines += _pair_lines(pairs)
    lines += [
        "",
        "## Fit diagnosis per run",
        "",
        f"Rule: {rule}",
        "",
        "| run | configuration | seed | verdict | train/val acc gap at best | val-loss rise after min |",
        "|---|---|---|---|---|---|",
    ]
    for group in groups:
        for run in group.ok_runs:
            d = _diagnosis(run)
            lines.append(
                f"| `{run.path.name}` | {group.label} | {run.seed} | {d.get('verdict', '—')} | "
                f"{d.get('train_val_acc_gap_at_best', float('nan')):+.4f} | "
                f"{d.get('val_loss_rise_after_min', float('nan')):+.2%} |"
            )
    bad = [r for r in runs if r.status != "ok"]
    lines += ["", "## Failed or unfinished runs", ""]
    if bad:
        lines += ["| run | status | error |", "|---|---|---|"]
        unfinished = "no metrics.json (killed or still running)"
        lines += [f"| `{r.path}` | {r.status} | {(r.failure or {}).get('error', unfinished)} |" for r in bad]
    else:
        lines.append("None.")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{name}]({file})" for name, file in figures.items()]
    return "\n".join(lines) + "\n"


def _pair_lines(pairs: list[PairComparison]) -> list[str]:
    lines = [
        "",
        "## Standard vs depthwise-separable",
        "",
        "Differences are separable minus standard (accuracy points). p: Welch's t-test and the two-sided "
        "Mann-Whitney U test on test accuracy across seeds. Size ratios are standard / separable; speedups are "
        "how many times faster the separable twin is.",
        "",
        "| standard | separable | Δ accuracy | Δ F1 | p Welch | p Mann-Whitney | verdict | params ratio | MACs ratio "
        "| latency speedup | throughput speedup | epoch-time speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        lines.append(
            f"| {p.standard.label} | {p.separable.label} | {100 * p.accuracy_diff:+.2f} | "
            f"{100 * p.f1_diff:+.2f} | {p_text(p.test.welch_p)} | {p_text(p.test.mannwhitney_p)} | {p.note} | "
            f"{p.param_ratio:.2f}x | {p.mac_ratio:.2f}x | {p.speed['latency_speedup'].fmt()} | "
            f"{p.speed['throughput_speedup'].fmt()} | {p.speed['epoch_time_speedup'].fmt()} |"
        )
    for p in pairs:
        f_std, f_sep = mean_per_class_f1(p.standard), mean_per_class_f1(p.separable)
        lines += [
            "",
            f"### Per-class F1: {p.standard.label} vs {p.separable.label}",
            "",
            "| class | standard | separable | Δ |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {f_std[n]:.4f} | {f_sep.get(n, float('nan')):.4f} | {f_sep.get(n, 0) - f_std[n]:+.4f} |"
            for n in f_std
        ]
    return lines
