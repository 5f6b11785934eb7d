"""Timing primitives: warmed-up, synchronized timers for inference and training steps, FLOP counts.

Every timer runs at least one untimed warm-up call (the first call pays for oneDNN primitive
creation, cuDNN autotuning, torch.compile, lazy optimizer state) and synchronizes the device
around every timed call, so a number never measures only the kernel launch. A measurement whose
slowest timed call is more than ``noise_threshold`` times its fastest is flagged ``noisy``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import eval_mode

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "nchw": torch.contiguous_format,
    "channels_last": torch.channels_last,
}


@dataclass(frozen=True)
class Setting:
    """How a configuration runs: device, precision, memory layout, eager or compiled."""

    device: str = "cpu"
    dtype: str = "fp32"
    memory_format: str = "nchw"
    compile: bool = False

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def label(self) -> str:
        return f"{self.dtype}/{self.memory_format}/{'compiled' if self.compile else 'eager'}"


@dataclass(frozen=True)
class TimingStats:
    """Per-call wall-clock times (ms) of one measurement, after ``warmup`` untimed calls."""

    iters: int
    warmup: int
    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    first_call_ms: float  # the first warm-up call: includes compilation and primitive creation
    spread: float  # max / min of the timed calls
    others_cores: float | None  # CPU cores other processes used meanwhile (None: unknown / too short)
    noisy: bool  # spread above the noise threshold
    contended: bool  # others_cores above the idle cores this process leaves + the contention threshold

    @property
    def unreliable(self) -> bool:
        return self.noisy or self.contended

    def reason(self) -> str:
        reasons = [f"spread {self.spread:.1f}"] if self.noisy else []
        if self.contended:
            reasons.append(f"others {self.others_cores:.2f} cores")
        return ", ".join(reasons)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_setting(setting: Setting) -> None:
    """Reject settings this machine cannot run, with the fix in the message."""
    if setting.dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {setting.dtype!r}: choose from {', '.join(DTYPES)} (dtypes=[...])")
    if setting.memory_format not in MEMORY_FORMATS:
        raise ConfigError(
            f"unknown memory format {setting.memory_format!r}: choose from {', '.join(MEMORY_FORMATS)} "
            "(memory_formats=[...])"
        )
    try:
        device = setting.torch_device
    except RuntimeError as exc:
        raise ConfigError(f"device={setting.device!r} is not a device: use cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={setting.device!r} is not supported: use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible: use device=cpu")
    if setting.dtype == "fp16" and device.type != "cuda":
        raise ConfigError("dtype fp16 needs a CUDA device: on CPU use dtypes=[fp32,bf16] (or device=cuda)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(setting: Setting) -> contextlib.AbstractContextManager:
    """Mixed precision the way training uses it: fp32 weights, matmuls/convs in bf16 or fp16."""
    if setting.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(setting.torch_device.type, dtype=DTYPES[setting.dtype])


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without the numpy import."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MIN_WINDOW_S = 0.2  # /proc/stat counts in clock ticks (10 ms): shorter windows cannot tell


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_busy_seconds() -> float | None:
    """CPU-seconds every process on the machine has spent busy since boot (Linux), else None."""
    try:
        with open("/proc/stat") as handle:
            # cpu  user nice system idle iowait irq softirq steal guest guest_nice
            ticks = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLOCK_TICKS


def time_callable(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    warmup: int = 2,
    min_iters: int = 5,
    max_iters: int = 50,
    max_time_s: float = 1.0,
    noise_threshold: float = 1.5,
    contention_threshold: float = 0.25,
) -> TimingStats:
    """Time ``fn``: ``warmup`` untimed calls, then at least ``min_iters`` timed calls and more until
    ``max_iters`` or ``max_time_s`` of timed calls, whichever comes first.

    Besides the max/min spread, the CPU time other processes used during the timed calls is
    measured (machine busy time minus this process's CPU time): on a shared machine a run can be
    uniformly slowed, e.g. an OpenMP thread waiting for a core at every op, with a small spread.
    Only the use beyond the cores this process leaves idle (CPUs minus torch threads) counts.
    """
    if warmup < 1:
        raise ConfigError("timing.warmup must be >= 1: warm-up is never skipped (first calls build kernels)")
    if min_iters < 1 or max_iters < min_iters:
        raise ConfigError(f"timing needs 1 <= min_iters <= max_iters, got {min_iters} and {max_iters}")
    first_call_ms = 0.0
    for index in range(warmup):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        if index == 0:
            first_call_ms = (time.perf_counter() - start) * 1e3
    times: list[float] = []
    busy_start, own_start, wall_start = machine_busy_seconds(), time.process_time(), time.perf_counter()
    deadline = wall_start + max_time_s
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() < deadline):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    wall = time.perf_counter() - wall_start
    busy_end, own = machine_busy_seconds(), time.process_time() - own_start
    others = None
    if busy_start is not None and busy_end is not None and wall >= MIN_WINDOW_S:
        others = max(0.0, (busy_end - busy_start) - own) / wall
    fastest, slowest = min(times), max(times)
    spread = slowest / fastest if fastest > 0 else math.inf
    return TimingStats(
        iters=len(times),
        warmup=warmup,
        median_ms=percentile(times, 50),
        p90_ms=percentile(times, 90),
        min_ms=fastest,
        max_ms=slowest,
        mean_ms=sum(times) / len(times),
        first_call_ms=first_call_ms,
        spread=spread,
        others_cores=others,
        noisy=spread > noise_threshold,
        contended=others is not None
        and others > max(0, usable_cpus() - torch.get_num_threads()) + contention_threshold,
    )


def prepare_model(model: nn.Module, setting: Setting) -> nn.Module:
    """Move ``model`` to the setting's device and layout; wrap it in ``torch.compile`` if asked."""
    model = model.to(setting.torch_device, memory_format=MEMORY_FORMATS[setting.memory_format])
    return torch.compile(model) if setting.compile else model


def make_input(batch_size: int, input_shape: Sequence[int], setting: Setting) -> torch.Tensor:
    x = torch.randn(batch_size, *input_shape, device=setting.torch_device)
    # channels_last only pays off when the activations are NHWC from the very first conv.
    return x.contiguous(memory_format=MEMORY_FORMATS[setting.memory_format])


def inference_step(model: nn.Module, x: torch.Tensor, setting: Setting) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        with torch.inference_mode(), autocast(setting):
            return model(x)

    return step


def training_step(
    model: nn.Module,
    x: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    setting: Setting,
) -> Callable[[], None]:
    """One forward + backward + optimizer step, as the trainer runs it (GradScaler for fp16)."""
    scaler = torch.amp.GradScaler("cuda") if setting.dtype == "fp16" else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(setting):
            loss = loss_fn(model(x))
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    return step


def count_flops(
    model: nn.Module,
    input_shape: Sequence[int],
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """FLOPs per image of one fp32 forward pass (eval mode), or of forward + backward when
    ``loss_fn`` is given (train mode), as counted by ``torch.utils.flop_counter.FlopCounterMode``
    (2 FLOPs per multiply-add; convs, matmuls and their gradients only)."""
    batch = 2  # train-mode batch norm needs more than one value per channel
    model = copy.deepcopy(model).float()  # keep batch-norm statistics of the caller's model untouched
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.randn(batch, *input_shape, device=device)
    model.train(loss_fn is not None)
    counter = FlopCounterMode(display=False)
    if loss_fn is None:
        with torch.no_grad(), counter:
            model(x)
    else:
        with counter:
            loss_fn(model(x)).backward()
    return int(counter.get_total_flops()) // batch


def quick_inference_profile(
    model: nn.Module,
    input_shape: Sequence[int],
    device: str | torch.device | None = None,
    dtype: str = "fp32",
    channels_last: bool = False,
    batch_size: int = 32,
    *,
    warmup: int = 2,
    iters: int = 20,
    max_time_s: float = 1.0,
    noise_threshold: float = 1.5,
    contention_threshold: float = 0.25,
) -> dict[str, Any]:
    """Cheap latency/throughput profile of a trained model, for the trainer's metrics.json.

    Batch-1 latency (median and p90 over up to ``iters`` calls, at most ~``max_time_s`` of them)
    and throughput at ``batch_size``, each after ``warmup`` untimed calls. The caller's model is
    left as it was: same device, layout and train/eval mode (a copy is profiled when a different
    device or ``channels_last`` is asked for). Under a second or two on CPU for a small model.
    """
    model_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    setting = Setting(
        device=str(device if device is not None else model_device),
        dtype=dtype,
        memory_format="channels_last" if channels_last else "nchw",
    )
    check_setting(setting)
    if channels_last or setting.torch_device != model_device:
        model = prepare_model(copy.deepcopy(model), setting)
    timing = {
        "warmup": warmup,
        "min_iters": min(3, iters),
        "max_iters": iters,
        "max_time_s": max_time_s,
        "noise_threshold": noise_threshold,
        "contention_threshold": contention_threshold,
    }
    with eval_mode(model):
        latency, throughput = (
            time_callable(
                inference_step(model, make_input(batch, input_shape, setting), setting), setting.torch_device, **timing
            )
            for batch in (1, batch_size)
        )
    return {
        "latency_ms_b1_median": latency.median_ms,
        "latency_ms_b1_p90": latency.p90_ms,
        "throughput_img_s": batch_size / (throughput.median_ms / 1e3),
        "throughput_batch": batch_size,
        "latency_iters": latency.iters,
        "throughput_iters": throughput.iters,
        "noisy": latency.unreliable or throughput.unreliable,  # spread too large or the CPU was shared
        "device": str(setting.torch_device),
        "dtype": dtype,
        "memory_format": setting.memory_format,
        "num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
