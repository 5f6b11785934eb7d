"""Benchmark outputs: results.json (everything), results.csv / pairs.csv, report.md, TensorBoard."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsconv.benchmark.memory import METHOD_CODES

UNITS: dict[str, str] = {
    "params": "parameters (count)",
    "macs_per_image": "MACs per image: multiply-accumulates of the convolutions and linear layers (and attention "
    "matrix products) of one eval forward pass, from forward hooks (the MobileNet paper's convention)",
    "fvcore_macs_per_image": "fvcore's count per image: conv/linear MACs plus eval batch norm (2 per element) "
    "and pooling",
    "macs_analytic": "MACs per image from the layer formula (layers only)",
    "flops_per_image": "FLOPs per image of one forward pass: torch.utils.flop_counter.FlopCounterMode, "
    "2 per multiply-add, convs and matmuls only",
    "train_flops_per_image": "FLOPs per image of forward + backward (FlopCounterMode)",
    "latency_b1_median_ms": "ms per batch-1 forward (median of the timed calls, interleaved with the twin)",
    "latency_b1_ci_low_ms": "lower end of the median's distribution-free confidence interval (timing.confidence)",
    "latency_b1_ci_high_ms": "upper end of the median's confidence interval",
    "latency_b1_ci_rel": "larger distance of an interval end from the median / median (converged: <= timing.rel_tol)",
    "latency_b1_p90_ms": "ms per batch-1 forward (90th percentile)",
    "latency_b1_min_ms": "ms per batch-1 forward (fastest timed call: least disturbed by other processes)",
    "latency_b1_n": "timed calls (interleaved rounds)",
    "latency_b1_noisy": "the interval did not get within timing.rel_tol before timing.max_time_s",
    "first_call_ms": "ms of the first (untimed warm-up) batch-1 call: kernel creation, compilation",
    "throughput_img_per_s": "images/s of inference at throughput_batch (from the median batch time)",
    "throughput_img_per_s_ci_low": "images/s at the upper end of the batch time's interval",
    "train_step_median_ms": "ms per training step (forward + backward + optimizer) at train_batch",
    "train_step_p90_ms": "ms per training step (90th percentile)",
    "train_img_per_s": "images/s of training at train_batch",
    "peak_mem_infer_mib": "MiB peak memory of one inference pass at throughput_batch (see peak_mem_method)",
    "peak_mem_train_mib": "MiB peak memory of one training step at train_batch (see peak_mem_method)",
    "achieved_gflops_b1": "GFLOP/s (1e9 FLOP/s) at batch 1: flops_per_image / latency",
    "achieved_gflops_throughput": "GFLOP/s: flops_per_image x throughput_img_per_s",
    "achieved_gflops_train": "GFLOP/s: train_flops_per_image x train_img_per_s",
    "latency_b1_others_cores": "CPU cores other processes used during the timed calls (/proc/stat minus own "
    "CPU time; blank: unknown or shorter than 0.2 s); flagged above the cores "
    "left idle (CPUs - threads) + timing.contention_threshold",
    "mac_ratio": "standard MACs / variant MACs, conv + linear (theoretical saving)",
    "fvcore_mac_ratio": "the same ratio by fvcore's count (batch norm and pooling included)",
    "speedup_throughput": "median over interleaved rounds of standard time / variant time at the throughput "
    "batch (> 1: DS faster), with its confidence interval (_ci_low, _ci_high)",
    "realized_throughput": "speedup / mac_ratio: share of the theoretical saving the hardware realizes",
}
PEAK_MEMORY_METHODS = {code: text for text, code in METHOD_CODES.items()} | {"off": "not measured (memory.method=off)"}


def _finite(value: Any) -> Any:
    """Strict JSON: an interval that does not exist (too few calls) is stored as null, not Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, results: Mapping[str, Any]) -> None:
    payload = _finite({**results, "units": UNITS, "peak_memory_methods": PEAK_MEMORY_METHODS})
    path.write_text(json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n")


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


def _ci(value: Any, low: Any, high: Any, digits: int = 2) -> str:
    """``value [low, high]``; an interval too wide to exist (too few calls) shows as ``[-, -]``."""
    if value == "" or value is None:
        return "-"

    def end(v: Any) -> str:
        return f"{v:.{digits}f}" if isinstance(v, int | float) and math.isfinite(v) else "-"

    return f"{value:.{digits}f} [{end(low)}, {end(high)}]"


def _header(results: Mapping[str, Any]) -> list[str]:
    env, rows = results["environment"], results["rows"]
    flags = ", ".join(env.get("cpu_flags") or []) or "none"
    thr_batch = rows[0]["throughput_batch"] if rows else "-"
    train_batch = rows[0]["train_batch"] if rows else "-"
    method = PEAK_MEMORY_METHODS[rows[0]["peak_mem_method"]] if rows else "-"
    timing = results.get("config", {}).get("timing", {})
    confidence = timing.get("confidence", 0.95)
    lines = [
        "# dsconv-bench: standard vs depthwise-separable convolutions",
        "",
        f"- **Environment**: torch {env['torch_version']}, device `{env['device']}` ({env['device_name']}), "
        f"{env['num_threads']} threads, CPU capability {env['cpu_capability']}, CPU flags: {flags}; "
        f"load average at start {env.get('load_average_start')}, at end {env.get('load_average_end')}",
        "- **Units**: MACs = multiply-accumulates of convolutions and linear layers (the MobileNet paper's "
        "convention; fvcore's count, which adds batch norm and pooling, is the `fvcore_macs_per_image` column); "
        "FLOPs = 2 per multiply-add counted by `torch.utils.flop_counter.FlopCounterMode`. Latency: ms per "
        f"batch-1 forward. Throughput: images/s at batch {thr_batch}; training: forward + backward + optimizer "
        f"at batch {train_batch}. GFLOP/s = FLOPs x images/s. bf16/fp16 run under autocast.",
        f"- **Timing**: the twins of a pair are timed interleaved (A B, B A, ...) until each median's "
        f"{confidence:.0%} distribution-free confidence interval is within +-{timing.get('rel_tol', 0.03):.0%} "
        f"or {timing.get('max_time_s', '-')} s pass; `[low, high]` is that interval. Speedups are medians of "
        "the per-round ratios of the twins, with their interval. A point is flagged noisy when its interval "
        f"did not converge, or other processes used more than {timing.get('contention_threshold', '-')} CPU "
        "cores beyond those the run leaves idle.",
        f"- **Peak memory** (MiB, inference / training): {method}.",
    ]
    load = env.get("load_average_start") or [0.0]
    if env.get("device", "cpu") == "cpu" and load[0] >= 0.5 * (env.get("cpu_count") or 1):
        # A uniformly slowed run has a tight interval, so the noise flag cannot catch all of it.
        lines.append(
            f"- **Busy machine**: 1-minute load average {load[0]} on {env.get('cpu_count')} cores "
            "before the run; other processes competed for the CPU, so absolute timings are "
            "pessimistic and ratios uncertain even where no measurement is flagged."
        )
    return lines


def _grid(results: Mapping[str, Any]) -> list[str]:
    rows, pairs = results["rows"], results["pairs"]
    lines = [
        "",
        "## Theoretical saving vs measured speedup",
        "",
        "`realized` = measured speedup / MAC ratio: 1.0 means the hardware turns all of the MAC saving "
        "into speed; below 1/MAC ratio means the DS twin is slower than the standard one.",
        "",
    ]
    header = ["pair", "variant", "dtype", "format", "mode", "param ratio", "MAC ratio", "fvcore MAC ratio"]
    header += ["speedup b1", "speedup throughput", "speedup train", "realized b1", "realized thr", "realized train"]
    lines += _table(
        [*header, "noisy"],
        [
            [p["pair"], p["variant_conv"], p["dtype"], p["memory_format"], _mode(p)]
            + [_num(p["param_ratio"]), _num(p["mac_ratio"]), _num(p["fvcore_mac_ratio"])]
            + [
                _ci(p[f"speedup_{k}"], p[f"speedup_{k}_ci_low"], p[f"speedup_{k}_ci_high"])
                for k in ("latency_b1", "throughput", "train")
            ]
            + [_num(p[f"realized_{k}"]) for k in ("latency_b1", "throughput", "train")]
            + ["yes" if p["noisy"] else ""]
            for p in pairs
        ],
    )
    lines += ["", "## Every configuration", ""]
    header = ["target", "dtype", "format", "mode", "params", "MACs/img", "fvcore MACs/img", "FLOPs/img"]
    header += ["b1 ms median [CI]", "img/s", "train img/s", "peak MiB infer/train", "GFLOP/s b1/thr/train"]
    lines += _table(
        [*header, "flagged (why)"],
        [
            [
                r["target"],
                r["dtype"],
                r["memory_format"],
                _mode(r),
                _count(r["params"]),
                _count(r["macs_per_image"]),
                _count(r["fvcore_macs_per_image"]),
                _count(r["flops_per_image"]),
                _ci(r["latency_b1_median_ms"], r["latency_b1_ci_low_ms"], r["latency_b1_ci_high_ms"], 3),
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
    return lines


def _roofline(roofline: Mapping[str, Any]) -> list[str]:
    lines = ["", "## Roofline: every conv / linear layer against this machine's ceilings", ""]
    lines += _table(
        [
            "threads",
            "GEMM fp32 GFLOP/s",
            "GEMM bf16 GFLOP/s",
            "copy GB/s",
            "triad GB/s",
            "cache read GB/s",
            "cache copy GB/s",
            "last-level cache",
        ],
        [
            [str(c["threads"]), _num(c["gemm_fp32_gflops"], 1), _num(c["gemm_bf16_gflops"], 1)]
            + [_num(c["peak_fp32_gflops"], 1), _num(c["peak_bf16_gflops"], 1)]
            + [_num(c[k], 1) for k in ("copy_gbs", "triad_gbs", "cache_read_gbs", "cache_copy_gbs")]
            + [f"{c['llc_bytes'] / 2**20:.0f} MiB"]
            for c in roofline["ceilings"]
        ],
    )
    lines += [
        "",
        "Peak = the best of the GEMM and compute-bound 1x1 / 3x3 convolutions (a 3x3 conv above the GEMM "
        "runs a fast algorithm such as Winograd; its rate is in direct-convolution FLOPs). "
        "Bound = min(peak of the dtype, arithmetic intensity x bandwidth), the bandwidth being the "
        "cache roof for layers whose minimum bytes (input + weight + output) fit in the last-level cache, "
        "else DRAM's. `fraction` = time the layers would take at their bounds / time they took.",
        "",
    ]
    lines += _table(
        ["target", "dtype", "layer type", "layers", "time share", "GFLOP/s", "fraction of bound"],
        [
            [
                s["target"],
                s["dtype"],
                s["layer_type"],
                str(s["layers"]),
                f"{s['time_share']:.0%}",
                _num(s["achieved_gflops"], 1),
                f"{s['fraction_of_bound']:.0%}",
            ]
            for s in roofline["summary"]
        ],
    )
    if roofline["predicted"]:
        lines += ["", "What the roofline predicts for the conv/linear time of each pair:", ""]
        lines += _table(
            ["standard", "variant", "dtype", "MAC ratio", "measured layer-time speedup", "roofline speedup"],
            [
                [
                    p["baseline"],
                    p["variant"],
                    p["dtype"],
                    _num(p["mac_ratio"]),
                    _num(p["layer_time_speedup"]),
                    _num(p["roofline_speedup"]),
                ]
                for p in roofline["predicted"]
            ],
        )
    lines += ["", "Per layer: `roofline_layers.csv`; plots: `plots/roofline_<dtype>.png`."]
    return lines


def _runtimes(runtimes: Mapping[str, Any]) -> list[str]:
    lines = [
        "",
        "## Runtimes: where DS pays",
        "",
        "Per pair, runtime and batch, the twins interleaved; `agrees` = both twins' outputs within the runtime's "
        "tolerance of eager fp32 (`runtime_checks` in results.json).",
        "",
    ]
    lines += _table(
        ["pair", "runtime", "batch", "MAC ratio", "speedup [CI]", "realized", "agrees", "noisy"],
        [
            [
                p["pair"],
                p["runtime"],
                str(p["batch"]),
                _num(p["mac_ratio"]),
                _ci(p["speedup"], p["speedup_ci_low"], p["speedup_ci_high"]),
                _num(p["realized"]),
                "yes" if p["agrees"] else "NO",
                "yes" if p["noisy"] else "",
            ]
            for p in runtimes["pairs"]
        ],
    )
    lines += ["", "Latency per twin (ms, median [CI]); compile time is the compiled runtimes' first call:", ""]
    lines += _table(
        ["target", "runtime", "batch", "ms [CI]", "img/s", "compile s", "max rel. error", "noisy"],
        [
            [
                r["target"],
                r["runtime"],
                str(r["batch"]),
                _ci(r["latency_median_ms"], r["latency_ci_low_ms"], r["latency_ci_high_ms"], 3),
                f"{r['throughput_img_per_s']:.1f}",
                _num(r["compile_s"], 1),
                _num(r["max_rel_error"], 4),
                "yes" if r["noisy"] else "",
            ]
            for r in runtimes["rows"]
        ],
    )
    failed = [c for c in runtimes["checks"] if "error" in c]
    if failed:
        lines += ["", "Runtimes that could not take a model: "]
        lines += [f"- {c['runtime']} on {c['target']}: {c['error']}" for c in failed]
    lines += ["", "**The runtime that makes DS pay most** (highest realized ratio, outputs agreeing):", ""]
    lines += _table(
        ["pair", "batch", "runtime", "speedup", "MAC ratio", "realized"],
        [
            [b["pair"], str(b["batch"]), b["runtime"], _num(b["speedup"]), _num(b["mac_ratio"]), _num(b["realized"])]
            for b in runtimes["best"]
        ],
    )
    return lines


def markdown(results: Mapping[str, Any]) -> str:
    lines = _header(results)
    if results["rows"]:
        lines += _grid(results)
    if "roofline" in results:
        lines += _roofline(results["roofline"])
    if "runtimes" in results:
        lines += _runtimes(results["runtimes"])
    return "\n".join(lines) + "\n"


def write_tensorboard(log_dir: Path, results: Mapping[str, Any], report_md: str) -> None:
    """One hparams run per configuration, so TensorBoard's HPARAMS tab compares them side by side; the
    roofline figures (one per dtype) under FIGURES."""
    from torch.utils.tensorboard import SummaryWriter

    from dsconv.benchmark.plots import roofline_figure

    metrics = (
        "latency_b1_median_ms",
        "latency_b1_ci_low_ms",
        "latency_b1_ci_high_ms",
        "throughput_img_per_s",
        "train_img_per_s",
        "achieved_gflops_throughput",
        "achieved_gflops_train",
    )
    with SummaryWriter(str(log_dir)) as writer:
        writer.add_text("report", report_md)
        roofline = results.get("roofline")
        for dtype in dict.fromkeys(r["dtype"] for r in (roofline or {}).get("layers", [])):
            writer.add_figure(f"roofline/{dtype}", roofline_figure(roofline, results["twins"], dtype))
        for index, row in enumerate(results["rows"]):
            hparams = {
                k: row[k] for k in ("target", "conv", "dtype", "memory_format", "compile", "params", "macs_per_image")
            }
            hparams["fvcore_macs_per_image"] = row["fvcore_macs_per_image"]
            values = {f"bench/{k}": float(row[k]) for k in metrics}
            writer.add_hparams(hparams, values, run_name=f"config_{index:03d}")
