"""dsconv-bench: structure and units of the output on tiny configs (never the timings themselves)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir

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
    "timing.min_iters=2",
    "timing.max_iters=2",
    "timing.max_time_s=0",
    "timing.retries=0",
    "batch.throughput=4",
    "batch.train=2",
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

    saved = json.loads((tmp_path / "results.json").read_text())
    rows, pairs = saved["rows"], saved["pairs"]
    assert [r["target"] for r in rows] == [r["target"] for r in results["rows"]]
    assert len(rows) == 4 * 4 and len(pairs) == 2 * 4
    row_fields = {
        "params",
        "macs_per_image",
        "flops_per_image",
        "latency_b1_median_ms",
        "latency_b1_p90_ms",
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
        assert row["latency_b1_p90_ms"] >= row["latency_b1_median_ms"] > 0
        assert row["throughput_img_per_s"] > 0 and row["train_img_per_s"] > 0
        assert row["latency_b1_iters"] == 2 and row["latency_b1_attempts"] == 1
        assert row["latency_b1_min_ms"] <= row["latency_b1_median_ms"]
        assert row["achieved_gflops_throughput"] == pytest.approx(
            row["flops_per_image"] * row["throughput_img_per_s"] / 1e9
        )
    assert {k for k in UNITS if not k.startswith(("mac_ratio", "speedup", "realized"))} <= set(rows[0])
    for pair in pairs:
        base = next(
            r
            for r in rows
            if r["target"] == pair["baseline"]
            and r["dtype"] == pair["dtype"]
            and r["memory_format"] == pair["memory_format"]
        )
        other = next(
            r
            for r in rows
            if r["target"] == pair["variant"]
            and r["dtype"] == pair["dtype"]
            and r["memory_format"] == pair["memory_format"]
        )
        assert pair["mac_ratio"] == pytest.approx(base["macs_per_image"] / other["macs_per_image"])
        assert pair["speedup_throughput"] == pytest.approx(other["throughput_img_per_s"] / base["throughput_img_per_s"])
        assert pair["realized_throughput"] == pytest.approx(pair["speedup_throughput"] / pair["mac_ratio"])
    env = saved["environment"]
    assert {"torch_version", "device_name", "cpu_model", "num_threads", "cpu_flags"} <= set(env)
    assert "MAC" in saved["units"]["macs_per_image"] and "2 per multiply-add" in saved["units"]["flops_per_image"]

    with (tmp_path / "results.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(csv_rows) == len(rows) and float(csv_rows[0]["latency_b1_median_ms"]) > 0
    report = (tmp_path / "report.md").read_text()
    assert "| pair |" in report and "| target |" in report and "fvcore" in report


def test_memory_probe_runs_in_a_subprocess():
    target = layer_targets({"c_in": 8, "c_out": 16, "kernel": 3, "hw": 16}, 0, bias=False)[0]
    (result,) = measure_cpu(target, [Setting()], {"throughput": 8, "train": 4}, {"name": "sgd", "lr": 0.1}, threads=1)
    assert result["peak_mem_train_mib"] >= result["peak_mem_infer_mib"] >= 0
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
    ],
)
def test_bad_input_names_the_problem(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        build_plan(compose_bench(override))


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
