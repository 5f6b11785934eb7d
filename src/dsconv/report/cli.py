"""``dsconv-report SWEEP_DIR [SWEEP_DIR ...] [--out DIR] [--bench DIR] [--markdown-table [FILE]]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsconv.errors import DsconvError
from dsconv.report.collect import find_runs, group_runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dsconv-report",
        description="Aggregate runs (single runs and multirun sweeps) into report.md, metrics_comparison.json "
        "and plots. Runs differing only by trainer.seed are grouped; standard/separable twins and the "
        "distilled, budget-matched and pruned variants of an architecture are compared with Welch's t-test "
        "and the Mann-Whitney U test.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories to read")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: first dir)")
    parser.add_argument(
        "--bench",
        type=Path,
        default=None,
        help="a dsconv-bench output dir (or its results.json): latency/throughput columns and speed ratios "
        "come from it (rows matched by model, conv kind and size) instead of the runs' one-off profiles",
    )
    parser.add_argument(
        "--markdown-table",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="print the per-architecture comparison table as GitHub markdown (or write it to FILE) and write "
        "nothing else; made only from the files on disk, for regenerating README sections",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except (DsconvError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    bench = None
    if args.bench is not None:
        from dsconv.report.timing import load_bench

        bench = load_bench(args.bench)  # before anything is read or written: a bad path costs nothing
    if args.markdown_table is None:
        from dsconv.report.search import search_report_or_none

        search = search_report_or_none(args.dirs, args.out)
        if search is not None:
            print(
                f"report: {search['report']} (Pareto search: {search['trials']} trials, {search['front']} on the "
                f"front; plot {search['plot']})"
            )
            return 0
    runs = find_runs(args.dirs)
    if not runs:
        print(
            f"error: no runs found under {', '.join(map(str, args.dirs))}: pass directories written by "
            "scripts/train.py (they contain metrics.json or .hydra/)",
            file=sys.stderr,
        )
        return 2
    groups = group_runs(runs)
    if args.markdown_table is not None:
        from dsconv.report.comparison import build_comparisons
        from dsconv.report.render import speed_source
        from dsconv.report.tables import comparison_markdown

        text = comparison_markdown(build_comparisons(groups, bench), speed_source(bench))
        if args.markdown_table == "-":
            sys.stdout.write(text)
        else:
            Path(args.markdown_table).write_text(text)
        return 0
    from dsconv.report.render import build_report

    out = args.out or args.dirs[0]
    payload = build_report(runs, groups, out, bench)
    failed = sum(r["status"] != "ok" for r in payload["runs"])
    print(
        f"report: {out / 'report.md'} ({len(runs)} runs, {len(groups)} configurations, "
        f"{len(payload['pairs'])} standard/separable pairs, {failed} failed or unfinished)"
    )
    print(summary_table(payload))
    return 0


def summary_table(payload: dict) -> str:
    """The console table: no ± for a single seed (there is no spread to show)."""
    rows = [("configuration", "test acc %", "F1 %", "params", "MACs/img")]
    for g in payload["groups"]:
        m = g["metrics"]
        acc, f1 = m["test_accuracy"], m["test_f1_macro"]
        spread = f" ± {100 * acc['std']:.2f}" if acc["n"] > 1 and acc["std"] is not None else ""
        rows.append(
            (
                g["label"],
                f"{100 * acc['mean']:.2f}{spread} (n={acc['n']})",
                f"{100 * f1['mean']:.2f}" if f1["mean"] is not None else "—",
                _count(m["params_total"]["mean"]),
                _count(m["macs_per_image"]["mean"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def _count(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:,.0f}"


if __name__ == "__main__":
    sys.exit(main())
