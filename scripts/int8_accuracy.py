"""INT8 post-training static quantization of trained runs: test accuracy before and after, per run.

Each run dir's best checkpoint is rebuilt, quantized with PyTorch's x86 FX flow (calibrated on
``--calibration`` training images, never on test images), and both versions are evaluated once on the
run's own test split (the same dataset config and normalisation as its training).

    python scripts/int8_accuracy.py outputs/study/mnist/standard/seed0 outputs/study/mnist/ds/seed0 \
        --json results/int8/mnist.json   # also writes mnist.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf


def evaluate_run(run_dir: Path, calibration: int, data_dir: str | None) -> dict:
    from dsconv.benchmark.deploy import quantized_accuracy
    from dsconv.compression.runs import load_run_model
    from dsconv.data import DeviceBatches, Normalize, load_dataset

    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = load_dataset(cfg.dataset, data_dir or cfg.paths.data_dir)
    channels = data.input_shape[0]
    if cfg.dataset.normalize == "stats":
        mean, std = data.mean[:channels], data.std[:channels]
    else:
        mean, std = (0.5,) * channels, (0.5,) * channels
    normalize = Normalize(mean, std, "cpu")
    model = load_run_model(run_dir, "cpu")
    test = DeviceBatches(data.test, 1000, normalize)
    train = DeviceBatches(data.train, 250, normalize, shuffle=True, generator=torch.Generator().manual_seed(0))
    calibration_batches = [x for _, (x, _) in zip(range(max(1, calibration // 250)), train)]
    result = quantized_accuracy(model, test, calibration_batches)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "run": run_dir.parent.name + "/" + run_dir.name,
        "model": metrics["model"],
        "conv": metrics["conv"],
        **result,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--calibration", type=int, default=1000, help="training images to calibrate on")
    parser.add_argument("--data-dir", default=None, help="override the runs' paths.data_dir")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for run_dir in args.runs:
        if not (run_dir / "checkpoints" / "best.pt").is_file():
            print(f"error: {run_dir} has no checkpoints/best.pt: pass finished run dirs", file=sys.stderr)
            return 2
        row = evaluate_run(run_dir, args.calibration, args.data_dir)
        rows.append(row)
        print(
            f"{row['run']:28s} fp32 {row['fp32_accuracy']:.2f}%  int8 {row['int8_accuracy']:.2f}%  "
            f"change {row['change_points']:+.2f} points",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        columns = ("run", "model", "conv", "fp32_accuracy", "int8_accuracy", "change_points", "images")
        lines = [",".join(columns)] + [",".join(str(row[c]) for c in columns) for row in rows]
        args.json.with_suffix(".csv").write_text("\n".join(lines) + "\n")  # the README's table
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
