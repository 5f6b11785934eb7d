"""The study's questions answered in sentences, from a comparison's rows alone (no number typed by hand).

For one architecture set: what DS costs at the same architecture, how much each way of winning the gap
back recovers, whether DS at equal MACs beats the standard model, how the standard model pruned to the DS
budget compares, and what each costs in size and in the runs' own speed profiles. Every verdict is the same
stated rule: a difference is called real only when Welch's test gives p < 0.05 with ≥ 2 seeds on both sides.
"""

from __future__ import annotations

from dsconv.report.comparison import ArchitectureComparison, ComparisonRow
from dsconv.report.stats import SignificanceTest, accuracies, two_sample_tests
from dsconv.report.timing import BenchResults, match_bench_row

ALPHA = 0.05
RULE = (
    f"A difference is called real only when Welch's t-test gives p < {ALPHA:g} with ≥ 2 seeds on both sides; "
    "the Mann-Whitney p is given beside it, with the smallest p it can reach at those seed counts."
)


def _acc(row: ComparisonRow) -> str:
    return f"{row.accuracy.fmt(100, 2).replace(' (n=', '% (n=')}"


def _test_text(diff: float, test: SignificanceTest | None, higher: str, lower: str) -> str:
    """``[Welch p 0.033, Mann-Whitney p 0.33, floor 0.33]: **significantly lower**``."""
    if test is None or test.n_a < 2 or test.n_b < 2:
        n = "?" if test is None else f"{test.n_a} vs {test.n_b}"
        return f"({n} seeds: too few for a test, no verdict)"
    mann = f"Mann-Whitney p {test.mannwhitney_p:.2g}, floor {test.mannwhitney_min_p:.2g}"
    if test.welch_p is None:
        return f"[no Welch p: no variance within either group; {mann}]: no verdict"
    text = f"[Welch p {test.welch_p:.2g}, {mann}]"
    if test.welch_p < ALPHA:
        return f"{text}: **{higher if diff > 0 else lower}**"
    return f"{text}: **not distinguishable from seed noise**"


def _against(row: ComparisonRow, other: ComparisonRow, name: str, higher: str, lower: str) -> str:
    """``+0.40 points against DS [Welch p ...]: **verdict**``."""
    diff = row.accuracy.mean - other.accuracy.mean
    test = two_sample_tests(accuracies(row.group), accuracies(other.group))
    return f"{100 * diff:+.2f} points against {name} {_test_text(diff, test, higher, lower)}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "—"


def _size(row: ComparisonRow, base: ComparisonRow, name: str) -> str:
    return (
        f"{row.params.mean:,.0f} parameters ({_ratio(row.params.mean, base.params.mean)} {name}'s), "
        f"{row.macs.mean:,.0f} MACs/image ({_ratio(row.macs.mean, base.macs.mean)})"
    )


def _recovered(row: ComparisonRow) -> str:
    return f"{row.gap.fmt()} of the gap recovered" if row.gap is not None and row.gap.estimate is not None else ""


def _latency(row: ComparisonRow) -> str:
    return (
        "not profiled"
        if row.latency.median is None
        else f"{row.latency.median:.2f} ms" + (" ⚠ noisy" if row.latency.noisy else "")
    )


def _measured(row: ComparisonRow, standard: ComparisonRow, bench: BenchResults) -> str:
    """``DS 0.58 ms at batch 1 (1.05x standard's speed), 3093 img/s, peak 118/360 MiB``."""
    text = f"{row.role} {row.latency.median:.2f} ms at batch 1"
    if row is not standard and standard.latency.median:
        text += f" ({standard.latency.median / row.latency.median:.2f}x standard's speed)"
    found = match_bench_row(row.group, bench) or {}
    if row.throughput.median is not None:
        batch = found.get("throughput_batch")
        text += f", {row.throughput.median:.0f} img/s" + (f" at batch {batch}" if batch else "")
    memory = [found.get(k) for k in ("peak_mem_infer_mib", "peak_mem_train_mib")]
    if all(isinstance(v, int | float) for v in memory):
        text += f", peak memory {memory[0]:.1f} MiB inference / {memory[1]:.1f} MiB training step"
    return text + (" ⚠ noisy" if row.latency.noisy or row.throughput.noisy else "")


def _speed_line(comparison: ArchitectureComparison, standard: ComparisonRow, bench: BenchResults | None) -> str:
    profiled = [row for row in comparison.rows if row.latency.median is not None]
    if not profiled:
        return ""
    if bench is not None and all(row.latency.source == "bench" for row in profiled):
        missing = [row.role for row in comparison.rows if row.latency.median is None]
        return (
            "- **What each buys in speed and memory**, measured side by side by `dsconv-bench` (eager fp32, "
            "NCHW; one seed's trained networks; the distilled student is the DS network): "
            + "; ".join(_measured(row, standard, bench) for row in profiled)
            + (f"; not benched: {', '.join(missing)}" if missing else "")
            + "."
        )
    return (
        "- **Speed in the runs' own profiles** (batch-1 latency, measured once after each training while "
        "other runs shared the CPU, never side by side; the interleaved bench is the number to trust): "
        + ", ".join(f"{row.role} {_latency(row)}" for row in profiled)
        + "."
    )


def answer_lines(comparison: ArchitectureComparison, bench: BenchResults | None = None) -> list[str]:
    """Markdown bullets answering the study's questions for one architecture set (empty without a pair)."""
    rows = {row.role: row for row in comparison.rows}
    standard, ds = rows.get("standard"), rows.get("DS")
    if standard is None or ds is None:
        return []
    up, down = "significantly higher", "significantly lower"
    lines = [
        f"- **What DS costs at the same architecture**: standard {_acc(standard)}, DS {_acc(ds)}: DS is "
        f"{_against(ds, standard, 'standard', up, down)}; it has {_size(ds, standard, 'standard')}."
    ]
    for row in comparison.rows:
        if row.role in ("standard", "DS"):
            continue
        recovered = _recovered(row)
        if row.role.startswith("DS at equal"):
            lines.append(
                f"- **Does DS at equal MACs beat standard?** {_acc(row)}: "
                f"{_against(row, standard, 'standard', 'yes, ' + up, 'no, ' + down)}; it has "
                f"{_size(row, standard, 'standard')}, and {recovered} over plain DS."
            )
        elif row.role.startswith("standard pruned"):
            lines.append(
                f"- **The standard model pruned to the DS budget**: {_acc(row)}: "
                f"{_against(row, ds, 'DS', up, down)}, and {_against(row, standard, 'unpruned standard', up, down)}; "
                f"it has {_size(row, ds, 'DS')}."
            )
        else:
            what = "distillation" if row.role == "DS + KD" else row.role
            lines.append(
                f"- **What {what} wins back**: {_acc(row)}: {_against(row, ds, 'DS', up, down)}"
                + (f"; {recovered}." if recovered else ".")
            )
    speed = _speed_line(comparison, standard, bench)
    return lines + ([speed] if speed else [])


def answers_markdown(comparisons: list[ArchitectureComparison], bench: BenchResults | None = None) -> str:
    blocks = []
    for comparison in comparisons:
        lines = answer_lines(comparison, bench)
        if lines:
            blocks.append("\n".join([f"**{comparison.title}**", "", *lines]))
    if not blocks:
        return "No standard/DS pair among these runs: nothing to answer.\n"
    return "\n\n".join(blocks) + f"\n\n{RULE}\n"
