"""Speed numbers with their spread and a noise flag, from the runs' own profiles or from a dsconv-bench run.

A training run profiles its model once, after training, while other processes (other runs of the same
sweep, say) may share the CPU; two runs are never measured side by side. A ratio of two such numbers can
be off by an order of magnitude, so every timing here says where it came from, how much it spread and
whether it is noise, and a bench run (which measures twins back to back) replaces them when given.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsconv.errors import ConfigError
from dsconv.report.collect import Group, _conv_label

NOISE_CV = 0.10  # coefficient of variation across seeds above which a timing is flagged
RUN_SOURCE = (
    "each training run's one-off inference profile (measured after training, while other processes may "
    "share the CPU; runs are never measured side by side)"
)
# metric -> (higher is better, run metrics.json key of the profile's own p90, bench field words)
SPEED_METRICS = {
    "latency_ms_b1": (False, "latency_ms_b1_p90", ("latency", "b1")),
    "throughput_img_s": (True, None, ("throughput", "img")),  # not throughput_*_ms: the batch time
}


@dataclass
class TimingSummary:
    metric: str
    source: str  # "runs" | "bench"
    n: int  # seeds (runs) or timed calls (bench); 0: not measured
    median: float | None
    low: float | None  # lower end of the spread below
    high: float | None
    spread: str  # what low-high is
    cv: float | None  # coefficient of variation across seeds (runs with n >= 2 only)
    noisy: bool
    reasons: list[str] = field(default_factory=list)

    def fmt(self, digits: int = 2) -> str:
        if self.median is None:
            return "—"
        text = f"{self.median:.{digits}f}"
        if self.low is not None and self.high is not None:
            text += f" [{self.low:.{digits}f}–{self.high:.{digits}f}]"
        return text + (" ⚠ noisy" if self.noisy else "")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _empty(metric: str, source: str, why: str) -> TimingSummary:
    return TimingSummary(metric, source, 0, None, None, None, "", None, False, [why])


def run_timing(group: Group, metric: str) -> TimingSummary:
    """Median over seeds with p10-p90 across them; flagged above ``NOISE_CV`` or when a profile was noisy."""
    _, p90_key, _ = SPEED_METRICS[metric]
    runs = [r for r in group.ok_runs if _number(r.metrics.get(metric)) is not None]
    if not runs:
        return _empty(metric, "runs", "not measured (profile_inference=false?)")
    values = np.asarray([float(r.metrics[metric]) for r in runs])
    reasons = []
    noisy_profiles = sum(bool((r.metrics.get("inference_profile") or {}).get("noisy")) for r in runs)
    if noisy_profiles:
        reasons.append(f"{noisy_profiles} of {len(runs)} profiles flagged themselves noisy")
    if len(runs) == 1:
        run = runs[0]
        high = _number(run.metrics.get(p90_key)) if p90_key else None
        reasons.append("one run: spread across seeds unknown")
        spread = "median–p90 of the one profile's calls" if high is not None else ""
        low = float(values[0]) if high is not None else None
        return TimingSummary(metric, "runs", 1, float(values[0]), low, high, spread, None, True, reasons)
    cv = float(values.std(ddof=1) / values.mean()) if values.mean() > 0 else None
    if cv is not None and cv > NOISE_CV:
        reasons.append(f"varies {cv:.0%} across seeds (> {NOISE_CV:.0%})")
    low, high = (float(v) for v in np.percentile(values, [10, 90]))
    return TimingSummary(
        metric, "runs", len(runs), float(np.median(values)), low, high, "p10–p90 over seeds", cv, bool(reasons), reasons
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class BenchResults:
    path: Path
    rows: list[dict[str, Any]]

    @property
    def source_note(self) -> str:
        return f"dsconv-bench run {self.path} (standard and DS twins measured back to back in one process)"


def load_bench(path: Path) -> BenchResults:
    """A dsconv-bench output dir (its results.json) or the json itself: ``{"rows": [...]}`` or a list of rows."""
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"--bench {path}: no results.json there: pass a dsconv-bench output dir or its results.json")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"--bench {file}: not readable JSON ({exc}): pass the results.json dsconv-bench wrote"
        ) from exc
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"--bench {file}: no list of result rows in it: pass the results.json dsconv-bench wrote")
    return BenchResults(file, rows)


def _bench_model(row: dict[str, Any]) -> set[str]:
    names = {str(row[k]) for k in ("model", "name", "group", "model_config") if row.get(k)}
    target = str(row.get("target", ""))
    if target:  # "<model>/<conv>" unless the bench entry was given its own label
        names |= {target, target.rsplit("/", 1)[0]}
    return names


def _bench_conv(row: dict[str, Any]) -> str:
    conv = row.get("conv") or str(row.get("target", "")).rsplit("/", 1)[-1]
    return _conv_label(json.dumps(conv) if isinstance(conv, list) else str(conv))


def _group_conv(group: Group) -> str:
    conv = (group.ok_runs[0].metrics or {}).get("conv") if group.ok_runs else None
    raw = conv if conv is not None else group.settings.get("model.conv", "standard")
    label = _conv_label(raw)
    return "hybrid" if label.startswith("hybrid") else label


def _close(a: Any, b: Any, rtol: float) -> bool:
    a, b = _number(a), _number(b)
    return a is not None and b is not None and abs(a - b) <= rtol * max(abs(a), abs(b), 1.0)


def _preference(row: dict[str, Any]) -> tuple[int, ...]:
    """Plain eager fp32 in the default layout first: what the training runs' profiles measure."""
    return (
        str(row.get("dtype", "fp32")).lower() not in ("fp32", "float32"),
        str(row.get("memory_format", "nchw")).lower() not in ("nchw", "contiguous", "channels_first"),
        bool(row.get("compile", False)),
        str(row.get("runtime", "eager")).lower() != "eager",
    )


