"""The benchmark grid: targets x (dtype, memory format, eager/compiled), measured into result rows.

Settings form the outer loop and targets the inner one, so the two twins of a pair are measured
back to back under the same machine load; their ratio is what the report is about.
"""

from __future__ import annotations

import gc
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dsconv.benchmark import memory
from dsconv.benchmark.environment import collect_environment, finish_environment
from dsconv.benchmark.measure import (
    Setting,
    TimingStats,
    check_setting,
    count_flops,
    inference_step,
    make_input,
    prepare_model,
    time_callable,
    training_step,
)
from dsconv.benchmark.targets import Target, layer_targets, model_target
from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import count_macs, count_params
from dsconv.training.optim import build_optimizer

log = logging.getLogger("dsconv.bench")

MEMORY_METHODS = ("subprocess", "off")
TIMING_KEYS = ("warmup", "min_iters", "max_iters", "max_time_s", "noise_threshold", "contention_threshold", "retries")


@dataclass
class BenchPlan:
    targets: list[Target]
    settings: list[Setting]
    batches: dict[str, int]
    timing: dict[str, Any]
    optimizer: dict[str, Any]
    memory_method: str
    threads: int


def _as_list(value: Any) -> list[Any]:
    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def build_plan(cfg: DictConfig) -> BenchPlan:
    """Validate the config and turn it into targets and settings (errors name the key to fix)."""
    device = str(cfg.device)
    if cfg.get("threads") is not None:
        if int(cfg.threads) < 1:
            raise ConfigError(f"threads must be >= 1 or null, got {cfg.threads}")
        torch.set_num_threads(int(cfg.threads))
    dtypes = [str(d).lower() for d in _as_list(cfg.dtypes)]
    formats = [str(f).lower() for f in _as_list(cfg.memory_formats)]
    compiles = [bool(c) for c in _as_list(cfg.compile)]
    if not dtypes or not formats or not compiles:
        raise ConfigError("dtypes, memory_formats and compile each need at least one value")
    settings = [Setting(device, d, f, c) for c, d, f in itertools.product(compiles, dtypes, formats)]
    for setting in settings:
        check_setting(setting)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.get("cudnn_benchmark", True))

    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    targets = [model_target(entry, i, dataset) for i, entry in enumerate(_as_list(cfg.models))]
    for i, entry in enumerate(_as_list(cfg.layers)):
        targets.extend(layer_targets(entry, i, bool(cfg.get("layer_bias", False))))
    if not targets:
        raise ConfigError("nothing to measure: give at least one entry in models=[...] or layers=[...]")

    batches = {key: int(cfg.batch[key]) for key in ("latency", "throughput", "train")}
    if min(batches.values()) < 1:
        raise ConfigError(f"batch sizes must be >= 1, got {batches}")
    timing = {key: cfg.timing[key] for key in TIMING_KEYS}
    if int(timing["warmup"]) < 1:
        raise ConfigError("timing.warmup must be >= 1: warm-up is never skipped (first calls build kernels)")
    if not 1 <= int(timing["min_iters"]) <= int(timing["max_iters"]):
        raise ConfigError("timing needs 1 <= timing.min_iters <= timing.max_iters")
    if float(timing["noise_threshold"]) <= 1.0:
        raise ConfigError("timing.noise_threshold is a max/min ratio and must be > 1 (e.g. 1.5)")
    if float(timing["contention_threshold"]) <= 0:
        raise ConfigError("timing.contention_threshold is in CPU cores used by other processes and must be > 0")
    if int(timing["retries"]) < 0:
        raise ConfigError(f"timing.retries must be >= 0, got {timing['retries']}")
    method = str(cfg.memory.method)
    if method not in MEMORY_METHODS:
        raise ConfigError(f"memory.method={method!r}: choose one of {', '.join(MEMORY_METHODS)}")
    return BenchPlan(
        targets,
        settings,
        batches,
        timing,
        OmegaConf.to_container(cfg.optimizer, resolve=True),
        method,
        torch.get_num_threads(),
    )


def static_metrics(target: Target) -> dict[str, Any]:
    """Size and arithmetic of one target: the same in every setting, counted once in fp32."""
    model = target.build()
    shape = target.input_shape
    macs = count_macs(model, shape)
    analytic = target.analytic_macs()
    return {
        "params": count_params(model).total,
        "macs_per_image": macs,
        "macs_analytic": analytic if analytic is not None else "",
        "flops_per_image": count_flops(model, shape),
        "train_flops_per_image": count_flops(model, shape, target.loss_fn(2, torch.device("cpu"))),
    }


