"""Re-train a Pareto search's front with several seeds, so the front is not one lucky seed.

    python -m dsconv.search.rerun SWEEP_DIR [--seeds 0 1 2] [--trials N ...] [--override KEY=VALUE ...]

Each front configuration (or each ``--trials`` number) is trained again as an ordinary run, once per seed,
with the search's own overrides (dataset, budget, ...) and the trial's architecture written out as plain
``model.*`` overrides, in ``<sweep dir>/rerun/trial_<N>/seed_<S>``. Runs whose ``metrics.json`` exists are
kept, so an interrupted re-run resumes. The summary (``rerun.json`` and the table printed) gives the *test*
accuracy of these re-runs only: the search itself selected on validation accuracy and never saw test data.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from dsconv.errors import DsconvError
from dsconv.search.front import front, load_trials, open_study

MIN_SEEDS = 3
RERUN_DIR = "rerun"
SUMMARY_FILE = "rerun.json"


def architecture_overrides(trial: dict[str, Any]) -> list[str]:
    """The trial's architecture as overrides of an ordinary run (no search preset needed)."""
    return [
        f"++model.conv=[{','.join(trial['conv'])}]",
        f"++model.kernel_size=[{','.join(str(k) for k in trial['kernel_size'])}]",
        f"++model.depth_multiplier={trial['depth_multiplier']}",
        f"++model.width={trial['width']:g}",
    ]


def architecture_key(trial: dict[str, Any]) -> tuple:
    return (tuple(trial["conv"]), tuple(trial["kernel_size"]), trial["depth_multiplier"], float(trial["width"]))


def distinct_configurations(
    trials: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    """The first trial of each distinct architecture, and for each of those the later trials that repeat it."""
    first: dict[tuple, dict[str, Any]] = {}
    copies: dict[int, list[dict[str, Any]]] = {}
    for trial in trials:
        key = architecture_key(trial)
        if key in first:
            copies.setdefault(first[key]["number"], []).append(trial)
        else:
            first[key] = trial
    return list(first.values()), copies


def base_overrides(task_overrides: list[str]) -> list[str]:
    """The search's own overrides minus the search itself and the seed (each re-run sets its own)."""
    dropped = ("hparams_search", "search", "hydra", "objective", "trainer.seed")
    kept = []
    for override in task_overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if not any(key == name or key.startswith(name + ".") for name in dropped):
            kept.append(override)
    return kept


def run_commands(
    sweep_dir: Path, trials: list[dict[str, Any]], seeds: list[int], extra: list[str], out: Path
) -> list[tuple[dict[str, Any], int, Path, list[str]]]:
    """(trial, seed, run dir, command) for every re-run."""
    base = base_overrides(list(open_study(sweep_dir).user_attrs.get("task_overrides", [])))
    commands = []
    for trial in trials:
        for seed in seeds:
            run_dir = out / f"trial_{trial['number']}" / f"seed_{seed}"
            overrides = [*base, *architecture_overrides(trial), f"trainer.seed={seed}", *extra]
            command = [sys.executable, "-m", "dsconv.train", *overrides, f"hydra.run.dir={run_dir}"]
            commands.append((trial, seed, run_dir, command))
    return commands


def summarize(sweep_dir: Path, runs: list[tuple[dict[str, Any], int, Path]], seeds: list[int]) -> dict[str, Any]:
    """Test accuracy per configuration over its re-runs (mean, sample std, every seed)."""
    by_trial: dict[int, dict[str, Any]] = {}
    for trial, seed, run_dir in runs:
        entry = by_trial.setdefault(
            trial["number"],
            {
                "number": trial["number"],
                "label": trial["label"],
                "corner": trial["corner"],
                "conv": trial["conv"],
                "kernel_size": trial["kernel_size"],
                "depth_multiplier": trial["depth_multiplier"],
                "width": trial["width"],
                "cost_metric": trial["cost_metric"],
                "cost": trial["cost"],
                "search_val_acc": trial["accuracy"],
                "runs": [],
            },
        )
        metrics_path = run_dir / "metrics.json"
        accuracy = json.loads(metrics_path.read_text())["test_accuracy"] if metrics_path.is_file() else None
        entry["runs"].append({"seed": seed, "run_dir": str(run_dir), "test_accuracy": accuracy})
    for entry in by_trial.values():
        values = [r["test_accuracy"] for r in entry["runs"] if r["test_accuracy"] is not None]
        entry["n"] = len(values)
        entry["test_accuracy_mean"] = statistics.fmean(values) if values else None
        entry["test_accuracy_std"] = statistics.stdev(values) if len(values) > 1 else None
    return {"sweep_dir": str(sweep_dir), "seeds": seeds, "configs": list(by_trial.values())}


def table(summary: dict[str, Any]) -> str:
    rows = [
        "| trial | configuration | cost | search val acc | re-run test acc (mean ± std) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for entry in summary["configs"]:
        mean, std = entry["test_accuracy_mean"], entry["test_accuracy_std"]
        acc = "-" if mean is None else f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")
        cost = "-" if entry["cost"] is None else f"{entry['cost']:,.6g} {entry['cost_metric']}"
        val = "-" if entry["search_val_acc"] is None else f"{100 * entry['search_val_acc']:.2f}"
        name = entry["label"] + (f" ({entry['corner']})" if entry["corner"] else "")
        rows.append(f"| {entry['number']} | {name} | {cost} | {val} | {acc} | {entry['n']} |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dsconv-search-rerun", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep dir of a +hparams_search=pareto run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per configuration (>= 3)")
    parser.add_argument("--trials", type=int, nargs="+", help="trial numbers to re-run (default: the front)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra override")
    parser.add_argument("--out", type=Path, help="where the re-runs go (default: SWEEP_DIR/rerun)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = list(dict.fromkeys(args.seeds))
    try:
        if len(seeds) < MIN_SEEDS:
            raise DsconvError(f"--seeds {' '.join(map(str, seeds))}: give at least {MIN_SEEDS} distinct seeds")
        trials = load_trials(args.sweep_dir)
        if args.trials:
            known = {t["number"]: t for t in trials if t["state"] == "COMPLETE"}
            missing = sorted(set(args.trials) - set(known))
            if missing:
                raise DsconvError(f"--trials {missing}: no such completed trial in {args.sweep_dir}")
            chosen = [known[n] for n in dict.fromkeys(args.trials)]
        else:
            chosen = front(trials)
    except DsconvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.sweep_dir / RERUN_DIR
    distinct, copies = distinct_configurations(chosen)
    order = {t["number"]: i for i, t in enumerate(chosen)}
    commands = run_commands(args.sweep_dir, distinct, seeds, args.override, out)
    failed = []
    for _trial, _seed, run_dir, command in commands:
        if args.dry_run:
            print(shlex.join(command))
            continue
        if (run_dir / "metrics.json").is_file():
            continue  # done by an earlier re-run
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(run_dir)
    if args.dry_run:
        return 0
    runs = [(t, s, d) for t, s, d, _ in commands]
    # A configuration NSGA-II proposed twice is trained once; each copy reports the same re-runs.
    runs += [(copy, s, d) for t, s, d in list(runs) for copy in copies.get(t["number"], [])]
    summary = summarize(args.sweep_dir, sorted(runs, key=lambda r: order[r[0]["number"]]), seeds)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(table(summary))
    print(f"\n{len(commands) - len(failed)} of {len(commands)} re-runs finished; summary in {out / SUMMARY_FILE}")
    for run_dir in failed:
        print(f"error: re-run failed: {run_dir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
