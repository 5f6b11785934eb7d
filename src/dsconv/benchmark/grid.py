"""The dtype x memory-format x eager/compiled grid: latency, throughput and training step of every
target, the twins of a pair timed interleaved (A B B A ...) in the same rounds.

Pair ratios are medians of the per-round ratios of the twins (with their confidence interval):
pairing cancels whatever a round's conditions did to both.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf

from dsconv.benchmark.measure import Setting, inference_step, make_input, prepare_model, synchronize, training_step
from dsconv.benchmark.targets import Target
from dsconv.benchmark.timing import Interleaved, measure_interleaved, ratio_interval
from dsconv.training.optim import build_optimizer

# measurement name -> (batch key, row prefix)
MEASUREMENTS = {"latency_b1": "latency", "throughput": "throughput", "train_step": "train"}


def ratio(numerator: float, denominator: float) -> float | str:
    return numerator / denominator if denominator else ""


def _or_blank(value: float | None) -> float | str:
    return "" if value is None else value


def _callables(
    targets: Sequence[Target], setting: Setting, batches: Mapping[str, int], optimizer_cfg: Mapping[str, Any]
) -> dict[str, dict[str, Callable[[], Any]]]:
    """Per measurement, one callable per target label (models built once, shared by the three)."""
    device = setting.torch_device
    steps: dict[str, dict[str, Callable[[], Any]]] = {name: {} for name in MEASUREMENTS}
    for target in targets:
        eval_model = prepare_model(target.build(), setting).eval()
        for name in ("latency_b1", "throughput"):
            x = make_input(batches[MEASUREMENTS[name]], target.input_shape, setting)
            steps[name][target.label] = inference_step(eval_model, x, setting)
        # A second copy for training, so the eval copy's batch-norm statistics stay as built.
        train_model = prepare_model(target.build(), setting).train()
        # The module, not its parameters: the optimizer groups weight decay as the trainer does.
        optimizer = build_optimizer(train_model, OmegaConf.create(dict(optimizer_cfg)))
        x = make_input(batches["train"], target.input_shape, setting)
        loss = target.loss_fn(batches["train"], device)
        steps["train_step"][target.label] = training_step(train_model, x, loss, optimizer, setting)
    return steps


def measure_group(
    targets: Sequence[Target],
    setting: Setting,
    batches: Mapping[str, int],
    optimizer_cfg: Mapping[str, Any],
    timing: Mapping[str, Any],
    statics: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, Interleaved]]:
    """Time the targets of one pair (or a single target) interleaved; return a row of timing
    columns per target label and the raw measurements (for the pair ratios)."""
    gc.collect()
    device = setting.torch_device
    steps = _callables(targets, setting, batches, optimizer_cfg)
    measured = {name: measure_interleaved(fns, timing, sync=lambda: synchronize(device)) for name, fns in steps.items()}
    del steps
    rows: dict[str, dict[str, Any]] = {}
    for target in targets:
        label = target.label
        lat, thr, train = (measured[name].timings[label] for name in MEASUREMENTS)
        thr_img_s = batches["throughput"] / (thr.median_ms / 1e3)
        train_img_s = batches["train"] / (train.median_ms / 1e3)
        flops = statics[label]["flops_per_image"]
        noisy = [f"{name} ({m.reason(label)})" for name, m in measured.items() if m.noisy(label)]
        row: dict[str, Any] = {**lat.fields("latency_b1"), "first_call_ms": lat.first_call_ms}
        row["latency_b1_others_cores"] = _or_blank(measured["latency_b1"].others_cores)
        row.update(thr.fields("throughput"))
        row.update(
            {
                "throughput_batch": batches["throughput"],
                "throughput_img_per_s": thr_img_s,
                "throughput_img_per_s_ci_low": batches["throughput"] / (thr.ci_high_ms / 1e3),
                "throughput_img_per_s_ci_high": batches["throughput"] / (thr.ci_low_ms / 1e3),
                "throughput_others_cores": _or_blank(measured["throughput"].others_cores),
            }
        )
        row.update(train.fields("train_step"))
        row.update(
            {
                "train_batch": batches["train"],
                "train_img_per_s": train_img_s,
                "train_others_cores": _or_blank(measured["train_step"].others_cores),
                "achieved_gflops_b1": flops / (lat.median_ms / 1e3) / 1e9,
                "achieved_gflops_throughput": flops * thr_img_s / 1e9,
                "achieved_gflops_train": statics[label]["train_flops_per_image"] * train_img_s / 1e9,
                "noisy": bool(noisy),
                "noisy_measurements": ";".join(noisy),
            }
        )
        rows[label] = row
    return rows, measured


def pair_rows(
    targets: Sequence[Target],
    rows: Mapping[str, Mapping[str, Any]],
    measured: Mapping[str, Interleaved],
    confidence: float,
) -> list[dict[str, Any]]:
    """The standard twin of a group against each other twin: size ratios, speedups with intervals."""
    base = baseline(targets)
    if base is None:
        return []
    pairs = []
    b = rows[base.label]
    for other in (t for t in targets if t is not base):
        o = rows[other.label]
        mac_ratio = ratio(b["macs_per_image"], o["macs_per_image"])
        pair: dict[str, Any] = {
            "pair": b["pair"],
            "device": b["device"],
            "dtype": b["dtype"],
            "memory_format": b["memory_format"],
            "compile": b["compile"],
            "baseline": base.label,
            "variant": other.label,
            "variant_conv": other.conv,
            "param_ratio": ratio(b["params"], o["params"]),
            "mac_ratio": mac_ratio,
            "fvcore_mac_ratio": ratio(b["fvcore_macs_per_image"], o["fvcore_macs_per_image"]),
            "flop_ratio": ratio(b["flops_per_image"], o["flops_per_image"]),
        }
        for name, column in (("latency_b1", "latency_b1"), ("throughput", "throughput"), ("train_step", "train")):
            timings = measured[name].timings
            # Time of the standard twin / time of the variant, round by round: > 1 means DS is faster.
            median, low, high = ratio_interval(timings[base.label], timings[other.label], confidence)
            pair[f"speedup_{column}"] = median
            pair[f"speedup_{column}_ci_low"] = low
            pair[f"speedup_{column}_ci_high"] = high
            pair[f"realized_{column}"] = ratio(median, mac_ratio) if mac_ratio != "" else ""
        pair["noisy"] = bool(b["noisy"] or o["noisy"])
        pairs.append(pair)
    return pairs


def baseline(group: Sequence[Target]) -> Target | None:
    """A pair's reference: its registered standard model (a trained standard run, e.g. pruned, is a variant)."""
    standard = [t for t in group if t.conv == "standard"]
    return next((t for t in standard if t.kind != "run"), standard[0] if standard else None)


def groups_of(targets: Sequence[Target]) -> list[list[Target]]:
    """Targets grouped by pair key, in the order their first member appears."""
    groups: dict[str, list[Target]] = {}
    for target in targets:
        groups.setdefault(target.pair_key, []).append(target)
    return list(groups.values())