def _timed(fn, device: torch.device, timing: Mapping[str, Any]) -> tuple[TimingStats, int]:
    """Time ``fn``; a measurement with a large max/min spread (a transient disturbance) is repeated,
    with its warm-up, up to ``timing.retries`` times and the best attempt (reliable first, then
    smallest spread) is kept, still flagged when it is unreliable too. A contended one is not
    repeated: a competing process usually outlasts a retry, which would only double the run."""
    best: TimingStats | None = None
    attempts = 0
    while attempts <= int(timing["retries"]):
        attempts += 1
        stats = time_callable(
            fn,
            device,
            warmup=int(timing["warmup"]),
            min_iters=int(timing["min_iters"]),
            max_iters=int(timing["max_iters"]),
            max_time_s=float(timing["max_time_s"]),
            noise_threshold=float(timing["noise_threshold"]),
            contention_threshold=float(timing["contention_threshold"]),
        )
        if best is None or (stats.unreliable, stats.spread) < (best.unreliable, best.spread):
            best = stats
        if not stats.noisy:
            break
    assert best is not None
    return best, attempts


def peak_memory(plan: BenchPlan) -> dict[tuple[str, Setting], dict[str, Any]]:
    """Peak memory of every configuration, measured before any timing (see ``memory``)."""
    results: dict[tuple[str, Setting], dict[str, Any]] = {}
    for target in plan.targets:
        if plan.memory_method == "off":
            found = [
                {"peak_mem_infer_mib": "", "peak_mem_train_mib": "", "peak_mem_method": "off"} for _ in plan.settings
            ]
        elif plan.settings[0].torch_device.type == "cuda":
            found = [memory.measure_cuda(target, s, plan.batches, plan.optimizer) for s in plan.settings]
        else:
            found = memory.measure_cpu(target, plan.settings, plan.batches, plan.optimizer, plan.threads)
        for setting, result in zip(plan.settings, found):
            code = memory.METHOD_CODES.get(result["peak_mem_method"], "off")
            results[(target.label, setting)] = {**result, "peak_mem_method": code}
        log.info("peak memory of %s measured (%s)", target.label, plan.memory_method)
    return results


def measure_config(target: Target, setting: Setting, plan: BenchPlan, static: Mapping[str, Any]) -> dict[str, Any]:
    """Latency at batch 1, throughput at the large batch, training-step time, achieved GFLOP/s."""
    device = setting.torch_device
    b = plan.batches
    row: dict[str, Any] = {}
    gc.collect()

    model = prepare_model(target.build(), setting)
    model.eval()
    (latency, latency_attempts), (throughput, throughput_attempts) = (
        _timed(inference_step(model, make_input(b[key], target.input_shape, setting), setting), device, plan.timing)
        for key in ("latency", "throughput")
    )
    model.train()
    optimizer = build_optimizer(model.parameters(), OmegaConf.create(plan.optimizer))
    x = make_input(b["train"], target.input_shape, setting)
    train_fn = training_step(model, x, target.loss_fn(b["train"], device), optimizer, setting)
    train, train_attempts = _timed(train_fn, device, plan.timing)
    del model, optimizer, x, train_fn

    thr_img_s = b["throughput"] / (throughput.median_ms / 1e3)
    train_img_s = b["train"] / (train.median_ms / 1e3)
    measured = {"latency_b1": latency, "throughput": throughput, "train": train}
    noisy = [f"{name} ({stats.reason()})" for name, stats in measured.items() if stats.unreliable]
    row.update(
        {
            "latency_b1_median_ms": latency.median_ms,
            "latency_b1_p90_ms": latency.p90_ms,
            "latency_b1_min_ms": latency.min_ms,
            "latency_b1_iters": latency.iters,
            "latency_b1_spread": latency.spread,
            "latency_b1_attempts": latency_attempts,
            "latency_b1_others_cores": _or_blank(latency.others_cores),
            "first_call_ms": latency.first_call_ms,
            "throughput_batch": b["throughput"],
            "throughput_img_per_s": thr_img_s,
            "throughput_iters": throughput.iters,
            "throughput_spread": throughput.spread,
            "throughput_attempts": throughput_attempts,
            "throughput_others_cores": _or_blank(throughput.others_cores),
            "train_batch": b["train"],
            "train_step_median_ms": train.median_ms,
            "train_step_p90_ms": train.p90_ms,
            "train_img_per_s": train_img_s,
            "train_iters": train.iters,
            "train_spread": train.spread,
            "train_attempts": train_attempts,
            "train_others_cores": _or_blank(train.others_cores),
            "achieved_gflops_b1": static["flops_per_image"] / (latency.median_ms / 1e3) / 1e9,
            "achieved_gflops_throughput": static["flops_per_image"] * thr_img_s / 1e9,
            "achieved_gflops_train": static["train_flops_per_image"] * train_img_s / 1e9,
            "noisy": bool(noisy),
            "noisy_measurements": ";".join(noisy),
        }
    )
    return row


