"""Roofline, measured on the machine at hand: compute and memory ceilings, and every conv / linear
layer of each target placed against them.

Ceilings (best of ``repeats`` calls, since a ceiling is what the machine can reach):
- peak compute, in fp32 and in bf16: the best of a large square GEMM (``torch.mm``) and compute-bound
  1x1 and 3x3 convolutions (see ``_compute_rates``);
- DRAM bandwidth: STREAM's copy (2 words per element) and triad (3) on arrays far larger than the
  last-level cache;
- cache bandwidth: reading a cache-resident array many times in one reduction (one dispatch, so
  the op's fixed cost does not hide the bandwidth), and copying it.

Per layer (from one forward pass with hooks, each layer then re-timed on its own inputs):
FLOPs (2 per MAC, the same MACs as ``count_macs``), the bytes that must move at least (input +
weight + output at the dtype's size), arithmetic intensity, measured time, achieved GFLOP/s and
the attainable bound ``min(peak, AI x bandwidth)``. The bandwidth roof is the cache one for a
layer whose minimum bytes fit in the last-level cache (it stays resident between calls), else
DRAM's: the optimistic roof, so the bound is never one the layer could beat.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsconv.benchmark.measure import DTYPES, Setting, autocast
from dsconv.benchmark.options import listed, number
from dsconv.benchmark.targets import Target
from dsconv.benchmark.timing import time_interleaved
from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import LayerCall, record_layer_calls

LAYER_TYPES = ("dense", "pointwise", "depthwise", "grouped")
ROOFLINE_DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class RooflineOptions:
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    batch: int = 32
    threads: tuple[int, ...] = ()  # extra thread counts to measure the ceilings at
    gemm_size: int = 2048
    stream_mib: float = 128.0
    cache_kib: float = 256.0
    repeats: int = 5
    layer_time_s: float = 0.3

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RooflineOptions:
        options = cls(
            dtypes=tuple(str(d).lower() for d in listed(cfg["dtypes"], "roofline.dtypes")),
            batch=number(cfg["batch"], "roofline.batch", int),
            threads=tuple(number(t, "roofline.threads", int) for t in listed(cfg["threads"], "roofline.threads")),
            gemm_size=number(cfg["gemm_size"], "roofline.gemm_size", int),
            stream_mib=number(cfg["stream_mib"], "roofline.stream_mib"),
            cache_kib=number(cfg["cache_kib"], "roofline.cache_kib"),
            repeats=number(cfg["repeats"], "roofline.repeats", int),
            layer_time_s=number(cfg["layer_time_s"], "roofline.layer_time_s"),
        )
        options.check()
        return options

    def check(self) -> None:
        for dtype in self.dtypes:
            if dtype not in ROOFLINE_DTYPES:
                raise ConfigError(f"roofline.dtypes has {dtype!r}: choose from {', '.join(ROOFLINE_DTYPES)}")
        positive = {
            "batch": self.batch,
            "gemm_size": self.gemm_size,
            "stream_mib": self.stream_mib,
            "cache_kib": self.cache_kib,
            "repeats": self.repeats,
        }
        for key, value in positive.items():
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"roofline.{key}={value}: must be a positive number")
        if not math.isfinite(self.layer_time_s) or self.layer_time_s < 0:
            raise ConfigError(f"roofline.layer_time_s={self.layer_time_s}: must be seconds >= 0")
        if any(t < 1 for t in self.threads):
            raise ConfigError(f"roofline.threads={list(self.threads)}: thread counts must be >= 1")


def cache_sizes() -> dict[str, int]:
    """Per-instance data/unified cache sizes in bytes by level (``l1``, ``l2``, ``l3``...) from sysfs;
    ``llc`` is the largest. Without sysfs, a 32 MiB last-level cache is assumed."""
    sizes: dict[str, int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level = (index / "level").read_text().strip()
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        sizes[f"l{level}"] = int(text.rstrip("KMG")) * scale
    sizes["llc"] = max(sizes.values(), default=32 * 1024**2)
    return sizes


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: page faults, kernel selection
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


def _compute_rates(dtype: str, n: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of an n x n x n GEMM (``torch.mm``: MKL in fp32, oneDNN in bf16), and of compute-bound
    1x1 and 3x3 convolutions (oneDNN). The peak is the best of the three: MKL's fp32 GEMM does not use
    AVX-512 on every CPU, and a 3x3 conv may run a fast algorithm (Winograd) whose rate, counted in
    direct-convolution FLOPs, is above any GEMM's."""
    torch_dtype = DTYPES[dtype]
    left, right = torch.randn(n, n).to(torch_dtype), torch.randn(n, n).to(torch_dtype)
    out = torch.empty(n, n, dtype=torch_dtype)
    rates = {"gemm": 2 * n**3 / _best_seconds(lambda: torch.mm(left, right, out=out), repeats) / 1e9}
    channels, side = min(256, max(32, n // 8)), 32
    x = torch.randn(2, channels, side, side).to(torch_dtype)
    for kernel in (1, 3):
        weight = torch.randn(channels, channels, kernel, kernel).to(torch_dtype)
        flops = 2 * 2 * side * side * channels * channels * kernel * kernel
        with torch.inference_mode():
            seconds = _best_seconds(lambda w=weight, k=kernel: F.conv2d(x, w, padding=k // 2), repeats)
        rates[f"conv{kernel}x{kernel}"] = flops / seconds / 1e9
    return rates


def _stream_seconds(elements: int, repeats: int) -> tuple[float, float]:
    """Best times of STREAM's copy (b = a) and triad (a = b + 3 c); the arrays are freed on return."""
    a, b, c = (torch.rand(elements) for _ in range(3))
    copy_s = _best_seconds(lambda: b.copy_(a), repeats)
    triad_s = _best_seconds(lambda: torch.add(b, c, alpha=3.0, out=a), repeats)
    return copy_s, triad_s


def measure_ceilings(options: RooflineOptions, threads: int | None = None) -> dict[str, Any]:
    """Peak GEMM GFLOP/s (fp32, bf16), DRAM and cache bandwidths (GB/s) at ``threads`` torch threads."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        n = options.gemm_size
        compute = {name: _compute_rates(name, n, options.repeats) for name in ROOFLINE_DTYPES}
        elements = int(options.stream_mib * 1024**2 // 4)
        copy_s, triad_s = _stream_seconds(elements, options.repeats)
        small = int(options.cache_kib * 1024 // 4)
        resident, target = torch.rand(small), torch.empty(small)
        rounds = max(1, int(512 * 1024**2 // (small * 4)))  # ~512 MiB read per call: long enough to time
        read_s = _best_seconds(lambda: resident.expand(rounds, small).sum(dim=1), options.repeats)
        inner = 64

        def copies() -> None:
            for _ in range(inner):
                target.copy_(resident)

        cache_copy_s = _best_seconds(copies, options.repeats)
        result = {
            "threads": torch.get_num_threads(),
            "gemm_size": n,
            **{f"{kernel}_{name}_gflops": rate for name, rates in compute.items() for kernel, rate in rates.items()},
            **{f"peak_{name}_gflops": max(rates.values()) for name, rates in compute.items()},
            "stream_bytes_per_array": elements * 4,
            "copy_gbs": 2 * elements * 4 / copy_s / 1e9,
            "triad_gbs": 3 * elements * 4 / triad_s / 1e9,
            "cache_bytes_per_array": small * 4,
            "cache_read_gbs": rounds * small * 4 / read_s / 1e9,
            "cache_copy_gbs": inner * 2 * small * 4 / cache_copy_s / 1e9,
            "llc_bytes": cache_sizes()["llc"],
        }
        result["dram_gbs"] = max(result["copy_gbs"], result["triad_gbs"])
        result["cache_gbs"] = max(result["cache_read_gbs"], result["cache_copy_gbs"], result["dram_gbs"])
        return result
    finally:
        torch.set_num_threads(before)


def layer_type(module: nn.Module, op: str, name: str = "") -> str:
    """depthwise (one filter per input channel), pointwise (1x1, not grouped), grouped, or dense.

    A conv with one input channel is both dense and depthwise; it counts as depthwise when it is the
    depthwise stage of a separable conv (its module is named ``depthwise``)."""
    if op not in ("conv", "conv_transpose"):
        return "dense"
    groups, in_channels = int(module.groups), int(module.in_channels)
    if groups > 1:
        return "depthwise" if groups == in_channels else "grouped"
    if name.rsplit(".", 1)[-1] == "depthwise":
        return "depthwise"
    return "pointwise" if math.prod(module.kernel_size) == 1 else "dense"


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def min_bytes(call: LayerCall, output_numel: int, element_size: int) -> int:
    """Inputs (each distinct tensor once) + the module's own weights + output, at ``element_size``."""
    seen: dict[int, int] = {}
    for tensor in _tensors(call.args) + _tensors(call.kwargs):
        seen.setdefault(id(tensor), tensor.numel())
    weights = sum(p.numel() for p in call.module.parameters(recurse=False))
    return (sum(seen.values()) + weights + output_numel) * element_size


def layer_rows(
    target: Target, dtype: str, options: RooflineOptions, ceilings: Mapping[str, Any], timing: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One row per conv/linear call of ``target`` at ``options.batch`` in ``dtype`` (autocast for bf16)."""
    setting = Setting("cpu", dtype)
    model = target.build().eval()
    x = torch.randn(options.batch, *target.input_shape)
    with torch.inference_mode(), autocast(setting), record_layer_calls(model, keep_inputs=True) as calls:
        model(x)
    element_size = torch.tensor([], dtype=DTYPES[dtype]).element_size()
    peak = float(ceilings[f"peak_{dtype}_gflops"])
    rows = []
    for index, call in enumerate(calls):

        def run(call: LayerCall = call) -> Any:
            with torch.inference_mode(), autocast(setting):
                return call.module(*call.args, **call.kwargs)

        timed = time_interleaved(
            {"layer": run},
            warmup=int(timing["warmup"]),
            min_rounds=int(timing["min_rounds"]),
            max_rounds=int(timing["max_rounds"]),
            max_time_s=options.layer_time_s,
            rel_tol=float(timing["rel_tol"]),
            confidence=float(timing["confidence"]),
        )["layer"]
        flops = 2 * call.macs
        moved = min_bytes(call, math.prod(call.output_shape), element_size)
        intensity = flops / moved
        in_cache = moved <= int(ceilings["llc_bytes"])
        bandwidth = float(ceilings["cache_gbs" if in_cache else "dram_gbs"])
        bound = min(peak, intensity * bandwidth)
        achieved = flops / (timed.median_ms / 1e3) / 1e9
        roof = "compute" if peak <= intensity * bandwidth else ("cache bandwidth" if in_cache else "DRAM bandwidth")
        rows.append(
            {
                "target": target.label,
                "conv": target.conv,
                "dtype": dtype,
                "batch": options.batch,
                "index": index,
                "layer": call.name,
                "op": call.op,
                "layer_type": layer_type(call.module, call.op, call.name),
                "input_shape": "x".join(map(str, call.input_shape)),
                "output_shape": "x".join(map(str, call.output_shape)),
                "macs": call.macs,
                "flops": flops,
                "min_bytes": moved,
                "arithmetic_intensity": intensity,
                "time_ms": timed.median_ms,
                "time_ci_low_ms": timed.ci_low_ms,
                "time_ci_high_ms": timed.ci_high_ms,
                "time_noisy": timed.noisy,
                "achieved_gflops": achieved,
                "bound_gflops": bound,
                "roof": roof,
                "fraction_of_bound": achieved / bound,
            }
        )
    return rows


def summarise(layers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per target, dtype and layer type: time share, aggregate GFLOP/s, and the fraction of the roof
    reached (time the layers would take at their bounds / the time they took)."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    totals: dict[tuple[str, str], float] = {}
    for row in layers:
        groups.setdefault((row["target"], row["dtype"], row["layer_type"]), []).append(row)
        totals[(row["target"], row["dtype"])] = totals.get((row["target"], row["dtype"]), 0.0) + row["time_ms"]
    summary = []
    for (target, dtype, kind), rows in groups.items():
        time_ms = sum(r["time_ms"] for r in rows)
        ideal_ms = sum(r["flops"] / (r["bound_gflops"] * 1e9) * 1e3 for r in rows)
        flops = sum(r["flops"] for r in rows)
        summary.append(
            {
                "target": target,
                "dtype": dtype,
                "layer_type": kind,
                "layers": len(rows),
                "flops": flops,
                "time_ms": time_ms,
                "time_share": time_ms / totals[(target, dtype)] if totals[(target, dtype)] else 0.0,
                "achieved_gflops": flops / (time_ms / 1e3) / 1e9 if time_ms else 0.0,
                "fraction_of_bound": ideal_ms / time_ms if time_ms else 0.0,
                "bound_time_ms": ideal_ms,
            }
        )
    return summary


def predicted_speedups(layers: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Per (standard, variant) pair and dtype: the conv/linear-time speedup measured layer by layer,
    and the one the roofline predicts if every layer ran at its bound (vs the MAC ratio)."""
    out = []
    for dtype in dict.fromkeys(r["dtype"] for r in layers):
        for base, variant in pairs:
            mine = {t: [r for r in layers if r["target"] == t and r["dtype"] == dtype] for t in (base, variant)}
            if not mine[base] or not mine[variant]:
                continue
            sums = {
                t: {
                    "macs": sum(r["macs"] for r in rows),
                    "time_ms": sum(r["time_ms"] for r in rows),
                    "bound_ms": sum(r["flops"] / (r["bound_gflops"] * 1e9) * 1e3 for r in rows),
                }
                for t, rows in mine.items()
            }
            out.append(
                {
                    "baseline": base,
                    "variant": variant,
                    "dtype": dtype,
                    "mac_ratio": sums[base]["macs"] / sums[variant]["macs"],
                    "layer_time_speedup": sums[base]["time_ms"] / sums[variant]["time_ms"],
                    "roofline_speedup": sums[base]["bound_ms"] / sums[variant]["bound_ms"],
                }
            )
    return out


def run_roofline(
    targets: Sequence[Target],
    pairs: Sequence[tuple[str, str]],
    options: RooflineOptions,
    timing: Mapping[str, Any],
) -> dict[str, Any]:
    """Ceilings at the bench's thread count (and ``options.threads``), then every target's layers."""
    ceilings = [measure_ceilings(options)]
    ceilings += [measure_ceilings(options, t) for t in options.threads if t != torch.get_num_threads()]
    layers = [
        row for dtype in options.dtypes for t in targets for row in layer_rows(t, dtype, options, ceilings[0], timing)
    ]
    return {
        "ceilings": ceilings,
        "layers": layers,
        "summary": summarise(layers),
        "predicted": predicted_speedups(layers, pairs),
    }
