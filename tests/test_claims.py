"""The claims table: each rule applied to numbers read from result files, at and around its threshold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dsconv.report.claims import claims_markdown


def _study(root: Path, name: str, param_ratio: float, diff: float, p: float | None, n: int) -> Path:
    study = root / name
    study.mkdir(parents=True)
    pair = {
        "standard": "net [standard]",
        "separable": "net [separable]",
        "param_ratio": param_ratio,
        "mac_ratio": 8.0,
        "accuracy_diff": diff,
        "welch_p_value": p,
        "test": {"n_a": n, "n_b": n},
    }
    (study / "metrics_comparison.json").write_text(json.dumps({"pairs": [pair]}))
    return study


def _csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _bench(root: Path) -> Path:
    bench = root / "bench"
    bench.mkdir()
    speed = [("a", 1, 1.31), ("a", 32, 1.30), ("b", 1, 1.5), ("b", 32, 1.29)]
    _csv(
        bench / "runtime_pairs.csv",
        [{"pair": p, "runtime": "eager_fp32", "batch": b, "speedup": s} for p, b, s in speed]
        + [{"pair": "b", "runtime": "int8", "batch": 32, "speedup": 9.0}],  # another runtime: not the rule's
    )
    memory = [("a", "standard", 100, 200), ("a", "separable", 90, 190), ("b", "standard", 100, 200)]
    memory.append(("b", "separable", 90, 210))  # lower at inference, higher in training
    _csv(
        bench / "results.csv",
        [
            {
                "pair": p,
                "kind": "model",
                "conv": c,
                "dtype": d,
                "memory_format": "nchw",
                "peak_mem_infer_mib": i,
                "peak_mem_train_mib": t,
            }
            for p, c, i, t in memory
            for d in ("fp32", "bf16")
        ],
    )
    return bench


def test_each_rule_at_its_threshold(tmp_path):
    studies = [
        _study(tmp_path, "close", param_ratio=7.0, diff=-0.01, p=0.2, n=3),
        _study(tmp_path, "far", param_ratio=6.99, diff=-0.0101, p=None, n=1),
    ]
    lines = claims_markdown(studies, _bench(tmp_path)).splitlines()
    body = [line.split(" | ")[2:] for line in lines[2:]]
    assert body == [
        ["net (close)", "7.00x fewer parameters, 8.00x fewer MACs", "**held** |"],
        ["net (far)", "6.99x fewer parameters, 8.00x fewer MACs", "**not held** |"],
        ["net (close)", "DS − standard = -1.00 points (n=3, Welch p = 0.2)", "**held** |"],
        ["net (far)", "DS − standard = -1.01 points (n=1)", "**not held** (1 seed: no test possible) |"],
        ["a", "1.31x at batch 1, 1.30x at batch 32", "**held** |"],
        ["b", "1.50x at batch 1, 1.29x at batch 32", "**not held** |"],
        ["a", "inference 100.0 → 90.0 MiB, training step 200.0 → 190.0 MiB", "**held** |"],
        ["b", "inference 100.0 → 90.0 MiB, training step 200.0 → 210.0 MiB", "**not held** |"],
    ]


def test_missing_results_say_so_instead_of_guessing(tmp_path):
    text = claims_markdown([], tmp_path / "no-bench")
    assert text.count("not measured") == 4
