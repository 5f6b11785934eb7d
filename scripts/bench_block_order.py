"""Training-step time of mnist_cnn's three block orders, interleaved and repeated in one process.

    seed order      conv -> BN -> act -> max-pool   the separable-options document's block
    clamp after     conv -> BN -> max-pool -> act   what mnist_cnn builds for ReLU: the same network
    pool first      conv -> max-pool -> BN -> act   model.pool_first=true: a different network

Each repeat times every order once, in a rotated sequence, on the same random batch; the CSV holds
per-order medians and the ratio to the seed order (tests/test_block_order.py checks that the clamp
order computes the seed order's outputs and gradients bit for bit).

    python scripts/bench_block_order.py --csv results/speedrun/avx2/block_order.csv
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsconv.benchmark.environment import collect_environment
from dsconv.benchmark.report import write_csv
from dsconv.benchmark.timing import median_with_range, rotated_repeats
from dsconv.registry import build_model
from dsconv.training.setup import fast_precision

ORDERS = ("seed order", "clamp after", "pool first")
# The speed-run presets' networks: MNIST (width 0.5 of 32-64-128) and Fashion-MNIST (24-64-160).
LAYOUTS = ("32-64-128@0.5", "24-64-160@1")


def build(order: str, channels: list[int], width: float) -> nn.Module:
    options = {"name": "mnist_cnn", "channels": channels, "width": width, "pool": "flatten", "dropout": 0.0}
    model = build_model({**options, "pool_first": order == "pool first"}, (1, 28, 28), 10)
    if order == "seed order":  # the clamp order's modules, put back in the seed's order
        for index, (conv, norm, pool, act) in enumerate(model.features):
            model.features[index] = nn.Sequential(conv, norm, act, pool)
    return model


def step_timer(model: nn.Module, batch: int, dtype: torch.dtype | None, channels_last: bool):
    """A closure that runs ``steps`` training steps (Adam, label smoothing) and returns seconds per step."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=memory)
    y = torch.randint(0, 10, (batch,))

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            autocast = torch.autocast("cpu", dtype) if dtype is not None else contextlib.nullcontext()
            with autocast:
                loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / steps

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), help="channels@width, e.g. 32-64-128@0.5")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--csv", type=Path, help="write the table here")
    args = parser.parse_args()
    precision = fast_precision(torch.device("cpu")) if args.precision == "auto" else args.precision
    dtype = torch.bfloat16 if precision == "bf16" else None
    env = collect_environment(torch.device("cpu"))
    machine = f"{env['cpu_model']}, {env['cpu_count']} CPUs, {env['cpu_capability']}, {torch.get_num_threads()} threads"
    rows = []
    for layout in args.layouts:
        channels_text, width_text = layout.split("@")
        channels, width = [int(c) for c in channels_text.split("-")], float(width_text)
        timers = {}
        for order in ORDERS:
            torch.manual_seed(0)
            timers[order] = step_timer(build(order, channels, width), args.batch_size, dtype, args.channels_last)
            timers[order](3)  # warm-up: oneDNN primitive creation, allocator
        steps = {order: functools.partial(timers[order], args.steps) for order in ORDERS}
        times = rotated_repeats(steps, args.repeats)
        base = statistics.median(times["seed order"])
        for order in ORDERS:
            median, spread = median_with_range(times[order], ".1f", scale=1e3)
            rows.append(
                {
                    "channels@width": layout,
                    "block order": order,
                    "median ms per step (min-max)": spread,
                    "time / seed order": f"{median / base:.2f}",
                    "precision": precision,
                    "machine": machine,
                }
            )
            print(f"{layout:>16} {order:>12}: {spread} ms/step, {median / base:.2f}x the seed order", flush=True)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
