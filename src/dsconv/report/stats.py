"""Per-group summaries (mean ± std over seeds) and two-sample tests that cannot report a tie as significant.

scipy is imported inside the functions that need it, so ``dsconv-report --help`` starts fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

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

# Test accuracies are ratios of counts, so two runs that agree give the same float; a relative range this
# small is rounding (a mean of three 0.7s is 0.6999999999999998), not variation.
ZERO_VARIANCE_RTOL = 1e-12
# Values are rounded to this many decimals before ranking, so rounding noise cannot break a tie.
RANK_DECIMALS = 12
# Up to this many ways to split the pooled sample, Mann-Whitney's p is computed exactly by enumerating
# them all (ties included); beyond it the normal approximation with tie correction is used.
EXACT_SPLITS_MAX = 20_000
NO_VARIANCE_NOTE = "no variance within groups; a t-test does not apply"


@dataclass
class Summary:
    mean: float
    std: float | None  # sample std (ddof=1); None when n < 2: one value has no spread to report
    n: int

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "—"
        if self.n == 1 or self.std is None:
            return f"{self.mean * scale:.{digits}f} (n={self.n})"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f} (n={self.n})"

    def as_json(self) -> dict[str, Any]:
        return {"mean": None if math.isnan(self.mean) else self.mean, "std": self.std, "n": self.n}


def summarize(values: Sequence[Any]) -> Summary:
    arr = finite(values)
    if arr.size == 0:
        return Summary(math.nan, None, 0)
    return Summary(float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else None, int(arr.size))


def finite(values: Sequence[Any]) -> np.ndarray:
    """The numeric, finite entries of ``values`` (missing metrics are None in metrics.json)."""
    kept = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    return np.asarray(kept, dtype=float)


def group_table(group: Group) -> dict[str, Summary]:
    return {m: summarize([r.metrics.get(m) for r in group.ok_runs]) for m in METRICS}


def has_no_variance(values: Sequence[float]) -> bool:
    arr = np.asarray(values, dtype=float)
    scale = float(np.max(np.abs(arr))) if arr.size else 0.0
    return arr.size > 0 and float(np.ptp(arr)) <= ZERO_VARIANCE_RTOL * scale


@dataclass
class SignificanceTest:
    """Welch's t-test and the two-sided Mann-Whitney U test of one sample against another."""

    n_a: int
    n_b: int
    welch_p: float | None  # None: fewer than 2 values in a group, or no variance within either group
    mannwhitney_p: float | None  # None: fewer than 2 values in a group
    mannwhitney_method: str | None
    mannwhitney_min_p: float | None  # the smallest p the rank test can give at these n
    note: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def two_sample_tests(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> SignificanceTest:
    """Both tests on two samples, with a verdict that never calls a tie significant.

    With zero variance in both groups Welch's statistic divides by (rounding noise of) zero and scipy
    returns p ~ 1e-31 for [0.7]*3 vs [0.6]*3; there is nothing to test then, so no p-value is given.
    Mann-Whitney uses ranks only and stays defined: with n = 3 per group its smallest p is 0.1.
    """
    x, y = finite(a), finite(b)
    n_a, n_b = int(x.size), int(y.size)
    if n_a < 2 or n_b < 2:
        note = f"n too small for a test (n={n_a} vs {n_b}; need ≥ 2 seeds each)"
        return SignificanceTest(n_a, n_b, None, None, None, None, note)
    mw_p, mw_method = mannwhitney(x, y)
    min_p = mannwhitney_min_p(n_a, n_b)
    if has_no_variance(x) and has_no_variance(y):
        same = bool(has_no_variance(np.concatenate([x, y])))
        detail = "all values identical" if same else "every seed of each group gave the same value"
        return SignificanceTest(n_a, n_b, None, mw_p, mw_method, min_p, f"{NO_VARIANCE_NOTE} ({detail})")
    from scipy import stats

    welch_p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    note = f"significant (Welch p < {alpha})" if welch_p < alpha else f"not significant (Welch p ≥ {alpha})"
    if min_p >= alpha:
        note += f"; Mann-Whitney cannot reach p < {alpha} with n={n_a} vs {n_b} (smallest p {min_p:.3g})"
    return SignificanceTest(n_a, n_b, welch_p, mw_p, mw_method, min_p, note)


def mannwhitney(x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """Two-sided Mann-Whitney U p-value and how it was computed."""
    from scipy import stats

    x, y = np.round(x, RANK_DECIMALS), np.round(y, RANK_DECIMALS)
    if np.unique(np.concatenate([x, y])).size == 1:
        return 1.0, "all values tied"
    if math.comb(x.size + y.size, x.size) <= EXACT_SPLITS_MAX:
        # scipy's "exact" ignores ties; enumerating every split of the pooled sample is exact with them.
        method = stats.PermutationMethod(n_resamples=np.inf)
        p = stats.mannwhitneyu(x, y, alternative="two-sided", method=method).pvalue
        return float(p), "exact (all splits of the pooled seeds enumerated)"
    p = stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic").pvalue
    return float(p), "normal approximation with tie correction"


def mannwhitney_min_p(n_a: int, n_b: int) -> float:
    """Two-sided p of complete separation: 2 of the C(n_a + n_b, n_a) equally likely rank splits."""
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


@dataclass
class PairComparison:
    standard: Group
    separable: Group
    accuracy_diff: float  # separable - standard, in accuracy units
    f1_diff: float
    test: SignificanceTest  # on test accuracy across seeds
    param_ratio: float
    mac_ratio: float
    speed: dict[str, Any]  # name -> timing.SpeedRatio (latency_speedup, throughput_speedup, epoch_time_speedup)

    @property
    def p_value(self) -> float | None:
        return self.test.welch_p

    @property
    def note(self) -> str:
        return self.test.note


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


def accuracies(group: Group) -> list[float]:
    return [r.metrics["test_accuracy"] for r in group.ok_runs if r.metrics.get("test_accuracy") is not None]


def compare(standard: Group, separable: Group, bench: Any = None) -> PairComparison:
    """Accuracy test, size ratios and speed ratios (from ``bench``, a ``timing.BenchResults``, when given)."""
    from dsconv.report.timing import speed_ratios

    s, d = group_table(standard), group_table(separable)
    return PairComparison(
        standard,
        separable,
        accuracy_diff=d["test_accuracy"].mean - s["test_accuracy"].mean,
        f1_diff=d["test_f1_macro"].mean - s["test_f1_macro"].mean,
        test=two_sample_tests(accuracies(separable), accuracies(standard)),
        param_ratio=_ratio(s["params_total"].mean, d["params_total"].mean),
        mac_ratio=_ratio(s["macs_per_image"].mean, d["macs_per_image"].mean),
        speed=speed_ratios(standard, separable, bench),
    )


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else math.nan


def mean_per_class_f1(group: Group) -> dict[str, float]:
    names = list(group.ok_runs[0].metrics.get("per_class_f1") or {})
    values = {n: [(r.metrics.get("per_class_f1") or {}).get(n) for r in group.ok_runs] for n in names}
    return {n: float(np.mean(v)) for n, v in values.items() if all(x is not None for x in v)}


def mean_history(group: Group, key: str) -> tuple[list[int], list[float]]:
    """Mean of ``key`` per epoch over the seeds that reached that epoch."""
    per_epoch: dict[int, list[float]] = {}
    for run in group.ok_runs:
        for row in run.history:
            if key in row:
                per_epoch.setdefault(int(row["epoch"]), []).append(row[key])
    epochs = sorted(per_epoch)
    return epochs, [float(np.mean(per_epoch[e])) for e in epochs]
