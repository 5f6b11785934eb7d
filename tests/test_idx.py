"""MNIST-format files read directly (no torchvision import), byte for byte what torchvision reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dsconv.data.datasets import _LOADERS
from dsconv.errors import DataError


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, n_train: int = 7, n_test: int = 3) -> dict[str, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels"] = rng.integers(0, 10, (n,), dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[f"{prefix}-images"])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", arrays[f"{prefix}-labels"])
    return arrays


def test_extracted_files_are_read_as_they_are(tmp_path):
    arrays = _write_mnist(tmp_path)
    train, test, classes = _LOADERS["mnist"](OmegaConf.create({"download": False}), tmp_path)
    assert classes[0] == "0" and train.images.shape == (7, 1, 28, 28) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images[:, 0].numpy(), arrays["train-images"])
    assert np.array_equal(test.labels.numpy(), arrays["t10k-labels"]) and test.labels.dtype == torch.int64


def test_torchvision_reads_the_same_tensors(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    _write_mnist(tmp_path)
    train, _, _ = _LOADERS["mnist"](OmegaConf.create({"download": False}), tmp_path)
    reference = torchvision.datasets.MNIST(str(tmp_path), train=True, download=False)
    assert torch.equal(train.images[:, 0], reference.data) and torch.equal(train.labels, reference.targets)


@pytest.mark.parametrize("damage", ["truncate", "magic", "count"])
def test_damaged_files_give_one_line_errors(tmp_path, damage):
    _write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:-5])
    elif damage == "magic":
        images.write_bytes(b"\x00\x00\x09\x03" + images.read_bytes()[4:])
    else:
        _write_idx(raw / "train-labels-idx1-ubyte", np.zeros(6, np.uint8))
    with pytest.raises(DataError) as info:
        _LOADERS["mnist"](OmegaConf.create({"download": False}), tmp_path)
    assert "\n" not in str(info.value) and "train" in str(info.value)


def test_loading_does_not_import_torchvision(tmp_path):
    _write_mnist(tmp_path)
    code = (
        "import sys; from pathlib import Path; from omegaconf import OmegaConf; "
        "from dsconv.data.datasets import _LOADERS; "
        f"_LOADERS['mnist'](OmegaConf.create({{'download': False}}), Path({str(tmp_path)!r})); "
        "print('torchvision' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
