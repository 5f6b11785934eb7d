"""The benchmark plan (validated config) and its three sections, each selectable by ``sections.*``:

- ``grid``: targets x (dtype, memory format, eager/compiled): latency, throughput, training step,
  peak memory; settings form the outer loop and each pair's twins are timed interleaved;
- ``roofline``: the machine's ceilings and every conv/linear layer against them;
- ``runtimes``: eager fp32/bf16, torch.compile, INT8, ONNX Runtime at batch 1 and 32 per pair.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dsconv.benchmark import memory
from dsconv.benchmark.environment import collect_environment, finish_environment
from dsconv.benchmark.grid import baseline, groups_of, measure_group, pair_rows
from dsconv.benchmark.measure import Setting, check_setting, count_flops
from dsconv.benchmark.options import number
from dsconv.benchmark.roofline import RooflineOptions, run_roofline
from dsconv.benchmark.runtimes import RuntimeOptions, run_runtimes
from dsconv.benchmark.targets import Target, join_pairs, layer_targets, model_target
from dsconv.benchmark.timing import check_timing_options
from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import count_fvcore_macs, count_macs, count_params
from dsconv.training.setup import cpu_has_fast_bf16

log = logging.getLogger("dsconv.bench")

MEMORY_METHODS = ("subprocess", "off")
SECTIONS = ("grid", "roofline", "runtimes")
TIMING_KEYS = ("warmup", "min_rounds", "max_rounds", "max_time_s", "rel_tol", "confidence", "contention_threshold")


@dataclass
class BenchPlan:
    targets: list[Target]
    settings: list[Setting]
    batches: dict[str, int]
    timing: dict[str, Any]
    optimizer: dict[str, Any]
    memory_method: str
    threads: int
    sections: dict[str, bool]
    roofline: RooflineOptions | None = None
    runtimes: RuntimeOptions | None = None


def _as_list(value: Any) -> list[Any]:
    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _timing(cfg: DictConfig) -> dict[str, Any]:
    missing = [key for key in TIMING_KEYS if key not in cfg.timing]
    if missing:
        raise ConfigError(f"timing is missing {', '.join(missing)}: see conf/bench.yaml for every timing key")
    kinds = {"warmup": int, "min_rounds": int, "max_rounds": int}
    timing = {key: number(cfg.timing[key], f"timing.{key}", kinds.get(key, float)) for key in TIMING_KEYS}
    check_timing_options(
        timing["warmup"],
        timing["min_rounds"],
        timing["max_rounds"],
        timing["max_time_s"],
        timing["rel_tol"],
        timing["confidence"],
    )
    if not timing["contention_threshold"] > 0:
        raise ConfigError(
            f"timing.contention_threshold={timing['contention_threshold']}: in CPU cores other processes use, "
            "must be > 0 (e.g. 0.25)"
        )
    return timing


def _sections(cfg: DictConfig) -> dict[str, bool]:
    given = OmegaConf.to_container(cfg.sections, resolve=True)
    unknown = set(given) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"sections.{sorted(unknown)[0]} is not a section: choose from {', '.join(SECTIONS)}")
    sections = {name: bool(given.get(name, False)) for name in SECTIONS}
    if not any(sections.values()):
        raise ConfigError(f"sections: all off, nothing to run: set at least one of {', '.join(SECTIONS)} to true")
    return sections


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
    if "bf16" in dtypes and torch.device(device).type == "cpu" and not cpu_has_fast_bf16():
        log.warning(
            "bf16 on this CPU (%s, no AVX-512) runs torch's reference kernels: its rows take long to measure "
            "and show bf16 far slower than fp32; dtypes=[fp32] skips them",
            torch.backends.cpu.get_cpu_capability(),
        )
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.get("cudnn_benchmark", True))

    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    targets = [model_target(entry, i, dataset) for i, entry in enumerate(_as_list(cfg.models))]
    for i, entry in enumerate(_as_list(cfg.layers)):
        targets.extend(layer_targets(entry, i, bool(cfg.get("layer_bias", False))))
    targets = join_pairs(targets)
    if not targets:
        raise ConfigError("nothing to measure: give at least one entry in models=[...] or layers=[...]")
    labels = [t.label for t in targets]
    duplicate = next((label for label in labels if labels.count(label) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"models: two entries are both labelled {duplicate!r}: give one a `label: ...`")

    batches = {key: int(cfg.batch[key]) for key in ("latency", "throughput", "train")}
    if min(batches.values()) < 1:
        raise ConfigError(f"batch sizes must be >= 1, got {batches}")
    method = str(cfg.memory.method)
    if method not in MEMORY_METHODS:
        raise ConfigError(f"memory.method={method!r}: choose one of {', '.join(MEMORY_METHODS)}")
    sections = _sections(cfg)
    cpu_only = [name for name in ("roofline", "runtimes") if sections[name]]
    if cpu_only and torch.device(device).type != "cpu":
        raise ConfigError(f"sections.{cpu_only[0]}=true measures the CPU: use device=cpu or set it to false")
    return BenchPlan(
        targets,
        settings,
        batches,
        _timing(cfg),
        OmegaConf.to_container(cfg.optimizer, resolve=True),
        method,
        torch.get_num_threads(),
        sections,
        RooflineOptions.from_config(OmegaConf.to_container(cfg.roofline, resolve=True))
        if sections["roofline"]
        else None,
        RuntimeOptions.from_config(OmegaConf.to_container(cfg.runtimes, resolve=True))
        if sections["runtimes"]
        else None,
    )


def static_metrics(target: Target) -> dict[str, Any]:
    """Size and arithmetic of one target: the same in every setting, counted once in fp32."""
    model = target.build()
    shape = target.input_shape
    analytic = target.analytic_macs()
    return {
        "params": count_params(model).total,
        "macs_per_image": count_macs(model, shape),
        "fvcore_macs_per_image": count_fvcore_macs(model, shape),
        "macs_analytic": analytic if analytic is not None else "",
        "flops_per_image": count_flops(model, shape),
        "train_flops_per_image": count_flops(model, shape, target.loss_fn(2, torch.device("cpu"))),
    }


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


def pair_names(targets: list[Target]) -> dict[str, str]:
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


def twin_pairs(targets: list[Target]) -> list[tuple[str, str]]:
    """(standard label, variant label) for every pair."""
    out = []
    for group in groups_of(targets):
        base = baseline(group)
        out += [(base.label, t.label) for t in group if base is not None and t is not base]
    return out


def run_grid(plan: BenchPlan, env: Mapping[str, Any], statics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    peaks = peak_memory(plan)
    names = pair_names(plan.targets)
    rows: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    for setting in plan.settings:
        for group in groups_of(plan.targets):
            measured_rows, measured = measure_group(group, setting, plan.batches, plan.optimizer, plan.timing, statics)
            group_rows = {}
            for target in group:
                row: dict[str, Any] = {
                    "target": target.label,
                    "pair": names[target.pair_key],
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
                    **measured_rows[target.label],
                }
                group_rows[target.label] = row
                rows.append(row)
                log.info(
                    "[%d/%d] %-32s %-26s b1 %8.3f ms [%.3f, %.3f]  %9.1f img/s  train %8.1f img/s%s",
                    len(rows),
                    len(plan.settings) * len(plan.targets),
                    target.label,
                    setting.label,
                    row["latency_b1_median_ms"],
                    row["latency_b1_ci_low_ms"],
                    row["latency_b1_ci_high_ms"],
                    row["throughput_img_per_s"],
                    row["train_img_per_s"],
                    f"  NOISY: {row['noisy_measurements']}" if row["noisy"] else "",
                )
            pairs += pair_rows(group, group_rows, measured, float(plan.timing["confidence"]))
    return {"rows": rows, "pairs": pairs}


def run_suite(plan: BenchPlan, env_extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the enabled sections; return environment, static metrics and each section's results."""
    device = plan.settings[0].torch_device
    env = {**collect_environment(device), **(env_extra or {})}
    statics = {t.label: static_metrics(t) for t in plan.targets}
    results: dict[str, Any] = {"statics": statics, "rows": [], "pairs": [], "twins": twin_pairs(plan.targets)}
    if plan.sections["grid"]:
        results.update(run_grid(plan, env, statics))
    if plan.roofline is not None:
        log.info("roofline: ceilings and %d targets' layers", len(plan.targets))
        results["roofline"] = run_roofline(plan.targets, results["twins"], plan.roofline, plan.timing)
    if plan.runtimes is not None:
        log.info("runtimes: %s", ", ".join(plan.runtimes.runtimes))
        results["runtimes"] = run_runtimes(
            groups_of(plan.targets), pair_names(plan.targets), plan.runtimes, plan.timing
        )
    results["environment"] = finish_environment(env)
    return results