def match_bench_row(group: Group, bench: BenchResults) -> dict[str, Any] | None:
    """The bench row of this group's model: same model (config or registered name) and conv kind, and the
    same size (parameter count within 0.1%, else a MAC count within 1%) so that a widened or pruned twin
    is never given its parent's timings."""
    names = {group.model_choice, str(group.settings.get("model.name", ""))}
    conv = _group_conv(group)
    metrics = group.ok_runs[0].metrics if group.ok_runs else {}
    found = []
    for row in bench.rows:
        bench_conv = _bench_conv(row)
        if not (names & _bench_model(row)) or (bench_conv != conv and not bench_conv.startswith(conv)):
            continue
        if _number(row.get("params")) is not None and _number(metrics.get("params_total")) is not None:
            if not _close(row["params"], metrics["params_total"], 1e-3):
                continue
        elif not any(_close(v, metrics.get("macs_per_image"), 1e-2) for k, v in row.items() if "macs" in k):
            continue
        found.append(row)
    return min(found, key=_preference) if found else None


def _bench_field(
    row: dict[str, Any], words: tuple[str, ...], *extra: tuple[str, ...], exclude: tuple[str, ...] = ()
) -> float | None:
    """The first numeric field whose name contains all of ``words``, one word of each ``extra`` set and
    none of ``exclude`` (field names differ between bench versions; the words do not)."""
    for key, value in row.items():
        name = key.lower()
        if not all(w in name for w in words) or any(w in name for w in exclude):
            continue
        if all(any(w in name for w in options) for options in extra):
            number = _number(value)
            if number is not None:
                return number
    return None


_NOT_A_MEDIAN = ("ci", "low", "high", "p90", "p10", "min", "max", "spread", "iters", "attempts", "others", "batch")


