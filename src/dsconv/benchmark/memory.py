"""Peak memory of one inference pass and one training step.

CPU: the process-wide peak RSS (``getrusage``'s ``ru_maxrss``) only ever grows, and the benchmark
process has already run other configurations, so each target is probed in a fresh subprocess
(``python -m dsconv.benchmark.memory``). Per setting, that process first runs the same workload at
batch 2 (so shared library code and JIT kernels are resident, as after the timing warm-up), frees it
and hands the memory back to the OS (``malloc_trim``), restarts the kernel's RSS high-water mark
(``/proc/self/clear_refs``) and then measures ``VmHWM - VmRSS`` around the real workload.
CUDA: the caching allocator's exact peak (``max_memory_allocated``), in-process.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dsconv.benchmark.measure import Setting, inference_step, make_input, prepare_model, training_step
from dsconv.benchmark.targets import Target

CPU_METHOD = (
    "peak RSS of a fresh subprocess per target: per setting, after a batch-2 warm-up of the same "
    "workload (library code and JIT kernels resident, freed memory returned with malloc_trim; glibc "
    "mmap threshold fixed at 128 KiB so large tensors map and unmap alike in every setting), the "
    "kernel's high-water mark is reset (/proc/self/clear_refs) and VmHWM - VmRSS is read after one "
    "inference pass, then after one training step (weights, inputs, activations, workspaces, "
    "gradients, optimizer state)"
)
CPU_METHOD_FALLBACK = (
    "peak RSS (getrusage ru_maxrss) of a fresh subprocess per configuration minus its peak after a "
    "batch-2 warm-up (no /proc/self/clear_refs here, so that warm-up's own peak can hide small workloads)"
)
CUDA_METHOD = (
    "torch.cuda.max_memory_allocated minus memory_allocated before building the model: tensors only "
    "(weights, activations, workspaces, optimizer state), not the CUDA context or allocator cache"
)
# Short codes for the CSV column; the JSON maps them back to the sentences above.
METHOD_CODES = {
    CPU_METHOD: "cpu_subprocess_vmhwm",
    CPU_METHOD_FALLBACK: "cpu_subprocess_ru_maxrss",
    CUDA_METHOD: "cuda_max_memory_allocated",
}
MIB = 1024 * 1024
WARMUP_BATCH = 2  # train-mode batch norm needs two samples


def _maxrss_bytes() -> int:
    # Linux reports kilobytes, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    """Restart the kernel's RSS high-water mark from the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_bytes("VmHWM")
    except OSError:
        return False
    return True


def _release_freed_memory() -> None:
    gc.collect()
    # glibc keeps freed blocks mapped; without this the next workload reuses them unseen.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _run_workload(
    target: Target,
    setting: Setting,
    batches: dict[str, int],
    optimizer_cfg: dict[str, Any],
    mark: Callable[[str], None],
) -> None:
    """Inference at the throughput batch, then one training step; ``mark(phase)`` after each."""
    from omegaconf import OmegaConf

    from dsconv.training.optim import build_optimizer

    model = prepare_model(target.build(), setting)
    model.eval()
    inference_step(model, make_input(batches["throughput"], target.input_shape, setting), setting)()
    mark("inference")
    model.train()
    optimizer = build_optimizer(model, OmegaConf.create(optimizer_cfg))
    x = make_input(batches["train"], target.input_shape, setting)
    training_step(model, x, target.loss_fn(batches["train"], setting.torch_device), optimizer, setting)()
    mark("train")


def measure_cuda(
    target: Target, setting: Setting, batches: dict[str, int], optimizer_cfg: dict[str, Any]
) -> dict[str, Any]:
    device = setting.torch_device
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    peaks: dict[str, float] = {}

    def mark(phase: str) -> None:
        torch.cuda.synchronize(device)
        peaks[phase] = (torch.cuda.max_memory_allocated(device) - base) / MIB

    _run_workload(target, setting, batches, optimizer_cfg, mark)
    return {
        "peak_mem_infer_mib": peaks["inference"],
        "peak_mem_train_mib": peaks["train"],
        "peak_mem_method": CUDA_METHOD,
    }


def _probe_env() -> dict[str, str]:
    # A fixed mmap threshold stops glibc from moving large blocks to the heap after the first
    # free (its dynamic threshold), so every tensor above 128 KiB is mapped and unmapped on its
    # own and the RSS follows the live tensors the same way in every setting of the probe.
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def measure_cpu(
    target: Target,
    settings: Sequence[Setting],
    batches: dict[str, int],
    optimizer_cfg: dict[str, Any],
    threads: int,
    timeout_s: float = 900,
) -> list[dict[str, Any]]:
    """Peak memory of ``target`` in every setting, one subprocess per target (per setting where the
    high-water mark cannot be reset)."""
    groups = [list(settings)] if sys.platform.startswith("linux") else [[s] for s in settings]
    results: list[dict[str, Any]] = []
    for group in groups:
        request = {
            "target": target.to_json(),
            "settings": [asdict(s) for s in group],
            "batches": batches,
            "optimizer": optimizer_cfg,
            "threads": threads,
        }
        proc = subprocess.run(
            [sys.executable, "-m", "dsconv.benchmark.memory"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=_probe_env(),
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"memory probe for {target.label} failed: {tail}")
        results.extend(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def _probe(
    target: Target, setting: Setting, batches: dict[str, int], optimizer: dict[str, Any], first: bool
) -> dict[str, Any]:
    _run_workload(target, setting, {"throughput": WARMUP_BATCH, "train": WARMUP_BATCH}, optimizer, lambda _phase: None)
    _release_freed_memory()
    if _reset_peak_rss():
        base, peak, method = _status_bytes("VmRSS"), (lambda: _status_bytes("VmHWM")), CPU_METHOD
    elif first:
        base, peak, method = _maxrss_bytes(), _maxrss_bytes, CPU_METHOD_FALLBACK
    else:
        raise RuntimeError("cannot reset the peak RSS: probe one setting per process")
    peaks: dict[str, float] = {}

    def mark(phase: str) -> None:
        peaks[phase] = (peak() - base) / MIB

    _run_workload(target, setting, batches, optimizer, mark)
    _release_freed_memory()
    return {"peak_mem_infer_mib": peaks["inference"], "peak_mem_train_mib": peaks["train"], "peak_mem_method": method}


def _probe_main() -> None:
    """Subprocess entry: read a request on stdin, print one JSON list of peaks (MiB), one per setting."""
    import warnings

    warnings.filterwarnings("ignore")
    request = json.loads(sys.stdin.read())
    torch.set_num_threads(int(request["threads"]))
    target = Target.from_json(request["target"])
    results = [
        _probe(target, Setting(**setting), request["batches"], request["optimizer"], first=index == 0)
        for index, setting in enumerate(request["settings"])
    ]
    print(json.dumps(results))


if __name__ == "__main__":
    _probe_main()
