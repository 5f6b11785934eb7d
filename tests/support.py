"""Test helpers shared by the test modules (importable as `support`; fixtures live in conftest)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from dsconv.paths import CONF_DIR, REPO_ROOT

SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "MNIST" / "raw"
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# Small, fast settings for end-to-end runs on 2 CPU cores.
TINY_RUN = [
    "dataset=synthetic",
    "dataset.image_size=16",
    "dataset.channels=1",
    "dataset.num_train=240",
    "dataset.num_test=80",
    "dataset.val_size=40",
    "model=mnist_cnn",
    "model.channels=[4,8,8]",
    "model.hidden=16",
    "trainer.epochs=2",
    "trainer.batch_size=32",
    "trainer.progress_bar=false",
]


def compose_config(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides or []))


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes())


def gzip_file(path: Path) -> Path:
    target = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(target, "wb") as dst:
        dst.write(src.read())
    return target


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DSCONV_OUTPUT_DIR=str(tmp_path / "outputs"),
        DSCONV_DATA_DIR=str(tmp_path / "data"),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    return env


def iter_tensors(obj, prefix=""):
    """Every tensor in a nested checkpoint structure, with a dotted path (for bit-identity checks)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from iter_tensors(value, f"{prefix}.{key}")
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from iter_tensors(value, f"{prefix}[{i}]")