def bench_timing(row: dict[str, Any] | None, metric: str) -> TimingSummary:
    if row is None:
        return _empty(metric, "bench", "no matching dsconv-bench row")
    _, _, words = SPEED_METRICS[metric]
    extra = () if metric == "throughput_img_s" else (("median",),)
    median = _bench_field(row, words, *extra, exclude=_NOT_A_MEDIAN)
    low = _bench_field(row, words, ("ci",), ("low", "lo"))
    high = _bench_field(row, words, ("ci",), ("high", "hi", "up"))
    spread = "bench 95% CI of the median" if low is not None and high is not None else ""
    if not spread and metric == "latency_ms_b1":
        low, high = median, _bench_field(row, words, ("p90",), exclude=("ci",))
        spread = "bench median–p90 of the timed calls" if high is not None else ""
    reasons = []
    noisy_text = str(row.get("noisy_measurements", ""))
    metric_word = words[0]
    if (
        _truthy(row.get(f"{metric_word}_noisy"))
        or metric_word in noisy_text
        or (_truthy(row.get("noisy")) and not noisy_text)
    ):
        reasons.append(f"bench flagged it ({noisy_text or 'noisy'})")
    n = int(_bench_field(row, words, ("iters", "_n")) or 0)
    if median is None:
        return _empty(metric, "bench", "the matching bench row has no such field")
    return TimingSummary(metric, "bench", n, median, low, high, spread, None, bool(reasons), reasons)


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "yes", "1")


def group_timing(group: Group, metric: str, bench: BenchResults | None) -> TimingSummary:
    return bench_timing(match_bench_row(group, bench), metric) if bench is not None else run_timing(group, metric)


@dataclass
class SpeedRatio:
    """How many times faster ``other`` is than ``base`` (> 1: faster)."""

    value: float | None
    source: str  # "bench" | "runs" | "none"
    side_by_side: bool
    noisy: bool

    def fmt(self) -> str:
        if self.value is None:
            return "—"
        marks = ("" if self.side_by_side else " (not side by side)") + (" ⚠ noisy" if self.noisy else "")
        return f"{self.value:.2f}x{marks}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def speed_ratio(base: TimingSummary, other: TimingSummary, higher_is_better: bool) -> SpeedRatio:
    if not base.median or not other.median:
        return SpeedRatio(None, "none", False, False)
    value = other.median / base.median if higher_is_better else base.median / other.median
    both_bench = base.source == other.source == "bench"
    return SpeedRatio(value, "bench" if both_bench else "runs", both_bench, base.noisy or other.noisy)


def speed_ratios(base: Group, other: Group, bench: BenchResults | None) -> dict[str, SpeedRatio]:
    """Latency and throughput speedups (from the bench when given) and the epoch-time speedup (from runs)."""
    out = {}
    for metric, name in (("latency_ms_b1", "latency_speedup"), ("throughput_img_s", "throughput_speedup")):
        higher, _, _ = SPEED_METRICS[metric]
        out[name] = speed_ratio(group_timing(base, metric, bench), group_timing(other, metric, bench), higher)
    epoch_base, epoch_other = (_epoch_time(g) for g in (base, other))
    if epoch_base and epoch_other:
        cv = max(_cv(g) for g in (base, other))
        out["epoch_time_speedup"] = SpeedRatio(epoch_base / epoch_other, "runs", False, cv > NOISE_CV)
    else:
        out["epoch_time_speedup"] = SpeedRatio(None, "none", False, False)
    return out


def _epoch_values(group: Group) -> np.ndarray:
    values = [_number(r.metrics.get("mean_epoch_time_s")) for r in group.ok_runs]
    return np.asarray([v for v in values if v is not None])


def _epoch_time(group: Group) -> float | None:
    values = _epoch_values(group)
    return float(np.median(values)) if values.size and np.median(values) > 0 else None


def _cv(group: Group) -> float:
    values = _epoch_values(group)
    return float(values.std(ddof=1) / values.mean()) if values.size > 1 and values.mean() > 0 else 0.0
