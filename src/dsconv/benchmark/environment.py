"""The machine a result was measured on: recorded with every run, since timings mean nothing without it."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

# CPU features that decide which kernels oneDNN can use (bf16 dot products, AMX tiles).
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = value.split()
            if flags and model:
                break
    return model, [f for f in _CPU_FLAGS if f in flags]


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def collect_environment(device: torch.device) -> dict[str, Any]:
    cpu_model, flags = _cpuinfo()
    env: dict[str, Any] = {
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model,
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_flags": flags,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "mkldnn_enabled": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "load_average_start": _load(),  # other processes on the machine skew CPU timings
    }
    if device.type == "cuda":
        env["cuda_version"] = torch.version.cuda
        env["cudnn_version"] = torch.backends.cudnn.version()
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return env


def finish_environment(env: dict[str, Any]) -> dict[str, Any]:
    return {**env, "load_average_end": _load()}
