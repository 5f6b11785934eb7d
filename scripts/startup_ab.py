"""Whole-process runs of two commits, alternating, to measure what a change did to start-up.

Each commit is checked out into a temporary git worktree and run as ``scripts/train.py`` with its own
``src`` first on the path, in the same venv; before/after alternate so drift on a shared machine hits
both sides alike. Per run: the whole process time (measured here), and the start-up, fit time and test
accuracy from the run's own ``metrics.json``. The JSON is what ``scripts/readme_tables.py``'s
``beforeafter`` table reads.

Each worktree's ``src`` is byte-compiled first (``--precompile both``, the default), as a pip-installed
package is: under ``PYTHONDONTWRITEBYTECODE=1`` (common in containers) an uncompiled tree is compiled
again, in memory, by every process. ``--precompile after`` with the same commit on both sides measures
what that costs:

    python scripts/startup_ab.py HEAD HEAD --precompile after --pairs 5 --json results/speedrun/bytecode_ab.json
    python scripts/startup_ab.py 3feef32 HEAD --pairs 3 --change-before "..." --change-after "..." \\
        --json results/speedrun/startup_ab_describe.json
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = ["experiment=mnist_speedrun", "trainer.seed=0", "hydra/job_logging=disabled"]


def short(commit: str) -> str:
    result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", commit], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {commit!r} is not a commit of this repository: pass a hash, tag or branch")
    return result.stdout.strip()


def one_run(tree: Path, out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    start = time.perf_counter()
    command = [sys.executable, str(tree / "scripts" / "train.py"), *RUN, f"hydra.run.dir={out}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"error: the run in {tree} failed (exit {result.returncode}): {result.stderr[-500:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "process_s": round(seconds, 2),
        "startup_s": metrics["startup_s"],
        "fit_s": round(metrics["train_time_s"], 2),
        "test_accuracy": metrics["test_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--change-before", default="", help="what the before side still does")
    parser.add_argument("--change-after", default="", help="what the after side changed")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument(
        "--precompile",
        choices=["both", "after", "none"],
        default="both",
        help="which sides' src is byte-compiled before the runs (both: as an installed package)",
    )
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs {args.pairs} must be >= 1")
    commits = {"before": short(args.before), "after": short(args.after)}
    runs = []
    with tempfile.TemporaryDirectory(prefix="startup_ab_") as tmp:
        trees = {}
        for side, commit in commits.items():
            trees[side] = Path(tmp) / side
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(trees[side]), commit])
            if args.precompile == "both" or args.precompile == side:
                compileall.compile_dir(trees[side] / "src", quiet=1)
        try:
            for repeat in range(1, args.pairs + 1):
                for side in commits:
                    row = one_run(trees[side], Path(tmp) / "runs" / f"{side}{repeat}")
                    runs.append({"side": side, "repeat": repeat, **row})
                    print(f"{side} {commits[side]} #{repeat}: {row}", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)])
    result = {
        "command": f"dsconv-train {' '.join(RUN[:2])} (whole processes; before, after alternating, "
        f"{args.pairs} pairs, idle machine; byte-compiled src: {args.precompile})",
        "sides": {
            "before": {"commit": commits["before"], "change": args.change_before},
            "after": {"commit": commits["after"], "change": args.change_after},
        },
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
