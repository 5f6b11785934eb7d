"""The study: standard vs DS on one dataset, with the ways to win the gap back, reproducible from results/.

Per seed, in dependency order (each run is an ordinary ``dsconv-train`` process):
  standard      mnist_cnn (the separable-options document's CNN)
  ds            mnist_cnn_separable (plain depthwise-separable twin)
  ds_options    mnist_cnn_separable_options (the document's custom separable conv)
  ds_equal_macs the DS twin widened to the standard model's conv+linear MACs (+model.match=macs)
  ds_kd         the DS twin distilled from this seed's standard run (+distill.teacher)
  pruned        this seed's standard run, L1 filter-pruned to the DS twin's MACs, then fine-tuned
A run whose metrics.json exists is skipped, so a killed study resumes by running the same command. Then
the small artifacts of every run are copied to ``results/<dataset>/runs/<variant>/seed<N>/`` and
``dsconv-report`` writes report.md, metrics_comparison.json and the figures from those copies alone.
With ``--bench``, ``dsconv-bench`` first measures the trained networks of one seed side by side (eager
fp32, NCHW: latency, throughput, a training step, peak memory) into ``results/<dataset>/bench/``, and the
report's speed columns come from there instead of each run's one-off profile.

    python scripts/study.py mnist --epochs 3 --seeds 0 1 2
    python scripts/study.py cifar10_jpeg --variants standard ds --model-pair cifar_cnn
    python scripts/study.py mnist --seeds 0 1 2 --bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = ("config.yaml", "metrics.json", "training_log.csv", "classification_report.json", "confusion_matrix.json")
# model option names per family: (standard, separable, separable with the document's options or None)
PAIRS = {
    "mnist_cnn": ("mnist_cnn", "mnist_cnn_separable", "mnist_cnn_separable_options"),
    "cifar_cnn": ("standard", "depthwise", None),
    "densenet4": ("densenet4_standard", "densenet4", None),
}
VARIANTS = ("standard", "ds", "ds_options", "ds_equal_macs", "ds_kd", "pruned")


def variant_overrides(variant: str, pair: tuple[str, str, str | None], runs: Path, seed: int, args) -> list[str]:
    standard, separable, options = pair
    teacher = runs / "standard" / f"seed{seed}"
    return {
        "standard": [f"model={standard}"],
        "ds": [f"model={separable}"],
        "ds_options": [f"model={options}"],
        "ds_equal_macs": [f"model={separable}", "+model.match=macs", f"+model.match_to={standard}"],
        "ds_kd": [f"model={separable}", f"+distill.teacher={teacher}"],
        "pruned": [
            f"model={standard}",
            f"+prune.from={teacher}",
            f"+prune.match_to={separable}",
            f"+prune.finetune_epochs={args.finetune_epochs}",
        ],
    }[variant]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a conf/dataset option: mnist, fashion_mnist, cifar10_jpeg, ...")
    parser.add_argument("--experiment", default="mnist_separable_options", help="the protocol preset")
    parser.add_argument("--model-pair", default="mnist_cnn", choices=sorted(PAIRS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="trainer.epochs (default: the preset's)")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=None, help="run dirs (default outputs/study/<dataset>)")
    parser.add_argument("--results", type=Path, default=None, help="committed results (default results/<dataset>)")
    parser.add_argument("--name", default=None, help="results sub-folder name (default: the dataset)")
    parser.add_argument("--bench", action="store_true", help="bench one seed's trained networks side by side")
    parser.add_argument("--bench-seed", type=int, default=None, help="the seed benched (default: the first)")
    # Anything else on the command line is a Hydra override for every run, e.g. trainer.num_threads=1.
    args, overrides = parser.parse_known_args()
    if bad := [o for o in overrides if "=" not in o or o.startswith("-")]:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (Hydra overrides look like key=value)")
    name = args.name or args.dataset
    runs = (args.runs or REPO / "outputs" / "study" / name).resolve()
    results = (args.results or REPO / "results" / name).resolve()
    pair = PAIRS[args.model_pair]
    variants = [v for v in args.variants if not (v == "ds_options" and pair[2] is None)]
    common = [f"experiment={args.experiment}", f"dataset={args.dataset}", "trainer.fast=true", *overrides]
    if args.epochs is not None:
        common.append(f"trainer.epochs={args.epochs}")
    for seed in args.seeds:
        for variant in variants:
            run_dir = runs / variant / f"seed{seed}"
            if (run_dir / "metrics.json").is_file():
                continue
            command = [sys.executable, str(REPO / "scripts" / "train.py"), *common, f"trainer.seed={seed}"]
            command += [*variant_overrides(variant, pair, runs, seed, args), f"hydra.run.dir={run_dir}"]
            if (run_dir / "checkpoints").is_dir():
                command.append("trainer.resume=auto")  # a killed run continues from its last checkpoint
            print(f"[study {name}] seed {seed} {variant}", flush=True)
            if subprocess.run(command, check=False).returncode != 0:
                print(f"error: the {variant} run for seed {seed} failed; rerun this command to resume", file=sys.stderr)
                return 1
    copy_artifacts(runs, results / "runs")
    # Paths relative to the repository: the report names its bench, and results/ must not name a checkout.
    where = Path(os.path.relpath(results, REPO))
    report = [sys.executable, str(REPO / "scripts" / "report.py"), str(where / "runs"), "--out", str(where)]
    if args.bench:
        seed = args.seeds[0] if args.bench_seed is None else args.bench_seed
        if subprocess.run(bench_command(runs, variants, seed, results / "bench"), check=False).returncode != 0:
            print(f"error: the bench of seed {seed} failed; the runs are intact, rerun this command", file=sys.stderr)
            return 1
        report += ["--bench", str(where / "bench")]
    return subprocess.run(report, cwd=REPO, check=False).returncode


def bench_command(runs: Path, variants: list[str], seed: int, out: Path) -> list[str]:
    """``dsconv-bench`` over one seed's trained networks, paired with its standard run. The distilled
    student is the DS twin's architecture, so the DS measurement stands for it too."""
    entries = []
    for variant in (v for v in variants if v != "ds_kd"):
        run_dir = runs / variant / f"seed{seed}"
        name = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["name"]
        # "<model>/<variant>": the report matches a row by the model name before the slash and its size.
        pairing = "" if variant == "standard" else f",pair_with:'{name}/standard'"
        entries.append(f"{{run:'{run_dir}',label:'{name}/{variant}'{pairing}}}")
    return [
        sys.executable,
        str(REPO / "scripts" / "bench.py"),
        f"models=[{','.join(entries)}]",
        "layers=[]",
        "dtypes=[fp32]",
        "memory_formats=[nchw]",
        "sections.roofline=false",
        "sections.runtimes=false",
        "output.plots=false",
        f"output.dir={out}",
        f"hydra.run.dir={runs / 'bench_hydra'}",  # Hydra's own files stay with the runs, out of results/
    ]


def copy_artifacts(runs: Path, target: Path) -> None:
    """The small, auditable files of every finished run (never checkpoints or TensorBoard events)."""
    for metrics in sorted(runs.glob("*/seed*/metrics.json")):
        run_dir = metrics.parent
        destination = target / run_dir.parent.name / run_dir.name
        destination.mkdir(parents=True, exist_ok=True)
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, destination / name)


if __name__ == "__main__":
    raise SystemExit(main())
