"""The README's result tables are generated from results/: CI fails when the two disagree."""

from __future__ import annotations

import importlib.util
import json

import pytest

from dsconv.paths import REPO_ROOT

spec = importlib.util.spec_from_file_location("readme_tables", REPO_ROOT / "scripts" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_tables)


def test_readme_tables_match_the_committed_results():
    assert readme_tables.main(["--check"]) == 0


def test_blocks_are_regenerated_from_their_sources(tmp_path):
    (tmp_path / "a.csv").write_text("run,acc\nx,0.98765\n")
    speedrun = {
        "experiment": "mnist_speedrun",
        "ratio_dsconv_over_plain": 0.5,
        **{
            name: {
                "median_process_s": t,
                "min_process_s": t,
                "max_process_s": t,
                "mean_test_accuracy": 0.99,
                "std_test_accuracy": None,
                "runs": [{}],
            }
            for name, t in (("dsconv", 5.0), ("plain", 10.0))
        },
    }
    speedrun["dsconv"].update(median_startup_s=1.5, median_fit_s=2.25, median_after_fit_s=1.25)
    (tmp_path / "s.json").write_text(json.dumps(speedrun))
    text = "intro\n<!-- table csv a.csv -->\nstale\n<!-- /table -->\n<!-- table speedrun s.json -->\n<!-- /table -->\n"
    out = readme_tables.render(text, tmp_path)
    assert "| run | acc |\n|---|---|\n| x | 0.988 |\n" in out and "stale" not in out
    assert "**0.50x**" in out and "| plain script | 10.00 (10.00–10.00) | — | — | — | 99.00 | 1 |" in out
    assert "| `dsconv-train experiment=mnist_speedrun` | 5.00 (5.00–5.00) | 1.50 | 2.25 | 1.25 | 99.00 | 1 |" in out
    assert readme_tables.render(out, tmp_path) == out  # regenerating is a fixed point
    assert "Machine:" not in out  # older results record no CPU
    with pytest.raises(SystemExit, match="does not exist"):
        readme_tables.render("<!-- table csv gone.csv -->\n<!-- /table -->\n", tmp_path)
    for name in ("dsconv", "plain"):
        speedrun[name]["runs"] = [{"precision": "fp32"}]
    speedrun.update(cpu_model="AMD EPYC", cpu_count=2, cpu_flags=["avx2"], cpu_capability="AVX2")
    (tmp_path / "s.json").write_text(json.dumps(speedrun))
    out = readme_tables.render(text, tmp_path)
    assert "Machine: AMD EPYC, 2 CPUs, torch kernels AVX2, fp32.\n" in out
    speedrun.update(cpu_model="Intel Xeon", cpu_flags=["avx512f", "avx512_bf16", "amx_bf16"], cpu_capability="AVX512")
    (tmp_path / "s.json").write_text(json.dumps(speedrun))
    assert "Machine: Intel Xeon, 2 CPUs, torch kernels AVX512 with AMX, fp32.\n" in readme_tables.render(text, tmp_path)


def test_kd_sweep_shows_test_accuracy_of_the_validation_pick_only(tmp_path):
    import yaml

    runs = {
        "teacher": ({"conv": "standard"}, None, 0.90, 0.89),
        "ds": ({"conv": "separable"}, None, 0.85, 0.84),
        "sweep/0": ({"conv": "separable"}, {"teacher": "t", "alpha": 0.3, "temperature": 2.0}, 0.86, 0.70),
        "sweep/1": ({"conv": "separable"}, {"teacher": "t", "alpha": 0.9, "temperature": 4.0}, 0.87, 0.80),
    }
    for name, (model, distill, val, test) in runs.items():
        run = tmp_path / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"model": model, "distill": distill}))
        (run / "metrics.json").write_text(json.dumps({"best_val_acc": val, "test_accuracy": test}))
    lines = readme_tables.kd_sweep_table(tmp_path).splitlines()
    assert lines[2:] == [
        "| teacher (standard) | — | — | 90.00 | 89.00 |",
        "| DS, no distillation | — | — | 85.00 |  |",
        "| DS + KD | 0.3 | 2 | 86.00 |  |",  # its test accuracy (70%) is never shown: not the pick
        "| **DS + KD** (picked) | 0.9 | 4 | 87.00 | 80.00 |",
    ]


def test_sizes_table_reads_the_bench_counts(tmp_path):
    rows = [
        ("model", "net/standard", "net", "standard", 100, 800, 900),
        ("model", "net/separable", "net", "separable", 25, 100, 150),
        ("layer", "conv/standard", "conv", "standard", 1, 1, 1),  # single layers are not networks
    ]
    header = "kind,target,pair,conv,input_shape,params,macs_per_image,fvcore_macs_per_image\n"
    body = "".join(f"{k},{t},{p},{c},1x8x8,{n},{m},{f}\n" for k, t, p, c, n, m, f in rows)
    (tmp_path / "results.csv").write_text(header + body + body)  # every setting repeats the counts
    lines = readme_tables.sizes_table(tmp_path / "results.csv").splitlines()
    assert lines[2:4] == [
        "| `net/standard` | 1x8x8 | standard | 100 | 800 | 900 |",
        "| `net/separable` | 1x8x8 | separable | 25 | 100 | 150 |",
    ]
    assert lines[-1] == "Standard / DS: net: 4.00x fewer parameters, 8.00x fewer MACs (6.00x by fvcore)."


def test_rerun_table_puts_one_runs_two_machines_side_by_side(tmp_path):
    for where, acc, epochs in (("earlier_machine", 0.9824, 7), ("runs", 0.9901, 14)):
        run = tmp_path / where / "standard" / "seed1"
        run.mkdir(parents=True)
        metrics = {"test_accuracy": acc, "epochs_run": epochs, "best_epoch": epochs - 3, "best_val_loss": 0.05}
        (run / "metrics.json").write_text(json.dumps(metrics))
    lines = readme_tables.rerun_table(tmp_path).splitlines()
    assert lines[2:] == [
        "| standard seed1 | earlier | 98.24 | 7 | 4 | 0.0500 |",
        "| standard seed1 | later (the study's run) | 99.01 | 14 | 11 | 0.0500 |",
    ]
