"""Which precision a run trains in: ``auto`` and ``fast`` follow the CPU's vector unit, since bf16
convolutions are fast on AVX-512 and fall back to slow reference kernels on AVX2-only CPUs."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf

from dsconv.config import validate_config
from dsconv.errors import ConfigError
from dsconv.training import setup
from dsconv.training.setup import (
    CPU_FAST_CHANNELS_LAST,
    CPU_FP32_FAST_CHANNELS_LAST,
    fast_precision,
    resolve_speed_settings,
)
from support import compose_config

CPU = torch.device("cpu")


def _trainer(**overrides):
    base = {"precision": "fp32", "channels_last": False, "fast": False, "compile": False, "deterministic": False}
    return OmegaConf.create({**base, **overrides})


@pytest.fixture(params=["AVX2", "AVX512"])
def capability(request, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: request.param)
    return request.param


def test_auto_is_bf16_only_on_avx512(capability):
    expected = "bf16" if capability == "AVX512" else "fp32"
    assert fast_precision(CPU) == expected
    speed = resolve_speed_settings(_trainer(precision="auto", channels_last=True), CPU)
    assert speed.precision == expected
    assert speed.channels_last is True  # auto decides the precision only


def test_fast_follows_the_cpu(capability):
    for given in (False, True):  # fast overrides the memory format too
        speed = resolve_speed_settings(_trainer(fast=True, channels_last=given), CPU)
        if capability == "AVX512":
            assert (speed.precision, speed.channels_last) == ("bf16", CPU_FAST_CHANNELS_LAST)
        else:
            assert (speed.precision, speed.channels_last) == ("fp32", CPU_FP32_FAST_CHANNELS_LAST)


def test_explicit_bf16_is_kept_and_warned_about_on_avx2(capability, caplog):
    with caplog.at_level(logging.WARNING, logger=setup.__name__):
        speed = resolve_speed_settings(_trainer(precision="bf16"), CPU)
    assert speed.precision == "bf16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if capability == "AVX2":
        assert len(warnings) == 1 and "trainer.precision=auto" in warnings[0] and "AVX2" in warnings[0]
        assert "\n" not in warnings[0]
    else:
        assert warnings == []


def test_explicit_fp32_is_never_changed(capability):
    assert resolve_speed_settings(_trainer(precision="fp32"), CPU).precision == "fp32"


@pytest.mark.parametrize("experiment", ["mnist_speedrun", "fashion_mnist_speedrun"])
def test_speedrun_presets_use_auto(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.trainer.precision == "auto"
    validate_config(cfg)


def test_unknown_precision_names_the_choices():
    cfg = compose_config(["trainer.precision=bf17"])
    with pytest.raises(ConfigError, match=r"trainer\.precision='bf17' is unknown: choose one of .*auto"):
        validate_config(cfg)
