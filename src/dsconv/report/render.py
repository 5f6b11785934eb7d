"""Write ``report.md``, ``metrics_comparison.json`` and the figures for a set of runs."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dsconv.evaluation.metrics import fit_diagnosis
from dsconv.report import plots
from dsconv.report.collect import Group, Run
from dsconv.report.stats import PairComparison, compare, find_pairs, group_table, mean_per_class_f1

DIAGNOSIS_RULE = (fit_diagnosis.__doc__ or "").split("Rule:", 1)[-1].strip().replace("\n    ", " ")


def build_report(runs: list[Run], groups: list[Group], out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = [compare(s, d) for s, d in find_pairs(groups)]
    figures: dict[str, str] = {}
    if groups:
        figures["learning_curves"] = plots.learning_curves(groups, out_dir / "learning_curves.png").name
        for metric, label, name in (
            ("macs_per_image", "MACs per image (fvcore)", "pareto_accuracy_vs_macs"),
            ("latency_ms_b1", "latency at batch 1 (ms)", "pareto_accuracy_vs_latency"),
        ):
            path = plots.pareto(groups, metric, out_dir / f"{name}.png", label)
            if path:
                figures[name] = path.name
    for pair in pairs:
        slug = _slug(pair.separable.label)
        path = plots.confusion_pair(pair.standard, pair.separable, out_dir / f"confusion_{slug}.png")
        if path:
            figures[f"confusion_{slug}"] = path.name
        figures[f"per_class_f1_{slug}"] = plots.per_class_f1(
            pair.standard, pair.separable, out_dir / f"per_class_f1_{slug}.png"
        ).name
    payload = _payload(runs, groups, pairs, figures)
    (out_dir / "metrics_comparison.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out_dir / "report.md").write_text(_markdown(runs, groups, pairs, figures))
    return payload


def _diagnosis(run: Run) -> dict[str, Any]:
    """Re-derived from the learning curves, so every run in a report is judged by the same rule."""
    if run.metrics is None:
        return {}
    if run.history:
        return fit_diagnosis(run.history, int(run.metrics.get("best_epoch", 0)))
    return run.metrics.get("fit_diagnosis", {})


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:80] or "pair"


def _payload(runs, groups, pairs, figures) -> dict[str, Any]:
    return {
        "groups": [
            {
                "label": g.label,
                "settings": g.settings,
                "runs": [str(r.path) for r in g.ok_runs],
                "seeds": [r.seed for r in g.ok_runs],
                "metrics": {k: asdict(v) for k, v in group_table(g).items()},
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
                "welch_p_value": p.p_value,
                "note": p.note,
                "param_ratio": p.param_ratio,
                "mac_ratio": p.mac_ratio,
                "latency_speedup": p.latency_speedup,
                "epoch_time_ratio": p.train_time_ratio,
            }
            for p in pairs
        ],
        "diagnosis_rule": DIAGNOSIS_RULE,
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


def _markdown(runs: list[Run], groups: list[Group], pairs: list[PairComparison], figures: dict[str, str]) -> str:
    lines = ["# dsconv comparison report", ""]
    ok = sum(r.status == "ok" for r in runs)
    lines += [
        f"{len(runs)} runs found: {ok} finished, {len(runs) - ok} failed or unfinished; "
        f"{len(groups)} configurations (runs differing only by `trainer.seed` are grouped).",
        "",
    ]
    lines += [
        "## Results per configuration",
        "",
        "Mean ± sample std over seeds (n). Accuracy, precision, recall and F1 (macro) on the test set, in %; "
        "MACs per image from fvcore (1 fused multiply-add = 1).",
        "",
        "| configuration | accuracy | precision | recall | F1 | params | MACs/image | latency b=1 (ms) "
        "| throughput (img/s) | train time (s) | epochs to best |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group in groups:
        t = group_table(group)
        lines.append(
            f"| {group.label} | {_pct(t['test_accuracy'])} | {_pct(t['test_precision_macro'])} | "
            f"{_pct(t['test_recall_macro'])} | {_pct(t['test_f1_macro'])} | {t['params_total'].mean:,.0f} | "
            f"{t['macs_per_image'].mean:,.0f} | {t['latency_ms_b1'].fmt(1, 2)} | {t['throughput_img_s'].fmt(1, 0)} | "
            f"{t['train_time_s'].fmt(1, 1)} | {t['best_epoch'].fmt(1, 1)} |"
        )
    if pairs:
        lines += [
            "",
            "## Standard vs depthwise-separable",
            "",
            "Differences are separable minus standard (accuracy points). p: Welch's t-test on test accuracy "
            "across seeds. Ratios are standard / separable.",
            "",
            "| standard | separable | Δ accuracy | Δ F1 | p | verdict | params ratio | MACs ratio "
            "| latency speedup | epoch-time speedup |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in pairs:
            pv = "—" if p.p_value is None else f"{p.p_value:.3g}"
            lat = "—" if p.latency_speedup is None else f"{p.latency_speedup:.2f}x"
            tr = "—" if p.train_time_ratio is None else f"{p.train_time_ratio:.2f}x"
            lines.append(
                f"| {p.standard.label} | {p.separable.label} | {100 * p.accuracy_diff:+.2f} | "
                f"{100 * p.f1_diff:+.2f} | {pv} | {p.note} | {p.param_ratio:.2f}x | {p.mac_ratio:.2f}x | "
                f"{lat} | {tr} |"
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
    lines += [
        "",
        "## Fit diagnosis per run",
        "",
        f"Rule: {DIAGNOSIS_RULE}",
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
