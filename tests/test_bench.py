"""dsconv-bench: structure and units of the output on tiny configs (never the timings themselves).

The timing logic, MAC counts, roofline and runtimes have their own files (tests/test_bench_*.py,
tests/test_roofline.py, tests/test_runtimes.py)."""

from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dsconv.benchmark import quick_inference_profile, time_callable
from dsconv.benchmark.cli import run_bench
from dsconv.benchmark.measure import Setting, usable_cpus
from dsconv.benchmark.memory import measure_cpu
from dsconv.benchmark.report import UNITS
from dsconv.benchmark.suite import build_plan, static_metrics
from dsconv.benchmark.targets import layer_macs, layer_targets, model_target
from dsconv.errors import ConfigError
from dsconv.layers import make_conv
from dsconv.paths import CONF_DIR, REPO_ROOT
from dsconv.registry import build_model, register_model

FAST = [
    "threads=1",  # one thread: tiny ops on a shared machine stall less waiting for a second one
    "dtypes=[fp32]",
    "memory_formats=[nchw]",
    "memory.method=off",
    "output.plots=false",
    "timing.warmup=1",
    "timing.min_rounds=2",
    "timing.max_rounds=2",
    "timing.max_time_s=0",
    "batch.throughput=4",
    "batch.train=2",
    "sections.roofline=false",
    "sections.runtimes=false",
]
# The roofline and runtime sections at their smallest: seconds, not minutes.
TINY_SECTIONS = [
    "sections.roofline=true",
    "sections.runtimes=true",
    "roofline.dtypes=[fp32]",
    "roofline.gemm_size=64",
    "roofline.stream_mib=1",
    "roofline.cache_kib=16",
    "roofline.repeats=1",
    "roofline.layer_time_s=0",
    "roofline.batch=2",
    "runtimes.list=[eager_fp32,onnxruntime]",
    "runtimes.batches=[1,2]",
    "runtimes.calibration_batches=1",
    "runtimes.calibration_batch_size=2",
]
TINY_MODELS = (
    "models=[{group:mnist_cnn,conv:standard,input_shape:[1,8,8]},{group:mnist_cnn,conv:separable,input_shape:[1,8,8]}]"
)
TINY_LAYERS = "layers=[{c_in:4,c_out:8,kernel:3,hw:8,stride:1}]"
DATASET = {"name": "cifar10", "input_shape": [3, 32, 32], "num_classes": 10}


