"""Regenerate the README's result tables from the committed files under results/ (or check them).

Every generated block sits between two markers that name its source::

    <!-- table report results/mnist -->        dsconv-report --markdown-table of results/mnist/runs
    <!-- table speedrun results/speedrun/mnist.json -->   scripts/bench_train.py --speedrun --json output
    <!-- table front results/search/fashion_mnist -->     front.json (+ rerun.json) of a Pareto search
    <!-- table csv results/bench/runtime_pairs.csv -->    any CSV file, as a markdown table
    ...generated text...
    <!-- /table -->

    python scripts/readme_tables.py          # rewrite README.md in place
    python scripts/readme_tables.py --check  # exit 1 when README.md and results/ disagree (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table (\w+) (\S+) -->\n)(.*?)(<!-- /table -->)", re.S)


def report_table(source: Path) -> str:
    from dsconv.report.cli import main as report

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = report([str(source / "runs"), "--markdown-table", "-"])
    if status != 0:
        raise SystemExit(f"error: dsconv-report failed on {source / 'runs'} (exit {status})")
    return out.getvalue().strip() + "\n"


def speedrun_table(source: Path) -> str:
    result = json.loads(source.read_text())
    lines = [
        "| contestant | median process s (min–max) | start-up s | fit s | after fit s | test accuracy % (mean ± std) "
        "| seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in (("dsconv", f"`dsconv-train experiment={result['experiment']}`"), ("plain", "plain script")):
        row = result[name]
        std = row["std_test_accuracy"]
        accuracy = f"{100 * row['mean_test_accuracy']:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")
        times = f"{row['median_process_s']:.2f} ({row['min_process_s']:.2f}–{row['max_process_s']:.2f})"
        phases = [f"{row[f'median_{key}']:.2f}" if f"median_{key}" in row else "—" for key in PHASES]
        lines.append(f"| {label} | {times} | {' | '.join(phases)} | {accuracy} | {len(row['runs'])} |")
    lines += [
        "",
        f"Ratio dsconv / plain script (median whole-process time): **{result['ratio_dsconv_over_plain']:.2f}x**. "
        "Phases (medians): start-up = process start to the first training step, fit = training with the "
        "per-epoch validation, after fit = the test evaluation of the best checkpoint, every output file, exit.",
    ]
    return "\n".join(lines) + "\n"


PHASES = ("startup_s", "fit_s", "after_fit_s")


def front_table(source: Path) -> str:
    """The front (``front.json``: non-dominated trials, cheapest first) and its re-runs' test accuracy."""
    front = json.loads((source / "front.json").read_text())
    reruns = _rerun_accuracy(source / "rerun.json")
    lines = [
        "| trial | stages, kernel, multiplier, width | val acc % (1 seed) | cost | test acc % of the re-runs |",
        "|---|---|---|---|---|",
    ]
    for trial in front:
        corner = f" ({trial['corner']})" if trial.get("corner") else ""
        lines.append(
            f"| {trial['number']} | `{trial['label']}`{corner} | {100 * trial['accuracy']:.2f} | "
            f"{trial['cost']:,.0f} {trial['cost_metric']} | {reruns.get(int(trial['number']), '—')} |"
        )
    return "\n".join(lines) + "\n"


def _rerun_accuracy(path: Path) -> dict[int, str]:
    if not path.is_file():
        return {}
    texts = {}
    for row in json.loads(path.read_text())["configs"]:
        if row["test_accuracy_mean"] is None:
            continue
        std = row["test_accuracy_std"]
        spread = f" ± {100 * std:.2f}" if std is not None else ""
        texts[int(row["number"])] = f"{100 * row['test_accuracy_mean']:.2f}{spread} (n={row['n']})"
    return texts


def csv_table(source: Path) -> str:
    with source.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _cell(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.3g}"


KINDS = {"report": report_table, "speedrun": speedrun_table, "front": front_table, "csv": csv_table}


def render(readme: str, root: Path = REPO) -> str:
    def replace(match: re.Match) -> str:
        kind, source = match.group(2), root / match.group(3)
        if kind not in KINDS:
            raise SystemExit(f"error: unknown table kind {kind!r} in README: use one of {', '.join(KINDS)}")
        if not source.exists():
            raise SystemExit(f"error: {match.group(3)} (named in README) does not exist: commit it or fix the marker")
        return match.group(1) + KINDS[kind](source) + match.group(5)

    return BLOCK.sub(replace, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not what results/ give")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(f"error: {args.readme} disagrees with results/: run python scripts/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
