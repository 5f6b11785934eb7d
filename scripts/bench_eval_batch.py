"""Evaluation images/s of the speed-run presets' networks per evaluation batch size, interleaved and repeated.

Evaluation runs as the trainer runs it: inference mode, the preset's precision (``auto``: bf16 autocast on
AVX-512 CPUs, fp32 elsewhere), channels_last, and the mirror image's forward pass too where the preset
sets ``trainer.eval_hflip``. Each repeat times every batch size once, in a rotated order, over the same
random images; the CSV holds per-size medians and the ratio to the fastest size.

    python scripts/bench_eval_batch.py --repeats 15 --csv results/speedrun/avx512/eval_batch.csv
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dsconv.benchmark.environment import collect_environment
from dsconv.benchmark.report import write_csv
from dsconv.benchmark.timing import median_with_range, rotated_repeats
from dsconv.layers.activations import act_layer_from_config
from dsconv.paths import CONF_DIR
from dsconv.registry import build_model
from dsconv.training.host_memory import keep_freed_memory
from dsconv.training.setup import fast_precision

PRESETS = ("mnist_speedrun", "fashion_mnist_speedrun")
BATCH_SIZES = (250, 500, 1000, 2500)


def preset_config(experiment: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"experiment={experiment}", *overrides])


def eval_timer(cfg, images: int):
    """A closure that evaluates ``images`` random images at a given batch size and returns images/s."""
    model = build_model(
        OmegaConf.to_container(cfg.model, resolve=True), (1, 28, 28), 10, act_layer_from_config(cfg.activation)
    )
    model = model.to(memory_format=torch.channels_last).eval()
    precision = fast_precision(torch.device("cpu")) if cfg.trainer.precision == "auto" else cfg.trainer.precision
    dtype = torch.bfloat16 if precision == "bf16" else None
    x = torch.randn(images, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    hflip = bool(cfg.trainer.eval_hflip)

    @torch.inference_mode()
    def run(batch_size: int) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for i in range(0, images, batch_size):
                logits = model(x[i : i + batch_size]).float()
                if hflip:
                    logits = (logits + model(x[i : i + batch_size].flip(-1)).float()) / 2
        return images / (time.perf_counter() - start)

    return run, precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", nargs="+", default=list(PRESETS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES))
    parser.add_argument("--images", type=int, default=10000, help="images per timing (the test set's size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--csv", type=Path, help="write the table here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every preset")
    args = parser.parse_args()
    keep_freed_memory()  # as dsconv-train runs
    env = collect_environment(torch.device("cpu"))
    machine = f"{env['cpu_model']}, {env['cpu_count']} CPUs, {env['cpu_capability']}, {torch.get_num_threads()} threads"
    rows = []
    for experiment in args.experiments:
        run, precision = eval_timer(preset_config(experiment, args.overrides), args.images)
        for size in args.batch_sizes:
            run(size)  # warm-up: oneDNN primitives for this shape
        rates = rotated_repeats({size: functools.partial(run, size) for size in args.batch_sizes}, args.repeats)
        best = max(statistics.median(r) for r in rates.values())
        for size in args.batch_sizes:
            median, spread = median_with_range(rates[size], ",.0f")
            rows.append(
                {
                    "preset": experiment,
                    "eval batch size": size,
                    "median images/s (min-max)": spread,
                    "rate / fastest": f"{median / best:.2f}",
                    "precision": precision,
                    "machine": machine,
                }
            )
            print(f"{experiment:>24} batch {size:>5}: {spread} img/s, {median / best:.2f}x the fastest", flush=True)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
