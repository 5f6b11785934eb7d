"""GitHub-markdown tables of the architecture comparisons, made only from files on disk.

``dsconv-report DIR --markdown-table`` prints these; the README's result sections are regenerated from
them, so the text holds no absolute paths, dates or anything else that changes between two renders.
"""

from __future__ import annotations

import math

from dsconv.report.comparison import GAP_METHOD, ArchitectureComparison
from dsconv.report.stats import Summary
from dsconv.report.timing import NOISE_CV


def p_text(p: float | None) -> str:
    return "—" if p is None else f"{p:.3g}"


def count_text(summary: Summary) -> str:
    return "—" if summary.n == 0 or math.isnan(summary.mean) else f"{summary.mean:,.0f}"


def timing_note(source: str) -> str:
    return (
        f"Speed columns: median [spread] from {source}. Spread: p10–p90 over seeds for the runs' profiles "
        "(median–p90 of the calls for a single run), the 95% CI of the median (else median–p90 of the timed "
        f"calls) for a bench run; ⚠ noisy = varies more than {NOISE_CV:.0%} across seeds, "
        "a profile or bench measurement flagged itself, or one measurement only. Ratios of numbers that were "
        "not measured side by side are marked as such."
    )


def comparison_markdown(comparisons: list[ArchitectureComparison], source: str) -> str:
    """One table per architecture set: its rows against the plain DS row."""
    lines: list[str] = []
    for comparison in comparisons:
        lines += [
            f"**{comparison.title}**",
            "",
            "| row | configuration | test accuracy % | Δ vs DS (points) | p Welch vs DS | p Mann-Whitney vs DS "
            "| gap recovered | params | MACs/image | latency b=1 ms | throughput img/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in comparison.rows:
            test = row.test_vs_ds
            welch = p_text(test.welch_p) if test else "—"
            if test and test.welch_p is None and test.mannwhitney_p is not None:
                welch = "n/a (no variance)"
            delta = "—" if row.delta_vs_ds is None else f"{100 * row.delta_vs_ds:+.2f}"
            lines.append(
                f"| {row.role} | {row.group.label} | {row.accuracy.fmt(100, 2)} | {delta} | {welch} | "
                f"{p_text(test.mannwhitney_p) if test else '—'} | {row.gap.fmt() if row.gap else '—'} | "
                f"{count_text(row.params)} | {count_text(row.macs)} | {row.latency.fmt(3)} | {row.throughput.fmt(0)} |"
            )
        lines.append("")
    min_ps = {r.test_vs_ds.mannwhitney_min_p for c in comparisons for r in c.rows if r.test_vs_ds}
    floor = max((p for p in min_ps if p is not None), default=None)
    if comparisons:
        if floor is not None and floor >= 0.05:
            lines += [
                f"With this few seeds the smallest two-sided Mann-Whitney p any row can reach is {floor:.3g}: "
                "its p-values cannot show significance at 0.05 however large the difference.",
                "",
            ]
        lines += [
            "Accuracy: mean ± sample std over seeds (n). p-values: two-sided, each row against the plain DS row "
            "(Mann-Whitney exact for small n); no Welch p where neither group varies. Gap recovered: "
            f"(acc − acc_DS) / (acc_standard − acc_DS), ± {GAP_METHOD}.",
            "",
            timing_note(source),
            "",
        ]
    return "\n".join(lines)
