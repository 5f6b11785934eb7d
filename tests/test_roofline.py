"""Roofline: ceilings are positive and ordered, per-layer FLOPs add up to the model's conv+linear
total exactly, and no layer beats its bound (which would mean wrong byte counts or ceilings)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsconv.benchmark.plots import write_roofline_plots
from dsconv.benchmark.roofline import (
    RooflineOptions,
    cache_sizes,
    layer_rows,
    layer_type,
    measure_ceilings,
    min_bytes,
    predicted_speedups,
    summarise,
)
from dsconv.benchmark.targets import model_target
from dsconv.evaluation.complexity import count_macs, layer_calls, record_layer_calls
from dsconv.layers import SeparableConv2d

DATASET = {"name": "mnist", "input_shape": [1, 28, 28], "num_classes": 10}
TIMING = {"warmup": 1, "min_rounds": 6, "max_rounds": 50, "rel_tol": 0.05, "confidence": 0.95}
SMALL = RooflineOptions(batch=4, gemm_size=1024, stream_mib=8, cache_kib=64, repeats=3, layer_time_s=0.05)


def _has_bf16_dot_products() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "AVX512" in torch.backends.cpu.get_cpu_capability() and "avx512_bf16" in flags


@pytest.fixture(scope="module")
def ceilings():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the layers below run at the thread count the ceilings were measured at
    yield measure_ceilings(SMALL)
    torch.set_num_threads(threads)


def test_ceilings_are_positive(ceilings):
    for key in ("copy_gbs", "triad_gbs", "cache_read_gbs", "cache_copy_gbs"):
        assert ceilings[key] > 0, key
    for dtype in ("fp32", "bf16"):
        rates = [ceilings[f"{kernel}_{dtype}_gflops"] for kernel in ("gemm", "conv1x1", "conv3x3")]
        assert min(rates) > 0 and ceilings[f"peak_{dtype}_gflops"] == max(rates)
    assert ceilings["dram_gbs"] == max(ceilings["copy_gbs"], ceilings["triad_gbs"])
    assert ceilings["cache_gbs"] >= ceilings["dram_gbs"]
    assert ceilings["stream_bytes_per_array"] == 8 * 2**20 and ceilings["threads"] == 1
    assert ceilings["llc_bytes"] == cache_sizes()["llc"] > 0


@pytest.mark.skipif(not _has_bf16_dot_products(), reason="no AVX-512 bf16 dot products: bf16 GEMM need not be faster")
def test_bf16_gemm_peak_is_at_least_the_fp32_one(ceilings):
    assert ceilings["gemm_bf16_gflops"] >= ceilings["gemm_fp32_gflops"]


@pytest.mark.parametrize("conv", ["standard", "separable"])
def test_layer_flops_add_up_to_the_model_total_and_stay_under_the_roof(conv, ceilings):
    target = model_target({"group": "mnist_cnn", "conv": conv}, 0, DATASET)
    rows = layer_rows(target, "fp32", SMALL, ceilings, TIMING)
    model = target.build()
    assert sum(r["flops"] for r in rows) == 2 * count_macs(model, (1, 28, 28), batch_size=SMALL.batch)
    kinds = [r["layer_type"] for r in rows]
    if conv == "standard":
        assert kinds == ["dense"] * 5
    else:
        assert kinds == ["depthwise", "pointwise"] * 3 + ["dense", "dense"]
    for row in rows:
        assert row["arithmetic_intensity"] == pytest.approx(row["flops"] / row["min_bytes"])
        assert row["bound_gflops"] <= ceilings["peak_fp32_gflops"]
        # Generous: the bound is the optimistic roof, a layer above it means wrong bytes or ceilings.
        assert row["achieved_gflops"] <= 1.5 * row["bound_gflops"], row
        assert 0 < row["fraction_of_bound"] <= 1.5


def test_min_bytes_are_input_weight_and_output_at_the_dtype():
    layer = SeparableConv2d(8, 16, 3, padding=1, bias=False)
    calls = layer_calls(layer, (8, 10, 10), batch_size=2)
    assert [c.name for c in calls] == ["depthwise", "pointwise"]
    with torch.no_grad(), record_layer_calls(layer, keep_inputs=True) as kept:
        layer(torch.randn(2, 8, 10, 10))
    depthwise, pointwise = kept
    assert min_bytes(depthwise, 2 * 8 * 100, 4) == (2 * 8 * 100 + 8 * 9 + 2 * 8 * 100) * 4
    assert min_bytes(pointwise, 2 * 16 * 100, 2) == (2 * 8 * 100 + 16 * 8 + 2 * 16 * 100) * 2
    assert layer_type(depthwise.module, "conv", "depthwise") == "depthwise"
    assert layer_type(pointwise.module, "conv", "pointwise") == "pointwise"
    assert layer_type(torch.nn.Conv2d(8, 16, 3, groups=2), "conv") == "grouped"


def test_summary_prediction_and_plot(tmp_path, ceilings):
    targets = [
        model_target({"group": "mnist_cnn", "conv": c}, i, DATASET) for i, c in enumerate(("standard", "separable"))
    ]
    options = RooflineOptions(batch=2, layer_time_s=0.0)
    quick = {**TIMING, "min_rounds": 1, "max_rounds": 1}
    layers = [row for t in targets for row in layer_rows(t, "bf16", options, ceilings, quick)]
    summary = summarise(layers)
    for target in ("mnist_cnn/standard", "mnist_cnn/separable"):
        shares = [s["time_share"] for s in summary if s["target"] == target]
        assert sum(shares) == pytest.approx(1.0)
    (predicted,) = predicted_speedups(layers, [("mnist_cnn/standard", "mnist_cnn/separable")])
    assert predicted["mac_ratio"] == pytest.approx(7_459_968 / 928_464)
    assert predicted["roofline_speedup"] > 0 and predicted["layer_time_speedup"] > 0
    roofline = {"ceilings": [ceilings], "layers": layers}
    (path,) = write_roofline_plots(roofline, [("mnist_cnn/standard", "mnist_cnn/separable")], tmp_path)
    assert path.name == "roofline_bf16.png" and path.read_bytes()[:4] == b"\x89PNG"
