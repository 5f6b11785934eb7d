"""Interleaved timing: order, stopping rules, the median's interval and paired ratios, on fake
callables that advance a fake clock (no real time is measured)."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats

from dsconv.benchmark.timing import (
    median_ci,
    median_ci_ranks,
    median_with_range,
    ratio_interval,
    rotated_repeats,
    time_interleaved,
)
from dsconv.errors import ConfigError


class FakeClock:
    """A clock that only moves when a fake callable 'runs' for a given duration."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, name: str, durations, log: list[str]):
        """A callable that takes the next of ``durations`` (seconds) and records its name."""
        items = iter(durations)

        def run() -> None:
            log.append(name)
            self.now += next(items)

        return run


def constant(seconds: float):
    while True:
        yield seconds


@pytest.mark.parametrize("n", [6, 7, 10, 25, 50, 101, 400])
def test_median_interval_has_the_promised_binomial_coverage(n):
    lo, hi = median_ci_ranks(n, 0.95)
    k = lo + 1  # order statistics cut from each end
    assert hi == n - k
    # Coverage of [x_(k), x_(n-k+1)] is 1 - 2 P(Bin(n, 1/2) <= k - 1) ...
    assert 1 - 2 * stats.binom.cdf(k - 1, n, 0.5) >= 0.95
    # ... and cutting one more from each end would drop below 95%: the interval is the tightest.
    assert 1 - 2 * stats.binom.cdf(k, n, 0.5) < 0.95


def test_too_few_values_give_no_interval():
    assert median_ci_ranks(5, 0.95) is None and median_ci_ranks(6, 0.95) == (0, 5)
    median, low, high = median_ci([3.0, 1.0, 2.0])
    assert median == 2.0 and low == -math.inf and high == math.inf


def test_calls_are_interleaved_in_alternating_order():
    clock, log = FakeClock(), []
    fns = {"A": clock.work("A", constant(0.01), log), "B": clock.work("B", constant(0.02), log)}
    result = time_interleaved(fns, warmup=2, min_rounds=6, max_rounds=6, max_time_s=100, clock=clock)
    # Warm-up rounds alternate too (AB BA), then the timed rounds AB BA AB BA AB BA.
    assert "".join(log) == "AB" + "BA" + "ABBA" * 3
    assert result["A"].n == result["B"].n == 6
    assert result["A"].median_ms == pytest.approx(10.0) and result["B"].median_ms == pytest.approx(20.0)
    assert result["A"].first_call_ms == pytest.approx(10.0)


def test_stops_as_soon_as_every_interval_is_tight():
    clock, log = FakeClock(), []
    fns = {"A": clock.work("A", constant(0.005), log), "B": clock.work("B", constant(0.007), log)}
    result = time_interleaved(fns, warmup=1, min_rounds=6, max_rounds=1000, max_time_s=100, rel_tol=0.03, clock=clock)
    for timing in result.values():
        assert timing.n == 6 and not timing.noisy and timing.rel_halfwidth == pytest.approx(0.0, abs=1e-9)
        assert timing.ci_low_ms == pytest.approx(timing.median_ms) == pytest.approx(timing.ci_high_ms)


def test_a_spread_that_never_settles_hits_the_time_limit_and_is_flagged():
    rng = random.Random(0)
    clock, log = FakeClock(), []
    wild = (rng.choice([0.001, 0.010]) for _ in range(10_000))  # half fast, half 10x slower
    steady = constant(0.002)
    fns = {"A": clock.work("A", wild, log), "B": clock.work("B", steady, log)}
    result = time_interleaved(fns, warmup=1, min_rounds=6, max_rounds=10_000, max_time_s=0.5, rel_tol=0.03, clock=clock)
    a, b = result["A"], result["B"]
    assert a.noisy and not b.noisy and a.n == b.n
    assert a.rel_halfwidth > 0.03 and a.ci_low_ms <= a.median_ms <= a.ci_high_ms
    # The limit counts timed rounds only: it stops in the first round that ends past 0.5 s of them.
    timed = sum(a.times_ms) / 1e3 + sum(b.times_ms) / 1e3
    last_round = a.times_ms[-1] / 1e3 + b.times_ms[-1] / 1e3
    assert timed >= 0.5 > timed - last_round


def test_max_rounds_caps_a_noisy_measurement():
    clock, log = FakeClock(), []
    values = iter([0.001, 0.004] * 1000)
    result = time_interleaved(
        {"A": clock.work("A", values, log)}, warmup=1, min_rounds=2, max_rounds=9, max_time_s=100, clock=clock
    )
    assert result["A"].n == 9 and result["A"].noisy


def test_paired_ratios_cancel_a_drift_that_widens_each_median():
    # The machine slows down steadily; B always takes exactly twice as long as A in the same round.
    clock, log = FakeClock(), []
    drift = [0.001 * (1 + 0.05 * i) for i in range(200)]
    fns = {"A": clock.work("A", drift, log), "B": clock.work("B", [2 * d for d in drift], log)}
    result = time_interleaved(fns, warmup=1, min_rounds=40, max_rounds=40, max_time_s=100, clock=clock)
    assert result["A"].noisy and result["B"].noisy  # each median alone is uncertain ...
    median, low, high = ratio_interval(result["B"], result["A"])
    assert (
        median == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)
    )  # ... the ratio not


def test_sync_runs_around_every_call():
    clock, log, synced = FakeClock(), [], []
    fns = {"A": clock.work("A", constant(0.001), log)}
    time_interleaved(fns, warmup=1, min_rounds=6, max_rounds=6, clock=clock, sync=lambda: synced.append(1))
    assert len(synced) == 2 * len(log) == 2 * 7


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"warmup": 0}, "timing.warmup=0"),
        ({"min_rounds": 5, "max_rounds": 4}, "timing.min_rounds=5, timing.max_rounds=4"),
        ({"rel_tol": 0.0}, "timing.rel_tol=0.0"),
        ({"confidence": 1.0}, "timing.confidence=1.0"),
        ({"max_time_s": math.inf}, "timing.max_time_s=inf"),
    ],
)
def test_bad_options_name_the_key(options, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        time_interleaved({"A": lambda: None}, **options)


def test_rotated_repeats_moves_every_timer_through_every_position():
    calls: list[str] = []

    def timer(key: str):
        def call() -> float:
            calls.append(key)
            return float(len(calls))

        return call

    readings = rotated_repeats({key: timer(key) for key in "abc"}, repeats=3)
    assert calls == list("abcbcacab")
    assert readings == {"a": [1.0, 6.0, 8.0], "b": [2.0, 4.0, 9.0], "c": [3.0, 5.0, 7.0]}


def test_median_with_range_formats_the_scaled_median_and_ends():
    median, cell = median_with_range([0.0125, 0.0101, 0.0302], ".1f", scale=1e3)
    assert median == 0.0125 and cell == "12.5 (10.1-30.2)"
    assert median_with_range([1234.0, 999.0, 5000.0, 1500.0], ",.0f") == (1367.0, "1,367 (999-5,000)")
