"""Standard vs DS in the runtimes a user would deploy with, side by side in one run.

Per pair, runtime and batch size the twins are timed interleaved (``timing.py``); each twin's
runtime output is first checked against its eager fp32 output. Per pair and batch, the runtime
with the highest realised ratio (speedup / MAC ratio) among those whose outputs agree is the one
that makes DS pay the most.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dsconv.benchmark.deploy import DEFAULT_TOLERANCES, RUNTIMES, Prepared, agreement, prepare
from dsconv.benchmark.grid import baseline
from dsconv.benchmark.options import listed, number
from dsconv.benchmark.targets import Target
from dsconv.benchmark.timing import measure_interleaved, ratio_interval
from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import count_macs

log = logging.getLogger("dsconv.bench")


@dataclass(frozen=True)
class RuntimeOptions:
    runtimes: tuple[str, ...] = ("eager_fp32", "eager_bf16", "compiled_fp32", "int8", "onnxruntime")
    batches: tuple[int, ...] = (1, 32)
    calibration_batches: int = 4
    calibration_batch_size: int = 32
    channels_last: bool = False
    onnx_opset: int = 17
    tolerances: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    include_layers: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RuntimeOptions:
        given = cfg["tolerances"] or {}
        if not isinstance(given, dict):
            raise ConfigError(f"runtimes.tolerances={given!r}: must be a map {{runtime: max relative error}}")
        tolerances = {**DEFAULT_TOLERANCES}
        tolerances.update({str(k): number(v, f"runtimes.tolerances.{k}") for k, v in given.items()})
        options = cls(
            runtimes=tuple(str(r) for r in listed(cfg["list"], "runtimes.list")),
            batches=tuple(number(b, "runtimes.batches", int) for b in listed(cfg["batches"], "runtimes.batches")),
            calibration_batches=number(cfg["calibration_batches"], "runtimes.calibration_batches", int),
            calibration_batch_size=number(cfg["calibration_batch_size"], "runtimes.calibration_batch_size", int),
            channels_last=bool(cfg["channels_last"]),
            onnx_opset=number(cfg["onnx_opset"], "runtimes.onnx_opset", int),
            tolerances=tolerances,
            include_layers=bool(cfg["include_layers"]),
        )
        options.check()
        return options

    def check(self) -> None:
        for runtime in self.runtimes:
            if runtime not in RUNTIMES:
                raise ConfigError(f"runtimes.list has {runtime!r}: choose from {', '.join(RUNTIMES)}")
        for key, value in self.tolerances.items():
            if key not in RUNTIMES or not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"runtimes.tolerances.{key}={value}: keys are runtimes ({', '.join(RUNTIMES)}), values >= 0"
                )
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"runtimes.batches={list(self.batches)}: give batch sizes >= 1, e.g. [1, 32]")
        for key in ("calibration_batches", "calibration_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"runtimes.{key}={getattr(self, key)}: must be >= 1")
        if self.onnx_opset < 9:
            raise ConfigError(f"runtimes.onnx_opset={self.onnx_opset}: use an ONNX opset >= 9 (e.g. 17)")


def _prepare_twins(
    group: Sequence[Target], runtime: str, options: RuntimeOptions
) -> tuple[dict[str, Prepared], dict[str, dict[str, Any]]]:
    """Each twin ready for ``runtime`` plus its check against eager fp32; a twin the runtime cannot
    take (an untraceable model, an unexported op) is reported, not raised."""
    prepared: dict[str, Prepared] = {}
    checks: dict[str, dict[str, Any]] = {}
    for target in group:
        torch.manual_seed(1)  # the same calibration and check images for both twins
        model = target.build().eval()
        shape = (options.calibration_batch_size, *target.input_shape)
        calibration = [torch.randn(shape) for _ in range(options.calibration_batches)]
        check_x = torch.randn(8, *target.input_shape)
        check: dict[str, Any] = {"target": target.label, "runtime": runtime}
        try:
            threads = torch.get_num_threads()
            ready = prepare(
                runtime, model, check_x[:1], calibration, threads, options.channels_last, options.onnx_opset
            )
            check.update(agreement(ready, model, check_x))
        except Exception as exc:  # a runtime that cannot take a model is a result, not a crash
            check.update({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
            log.warning("%s on %s failed: %s", runtime, target.label, check["error"])
        else:
            check["prepare_s"] = ready.prepare_s
            check["agrees"] = check["max_rel_error"] <= options.tolerances[runtime]
            check["tolerance"] = options.tolerances[runtime]
            prepared[target.label] = ready
        checks[target.label] = check
    return prepared, checks


def _row(target: Target, runtime: str, batch: int, timing, check: Mapping[str, Any], noisy: bool) -> dict[str, Any]:
    return {
        "target": target.label,
        "conv": target.conv,
        "runtime": runtime,
        "batch": batch,
        **timing.fields("latency"),
        "throughput_img_per_s": batch / (timing.median_ms / 1e3),
        "first_call_ms": timing.first_call_ms,
        # torch.compile compiles on the first call (once per batch shape): that call is the compile time.
        "compile_s": timing.first_call_ms / 1e3 if runtime.startswith("compiled") else "",
        "prepare_s": check.get("prepare_s", ""),
        "max_rel_error": check.get("max_rel_error", ""),
        "agrees": check.get("agrees", False),
        "noisy": noisy,
    }


def run_runtimes(
    groups: Sequence[Sequence[Target]],
    pair_names: Mapping[str, str],
    options: RuntimeOptions,
    timing: Mapping[str, Any],
) -> dict[str, Any]:
    """Time every group (a pair, or a lone target) in every runtime at every batch size."""
    rows: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for group in groups:
        group = [t for t in group if t.kind != "layer" or options.include_layers]
        if not group:
            continue
        macs = {t.label: count_macs(t.build(), t.input_shape) for t in group}
        base = baseline(group)
        for runtime in options.runtimes:
            prepared, group_checks = _prepare_twins(group, runtime, options)
            checks.extend(group_checks.values())
            ready = [t for t in group if t.label in prepared]
            for batch in options.batches:
                if not ready:
                    break
                torch.manual_seed(2)
                calls = {t.label: prepared[t.label].make_call(torch.randn(batch, *t.input_shape)) for t in ready}
                measured = measure_interleaved(calls, timing)
                for t in ready:
                    timed, check = measured.timings[t.label], group_checks[t.label]
                    rows.append(_row(t, runtime, batch, timed, check, measured.noisy(t.label)))
                if base is None or base.label not in prepared:
                    continue
                for other in (t for t in ready if t is not base):
                    median, low, high = ratio_interval(
                        measured.timings[base.label], measured.timings[other.label], float(timing["confidence"])
                    )
                    mac_ratio = macs[base.label] / macs[other.label]
                    pairs.append(
                        {
                            "pair": pair_names[base.pair_key],
                            "baseline": base.label,
                            "variant": other.label,
                            "runtime": runtime,
                            "batch": batch,
                            "mac_ratio": mac_ratio,
                            "speedup": median,
                            "speedup_ci_low": low,
                            "speedup_ci_high": high,
                            "realized": median / mac_ratio,
                            "agrees": bool(group_checks[base.label]["agrees"] and group_checks[other.label]["agrees"]),
                            "noisy": measured.noisy(base.label) or measured.noisy(other.label),
                        }
                    )
                log.info("runtime %s batch %d: %s timed", runtime, batch, ", ".join(calls))
    return {"rows": rows, "pairs": pairs, "checks": checks, "best": best_runtimes(pairs)}


def best_runtimes(pairs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per pair and batch: the runtime with the highest realised ratio whose outputs agree with eager."""
    best: dict[tuple[str, str, int], Mapping[str, Any]] = {}
    for pair in pairs:
        if not pair["agrees"]:
            continue
        key = (pair["baseline"], pair["variant"], pair["batch"])
        if key not in best or pair["realized"] > best[key]["realized"]:
            best[key] = pair
    return [
        {
            "pair": p["pair"],
            "variant": p["variant"],
            "batch": p["batch"],
            "runtime": p["runtime"],
            "speedup": p["speedup"],
            "mac_ratio": p["mac_ratio"],
            "realized": p["realized"],
            "noisy": p["noisy"],
        }
        for p in best.values()
    ]
