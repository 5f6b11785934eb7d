"""Process-level speed settings (allocator thresholds, start-up clock) and the random training subset."""

from __future__ import annotations

import ctypes
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from dsconv.data import datasets
from dsconv.data.datasets import load_dataset
from dsconv.training import host_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_allocator_thresholds_are_set_once(monkeypatch):
    calls = []

    class FakeLibc:
        def __init__(self, *args):
            self.mallopt = self

        def __call__(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", FakeLibc)
    monkeypatch.setattr(host_memory, "_done", False)
    assert host_memory.keep_freed_memory() is True
    assert host_memory.keep_freed_memory() is True  # idempotent: no second round of calls
    assert calls == [(-3, 32 * 1024 * 1024), (-1, 1024 * 1024 * 1024)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_real_glibc_accepts_the_thresholds(monkeypatch):
    monkeypatch.setattr(host_memory, "_done", False)
    assert host_memory.keep_freed_memory() is True


def test_process_age_grows_and_is_positive():
    first = host_memory.process_age_s()
    time.sleep(0.05)
    assert 0 < first < host_memory.process_age_s()


def test_limit_train_draws_from_every_class_of_a_class_sorted_dataset(monkeypatch):
    # An image folder lists its images class by class: the first N would hold the first classes only.
    labels = torch.arange(10).repeat_interleave(100)
    images = torch.arange(1000, dtype=torch.int32).view(1000, 1, 1, 1).expand(1000, 1, 2, 2) % 256
    split = datasets.Split(images.to(torch.uint8).contiguous(), labels)
    monkeypatch.setitem(datasets._LOADERS, "sorted", lambda cfg, root: (split, split, tuple("abcdefghij")))
    cfg = OmegaConf.create({"name": "sorted", "val_size": 100, "split_seed": 0, "limit_train": 200})
    first = load_dataset(cfg, ".")
    assert len(first.train) == 200
    assert sorted(first.train.labels.unique().tolist()) == list(range(10))
    again = load_dataset(cfg, ".")
    assert torch.equal(first.train.labels, again.train.labels)  # seeded by split_seed: reproducible