def run_suite(plan: BenchPlan, env_extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Measure every (setting, target) configuration; return environment, rows and pair ratios."""
    device = plan.settings[0].torch_device
    env = {**collect_environment(device), **(env_extra or {})}
    statics = {t.label: static_metrics(t) for t in plan.targets}
    peaks = peak_memory(plan)
    pair_names = _pair_names(plan.targets)
    rows = []
    total = len(plan.settings) * len(plan.targets)
    for setting in plan.settings:
        for target in plan.targets:
            row: dict[str, Any] = {
                "target": target.label,
                "pair": pair_names[target.pair_key],
                "kind": target.kind,
                "conv": target.conv,
                "dataset": target.dataset,
                "input_shape": "x".join(map(str, target.input_shape)),
                "device": str(setting.torch_device),
                "device_name": env["device_name"],
                "cpu_model": env["cpu_model"],
                "torch_version": env["torch_version"],
                "num_threads": torch.get_num_threads(),
                "dtype": setting.dtype,
                "memory_format": setting.memory_format,
                "compile": setting.compile,
                **statics[target.label],
                **peaks[(target.label, setting)],
            }
            row.update(measure_config(target, setting, plan, statics[target.label]))
            rows.append(row)
            log.info(
                "[%d/%d] %-32s %-26s b1 %8.3f ms (p90 %.3f)  %9.1f img/s  train %8.1f img/s%s",
                len(rows),
                total,
                target.label,
                setting.label,
                row["latency_b1_median_ms"],
                row["latency_b1_p90_ms"],
                row["throughput_img_per_s"],
                row["train_img_per_s"],
                f"  NOISY: {row['noisy_measurements']}" if row["noisy"] else "",
            )
    return {"environment": finish_environment(env), "rows": rows, "pairs": derive_pairs(rows)}


def _pair_names(targets: list[Target]) -> dict[str, str]:
    """A readable name per pair key: the model or layer label without its conv kind."""
    names: dict[str, str] = {}
    for target in targets:
        if target.pair_key not in names:
            base = target.label.removesuffix("/" + target.conv)
            name, n = base, 2
            while name in names.values():
                name, n = f"{base} #{n}", n + 1
            names[target.pair_key] = name
    return names


def _or_blank(value: float | None) -> float | str:
    return "" if value is None else value


def _ratio(numerator: float, denominator: float) -> float | str:
    return numerator / denominator if denominator else ""


def derive_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every standard/DS pair and setting: MAC ratio, measured speedups and their quotient
    (the share of the theoretical saving the hardware realizes; 1.0 = all of it)."""
    pairs = []
    key = ("pair", "dtype", "memory_format", "compile")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in key), []).append(row)
    for group in groups.values():
        base = next((r for r in group if r["conv"] == "standard"), None)
        if base is None:
            continue
        for other in (r for r in group if r is not base):
            mac_ratio = _ratio(base["macs_per_image"], other["macs_per_image"])
            speedups = {
                "latency_b1": _ratio(base["latency_b1_median_ms"], other["latency_b1_median_ms"]),
                "throughput": _ratio(other["throughput_img_per_s"], base["throughput_img_per_s"]),
                "train": _ratio(other["train_img_per_s"], base["train_img_per_s"]),
            }
            pair = {k: base[k] for k in key}
            pair.update(
                {
                    "baseline": base["target"],
                    "variant": other["target"],
                    "variant_conv": other["conv"],
                    "param_ratio": _ratio(base["params"], other["params"]),
                    "mac_ratio": mac_ratio,
                    "flop_ratio": _ratio(base["flops_per_image"], other["flops_per_image"]),
                }
            )
            for name, speedup in speedups.items():
                pair[f"speedup_{name}"] = speedup
                pair[f"realized_{name}"] = _ratio(speedup, mac_ratio) if speedup != "" else ""
            pair["noisy"] = bool(base["noisy"] or other["noisy"])
            pairs.append(pair)
    return pairs
