"""Distilled, budget-matched and pruned runs in the report; --bench timings; --markdown-table (synthetic run dirs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from dsconv.report.cli import main as report_main

SEEDS = (0, 1, 2)
ACCURACY = {
    "standard": [0.990, 0.989, 0.991],
    "ds": [0.975, 0.978, 0.976],
    "kd": [0.983, 0.985, 0.984],
    "equal": [0.986, 0.987, 0.985],
    "pruned": [0.980, 0.981, 0.982],
}
SIZE = {  # params, MACs
    "standard": (102_026, 7_548_928),
    "ds": (20_723, 1_017_424),
    "kd": (20_723, 1_017_424),
    "equal": (61_000, 7_500_000),
    "pruned": (30_000, 1_020_000),
}
LATENCY = {"standard": [1.0, 1.05, 0.95], "ds": [0.5, 0.7, 0.4], "kd": [0.5, 0.5, 0.5], "equal": [0.9] * 3}


def _write_run(root: Path, row: str, seed: int) -> None:
    conv = "standard" if row in ("standard", "pruned") else "separable"
    choice = "mnist_cnn" if conv == "standard" else "mnist_cnn_separable"
    config = {
        "model": {"name": "mnist_cnn", "conv": conv, "channels": [32, 64, 128], "conv_options": {}},
        "dataset": {"name": "mnist"},
        "trainer": {"seed": seed, "epochs": 3},
        "optimizer": {"name": "adam", "lr": 0.001},
    }
    metrics = {
        "model": "mnist_cnn",
        "conv": conv,
        "seed": seed,
        "test_accuracy": ACCURACY[row][seed],
        "test_f1_macro": ACCURACY[row][seed],
        "params_total": SIZE[row][0],
        "macs_per_image": SIZE[row][1],
        "latency_ms_b1": LATENCY.get(row, [0.6] * 3)[seed],
        "throughput_img_s": 1000.0 / LATENCY.get(row, [0.6] * 3)[seed],
        "inference_profile": {"noisy": False},
        "mean_epoch_time_s": 10.0,
    }
    if row == "kd":
        # Each student has its own teacher run: the path must not split the group.
        config["distill"] = {"teacher": f"/runs/standard_{seed}", "alpha": 0.5, "temperature": 4.0}
        metrics["distill"] = {
            "teacher": f"/runs/standard_{seed}",
            "teacher_config_hash": f"hash{seed}",
            "teacher_test_accuracy": ACCURACY["standard"][seed],
            "alpha": 0.5,
            "temperature": 4.0,
        }
    if row == "equal":
        config["model"].update({"match": "macs", "match_to": "mnist_cnn"})
        metrics["match"] = {"by": "macs", "to": "mnist_cnn", "width": 2.3, "budget": 7_548_928, "achieved": 7_500_000}
    if row == "pruned":
        config["prune"] = {"method": "structured", "from": f"/runs/standard_{seed}", "finetune_epochs": 2}
        config["trainer"]["epochs"] = 2  # the fine-tuning budget
        metrics["prune"] = {
            "method": "structured",
            "from": f"/runs/standard_{seed}",
            "sparsity": 0.7,
            "finetune_epochs": 2,
            "budget": 1_017_424,
        }
    run = root / f"{row}_{seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"model": choice}}}}))
    (run / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kinds")
    for row in ACCURACY:
        for seed in SEEDS:
            _write_run(root, row, seed)
    return root


@pytest.fixture(scope="module")
def report_dir(sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert report_main([str(sweep), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def payload(report_dir) -> dict:
    return json.loads((report_dir / "metrics_comparison.json").read_text())


def test_rows_per_architecture_in_order(payload):
    (comparison,) = payload["comparisons"]
    roles = [r["role"] for r in comparison["rows"]]
    assert roles == ["standard", "DS", "DS + KD", "DS at equal MACs", "standard pruned (structured)"]
    assert all(len(r["seeds"]) == 3 for r in comparison["rows"])  # per-seed teacher/source paths kept together
    assert "mnist_cnn on mnist" in comparison["title"] and "3 seeds" in comparison["title"]
    assert comparison["reference"] == "mnist_cnn_separable [separable]"
    labels = {g["label"] for g in payload["groups"]}
    assert "mnist_cnn_separable [separable], KD (alpha=0.5, T=4.0)" in labels
    assert "mnist_cnn_separable [separable], equal macs to mnist_cnn" in labels


def test_every_row_is_tested_against_plain_ds(payload):
    rows = {r["role"]: r for r in payload["comparisons"][0]["rows"]}
    ds = ACCURACY["ds"]
    for role, key in (("standard", "standard"), ("DS + KD", "kd"), ("DS at equal MACs", "equal")):
        row = rows[role]
        acc = ACCURACY[key]
        assert row["welch_p_value_vs_ds"] == pytest.approx(stats.ttest_ind(acc, ds, equal_var=False).pvalue)
        exact = stats.mannwhitneyu(acc, ds, alternative="two-sided", method="exact").pvalue
        assert row["mannwhitney_p_value_vs_ds"] == pytest.approx(exact) == pytest.approx(0.1)
        assert row["accuracy_diff_vs_ds"] == pytest.approx(np.mean(acc) - np.mean(ds))
    assert rows["DS"]["welch_p_value_vs_ds"] is None and rows["DS"]["test_vs_ds"] is None


def test_gap_recovered_by_kd(payload):
    rows = {r["role"]: r for r in payload["comparisons"][0]["rows"]}
    gap = rows["DS + KD"]["gap_recovered"]
    kd, ds, standard = (np.mean(ACCURACY[k]) for k in ("kd", "ds", "standard"))
    assert gap["estimate"] == pytest.approx((kd - ds) / (standard - ds))
    assert gap["std"] > 0 and gap["low"] <= gap["estimate"] <= gap["high"]
    assert "bootstrap over seeds" in gap["method"]
    assert rows["standard"]["gap_recovered"] is None and rows["DS"]["gap_recovered"] is None


def test_run_timings_carry_spread_noise_flag_and_source(payload, report_dir):
    timings = {g["label"]: g["timings"] for g in payload["groups"]}
    latency = timings["mnist_cnn [standard]"]["latency_ms_b1"]
    assert latency["source"] == "runs" and latency["median"] == pytest.approx(1.0)
    assert (latency["low"], latency["high"]) == (pytest.approx(0.96), pytest.approx(1.04))  # p10, p90
    assert latency["cv"] == pytest.approx(0.05) and latency["noisy"] is False
    ds = timings["mnist_cnn_separable [separable]"]["latency_ms_b1"]
    assert ds["noisy"] is True and "across seeds" in ds["reasons"][0]  # cv 28%
    assert "one-off inference profile" in payload["speed_source"]
    (pair,) = payload["pairs"]
    assert pair["speed"]["latency_speedup"] == {"value": 2.0, "source": "runs", "side_by_side": False, "noisy": True}
    report = (report_dir / "report.md").read_text()
    assert "| 2.00x (not side by side) ⚠ noisy |" in report
    assert "0.500 [0.420–0.660] ⚠ noisy" in report


def _bench(path: Path) -> Path:
    rows = [
        {"model": "mnist_cnn", "conv": "standard", "params": 102_026, "macs_per_image": 7_548_928, "dtype": "bf16",
         "latency_ms_b1_median": 9.0, "throughput_img_per_s": 1.0, "noisy": False},
        {"model": "mnist_cnn", "conv": "standard", "params": 102_026, "macs_per_image": 7_548_928, "dtype": "fp32",
         "latency_ms_b1_median": 0.40, "latency_ms_b1_ci_low": 0.39, "latency_ms_b1_ci_high": 0.42,
         "throughput_img_per_s": 9000.0, "noisy": False},
        # the interleaved bench's columns: throughput_*_ms are batch times, not images/s
        {"target": "mnist_cnn/separable", "conv": "separable", "params": 20_723, "macs_per_image": 928_464,
         "dtype": "fp32", "latency_b1_median_ms": 0.32, "latency_b1_p90_ms": 0.36, "latency_b1_n": 41,
         "latency_b1_noisy": True, "throughput_median_ms": 40.0, "throughput_ci_low_ms": 39.0,
         "throughput_ci_high_ms": 41.0, "throughput_batch": 256, "throughput_img_per_s": 7200.0,
         "throughput_img_per_s_ci_low": 7000.0, "throughput_img_per_s_ci_high": 7400.0, "throughput_n": 30,
         "throughput_noisy": False, "noisy": True, "noisy_measurements": "latency_b1 (spread 2.1)"},
    ]  # fmt: skip
    path.write_text(json.dumps({"rows": rows, "pairs": []}))
    return path


def test_bench_replaces_run_timings(sweep, tmp_path):
    bench = _bench(tmp_path / "results.json")
    assert report_main([str(sweep), "--out", str(tmp_path / "out"), "--bench", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "out" / "metrics_comparison.json").read_text())
    timings = {g["label"]: g["timings"] for g in payload["groups"]}
    std, ds = timings["mnist_cnn [standard]"], timings["mnist_cnn_separable [separable]"]
    assert std["latency_ms_b1"] | {"reasons": []} == {
        "metric": "latency_ms_b1", "source": "bench", "n": 0, "median": 0.40, "low": 0.39, "high": 0.42,
        "spread": "bench 95% CI of the median", "cv": None, "noisy": False, "reasons": [],
    }  # fmt: skip
    assert ds["latency_ms_b1"]["median"] == 0.32 and ds["latency_ms_b1"]["high"] == 0.36
    assert ds["latency_ms_b1"]["n"] == 41
    assert (ds["throughput_img_s"]["median"], ds["throughput_img_s"]["low"], ds["throughput_img_s"]["high"]) == (
        7200.0,
        7000.0,
        7400.0,
    )
    assert ds["latency_ms_b1"]["noisy"] is True and ds["throughput_img_s"]["noisy"] is False
    # the widened twin has its own size: its parent's bench row must not be used for it
    equal = timings["mnist_cnn_separable [separable], equal macs to mnist_cnn"]["latency_ms_b1"]
    assert equal["median"] is None and equal["source"] == "bench"
    (pair,) = [p for p in payload["pairs"] if p["separable"] == "mnist_cnn_separable [separable]"]
    assert pair["latency_speedup"] == pytest.approx(0.40 / 0.32)
    assert pair["speed"]["latency_speedup"] == {"value": pytest.approx(1.25), "source": "bench",
                                                "side_by_side": True, "noisy": True}  # fmt: skip
    assert pair["speed"]["throughput_speedup"]["value"] == pytest.approx(0.8)
    assert str(bench) in payload["speed_source"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "1.25x ⚠ noisy" in report and "0.80x |" in report


def test_bad_bench_path_is_one_line_and_writes_nothing(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert report_main([str(sweep), "--out", str(out), "--bench", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bench" in err and "results.json" in err
    assert not out.exists()
    (tmp_path / "results.json").write_text("{not json")
    assert report_main([str(sweep), "--out", str(out), "--bench", str(tmp_path)]) == 2
    assert "not readable JSON" in capsys.readouterr().err and not out.exists()


def test_markdown_table_from_files_only(sweep, tmp_path, capsys):
    assert report_main([str(sweep), "--markdown-table"]) == 0
    text = capsys.readouterr().out
    assert not (sweep / "report.md").exists()  # prints, writes nothing
    header = [line for line in text.splitlines() if line.startswith("| row |")]
    assert len(header) == 1
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    assert [line.split(" | ")[0][2:] for line in rows] == [
        "standard", "DS", "DS + KD", "DS at equal MACs", "standard pruned (structured)",
    ]  # fmt: skip
    assert "| DS + KD | mnist_cnn_separable [separable], KD (alpha=0.5, T=4.0) | 98.40 ± 0.10 (n=3) | +0.77 |" in text
    assert "(not side by side)" not in text and "one-off inference profile" in text
    assert str(sweep) not in text  # no absolute paths: stable when regenerated elsewhere
    target = tmp_path / "table.md"
    assert report_main([str(sweep), "--markdown-table", str(target)]) == 0
    assert target.read_text() == text


def test_a_ds_row_with_custom_conv_options_is_named_by_them(tmp_path, capsys):
    """Committed results keep no .hydra dir, so the model choice is unknown: the options must name the row."""
    for seed in SEEDS:
        _write_run(tmp_path, "standard", seed)
        _write_run(tmp_path, "ds", seed)
        plain, custom = tmp_path / f"ds_{seed}", tmp_path / f"options_{seed}"
        plain.rename(custom)
        config = yaml.safe_load((custom / "config.yaml").read_text())
        config["model"]["conv_options"] = {"skip": True, "depthwise_scale": 1.2}
        (custom / "config.yaml").write_text(yaml.safe_dump(config))
        _write_run(tmp_path, "ds", seed)
    for run in tmp_path.glob("*/.hydra"):
        for path in run.iterdir():
            path.unlink()
        run.rmdir()
    assert report_main([str(tmp_path), "--markdown-table", "-"]) == 0
    rows = [line.split(" | ")[:2] for line in capsys.readouterr().out.splitlines() if line.startswith("| DS")]
    assert rows == [
        ["| DS", "mnist_cnn [separable]"],
        ["| DS (custom conv options)", "mnist_cnn [separable], depthwise_scale=1.2, skip=True"],
    ]


def test_a_setting_added_later_reads_as_its_old_value_in_older_runs(tmp_path):
    from dsconv.report.collect import find_runs, group_runs

    for seed in SEEDS:
        _write_run(tmp_path, "standard", seed)

    def set_flip(seed: int, value: bool) -> None:
        path = tmp_path / f"standard_{seed}" / "config.yaml"
        config = yaml.safe_load(path.read_text())
        config["trainer"]["eval_hflip"] = value
        path.write_text(yaml.safe_dump(config))

    set_flip(1, False)  # a newer run, written after trainer.eval_hflip existed, at its default
    groups = group_runs(find_runs([tmp_path]))
    assert [len(g.runs) for g in groups] == [3]
    set_flip(2, True)  # flip test-time augmentation really changes the experiment
    groups = group_runs(find_runs([tmp_path]))
    assert sorted(len(g.runs) for g in groups) == [1, 2]
    assert any("eval_hflip=True" in g.label for g in groups)
