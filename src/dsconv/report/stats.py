"""Per-group summaries (mean ± std over seeds) and standard-vs-separable pair comparisons."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from dsconv.report.collect import Group

METRICS = (
    "test_accuracy",
    "test_precision_macro",
    "test_recall_macro",
    "test_f1_macro",
    "params_total",
    "macs_per_image",
    "latency_ms_b1",
    "throughput_img_s",
    "train_time_s",
    "mean_epoch_time_s",
    "best_epoch",
    "epochs_run",
)


@dataclass
class Summary:
    mean: float
    std: float
    n: int

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "—"
        if self.n == 1:
            return f"{self.mean * scale:.{digits}f} (n=1)"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f} (n={self.n})"


def summarize(values: list[float]) -> Summary:
    arr = np.asarray([v for v in values if v is not None and not _isnan(v)], dtype=float)
    if arr.size == 0:
        return Summary(math.nan, math.nan, 0)
    return Summary(float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size))


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def group_table(group: Group) -> dict[str, Summary]:
    return {m: summarize([r.metrics.get(m) for r in group.ok_runs]) for m in METRICS}


@dataclass
class PairComparison:
    standard: Group
    separable: Group
    accuracy_diff: float  # separable - standard, in accuracy units
    f1_diff: float
    p_value: float | None  # Welch's t-test on test accuracy across seeds
    note: str
    param_ratio: float
    mac_ratio: float
    latency_speedup: float | None  # standard latency / separable latency
    train_time_ratio: float | None


def find_pairs(groups: list[Group]) -> list[tuple[Group, Group]]:
    """Groups identical except for ``model.conv`` (standard vs a separable kind)."""
    by_rest: dict[tuple, dict[str, list[Group]]] = {}
    for group in groups:
        settings = group.settings
        conv = str(settings.get("model.conv", ""))
        # model=standard/depthwise share model.name, so the rest of the key matches exactly.
        # Conv options only exist on the separable side, so they do not break the pairing.
        rest = tuple((k, v) for k, v in group.key if k != "model.conv" and not k.startswith("model.conv_options"))
        by_rest.setdefault(rest, {}).setdefault(conv, []).append(group)
    pairs = []
    for convs in by_rest.values():
        for standard in convs.get("standard", []):
            for kind, others in convs.items():
                if kind != "standard":
                    pairs.extend((standard, other) for other in others)
    return pairs


def compare(standard: Group, separable: Group) -> PairComparison:
    acc_std = [r.metrics["test_accuracy"] for r in standard.ok_runs]
    acc_sep = [r.metrics["test_accuracy"] for r in separable.ok_runs]
    s, d = group_table(standard), group_table(separable)
    if len(acc_std) >= 2 and len(acc_sep) >= 2:
        if np.std(acc_std) == 0 and np.std(acc_sep) == 0:
            p_value, note = (1.0 if acc_std[0] == acc_sep[0] else 0.0), "no variance across seeds"
        else:
            p_value = float(stats.ttest_ind(acc_sep, acc_std, equal_var=False).pvalue)
            note = "significant (p < 0.05)" if p_value < 0.05 else "not significant (p ≥ 0.05)"
    else:
        p_value, note = None, f"n too small for a test (n={len(acc_std)} vs {len(acc_sep)}; need ≥ 2 seeds each)"
    latency = None
    if s["latency_ms_b1"].n and d["latency_ms_b1"].n and d["latency_ms_b1"].mean > 0:
        latency = s["latency_ms_b1"].mean / d["latency_ms_b1"].mean
    train_ratio = None
    if s["mean_epoch_time_s"].n and d["mean_epoch_time_s"].n and d["mean_epoch_time_s"].mean > 0:
        train_ratio = s["mean_epoch_time_s"].mean / d["mean_epoch_time_s"].mean
    return PairComparison(
        standard,
        separable,
        accuracy_diff=d["test_accuracy"].mean - s["test_accuracy"].mean,
        f1_diff=d["test_f1_macro"].mean - s["test_f1_macro"].mean,
        p_value=p_value,
        note=note,
        param_ratio=s["params_total"].mean / d["params_total"].mean,
        mac_ratio=s["macs_per_image"].mean / d["macs_per_image"].mean,
        latency_speedup=latency,
        train_time_ratio=train_ratio,
    )


def mean_per_class_f1(group: Group) -> dict[str, float]:
    names = list(group.ok_runs[0].metrics.get("per_class_f1", {}))
    return {n: float(np.mean([r.metrics["per_class_f1"][n] for r in group.ok_runs])) for n in names}


def mean_history(group: Group, key: str) -> tuple[list[int], list[float]]:
    """Mean of ``key`` per epoch over the seeds that reached that epoch."""
    per_epoch: dict[int, list[float]] = {}
    for run in group.ok_runs:
        for row in run.history:
            if key in row:
                per_epoch.setdefault(int(row["epoch"]), []).append(row[key])
    epochs = sorted(per_epoch)
    return epochs, [float(np.mean(per_epoch[e])) for e in epochs]
