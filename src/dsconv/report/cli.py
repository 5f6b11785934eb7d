"""``dsconv-report SWEEP_DIR [SWEEP_DIR ...] [--out DIR]``: one comparison report for many runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsconv.report.collect import find_runs, group_runs
from dsconv.report.render import build_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dsconv-report",
        description="Aggregate runs (single runs and multirun sweeps) into report.md, metrics_comparison.json "
        "and plots. Runs differing only by trainer.seed are grouped; standard/separable twins are "
        "compared side by side with Welch's t-test.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories to read")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: first dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = find_runs(args.dirs)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not runs:
        print(
            f"error: no runs found under {', '.join(map(str, args.dirs))}: pass directories written by "
            "scripts/train.py (they contain metrics.json or .hydra/)",
            file=sys.stderr,
        )
        return 2
    out = args.out or args.dirs[0]
    groups = group_runs(runs)
    payload = build_report(runs, groups, out)
    failed = sum(r["status"] != "ok" for r in payload["runs"])
    print(
        f"report: {out / 'report.md'} ({len(runs)} runs, {len(groups)} configurations, "
        f"{len(payload['pairs'])} standard/separable pairs, {failed} failed or unfinished)"
    )
    print(_summary_table(payload))
    return 0


def _summary_table(payload: dict) -> str:
    rows = [("configuration", "test acc %", "F1 %", "params", "MACs/img")]
    for g in payload["groups"]:
        m = g["metrics"]
        acc, f1 = m["test_accuracy"], m["test_f1_macro"]
        rows.append(
            (
                g["label"],
                f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} (n={acc['n']})",
                f"{100 * f1['mean']:.2f}",
                f"{m['params_total']['mean']:,.0f}",
                f"{m['macs_per_image']['mean']:,.0f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


if __name__ == "__main__":
    sys.exit(main())
