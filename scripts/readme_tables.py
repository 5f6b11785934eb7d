"""Regenerate the README's result tables from the committed files under results/ (or check them).

Every generated block sits between two markers that name its source::

    <!-- table report results/mnist -->        dsconv-report --markdown-table of results/mnist/runs
    <!-- table answers results/mnist -->      the study's questions answered in sentences from the same runs
    <!-- table speedrun results/speedrun/mnist.json -->   scripts/bench_train.py --speedrun --json output
    <!-- table front results/search/fashion_mnist -->     dsconv-report of a Pareto search (trials.json, rerun.json)
    <!-- table csv results/bench/runtime_pairs.csv -->    any CSV file, as a markdown table
    <!-- table runtimes results/bench/runtime_pairs.csv -->  speedup and realised ratio per runtime
    <!-- table beforeafter results/speedrun/startup_ab.json -->  two commits' whole-process runs, alternating
    <!-- table throughput results/speedrun/cifar_throughput.json -->  scripts/bench_train.py --json
    <!-- table roofline results/bench/roofline_summary.csv -->  per layer type, over all networks
    <!-- table kdsweep results/kd_tuning/fashion_mnist -->  alpha x T on validation, test of the pick only
    <!-- table sizes results/bench/results.csv -->  exact params and MACs of every benchmarked network
    <!-- table rerun results/mnist_protocol -->  one run's command and seed on two machines
    <!-- table claims results -->                  the seeds' claims, held / not held, from every study
                                                   (results/*/metrics_comparison.json) and results/bench
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
import os
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table (\w+) (\S+) -->\n)(.*?)(<!-- /table -->)", re.S)


def _study_args(source: Path) -> list[str]:
    """The runs of a study, and its side-by-side bench when it has one (``results/<study>/bench/``), as paths
    relative to the repository: the report names its bench, and the README must not depend on the checkout."""
    relative = os.path.relpath(source, REPO)
    args = [os.path.join(relative, "runs")]
    if _has_bench(source):
        args += ["--bench", os.path.join(relative, "bench")]
    return args


def _has_bench(source: Path) -> bool:
    return (source / "bench" / "results.json").is_file()


def report_table(source: Path) -> str:
    from dsconv.report.cli import main as report

    out = io.StringIO()
    with contextlib.chdir(REPO), contextlib.redirect_stdout(out):
        status = report([*_study_args(source), "--markdown-table", "-"])
    if status != 0:
        raise SystemExit(f"error: dsconv-report failed on {source / 'runs'} (exit {status})")
    return out.getvalue().strip() + "\n"


def answers_block(source: Path) -> str:
    from dsconv.report.answers import answers_markdown
    from dsconv.report.collect import find_runs, group_runs
    from dsconv.report.comparison import build_comparisons
    from dsconv.report.timing import load_bench

    bench = load_bench(source / "bench") if _has_bench(source) else None
    return answers_markdown(build_comparisons(group_runs(find_runs([source / "runs"])), bench), bench)


def speedrun_table(source: Path) -> str:
    result = json.loads(source.read_text())
    lines = [
        "| contestant | median process s (min–max) | start-up s | fit s | after fit s | test accuracy % (mean ± std) "
        "| seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    command = " ".join([f"dsconv-train experiment={result['experiment']}", *result.get("overrides", [])])
    for name, label in (("dsconv", f"`{command}`"), ("plain", "plain script")):
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
        "per-epoch validation, after fit = the test evaluation of the best checkpoint, every output file, exit."
        + _machine_sentence(result),
    ]
    return "\n".join(lines) + "\n"


def _machine_sentence(result: dict) -> str:
    """The CPU a benchmark ran on, where its JSON records it (the vector unit decides bf16's speed)."""
    if "cpu_capability" not in result:
        return ""
    # A speed-run's precision (a throughput table names it in its column labels).
    precisions = {result[name]["runs"][0]["precision"] for name in ("dsconv", "plain") if name in result}
    precision = f", {' and '.join(sorted(precisions))}" if precisions else ""
    machine = f"{result['cpu_model']}, {result['cpu_count']} CPUs, torch kernels {result['cpu_capability']}"
    if "amx_bf16" in result.get("cpu_flags", ()):  # oneDNN's bf16 convolutions run on the AMX tiles
        machine += " with AMX"
    return f" Machine: {machine}{precision}."


PHASES = ("startup_s", "fit_s", "after_fit_s")


def before_after_table(source: Path) -> str:
    """Medians of whole-process runs of two commits, run alternately (``results/speedrun/startup_ab.json``)."""
    result = json.loads(source.read_text())
    lines = [
        "| side | commit | change | median start-up s | median process s | test accuracy | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, info in result["sides"].items():
        runs = [run for run in result["runs"] if run["side"] == side]
        accuracy = ", ".join(sorted({f"{100 * run['test_accuracy']:.2f}%" for run in runs}))
        startup = statistics.median(run["startup_s"] for run in runs)
        process = statistics.median(run["process_s"] for run in runs)
        cells = [side, info["commit"], info["change"], f"{startup:.2f}", f"{process:.2f}", accuracy, str(len(runs))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + f"`{result['command']}`\n"


def front_table(source: Path) -> str:
    """A Pareto search's front (from ``dsconv-report``'s trials.json + rerun.json) and its corners."""
    from dsconv.report.search import corner_lines, read_search
    from dsconv.report.search import front_table as table
    from dsconv.search.front import front

    trials, rerun = read_search(source)
    best = front(trials)
    return table(best, rerun) + "\n\n" + "\n".join(corner_lines(trials, best)) + "\n"


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


def best_runtime_table(source: Path) -> str:
    """Per bench pair and batch: every runtime's realised ratio, the best one (outputs agreeing) in bold."""
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    lines = [
        "| pair (variant) | batch | MAC ratio | " + " | ".join(f"{r} speedup (realised)" for r in runtimes) + " |",
        "|" + "---|" * (3 + len(runtimes)),
    ]
    for key in dict.fromkeys((r["pair"], r["variant"], r["batch"]) for r in rows):
        group = {r["runtime"]: r for r in rows if (r["pair"], r["variant"], r["batch"]) == key}
        agreeing = [r for r in group.values() if r["agrees"] == "True"]
        best = max(agreeing, key=lambda r: float(r["realized"]))["runtime"] if agreeing else None
        cells = []
        for runtime in runtimes:
            row = group.get(runtime)
            if row is None:
                cells.append("—")
                continue
            text = f"{float(row['speedup']):.2f}x ({100 * float(row['realized']):.0f}%)"
            text += "" if row["agrees"] == "True" else " ✗ outputs differ"
            text += " ⚠" if row["noisy"] == "True" else ""
            cells.append(f"**{text}**" if runtime == best else text)
        mac = float(next(iter(group.values()))["mac_ratio"])
        lines.append(f"| {key[0]} ({key[1].rsplit('/', 1)[-1]}) | {key[2]} | {mac:.2f}x | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def throughput_table(source: Path) -> str:
    """``scripts/bench_train.py --json``: training images/s of each model against the plain tutorial loop."""
    result = json.loads(source.read_text())
    labels = [k for k in result["models"][0] if k != "model"]
    lines = [
        "| model | " + " | ".join(f"{label} img/s (acc after)" for label in labels) + " | best / reference |",
        "|" + "---|" * (len(labels) + 2),
    ]
    for entry in result["models"]:
        rates = [entry[label]["images_per_s"] for label in labels]
        cells = [f"{rate:.0f} ({100 * entry[label]['train_acc_after']:.1f}%)" for rate, label in zip(rates, labels)]
        lines.append(f"| `{entry['model']}` | " + " | ".join(cells) + f" | **{max(rates[1:]) / rates[0]:.2f}x** |")
    pipeline = result["pipeline"]
    lines += [
        "",
        f"Data pipeline alone (crop + flip + normalise): DataLoader {pipeline['dataloader_batches_per_s']:.1f} "
        f"batches/s, dsconv {pipeline['dsconv_batches_per_s']:.1f} batches/s ({pipeline['ratio']:.1f}x); torch "
        f"{result['torch']}, {result['threads']} threads." + _machine_sentence(result),
    ]
    return "\n".join(lines) + "\n"


def roofline_table(source: Path) -> str:
    """``roofline_summary.csv`` by dtype and layer type, over every benchmarked network."""
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    lines = [
        "| dtype | layer type | layers | achieved GFLOP/s (min–max over networks) | fraction of its roofline bound "
        "(min–max) | share of the DS twins' conv+linear time (min–max) |",
        "|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys((r["dtype"], r["layer_type"]) for r in rows):
        group = [r for r in rows if (r["dtype"], r["layer_type"]) == key]
        rates = [float(r["achieved_gflops"]) for r in group]
        fractions = [float(r["fraction_of_bound"]) for r in group]
        shares = [float(r["time_share"]) for r in group if r["target"].endswith("/separable")]
        share = f"{100 * min(shares):.0f}–{100 * max(shares):.0f}%" if shares else "—"
        lines.append(
            f"| {key[0]} | {key[1]} | {sum(int(r['layers']) for r in group)} | {min(rates):.1f}–{max(rates):.1f} | "
            f"{100 * min(fractions):.0f}–{100 * max(fractions):.0f}% | {share} |"
        )
    return "\n".join(lines) + "\n"


def kd_sweep_table(source: Path) -> str:
    """A distillation sweep (run dirs under ``source``): validation accuracy per (alpha, T); the test
    accuracy of the configuration validation picks only, so the sweep never tunes on the test set."""
    import yaml

    rows = []
    for metrics_path in sorted(source.glob("**/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        config = yaml.safe_load((metrics_path.parent / "config.yaml").read_text())
        distill = config.get("distill") or {}
        kind = "KD" if distill.get("teacher") else ("teacher" if config["model"]["conv"] == "standard" else "DS")
        rows.append((kind, distill.get("alpha"), distill.get("temperature"), metrics))
    order = {"teacher": 0, "DS": 1, "KD": 2}
    rows.sort(key=lambda r: (order[r[0]], r[1] or 0, r[2] or 0))
    students = [r for r in rows if r[0] != "teacher"]
    chosen = max(students, key=lambda r: r[3]["best_val_acc"]) if students else None
    lines = [
        "| run | alpha | T | best val acc % | test acc % (the validation pick only) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        kind, alpha, temperature, metrics = row
        test = f"{100 * metrics['test_accuracy']:.2f}" if row is chosen or kind == "teacher" else ""
        name = {"teacher": "teacher (standard)", "DS": "DS, no distillation", "KD": "DS + KD"}[kind]
        if row is chosen:
            name = f"**{name}** (picked)"
        cells = [name, "—" if alpha is None else f"{alpha:g}", "—" if temperature is None else f"{temperature:g}"]
        lines.append(f"| {' | '.join(cells)} | {100 * metrics['best_val_acc']:.2f} | {test} |")
    return "\n".join(lines) + "\n"


def rerun_table(source: Path) -> str:
    """The same command and seed run on two machines: ``earlier_machine/<variant>/seed<N>`` against ``runs/``."""
    lines = [
        "| run | machine | test accuracy % | epochs run (early stopping) | best epoch | best val loss |",
        "|---|---|---|---|---|---|",
    ]
    for earlier in sorted(source.glob("earlier_machine/*/seed*/metrics.json")):
        name = f"{earlier.parent.parent.name} {earlier.parent.name}"
        now = source / "runs" / earlier.parent.parent.name / earlier.parent.name / "metrics.json"
        for label, path in (("earlier", earlier), ("later (the study's run)", now)):
            if path.is_file():
                m = json.loads(path.read_text())
                cells = [name, label, f"{100 * m['test_accuracy']:.2f}", str(m["epochs_run"]), str(m["best_epoch"])]
                lines.append("| " + " | ".join(cells) + f" | {m['best_val_loss']:.4f} |")
    return "\n".join(lines) + "\n"


def sizes_table(source: Path) -> str:
    """Exact sizes of every benchmarked network (``results.csv`` of a bench run), with the pairs' ratios."""
    with source.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["kind"] == "model"]
    seen: dict[str, dict[str, str]] = {}
    for row in rows:
        seen.setdefault(row["target"], row)
    lines = [
        "| network | input | conv | params | conv+linear MACs/image | fvcore MACs/image |",
        "|---|---|---|---|---|---|",
    ]
    for row in seen.values():
        cells = [f"`{row['target']}`", row["input_shape"], row["conv"]]
        cells += [f"{int(float(row[key])):,}" for key in ("params", "macs_per_image", "fvcore_macs_per_image")]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = []
    for pair in dict.fromkeys(r["pair"] for r in seen.values()):
        members = [r for r in seen.values() if r["pair"] == pair]
        base = next((r for r in members if r["conv"] == "standard"), None)
        for other in (r for r in members if r is not base and base is not None):
            macs = float(base["macs_per_image"]) / float(other["macs_per_image"])
            fvcore = float(base["fvcore_macs_per_image"]) / float(other["fvcore_macs_per_image"])
            params = float(base["params"]) / float(other["params"])
            ratios.append(f"{pair}: {params:.2f}x fewer parameters, {macs:.2f}x fewer MACs ({fvcore:.2f}x by fvcore)")
    return "\n".join(lines) + "\n\nStandard / DS: " + "; ".join(ratios) + ".\n"


def claims_table(source: Path) -> str:
    from dsconv.report.claims import claims_markdown

    studies = sorted(path.parent for path in source.glob("*/metrics_comparison.json"))
    return claims_markdown(studies, source / "bench")


KINDS = {
    "report": report_table,
    "answers": answers_block,
    "speedrun": speedrun_table,
    "beforeafter": before_after_table,
    "front": front_table,
    "csv": csv_table,
    "claims": claims_table,
    "runtimes": best_runtime_table,
    "throughput": throughput_table,
    "roofline": roofline_table,
    "kdsweep": kd_sweep_table,
    "sizes": sizes_table,
    "rerun": rerun_table,
}


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
