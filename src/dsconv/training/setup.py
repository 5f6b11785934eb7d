"""Build everything a run trains with from a composed config: data on the device, model, batches,
optimizer and schedule. ``train()``, the speed-run benchmark and data-parallel runs share it.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig

from dsconv.config_views import flat_training_config
from dsconv.data import BatchAugment, DatasetSplits, DeviceBatches, Normalize
from dsconv.data.loader import shard
from dsconv.distributed import per_rank_batch_size
from dsconv.errors import ConfigError
from dsconv.training.optim import Schedule, build_optimizer, build_scheduler

log = logging.getLogger(__name__)


# Whether trainer.fast uses channels_last on the CPU, in bf16 (AVX-512) and in fp32 (CPUs without it);
# decided by scripts/bench_train.py (README): in fp32 on an AVX2 EPYC channels_last trained the four
# CIFAR-shaped models 1.13-1.62x faster than NCHW.
CPU_FAST_CHANNELS_LAST = False
CPU_FP32_FAST_CHANNELS_LAST = True


@dataclass(frozen=True)
class SpeedSettings:
    """The resolved fast-path switches of a run (after ``trainer.fast``)."""

    precision: str
    channels_last: bool
    compile: bool
    fused_optimizer: bool
    cudnn_benchmark: bool


def resolve_speed_settings(tcfg: Any, device: torch.device) -> SpeedSettings:
    """``trainer.fast=true`` picks the fastest settings measured to keep accuracy on this device.

    CPU with AVX-512/AMX: bf16 autocast (fp32 master weights and loss keep accuracy) and the memory
    format in ``CPU_FAST_CHANNELS_LAST``; other CPUs: fp32 and ``CPU_FP32_FAST_CHANNELS_LAST`` (both
    measured, see README); eager, since torch.compile's start-up cost outweighs its gain for runs of a
    few minutes. CUDA: bf16 when supported (else fp16 with a grad scaler), channels_last, fused
    optimizers, cuDNN autotuning. With ``fast=false`` the ``precision``/``channels_last``/``compile``
    keys are used as given; ``precision=auto`` is the precision ``fast`` would pick, alone.
    """
    precision, channels_last = str(tcfg.precision), bool(tcfg.channels_last)
    if bool(tcfg.fast) or precision == "auto":
        precision = fast_precision(device)
    if bool(tcfg.fast) and device.type == "cuda":
        channels_last = True
    elif bool(tcfg.fast):
        channels_last = CPU_FAST_CHANNELS_LAST if precision == "bf16" else CPU_FP32_FAST_CHANNELS_LAST
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        log.warning(
            "trainer.precision=bf16 on a CPU without AVX-512 (%s): convolutions fall back to slow reference "
            "kernels (11x slower than fp32 on an AVX2 EPYC); use trainer.precision=auto or fp32",
            torch.backends.cpu.get_cpu_capability(),
        )
    return SpeedSettings(
        precision=precision,
        channels_last=channels_last,
        compile=bool(tcfg.compile),
        fused_optimizer=device.type == "cuda",
        cudnn_benchmark=device.type == "cuda" and not tcfg.deterministic,
    )


def fast_precision(device: torch.device) -> str:
    """The lower precision where the device computes in it natively, else fp32."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def cpu_has_fast_bf16() -> bool:
    """oneDNN runs bf16 convolutions on AVX-512 (natively with AVX512_BF16/AMX); on AVX2 torch falls back
    to its slow reference kernels (measured: mnist_cnn trained 11x slower in bf16 than fp32 on an AVX2 EPYC)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return "AVX512" in capability or capability == "AMX"


@dataclass
class RunComponents:
    model: nn.Module
    train_batches: DeviceBatches
    val_batches: DeviceBatches
    test_batches: DeviceBatches
    data_generator: torch.Generator
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    speed: SpeedSettings


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch (every device); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    elif torch.are_deterministic_algorithms_enabled():  # the setter imports torch._inductor (~1.8 s)
        torch.use_deterministic_algorithms(False)


def inference_profile(
    cfg: DictConfig, model: nn.Module, input_shape: tuple[int, ...], speed: SpeedSettings
) -> dict[str, Any]:
    """Batch-1 latency and batched throughput in the run's precision and memory format (~1-2 s)."""
    if not cfg.profile_inference:
        return {}
    from dsconv.benchmark.measure import quick_inference_profile

    try:
        return quick_inference_profile(
            model, input_shape, dtype=speed.precision, channels_last=speed.channels_last, batch_size=64
        )
    except Exception as exc:  # a profiling hiccup must not cost the run its results
        log.warning("inference profile skipped: %s", exc)
        return {}