class ConvLinearNet(nn.Module):
    """Convs and a linear layer only, so FlopCounterMode and fvcore count exactly the same work."""

    def __init__(self, input_shape, num_classes, conv: str = "standard") -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = make_conv(conv, channels, 8, 3, bias=False)
        self.conv2 = make_conv(conv, 8, 16, 3, stride=2, bias=False)
        self.head = nn.Linear(16 * ((height + 1) // 2) * ((width + 1) // 2), num_classes, bias=False)

    def forward(self, x):
        return self.head(self.conv2(self.conv1(x)).flatten(1))


@register_model("bench_test_convlinear")
def _convlinear(input_shape, num_classes, **options):
    return ConvLinearNet(input_shape, num_classes, **options)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def compose_bench(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("bench", overrides=list(overrides))


def test_default_config_is_the_issue_suite():
    plan = build_plan(compose_bench())
    labels = [t.label for t in plan.targets]
    assert labels[:6] == [
        "cifar_cnn/standard",
        "cifar_cnn/separable",
        "densenet4/standard",
        "densenet4/separable",
        "mnist_cnn/standard",
        "mnist_cnn/separable",
    ]
    assert {(s.dtype, s.memory_format, s.compile) for s in plan.settings} == {
        (d, f, False) for d in ("fp32", "bf16") for f in ("nchw", "channels_last")
    }
    assert plan.targets[4].input_shape == (1, 28, 28)
    example = [t for t in plan.targets if t.kind == "layer"]
    assert [t.conv for t in example] == ["standard", "separable"]
    ratio = example[0].analytic_macs() / example[1].analytic_macs()
    assert ratio == pytest.approx(8.69, abs=0.01)  # the comparison document's worked example


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "hw", "stride"),
    [(128, 256, 3, 32, 1), (3, 16, 5, 9, 2), (8, 4, 1, 7, 1), (6, 12, 3, 10, 3)],
)
def test_layer_macs_equal_the_formula_and_flops_twice_macs(c_in, c_out, kernel, hw, stride):
    geometry = {"c_in": c_in, "c_out": c_out, "kernel": kernel, "hw": hw, "stride": stride}
    for target in layer_targets(geometry, 0, bias=False):
        metrics = static_metrics(target)
        out = (hw + 2 * ((kernel - 1) // 2) - kernel) // stride + 1
        expected = (
            c_out * c_in * kernel**2 * out**2
            if target.conv == "standard"
            else c_in * kernel**2 * out**2 + c_in * c_out * out**2
        )
        assert metrics["macs_per_image"] == metrics["macs_analytic"] == expected
        assert layer_macs(target.conv, **geometry) == expected
        assert metrics["flops_per_image"] == 2 * metrics["macs_per_image"]
        assert metrics["train_flops_per_image"] >= 2 * metrics["flops_per_image"]  # + weight gradients


@pytest.mark.parametrize("conv", ["standard", "separable"])
def test_flops_are_twice_macs_for_a_conv_linear_net(conv):
    target = model_target({"name": "bench_test_convlinear", "conv": conv, "input_shape": [3, 12, 12]}, 0, DATASET)
    metrics = static_metrics(target)
    assert metrics["params"] == sum(p.numel() for p in target.build().parameters())
    assert metrics["flops_per_image"] == 2 * metrics["macs_per_image"] > 0


def test_tiny_run_writes_every_output(tmp_path):
    cfg = compose_bench(
        *FAST,
        TINY_MODELS,
        TINY_LAYERS,
        "dtypes=[fp32,bf16]",
        "memory_formats=[nchw,channels_last]",
        "output.plots=true",
        "output.tensorboard=true",
    )
    results = run_bench(cfg, tmp_path)
    for name in ("results.json", "results.csv", "pairs.csv", "report.md"):
        assert (tmp_path / name).stat().st_size > 0
    for name in ("speedup_vs_mac_ratio.png", "latency_vs_macs.png", "achieved_gflops.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert any((tmp_path / "tensorboard").iterdir())
    assert not (tmp_path / "roofline_layers.csv").exists() and not (tmp_path / "runtimes.csv").exists()

    saved = json.loads((tmp_path / "results.json").read_text())  # strict JSON: no Infinity
    rows, pairs = saved["rows"], saved["pairs"]
    assert [r["target"] for r in rows] == [r["target"] for r in results["rows"]]
    assert len(rows) == 4 * 4 and len(pairs) == 2 * 4
    row_fields = {
        "params",
        "macs_per_image",
        "fvcore_macs_per_image",
        "flops_per_image",
        "latency_b1_median_ms",
        "latency_b1_ci_low_ms",
        "latency_b1_ci_high_ms",
        "latency_b1_p90_ms",
        "latency_b1_noisy",
        "throughput_img_per_s",
        "train_step_median_ms",
        "train_img_per_s",
        "peak_mem_infer_mib",
        "peak_mem_train_mib",
        "peak_mem_method",
        "achieved_gflops_throughput",
        "noisy",
        "torch_version",
        "device_name",
        "cpu_model",
        "num_threads",
        "dtype",
        "memory_format",
    }
    for row in rows:
        assert row_fields <= set(row)
        assert row["latency_b1_p90_ms"] >= row["latency_b1_median_ms"] >= row["latency_b1_min_ms"] > 0
        assert row["throughput_img_per_s"] > 0 and row["train_img_per_s"] > 0
        # Two timed rounds are too few for a 95% interval on a median: stored as null, flagged noisy.
        assert row["latency_b1_n"] == row["throughput_n"] == row["train_step_n"] == 2
        assert row["latency_b1_ci_low_ms"] is None and row["latency_b1_noisy"] and row["noisy"]
        assert "CI" in row["noisy_measurements"]
        assert row["macs_per_image"] <= row["fvcore_macs_per_image"]
        assert row["achieved_gflops_throughput"] == pytest.approx(
            row["flops_per_image"] * row["throughput_img_per_s"] / 1e9
        )
    assert {k for k in UNITS if not k.startswith(("mac_ratio", "fvcore_mac_ratio", "speedup", "realized"))} <= set(
        rows[0]
    )
    for pair in pairs:
        base, other = (
            next(
                r
                for r in rows
                if r["target"] == pair[role]
                and r["dtype"] == pair["dtype"]
                and r["memory_format"] == pair["memory_format"]
            )
            for role in ("baseline", "variant")
        )
        assert pair["mac_ratio"] == pytest.approx(base["macs_per_image"] / other["macs_per_image"])
        assert pair["fvcore_mac_ratio"] == pytest.approx(base["fvcore_macs_per_image"] / other["fvcore_macs_per_image"])
        assert pair["realized_throughput"] == pytest.approx(pair["speedup_throughput"] / pair["mac_ratio"])
        assert pair["speedup_throughput"] > 0 and pair["noisy"]
    env = saved["environment"]
    assert {"torch_version", "device_name", "cpu_model", "num_threads", "cpu_flags"} <= set(env)
    assert "MobileNet" in saved["units"]["macs_per_image"] and "2 per multiply-add" in saved["units"]["flops_per_image"]

    with (tmp_path / "results.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(csv_rows) == len(rows) and float(csv_rows[0]["latency_b1_median_ms"]) > 0
    report = (tmp_path / "report.md").read_text()
    assert "| pair |" in report and "| target |" in report and "interleaved" in report
    assert "## Roofline" not in report and "## Runtimes" not in report


def test_tiny_run_with_every_section(tmp_path):
    cfg = compose_bench(*FAST, TINY_MODELS, TINY_LAYERS, *TINY_SECTIONS, "output.plots=true")
    results = run_bench(cfg, tmp_path)
    assert (tmp_path / "plots" / "roofline_fp32.png").read_bytes()[:4] == b"\x89PNG"
    with (tmp_path / "roofline_layers.csv").open() as handle:
        layers = list(csv.DictReader(handle))
    # mnist_cnn: 3 convs + 2 linears; its DS twin 3 x (depthwise + pointwise) + 2 linears; the layer pair 1 + 2.
    assert len(layers) == 5 + 8 + 1 + 2
    assert {r["layer_type"] for r in layers} == {"dense", "depthwise", "pointwise"}
    with (tmp_path / "runtime_pairs.csv").open() as handle:
        runtime_pairs = list(csv.DictReader(handle))
    assert [(p["runtime"], p["batch"]) for p in runtime_pairs] == [
        ("eager_fp32", "1"),
        ("eager_fp32", "2"),
        ("onnxruntime", "1"),
        ("onnxruntime", "2"),
    ]
    assert all(p["agrees"] == "True" for p in runtime_pairs)
    assert {(b["pair"], b["batch"]) for b in results["runtimes"]["best"]} == {("mnist_cnn", 1), ("mnist_cnn", 2)}
    report = (tmp_path / "report.md").read_text()
    assert "## Roofline" in report and "## Runtimes" in report and "makes DS pay most" in report


def test_grid_can_be_switched_off(tmp_path):
    cfg = compose_bench(*FAST, TINY_MODELS, *TINY_SECTIONS, "sections.grid=false", "sections.runtimes=false")
    results = run_bench(cfg, tmp_path)
    assert results["rows"] == [] and "roofline" in results and "runtimes" not in results
    assert not (tmp_path / "results.csv").exists() and (tmp_path / "roofline_layers.csv").exists()


def test_memory_probe_sees_the_live_tensors():
    """The probe's peaks cover the tensors that must be live at once, and not much more.

    The high-water mark only grows, so train >= inference holds by construction; instead the bounds come
    from the workload: inference at batch 32 holds its input (4 MiB) and output (8 MiB); the training step
    at batch 64 (larger on purpose, so its peak is its own) holds the input (8 MiB), the output and the
    output's gradient (16 MiB each) at once. A probe that measured nothing, or a phase other than the one
    it names, falls outside these bounds.
    """
    target = layer_targets({"c_in": 8, "c_out": 16, "kernel": 3, "hw": 64}, 0, bias=False)[0]
    sgd = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "optimizer" / "sgd.yaml"))
    (result,) = measure_cpu(target, [Setting()], {"throughput": 32, "train": 64}, sgd, threads=1)
    mib = 4 / 2**20  # bytes of one fp32 value, in MiB
    infer_floor = 32 * (8 + 16) * 64 * 64 * mib  # 12 MiB
    train_floor = 64 * (8 + 2 * 16) * 64 * 64 * mib  # 40 MiB
    assert 0.9 * infer_floor <= result["peak_mem_infer_mib"] <= 4 * infer_floor, result
    assert 0.9 * train_floor <= result["peak_mem_train_mib"] <= 4 * train_floor, result
    assert "RSS" in result["peak_mem_method"]


def test_timer_warms_up_and_flags_noise():
    calls = []

    def jittery():
        calls.append(None)
        time.sleep(0.012 if len(calls) % 2 else 0.001)

    stats = time_callable(
        jittery, torch.device("cpu"), warmup=2, min_iters=4, max_iters=4, max_time_s=0, noise_threshold=1.5
    )
    assert len(calls) == 6 and stats.iters == 4 and stats.warmup == 2
    assert stats.noisy and stats.spread > 1.5 and stats.p90_ms >= stats.median_ms
    calm = time_callable(jittery, torch.device("cpu"), warmup=1, min_iters=2, max_iters=2, noise_threshold=100)
    assert not calm.noisy and calm.others_cores is None  # too short to read /proc/stat
    with pytest.raises(ConfigError, match="warm-up is never skipped"):
        time_callable(jittery, torch.device("cpu"), warmup=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_timer_flags_other_processes_using_the_cpu():
    # A uniformly slowed run has no spread; the timer must still notice the competing process.
    torch.set_num_threads(usable_cpus())  # every core is ours, so the spinner competes for one of them
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        stats = time_callable(
            lambda: time.sleep(0.01),
            torch.device("cpu"),
            warmup=1,
            min_iters=1,
            max_iters=1000,
            max_time_s=0.6,
            noise_threshold=100,
            contention_threshold=0.25,
        )
    finally:
        spinner.kill()
        spinner.wait()
    assert stats.others_cores is not None and stats.others_cores > 0.5
    assert stats.contended and stats.unreliable and not stats.noisy and "others" in stats.reason()


def test_quick_inference_profile_leaves_the_model_as_it_was():
    model = build_model({"name": "mnist_cnn", "conv": "separable"}, (1, 28, 28), 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile = quick_inference_profile(model, (1, 28, 28), iters=3, batch_size=8, channels_last=True)
    assert profile["latency_ms_b1_p90"] >= profile["latency_ms_b1_median"] > 0
    assert profile["throughput_img_s"] > 0 and profile["throughput_batch"] == 8
    assert profile["memory_format"] == "channels_last" and isinstance(profile["noisy"], bool)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).is_contiguous()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dtypes=[fp16]", "fp16 needs a CUDA device"),
        ("device=gpu0", "device='gpu0' is not a device"),
        ("threads=0", "threads must be >= 1"),
        ("dtypes=[fp8]", "unknown dtype 'fp8'"),
        ("memory_formats=[nhwc]", "unknown memory format 'nhwc'"),
        ("models=[{name:nope}]", "unknown model 'nope': registered models are"),
        ("models=[nope_group]", "unknown model config group 'nope_group'"),
        ("timing.warmup=0", "warm-up is never skipped"),
        ("layers=[{c_in:4,c_out:8}]", "layers[0] must be"),
        ("timing.rel_tol=0", "timing.rel_tol=0.0: must be > 0"),
        ("timing.rel_tol=abc", "timing.rel_tol='abc': must be a number"),
        ("timing.min_rounds=2.5", "timing.min_rounds=2.5: must be an integer"),
        ("timing.max_time_s=nan", "timing.max_time_s=nan: must be a finite number"),
        ("timing.min_rounds=0", "timing.min_rounds=0"),
        ("timing.confidence=1.5", "timing.confidence=1.5"),
        ("timing.max_time_s=-1", "timing.max_time_s=-1.0"),
        ("sections.grid=false sections.roofline=false sections.runtimes=false", "nothing to run"),
        ("+sections.speed=true", "sections.speed is not a section"),
        ("roofline.dtypes=[fp16]", "roofline.dtypes has 'fp16'"),
        ("roofline.stream_mib=0", "roofline.stream_mib=0.0: must be a positive number"),
        ("runtimes.list=[tensorrt]", "runtimes.list has 'tensorrt'"),
        ("runtimes.batches=[0]", "runtimes.batches=[0]"),
        ("+runtimes.tolerances.int4=0.1", "runtimes.tolerances.int4=0.1"),
    ],
)
def test_bad_input_names_the_problem(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_plan(compose_bench(*override.split()))


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench.py"), "models=[{name:nope}]", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown model 'nope'" in errors[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("dtypes", ["[fp32,bf16]", "[fp32]"])
@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_bf16_on_a_cpu_without_avx512_is_warned_about(dtypes, capability, monkeypatch, caplog):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    with caplog.at_level(logging.WARNING, logger="dsconv.bench"):
        build_plan(compose_bench(f"dtypes={dtypes}"))
    warned = [r.getMessage() for r in caplog.records if "reference kernels" in r.getMessage()]
    assert len(warned) == (1 if capability == "AVX2" and "bf16" in dtypes else 0)
    assert all("dtypes=[fp32]" in message for message in warned)
