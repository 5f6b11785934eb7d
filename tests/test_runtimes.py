"""Deployment runtimes: INT8 and ONNX Runtime agree with eager PyTorch on mnist_cnn within stated
tolerances; the runtime section's structure on tiny inputs (torch.compile is left to the real bench:
it costs tens of seconds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dsconv.benchmark.deploy import agreement, prepare, quantize_int8, quantized_accuracy
from dsconv.benchmark.runtimes import RuntimeOptions, run_runtimes
from dsconv.benchmark.targets import Target, model_target
from dsconv.registry import build_model

# Largest |runtime output - eager fp32 output| / max |eager fp32 output| accepted here.
ONNX_TOLERANCE = 1e-5  # the same fp32 arithmetic, reordered
INT8_TOLERANCE = 0.1  # 8-bit activations and per-channel weights, calibrated on the same distribution
DATASET = {"name": "mnist", "input_shape": [1, 28, 28], "num_classes": 10}


def mnist_model(conv: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model({"name": "mnist_cnn", "conv": conv}, (1, 28, 28), 10).eval()


@pytest.mark.parametrize("conv", ["standard", "separable"])
def test_int8_and_onnx_agree_with_eager(conv):
    model = mnist_model(conv)
    torch.manual_seed(1)
    calibration = [torch.randn(16, 1, 28, 28) for _ in range(4)]
    x = torch.randn(16, 1, 28, 28)
    onnx = agreement(prepare("onnxruntime", model, x[:1], calibration, threads=1), model, x)
    assert onnx["max_rel_error"] <= ONNX_TOLERANCE and onnx["top1_agreement"] == 1.0
    int8 = agreement(prepare("int8", model, x[:1], calibration, threads=1), model, x)
    assert 0 < int8["max_rel_error"] <= INT8_TOLERANCE  # > 0: it really runs in INT8
    bf16 = agreement(prepare("eager_bf16", model, x[:1], calibration, threads=1), model, x)
    assert 0 < bf16["max_rel_error"] <= 0.05


def test_quantized_model_uses_quantized_kernels():
    quantized = quantize_int8(mnist_model("separable"), [torch.randn(8, 1, 28, 28)])
    kinds = {type(m).__module__ for m in quantized.modules()}
    assert any("quantized" in kind for kind in kinds)


def test_quantized_accuracy_reports_the_change_in_points():
    model = mnist_model("standard")
    torch.manual_seed(2)
    images = [torch.randn(16, 1, 28, 28) for _ in range(3)]
    with torch.no_grad():
        batches = [(x, model(x).argmax(dim=1)) for x in images]  # labels = the fp32 model's own answers
    result = quantized_accuracy(model, batches, [(x, None) for x in images[:2]])
    assert result["fp32_accuracy"] == 100.0 and result["images"] == 48 and result["calibration_images"] == 32
    assert result["change_points"] == pytest.approx(result["int8_accuracy"] - 100.0)
    assert result["int8_accuracy"] >= 75.0


class Untraceable(nn.Module):
    """Data-dependent control flow: FX cannot trace it, so INT8 must report instead of crashing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return self.head(y.mean(dim=(2, 3)))


def test_runtime_section_structure_and_failures_reported(monkeypatch):
    targets = [
        model_target({"group": "mnist_cnn", "conv": c}, i, DATASET) for i, c in enumerate(("standard", "separable"))
    ]
    options = RuntimeOptions(
        runtimes=("eager_fp32", "int8"), batches=(1, 2), calibration_batches=1, calibration_batch_size=2
    )
    timing = {"warmup": 1, "min_rounds": 2, "max_rounds": 2, "max_time_s": 0, "rel_tol": 0.03, "confidence": 0.95}
    timing["contention_threshold"] = 0.25
    names = {targets[0].pair_key: "mnist_cnn"}
    result = run_runtimes([targets], names, options, timing)
    assert [(r["target"], r["runtime"], r["batch"]) for r in result["rows"]][:4] == [
        ("mnist_cnn/standard", "eager_fp32", 1),
        ("mnist_cnn/separable", "eager_fp32", 1),
        ("mnist_cnn/standard", "eager_fp32", 2),
        ("mnist_cnn/separable", "eager_fp32", 2),
    ]
    assert len(result["pairs"]) == 4 and all(p["agrees"] for p in result["pairs"])
    for pair in result["pairs"]:
        assert pair["mac_ratio"] == pytest.approx(7_459_968 / 928_464)
        assert pair["realized"] == pytest.approx(pair["speedup"] / pair["mac_ratio"])
    assert {b["batch"] for b in result["best"]} == {1, 2}

    monkeypatch.setattr(Target, "build", lambda self: Untraceable())
    failed = run_runtimes([targets], names, RuntimeOptions(runtimes=("int8",), batches=(1,)), timing)
    assert failed["rows"] == [] and failed["pairs"] == [] and failed["best"] == []
    assert all("error" in check for check in failed["checks"])