def run_training_config(cfg: DictConfig, world_size: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed; the global batch only when it is not batch_size
    (per_rank semantics over several processes), so single-process checkpoints stay compatible."""
    config = flat_training_config(cfg)
    global_batch = per_rank_batch_size(cfg.trainer, world_size) * world_size
    if global_batch != int(cfg.trainer.batch_size):
        config["trainer.global_batch_size"] = global_batch
    return config


def build_components(
    cfg: DictConfig, data: DatasetSplits, model: nn.Module, device: torch.device, *, rank: int = 0, world_size: int = 1
) -> RunComponents:
    """Move data and model to ``device`` and build batches, optimizer and LR schedule.

    ``rank``/``world_size`` shard the data for data-parallel runs: training batches by stride (each
    rank takes ``per_rank_batch_size`` images per step, see ``trainer.distributed``), validation and
    test splits into contiguous pieces whose evaluation outputs ``Trainer.evaluate`` gathers.
    """
    tcfg = cfg.trainer
    speed = resolve_speed_settings(tcfg, device)
    if speed.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    batch_size = per_rank_batch_size(tcfg, world_size)
    if batch_size > len(data.train) // world_size:
        raise ConfigError(
            f"trainer.batch_size={tcfg.batch_size} needs {batch_size} images per process and step, "
            f"more than the {len(data.train) // world_size} training images per process: lower it"
        )
    if min(len(data.val), len(data.test)) < world_size:
        raise ConfigError(f"the validation or test split is smaller than the {world_size} processes")
    memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    train_split, val_split, test_split = (s.to(device) for s in (data.train, data.val, data.test))
    channels = data.input_shape[0]
    if cfg.dataset.normalize == "stats":
        mean, std = data.mean, data.std
    elif cfg.dataset.normalize == "half":
        mean, std = (0.5,) * channels, (0.5,) * channels
    else:
        raise ConfigError(f"dataset.normalize={cfg.dataset.normalize!r} is unknown: use half or stats")
    normalize = Normalize(mean[:channels], std[:channels], device)
    data_gen = torch.Generator().manual_seed(int(tcfg.seed))
    augment = BatchAugment(int(cfg.dataset.augment.crop_padding), bool(cfg.dataset.augment.hflip))
    train_batches = DeviceBatches(
        train_split,
        batch_size,
        normalize,
        shuffle=True,
        drop_last=True,
        augment=augment,
        generator=data_gen,
        channels_last=speed.channels_last,
        rank=rank,
        world_size=world_size,
    )
    eval_bs = int(tcfg.eval_batch_size)
    val_batches = DeviceBatches(
        shard(val_split, rank, world_size), eval_bs, normalize, channels_last=speed.channels_last
    )
    test_batches = DeviceBatches(
        shard(test_split, rank, world_size), eval_bs, normalize, channels_last=speed.channels_last
    )
    optimizer = build_optimizer(model, cfg.optimizer, fused=speed.fused_optimizer, compiled=speed.compile)
    schedule = build_scheduler(optimizer, cfg.scheduler, int(tcfg.epochs), len(train_batches))
    return RunComponents(model, train_batches, val_batches, test_batches, data_gen, optimizer, schedule, speed)
