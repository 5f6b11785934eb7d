"""The study's questions answered in sentences: every number and verdict derived from the synthetic runs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dsconv.report.answers import answers_markdown
from dsconv.report.cli import main as report_main
from dsconv.report.collect import find_runs, group_runs
from dsconv.report.comparison import build_comparisons
from test_report_kinds import ACCURACY, SEEDS, SIZE, _write_run


def _answers(root) -> dict[str, str]:
    text = answers_markdown(build_comparisons(group_runs(find_runs([root]))))
    bullets = [line for line in text.splitlines() if line.startswith("- **")]
    return {line.split("**")[1]: line for line in bullets}


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("answers")
    for row in ACCURACY:
        for seed in SEEDS:
            _write_run(root, row, seed)
    return _answers(root)


def _welch(a: str, b: str) -> float:
    return float(stats.ttest_ind(ACCURACY[a], ACCURACY[b], equal_var=False).pvalue)


def test_ds_cost_with_both_tests_and_sizes(answers):
    line = answers["What DS costs at the same architecture"]
    cost = 100 * (np.mean(ACCURACY["ds"]) - np.mean(ACCURACY["standard"]))
    assert f"DS is {cost:+.2f} points against standard" in line
    assert f"Welch p {_welch('ds', 'standard'):.2g}, Mann-Whitney p 0.1, floor 0.1]: **significantly lower**" in line
    assert f"{SIZE['ds'][0]:,} parameters ({SIZE['ds'][0] / SIZE['standard'][0]:.2f}x standard's)" in line


def test_equal_macs_and_pruned_are_tested_against_standard(answers):
    equal = answers["Does DS at equal MACs beat standard?"]
    diff = 100 * (np.mean(ACCURACY["equal"]) - np.mean(ACCURACY["standard"]))
    assert f"{diff:+.2f} points against standard [Welch p {_welch('equal', 'standard'):.2g}" in equal
    assert "**no, significantly lower**" in equal
    pruned = answers["The standard model pruned to the DS budget"]
    assert f"points against DS [Welch p {_welch('pruned', 'ds'):.2g}" in pruned
    assert f"points against unpruned standard [Welch p {_welch('pruned', 'standard'):.2g}" in pruned


def test_distillation_reports_the_gap_it_recovers(answers):
    line = answers["What distillation wins back"]
    kd, ds, standard = (np.mean(ACCURACY[k]) for k in ("kd", "ds", "standard"))
    assert f"{100 * (kd - ds):+.2f} points against DS" in line
    assert f"{(kd - ds) / (standard - ds):.0%} ± " in line and "of the gap recovered" in line


def test_one_seed_gives_no_verdict(tmp_path):
    for row in ("standard", "ds"):
        _write_run(tmp_path, row, 0)
    line = _answers(tmp_path)["What DS costs at the same architecture"]
    assert "(1 vs 1 seeds: too few for a test, no verdict)" in line and "significantly" not in line


def test_the_report_carries_the_answers(tmp_path):
    for row in ("standard", "ds"):
        for seed in SEEDS:
            _write_run(tmp_path / "runs", row, seed)
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "## The study's questions, answered from the table above" in report
    assert "- **What DS costs at the same architecture**" in report


def test_no_pair_says_so(tmp_path):
    _write_run(tmp_path, "standard", 0)
    assert answers_markdown(build_comparisons(group_runs(find_runs([tmp_path])))).startswith("No standard/DS pair")


def test_with_a_bench_the_answers_give_side_by_side_speed_and_memory(tmp_path):
    import json

    from dsconv.report.timing import load_bench

    for row in ("standard", "ds", "equal"):
        for seed in SEEDS:
            _write_run(tmp_path / "runs", row, seed)
    common = {"target": "mnist_cnn/x", "dtype": "fp32", "throughput_batch": 32, "noisy": False}
    rows = [
        {**common, "conv": "standard", "params": SIZE["standard"][0], "latency_b1_median_ms": 0.40,
         "throughput_img_per_s": 9000.0, "peak_mem_infer_mib": 120.0, "peak_mem_train_mib": 360.0},
        {**common, "conv": "separable", "params": SIZE["ds"][0], "latency_b1_median_ms": 0.32,
         "throughput_img_per_s": 7200.0, "peak_mem_infer_mib": 118.0, "peak_mem_train_mib": 350.0},
    ]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps({"rows": rows, "pairs": []}))
    bench = load_bench(tmp_path)
    text = answers_markdown(build_comparisons(group_runs(find_runs([tmp_path / "runs"])), bench), bench)
    (line,) = [line for line in text.splitlines() if line.startswith("- **What each buys in speed and memory**")]
    assert "standard 0.40 ms at batch 1, 9000 img/s at batch 32, peak memory 120.0 MiB inference / 360.0 MiB" in line
    assert "DS 0.32 ms at batch 1 (1.25x standard's speed), 7200 img/s at batch 32, peak memory 118.0 MiB" in line
    assert line.endswith("; not benched: DS at equal MACs.")  # its size matches no bench row
