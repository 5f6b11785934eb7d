"""The report's statistics against scipy: Welch's t, Mann-Whitney U, zero variance, n = 1, gap recovered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from dsconv.report.cli import main as report_main
from dsconv.report.cli import summary_table
from dsconv.report.comparison import gap_recovered
from dsconv.report.stats import NO_VARIANCE_NOTE, mannwhitney_min_p, summarize, two_sample_tests

EXACT = stats.PermutationMethod(n_resamples=np.inf)


def test_identical_values_per_group_give_no_t_test_and_an_exact_rank_p():
    # scipy's Welch gives p = 6.2e-31 here: the std of [0.7]*3 is rounding noise, not variance.
    assert stats.ttest_ind([0.7] * 3, [0.6] * 3, equal_var=False).pvalue < 1e-20
    result = two_sample_tests([0.7] * 3, [0.6] * 3)
    assert result.welch_p is None
    assert result.note.startswith(NO_VARIANCE_NOTE)
    assert result.mannwhitney_p == pytest.approx(0.1)  # 2 of the C(6, 3) = 20 splits are this extreme
    assert result.mannwhitney_p == pytest.approx(
        stats.mannwhitneyu([0.7] * 3, [0.6] * 3, alternative="two-sided", method=EXACT).pvalue
    )
    assert result.mannwhitney_min_p == pytest.approx(0.1)
    same = two_sample_tests([0.7] * 3, [0.7] * 3)
    assert same.welch_p is None and same.mannwhitney_p == 1.0 and "all values identical" in same.note


def test_rounding_noise_counts_as_no_variance():
    a = [0.1 + 0.2, 0.3, 0.3]  # 0.30000000000000004 and 0.3
    result = two_sample_tests(a, [0.2, 0.2, 0.2])
    assert result.welch_p is None and result.mannwhitney_p == pytest.approx(0.1)


def test_varying_groups_match_scipy_welch_and_exact_mann_whitney():
    a, b = [0.981, 0.984, 0.979, 0.986], [0.975, 0.977, 0.972, 0.978]
    result = two_sample_tests(a, b)
    assert result.welch_p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)
    assert result.mannwhitney_p == pytest.approx(
        stats.mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue
    )
    assert result.mannwhitney_p == pytest.approx(2 / 70)
    assert result.mannwhitney_method.startswith("exact")
    assert result.note == "significant (Welch p < 0.05)"


def test_ties_across_groups_use_the_exact_permutation_distribution():
    a, b = [0.70, 0.71, 0.72], [0.60, 0.61, 0.70]
    result = two_sample_tests(a, b)
    expected = stats.mannwhitneyu(a, b, alternative="two-sided", method=EXACT).pvalue
    assert result.mannwhitney_p == pytest.approx(expected) == pytest.approx(0.2)
    assert result.welch_p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert "cannot reach p < 0.05 with n=3 vs 3 (smallest p 0.1)" in result.note


def test_large_samples_use_the_normal_approximation():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.9, 0.01, 12).tolist(), rng.normal(0.89, 0.01, 12).tolist()
    result = two_sample_tests(a, b)
    assert result.mannwhitney_method.startswith("normal approximation")
    assert result.mannwhitney_p == pytest.approx(
        stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").pvalue
    )


def test_one_seed_has_no_test_and_no_std():
    result = two_sample_tests([0.9], [0.8, 0.81])
    assert result.welch_p is None and result.mannwhitney_p is None and "n too small" in result.note
    one = summarize([0.9])
    assert one.std is None and one.fmt(100, 2) == "90.00 (n=1)"
    assert summarize([0.9, None, float("nan"), 0.8]).n == 2
    assert mannwhitney_min_p(5, 5) == pytest.approx(2 / 252)


def _single_run(root: Path, name: str, conv: str, acc: float) -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        json.dumps({"model": {"name": "mnist_cnn", "conv": conv}, "dataset": {"name": "mnist"}, "trainer": {"seed": 0}})
    )
    metrics = {"test_accuracy": acc, "test_f1_macro": acc, "params_total": 100, "macs_per_image": 1000}
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_n1_prints_no_plus_minus_and_stores_null_std(tmp_path, capsys):
    _single_run(tmp_path / "runs", "a", "standard", 0.9)
    _single_run(tmp_path / "runs", "b", "separable", 0.8)
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "90.00 (n=1)" in out and "±" not in out
    payload = json.loads((tmp_path / "report" / "metrics_comparison.json").read_text())
    for group in payload["groups"]:
        assert group["metrics"]["test_accuracy"]["std"] is None and group["metrics"]["test_accuracy"]["n"] == 1
    assert "±" not in summary_table(payload)


def test_gap_recovered_estimate_and_bootstrap():
    standard, ds, kd = [0.99, 0.989, 0.991], [0.975, 0.978, 0.976], [0.983, 0.985, 0.984]
    gap = gap_recovered(kd, ds, standard)
    expected = (np.mean(kd) - np.mean(ds)) / (np.mean(standard) - np.mean(ds))
    assert gap.estimate == pytest.approx(expected)
    assert gap.std is not None and 0 < gap.std < 0.5
    assert gap.low <= expected <= gap.high
    assert gap_recovered(kd, ds, standard) == gap  # fixed RNG: the same report twice
    assert gap_recovered([0.98], ds, standard).std is None
    assert gap_recovered(kd, ds, ds).estimate is None
