"""Build everything a run trains with from a composed config: data on the device, model, batches,
optimizer and schedule. ``train()``, the speed-run benchmark and data-parallel runs share it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig

from dsconv.data import DatasetSplits, DeviceBatches, GpuAugment, Normalize
from dsconv.errors import ConfigError
from dsconv.training.optim import Schedule, build_optimizer, build_scheduler

log = logging.getLogger(__name__)


# Whether trainer.fast uses channels_last on the CPU; decided by scripts/bench_train.py (README).
CPU_FAST_CHANNELS_LAST = True


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
    format in ``CPU_FAST_CHANNELS_LAST`` (measured, see README); eager, since torch.compile's start-up
    cost outweighs its gain for runs of a few minutes. CUDA: bf16 when supported (else fp16 with a
    grad scaler), channels_last, fused optimizers, cuDNN autotuning. With ``fast=false`` the
    ``precision``/``channels_last``/``compile`` keys are used as given.
    """
    precision, channels_last = str(tcfg.precision), bool(tcfg.channels_last)
    if bool(tcfg.get("fast", False)):
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            channels_last = True
        elif _cpu_has_fast_bf16():
            precision, channels_last = "bf16", CPU_FAST_CHANNELS_LAST
    return SpeedSettings(
        precision=precision, channels_last=channels_last, compile=bool(tcfg.compile),
        fused_optimizer=device.type == "cuda", cudnn_benchmark=device.type == "cuda" and not tcfg.deterministic,
    )


def _cpu_has_fast_bf16() -> bool:
    capability = torch.backends.cpu.get_cpu_capability()
    return capability in ("AVX512", "AVX512_BF16", "AMX") or "AVX512" in capability


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


def build_components(cfg: DictConfig, data: DatasetSplits, model: nn.Module, device: torch.device,
                     *, rank: int = 0, world_size: int = 1) -> RunComponents:
    """Move data and model to ``device`` and build batches, optimizer and LR schedule.

    ``rank``/``world_size`` shard the training batches for data-parallel runs; each rank then
    takes ``trainer.batch_size`` images per step.
    """
    tcfg = cfg.trainer
    speed = resolve_speed_settings(tcfg, device)
    if speed.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if int(tcfg.batch_size) > len(data.train) // world_size:
        raise ConfigError(f"trainer.batch_size={tcfg.batch_size} exceeds the {len(data.train) // world_size} "
                          "training images per process: lower it")
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
    augment = GpuAugment(int(cfg.dataset.augment.crop_padding), bool(cfg.dataset.augment.hflip))
    train_batches = DeviceBatches(train_split, int(tcfg.batch_size), normalize, shuffle=True, drop_last=True,
                                  augment=augment, generator=data_gen, channels_last=speed.channels_last,
                                  rank=rank, world_size=world_size)
    eval_bs = int(tcfg.get("eval_batch_size", 1024))
    val_batches = DeviceBatches(val_split, eval_bs, normalize, channels_last=speed.channels_last)
    test_batches = DeviceBatches(test_split, eval_bs, normalize, channels_last=speed.channels_last)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, fused=speed.fused_optimizer)
    schedule = build_scheduler(optimizer, cfg.scheduler, int(tcfg.epochs), len(train_batches))
    return RunComponents(model, train_batches, val_batches, test_batches, data_gen, optimizer, schedule, speed)
