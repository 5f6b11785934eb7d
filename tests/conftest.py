"""Fixtures: tiny dataset files in real on-disk formats, the real MNIST files, thread limits."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from support import MNIST_FILES, SHARED_MNIST, TINY_RUN, write_idx_images, write_idx_labels


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY_RUN)


@pytest.fixture(autouse=True)
def _single_thread_torch():
    # Two cores, several test workers: one intra-op thread each avoids oversubscription.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def real_mnist_dir(tmp_path_factory) -> Path:
    """A data dir holding a copy of the real MNIST .gz files (never written into ../shared)."""
    if not all((SHARED_MNIST / name).is_file() for name in MNIST_FILES):
        pytest.skip(f"real MNIST files not found in {SHARED_MNIST}")
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(SHARED_MNIST / name, raw / name)
    return root


@pytest.fixture
def tiny_mnist_dir(tmp_path) -> Path:
    """MNIST in torchvision's raw layout (uncompressed idx files), 120 train / 40 test images."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 120), ("t10k", 40)):
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return tmp_path


@pytest.fixture
def tiny_cifar_dir(tmp_path) -> Path:
    """CIFAR-10 in its real python-pickle layout: 5 train batches of 20 images and a test batch."""
    rng = np.random.default_rng(0)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()

    def batch(n: int, offset: int) -> dict:
        # str keys: the official batches were pickled by Python 2 and load with str keys.
        return {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [int(i % 10) for i in range(offset, offset + n)],
            "batch_label": "tiny",
        }

    for i in range(1, 6):
        with open(base / f"data_batch_{i}", "wb") as handle:
            pickle.dump(batch(20, i * 20), handle)
    with open(base / "test_batch", "wb") as handle:
        pickle.dump(batch(30, 0), handle)
    with open(base / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    return tmp_path
