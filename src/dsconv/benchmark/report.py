"""Benchmark outputs: results.json (everything), results.csv / pairs.csv, report.md, TensorBoard."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsconv.benchmark.memory import METHOD_CODES

UNITS: dict[str, str] = {
    "params": "parameters (count)",
    "macs_per_image": "MACs per image: fused multiply-adds of one eval forward pass, counted by fvcore",
    "macs_analytic": "MACs per image from the layer formula (layers only)",
    "flops_per_image": "FLOPs per image of one forward pass: torch.utils.flop_counter.FlopCounterMode, "
    "2 per multiply-add, convs and matmuls only",
    "train_flops_per_image": "FLOPs per image of forward + backward (FlopCounterMode)",
    "latency_b1_median_ms": "ms per batch-1 forward (median of timed calls)",
    "latency_b1_p90_ms": "ms per batch-1 forward (90th percentile)",
    "latency_b1_min_ms": "ms per batch-1 forward (fastest timed call: least disturbed by other processes)",
    "first_call_ms": "ms of the first (untimed warm-up) batch-1 call: kernel creation, compilation",
    "throughput_img_per_s": "images/s of inference at throughput_batch (from the median batch time)",
    "train_step_median_ms": "ms per training step (forward + backward + optimizer) at train_batch",
    "train_step_p90_ms": "ms per training step (90th percentile)",
    "train_img_per_s": "images/s of training at train_batch",
    "peak_mem_infer_mib": "MiB peak memory of one inference pass at throughput_batch (see peak_mem_method)",
    "peak_mem_train_mib": "MiB peak memory of one training step at train_batch (see peak_mem_method)",
    "achieved_gflops_b1": "GFLOP/s (1e9 FLOP/s) at batch 1: flops_per_image / latency",
    "achieved_gflops_throughput": "GFLOP/s: flops_per_image x throughput_img_per_s",
    "achieved_gflops_train": "GFLOP/s: train_flops_per_image x train_img_per_s",
    "latency_b1_spread": "max/min ratio of the timed calls (noise)",
    "throughput_spread": "max/min ratio of the timed calls (noise)",
    "train_spread": "max/min ratio of the timed calls (noise)",
    "latency_b1_attempts": "measurements made (1 + retries used because of noise); the least noisy is kept",
    "latency_b1_others_cores": "CPU cores other processes used during the timed calls (/proc/stat minus own "
    "CPU time; blank: unknown or shorter than 0.2 s); flagged above the cores "
    "left idle (CPUs - threads) + timing.contention_threshold",
    "mac_ratio": "standard MACs / variant MACs (theoretical saving)",
    "speedup_throughput": "variant images/s / standard images/s (measured)",
    "realized_throughput": "speedup / mac_ratio: share of the theoretical saving the hardware realizes",
}
PEAK_MEMORY_METHODS = {code: text for text, code in METHOD_CODES.items()} | {"off": "not measured (memory.method=off)"}


def write_json(path: Path, results: Mapping[str, Any]) -> None:
    payload = {**results, "units": UNITS, "peak_memory_methods": PEAK_MEMORY_METHODS}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    fields = list(rows[0])
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _num(value: Any, digits: int = 2) -> str:
    if value == "" or value is None:
        return "-"
    return f"{value:.{digits}f}"


def _count(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return str(int(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _mode(row: Mapping[str, Any]) -> str:
    return "compiled" if row["compile"] else "eager"


def markdown(results: Mapping[str, Any]) -> str:
    env, rows, pairs = results["environment"], results["rows"], results["pairs"]
    flags = ", ".join(env.get("cpu_flags") or []) or "none"
    thr_batch = rows[0]["throughput_batch"] if rows else "-"
    train_batch = rows[0]["train_batch"] if rows else "-"
    method = PEAK_MEMORY_METHODS[rows[0]["peak_mem_method"]] if rows else "-"
    timing = results.get("config", {}).get("timing", {})
    thresholds = (timing.get("noise_threshold", "the threshold"), timing.get("contention_threshold", "a few"))
    lines = [
        "# dsconv-bench: standard vs depthwise-separable convolutions",
        "",
        f"- **Environment**: torch {env['torch_version']}, device `{env['device']}` ({env['device_name']}), "
        f"{env['num_threads']} threads, CPU capability {env['cpu_capability']}, CPU flags: {flags}; "
        f"load average at start {env.get('load_average_start')}, at end {env.get('load_average_end')}",
        "- **Units**: MACs = fused multiply-adds counted by fvcore; FLOPs = 2 per multiply-add counted by "
        "`torch.utils.flop_counter.FlopCounterMode` (convs/matmuls only; fvcore also counts batch-norm, "
        "so FLOPs < 2 x MACs for nets with BN). Latency: ms per batch-1 forward, median (p90). "
        f"Throughput: images/s at batch {thr_batch}; training: forward + backward + optimizer at batch "
        f"{train_batch}. GFLOP/s = FLOPs x images/s. bf16/fp16 run under autocast.",
        f"- **Peak memory** (MiB, inference / training): {method}.",
        f"- **Noise**: a measurement is flagged when its slowest timed call exceeds {thresholds[0]} x its fastest "
        f"(`spread`), or when other processes used more than {thresholds[1]} CPU cores beyond those the run "
        "leaves idle (`others`: a uniformly slowed run has a small spread). A large spread is re-measured "
        "(`timing.retries`) and the flag stays if the retry is no better. Treat flagged numbers with care.",
    ]
    load = env.get("load_average_start") or [0.0]
    if env.get("device", "cpu") == "cpu" and load[0] >= 0.5 * (env.get("cpu_count") or 1):
        # A uniformly slowed run has a small max/min spread, so the noise flag cannot catch it.
        lines.append(
            f"- **Busy machine**: 1-minute load average {load[0]} on {env.get('cpu_count')} cores "
            "before the run; other processes competed for the CPU, so absolute timings are "
            "pessimistic and ratios uncertain even where no measurement is flagged."
        )
    lines += [
        "",
        "## Theoretical saving vs measured speedup",
        "",
        "`realized` = measured speedup / MAC ratio: 1.0 means the hardware turns all of the MAC saving "
        "into speed; below 1/MAC ratio means the DS twin is slower than the standard one.",
        "",
    ]
    lines += _table(
        [
            "pair",
            "variant",
            "dtype",
            "format",
            "mode",
            "param ratio",
            "MAC ratio",
            "speedup b1",
            "speedup throughput",
            "speedup train",
            "realized b1",
            "realized throughput",
            "realized train",
            "noisy",
        ],
        [
            [
                p["pair"],
                p["variant_conv"],
                p["dtype"],
                p["memory_format"],
                _mode(p),
                _num(p["param_ratio"]),
                _num(p["mac_ratio"]),
                _num(p["speedup_latency_b1"]),
                _num(p["speedup_throughput"]),
                _num(p["speedup_train"]),
                _num(p["realized_latency_b1"]),
                _num(p["realized_throughput"]),
                _num(p["realized_train"]),
                "yes" if p["noisy"] else "",
            ]
            for p in pairs
        ],
    )
    lines += ["", "## Every configuration", ""]
    lines += _table(
        [
            "target",
            "dtype",
            "format",
            "mode",
            "params",
            "MACs/img",
            "FLOPs/img",
            "b1 ms median (p90)",
            "img/s",
            "train img/s",
            "peak MiB infer/train",
            "GFLOP/s b1/thr/train",
            "flagged (why)",
        ],
        [
            [
                r["target"],
                r["dtype"],
                r["memory_format"],
                _mode(r),
                _count(r["params"]),
                _count(r["macs_per_image"]),
                _count(r["flops_per_image"]),
                f"{r['latency_b1_median_ms']:.3f} ({r['latency_b1_p90_ms']:.3f})",
                f"{r['throughput_img_per_s']:.1f}",
                f"{r['train_img_per_s']:.1f}",
                f"{_num(r['peak_mem_infer_mib'], 1)} / {_num(r['peak_mem_train_mib'], 1)}",
                f"{r['achieved_gflops_b1']:.1f} / {r['achieved_gflops_throughput']:.1f} / "
                f"{r['achieved_gflops_train']:.1f}",
                r["noisy_measurements"],
            ]
            for r in rows
        ],
    )
    return "\n".join(lines) + "\n"


def write_tensorboard(log_dir: Path, results: Mapping[str, Any], report_md: str) -> None:
    """One hparams run per configuration, so TensorBoard's HPARAMS tab compares them side by side."""
    from torch.utils.tensorboard import SummaryWriter

    metrics = (
        "latency_b1_median_ms",
        "latency_b1_p90_ms",
        "throughput_img_per_s",
        "train_img_per_s",
        "achieved_gflops_throughput",
        "achieved_gflops_train",
    )
    with SummaryWriter(str(log_dir)) as writer:
        writer.add_text("report", report_md)
        for index, row in enumerate(results["rows"]):
            hparams = {
                k: row[k] for k in ("target", "conv", "dtype", "memory_format", "compile", "params", "macs_per_image")
            }
            values = {f"bench/{k}": float(row[k]) for k in metrics}
            writer.add_hparams(hparams, values, run_name=f"config_{index:03d}")
