"""``dsconv-bench`` / ``scripts/bench.py``: the Hydra CLI around ``run_bench``.

``run_bench(cfg, out_dir)`` is the pure function (validate, measure, write every output);
``main`` adds Hydra's run directory and turns user errors into one line and exit status 2.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from dsconv.benchmark.plots import write_plots, write_roofline_plots
from dsconv.benchmark.report import markdown, write_csv, write_json, write_tensorboard
from dsconv.benchmark.suite import build_plan, run_suite
from dsconv.errors import DsconvError
from dsconv.paths import CONF_DIR

log = logging.getLogger("dsconv.bench")


def run_bench(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the configured benchmark and write results.json, report.md, results.csv and pairs.csv (grid),
    roofline_layers.csv and roofline_summary.csv (roofline), runtimes.csv and runtime_pairs.csv
    (runtimes), plots/*.png (``output.plots``) and tensorboard/ (``output.tensorboard``) into ``out_dir``."""
    out_dir = Path(out_dir)
    plan = build_plan(cfg)  # validates everything before the first (slow) measurement
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("benchmarking %d targets x %d settings into %s", len(plan.targets), len(plan.settings), out_dir)
    start = time.perf_counter()
    results = run_suite(plan)
    results["run_seconds"] = time.perf_counter() - start
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    report = markdown(results)
    write_json(out_dir / "results.json", results)
    (out_dir / "report.md").write_text(report)
    if plan.sections["grid"]:
        write_csv(out_dir / "results.csv", results["rows"])
        write_csv(out_dir / "pairs.csv", results["pairs"])
    if "roofline" in results:
        write_csv(out_dir / "roofline_layers.csv", results["roofline"]["layers"])
        write_csv(out_dir / "roofline_summary.csv", results["roofline"]["summary"])
    if "runtimes" in results:
        write_csv(out_dir / "runtimes.csv", results["runtimes"]["rows"])
        write_csv(out_dir / "runtime_pairs.csv", results["runtimes"]["pairs"])
    if cfg.output.plots:
        if plan.sections["grid"]:
            write_plots(results, out_dir / "plots")
        if "roofline" in results:
            write_roofline_plots(results["roofline"], results["twins"], out_dir / "plots")
    if cfg.output.tensorboard:
        write_tensorboard(out_dir / "tensorboard", results, report)
    log.info("done in %.0f s: %s", results["run_seconds"], out_dir / "report.md")
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="bench")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    out_dir = cfg.output.get("dir") or HydraConfig.get().runtime.output_dir
    try:
        run_bench(cfg, out_dir)
    except DsconvError as exc:
        if cfg.get("debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
