"""Interleaved timing with a confidence interval on each median.

Timing a standard net and then its DS twin lets any drift of the machine (another process, a
frequency change) land on one of them only, and a fixed number of calls says nothing about how
precise a median is. ``time_interleaved`` runs the callables in rounds (A B, then B A, ...) so both
see the same conditions, and adds rounds until the distribution-free 95% confidence interval of
every median is within ``rel_tol`` of it, or a time limit is hit; a median whose interval did not
get there is flagged ``noisy``. The clock and the device synchronisation are injectable, so the
logic is tested with fake callables and a fake clock.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dsconv.errors import ConfigError

Clock = Callable[[], float]


@functools.lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based ranks ``(lo, hi)`` of the sorted sample that bound the median with at least ``confidence``
    coverage for any continuous distribution (the binomial order-statistic interval); None when ``n``
    is too small for that coverage (n < 6 at 95%)."""
    alpha = 1.0 - confidence
    log_half = n * math.log(0.5)
    cdf, k = 0.0, 0
    # k = the number of order statistics cut from each end: the largest k with P(Bin(n, 1/2) < k) <= alpha/2.
    while k < n // 2:
        log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + log_half
        if cdf + math.exp(log_pmf) > alpha / 2:
            break
        cdf += math.exp(log_pmf)
        k += 1
    if k == 0:
        return None
    return k - 1, n - k


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile of an already sorted sample (numpy's default)."""
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Median and its distribution-free confidence interval; ``(-inf, inf)`` when too few values."""
    ordered = sorted(values)
    median = percentile(ordered, 50)
    ranks = median_ci_ranks(len(ordered), confidence)
    if ranks is None:
        return median, -math.inf, math.inf
    return median, ordered[ranks[0]], ordered[ranks[1]]


def relative_halfwidth(median: float, low: float, high: float) -> float:
    """The larger distance from the median to an end of its interval, relative to the median."""
    if not math.isfinite(low) or not math.isfinite(high) or median <= 0:
        return math.inf
    return max(median - low, high - median) / median


@dataclass(frozen=True)
class IntervalTiming:
    """Per-call times (ms) of one callable in an interleaved measurement."""

    n: int
    median_ms: float
    ci_low_ms: float
    ci_high_ms: float
    rel_halfwidth: float  # max distance of an interval end from the median, / median
    min_ms: float
    p90_ms: float
    first_call_ms: float  # the first warm-up call: includes compilation and kernel creation
    noisy: bool  # the interval did not get within the tolerance before the limit
    times_ms: tuple[float, ...] = ()

    def fields(self, prefix: str) -> dict[str, Any]:
        """Flat ``prefix_*`` columns for a result row (the raw times stay out of the tables)."""
        return {
            f"{prefix}_median_ms": self.median_ms,
            f"{prefix}_ci_low_ms": self.ci_low_ms,
            f"{prefix}_ci_high_ms": self.ci_high_ms,
            f"{prefix}_ci_rel": self.rel_halfwidth,
            f"{prefix}_min_ms": self.min_ms,
            f"{prefix}_p90_ms": self.p90_ms,
            f"{prefix}_n": self.n,
            f"{prefix}_noisy": self.noisy,
        }


def _summarise(times: list[float], first_call_ms: float, confidence: float, rel_tol: float) -> IntervalTiming:
    ordered = sorted(times)
    median, low, high = median_ci(ordered, confidence)
    rel = relative_halfwidth(median, low, high)
    return IntervalTiming(
        n=len(times),
        median_ms=median,
        ci_low_ms=low,
        ci_high_ms=high,
        rel_halfwidth=rel,
        min_ms=ordered[0],
        p90_ms=percentile(ordered, 90),
        first_call_ms=first_call_ms,
        noisy=not rel <= rel_tol,
        times_ms=tuple(times),
    )


def check_timing_options(
    warmup: int, min_rounds: int, max_rounds: int, max_time_s: float, rel_tol: float, confidence: float
) -> None:
    """One-line errors naming the ``timing.*`` key, the bad value and the fix."""
    if warmup < 1:
        raise ConfigError(f"timing.warmup={warmup}: must be >= 1, warm-up is never skipped (first calls build kernels)")
    if not 1 <= min_rounds <= max_rounds:
        raise ConfigError(
            f"timing.min_rounds={min_rounds}, timing.max_rounds={max_rounds}: need 1 <= min_rounds <= max_rounds"
        )
    if not math.isfinite(max_time_s) or max_time_s < 0:
        raise ConfigError(f"timing.max_time_s={max_time_s}: must be a finite number of seconds >= 0")
    if not math.isfinite(rel_tol) or rel_tol <= 0:
        raise ConfigError(f"timing.rel_tol={rel_tol}: must be > 0, a relative half-width such as 0.03 (3%)")
    if not 0.5 <= confidence < 1:
        raise ConfigError(f"timing.confidence={confidence}: must be in [0.5, 1), e.g. 0.95")


def time_interleaved(
    callables: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    min_rounds: int = 6,
    max_rounds: int = 1000,
    max_time_s: float = 1.0,
    rel_tol: float = 0.03,
    confidence: float = 0.95,
    clock: Clock = time.perf_counter,
    sync: Callable[[], None] | None = None,
) -> dict[str, IntervalTiming]:
    """Time every callable once per round, in alternating order (A B, B A, A B ...), after ``warmup``
    rounds of untimed calls; stop after ``max_rounds``, or once ``min_rounds`` are done and either every
    median's ``confidence`` interval is within ``rel_tol`` of it or ``max_time_s`` of timed rounds passed.

    ``sync`` runs before and after each timed call (``torch.cuda.synchronize`` on a GPU) so a time
    never measures only a kernel launch.
    """
    check_timing_options(warmup, min_rounds, max_rounds, max_time_s, rel_tol, confidence)
    if not callables:
        raise ValueError("time_interleaved needs at least one callable")
    names = list(callables)
    sync = sync or (lambda: None)

    def timed(fn: Callable[[], Any]) -> float:
        sync()
        start = clock()
        fn()
        sync()
        return (clock() - start) * 1e3

    first_call = {name: 0.0 for name in names}
    for index in range(warmup):
        for name in names if index % 2 == 0 else reversed(names):
            elapsed = timed(callables[name])
            if index == 0:
                first_call[name] = elapsed
    times: dict[str, list[float]] = {name: [] for name in names}
    start = clock()
    rounds = 0
    while rounds < max_rounds:
        for name in names if rounds % 2 == 0 else reversed(names):
            times[name].append(timed(callables[name]))
        rounds += 1
        if rounds < min_rounds:
            continue
        if clock() - start >= max_time_s or all(_converged(times[n], confidence, rel_tol) for n in names):
            break
    return {name: _summarise(times[name], first_call[name], confidence, rel_tol) for name in names}


def _converged(times: list[float], confidence: float, rel_tol: float) -> bool:
    return relative_halfwidth(*median_ci(times, confidence)) <= rel_tol


def ratio_interval(
    numerator: IntervalTiming, denominator: IntervalTiming, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Median and confidence interval of the per-round ratios ``numerator / denominator`` of two
    callables timed in the same rounds: pairing them cancels what a round's conditions did to both."""
    ratios = [a / b for a, b in zip(numerator.times_ms, denominator.times_ms) if b > 0]
    if not ratios:
        return math.nan, -math.inf, math.inf
    return median_ci(ratios, confidence)


@dataclass(frozen=True)
class Interleaved:
    """One interleaved measurement, with how much CPU other processes took while it ran."""

    timings: dict[str, IntervalTiming]
    others_cores: float | None  # CPU cores other processes used (None: unknown or window too short)
    contended: bool  # others_cores above the cores this process leaves idle + the threshold

    def noisy(self, name: str) -> bool:
        return self.timings[name].noisy or self.contended

    def reason(self, name: str) -> str:
        timing = self.timings[name]
        reasons = [f"CI +-{timing.rel_halfwidth:.1%} after {timing.n} calls"] if timing.noisy else []
        if self.contended:
            reasons.append(f"others used {self.others_cores:.2f} cores")
        return ", ".join(reasons)


def measure_interleaved(
    callables: Mapping[str, Callable[[], Any]],
    options: Mapping[str, Any],
    sync: Callable[[], None] | None = None,
) -> Interleaved:
    """``time_interleaved`` with the ``timing:`` config keys, on the real clock, watching /proc/stat:
    a uniformly slowed run (an OpenMP thread waiting for a core at every op) has a tight interval,
    so the CPU time other processes used meanwhile is measured as well and flags the result."""
    import torch

    from dsconv.benchmark.measure import MIN_WINDOW_S, machine_busy_seconds, usable_cpus

    busy_start, own_start, wall_start = machine_busy_seconds(), time.process_time(), time.perf_counter()
    timings = time_interleaved(
        callables,
        warmup=int(options["warmup"]),
        min_rounds=int(options["min_rounds"]),
        max_rounds=int(options["max_rounds"]),
        max_time_s=float(options["max_time_s"]),
        rel_tol=float(options["rel_tol"]),
        confidence=float(options["confidence"]),
        sync=sync,
    )
    wall = time.perf_counter() - wall_start
    busy_end, own = machine_busy_seconds(), time.process_time() - own_start
    others = None
    if busy_start is not None and busy_end is not None and wall >= MIN_WINDOW_S:
        others = max(0.0, (busy_end - busy_start) - own) / wall
    idle = max(0, usable_cpus() - torch.get_num_threads())
    contended = others is not None and others > idle + float(options["contention_threshold"])
    return Interleaved(timings, others, contended)


def rotated_repeats(timers: Mapping[Hashable, Callable[[], float]], repeats: int) -> dict[Hashable, list[float]]:
    """Each repeat calls every timer once, in an order rotated by one per repeat, so that none always runs
    first (after a pause) or last; returns every timer's readings, in repeat order."""
    keys = list(timers)
    readings: dict[Hashable, list[float]] = {key: [] for key in keys}
    for repeat in range(repeats):
        shift = repeat % len(keys)
        for key in keys[shift:] + keys[:shift]:
            readings[key].append(timers[key]())
    return readings


def median_with_range(values: Sequence[float], spec: str, scale: float = 1.0) -> tuple[float, str]:
    """The median of ``values`` and a table cell "median (min-max)", each number ``scale``-d and ``spec``-formatted."""
    median = statistics.median(values)
    low, high = (scale * v for v in (min(values), max(values)))
    return median, f"{scale * median:{spec}} ({low:{spec}}-{high:{spec}})"
