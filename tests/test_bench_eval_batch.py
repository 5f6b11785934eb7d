"""scripts/bench_eval_batch.py: the presets' networks as composed, one row per preset and batch size."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_eval_batch.py"
PRESETS = Path(__file__).resolve().parents[1] / "src" / "dsconv" / "conf" / "experiment"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_eval_batch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_presets_compose_with_their_own_model_and_eval_settings():
    bench = _bench()
    for experiment in bench.PRESETS:
        preset = yaml.safe_load((PRESETS / f"{experiment}.yaml").read_text())
        cfg = bench.preset_config(experiment, [])
        assert cfg.model.name == "mnist_cnn" and cfg.model.pool_first is True
        assert cfg.model.width == preset["model"]["width"]
        assert cfg.trainer.eval_hflip is preset["trainer"].get("eval_hflip", False)
    assert bench.preset_config("fashion_mnist_speedrun", ["model.width=0.5"]).model.width == 0.5


def test_the_benchmark_writes_one_row_per_preset_and_batch_size(tmp_path, monkeypatch):
    bench = _bench()
    table = tmp_path / "eval_batch.csv"
    argv = ["bench", "--images", "40", "--batch-sizes", "10", "20", "--repeats", "2", "--csv", str(table)]
    monkeypatch.setattr(sys, "argv", [*argv, "model.width=0.25"])
    bench.main()
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["preset"], row["eval batch size"]) for row in rows] == [
        (preset, size) for preset in bench.PRESETS for size in ("10", "20")
    ]
    for preset in bench.PRESETS:
        ratios = sorted(float(row["rate / fastest"]) for row in rows if row["preset"] == preset)
        assert ratios[-1] == 1.0 and 0 < ratios[0] <= 1.0
