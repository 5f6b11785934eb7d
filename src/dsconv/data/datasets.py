"""Load every dataset into uint8 ``(N, C, H, W)`` tensors with int64 labels, split train/val/test.

Real datasets go through torchvision's classes, so files are found, checksummed and (with a
network) downloaded exactly as torchvision users expect. The validation split is carved from the
training set with a fixed ``split_seed``; the test set is only ever used for the final evaluation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsconv.errors import ConfigError, DataError

MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class DatasetSplits:
    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the *training* split, in [0, 1] units, for ``normalize: stats``."""
        return self._channel_stats[0]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel (sample) standard deviation of the training split, in [0, 1] units."""
        return self._channel_stats[1]

    @functools.cached_property
    def _channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # From a 256-bin histogram per channel, on first use only: exact in float64, and no float copy of
        # the split (170 MB for MNIST) in the start-up of runs that normalize with fixed constants.
        images = self.train.images
        levels = torch.arange(256, dtype=torch.float64) / 255
        mean, std = [], []
        for channel in range(images.shape[1]):
            counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).double()
            n = counts.sum()
            mu = (counts * levels).sum() / n
            var = (counts * (levels - mu) ** 2).sum() / (n - 1).clamp_min(1)
            mean.append(float(mu))
            std.append(max(float(var.sqrt()), 1e-6))
        return tuple(mean), tuple(std)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(cfg: Any, data_dir: str | Path) -> DatasetSplits:
    """Load the dataset described by the ``dataset`` config group into CPU uint8 tensors."""
    name = str(cfg.name)
    if name not in _LOADERS:
        raise ConfigError(f"unknown dataset {name!r}: choose one of {', '.join(sorted(_LOADERS))}")
    train, test, classes = _LOADERS[name](cfg, Path(data_dir))
    train, val = _carve_validation(train, int(cfg.val_size), int(cfg.split_seed), name)
    # An optional key (added with +dataset.limit_train=N): keep N training images drawn at random (seeded by
    # split_seed), not the first N: an image-folder dataset is stored class by class.
    limit = cfg.limit_train if "limit_train" in cfg else None
    if limit and int(limit) < len(train):
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(int(cfg.split_seed) + 1))
        keep = keep[: int(limit)].sort().values
        train = Split(train.images[keep], train.labels[keep])
    return DatasetSplits(name, train, val, test, classes)


def _carve_validation(train: Split, val_size: int, seed: int, name: str) -> tuple[Split, Split]:
    n = len(train)
    if val_size < 1 or val_size >= n:
        raise ConfigError(f"dataset.val_size={val_size} must be between 1 and {n - 1} ({name} has {n} training images)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    return (
        Split(train.images[train_idx], train.labels[train_idx]),
        Split(train.images[val_idx], train.labels[val_idx]),
    )


def _mnist_like(cls_name: str, classes: tuple[str, ...]):
    def load(cfg: Any, data_dir: Path) -> tuple[Split, Split, tuple[str, ...]]:
        raw = data_dir / cls_name / "raw"
        if all((raw / f"{prefix}-{kind}").is_file() for prefix in ("train", "t10k") for kind in IDX_FILES):
            # The files torchvision extracts (after its md5 check): read them directly, the same bytes
            # torchvision reads, without importing torchvision (about a second of every start).
            return _read_idx_split(raw, "train"), _read_idx_split(raw, "t10k"), classes
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        splits = []
        for train in (True, False):
            ds = _open_torchvision(cls, data_dir, train, bool(cfg.download), cls_name)
            splits.append(Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long()))
        return splits[0], splits[1], classes

    return load


IDX_FILES = ("images-idx3-ubyte", "labels-idx1-ubyte")


def _read_idx_split(raw: Path, prefix: str) -> Split:
    images = _read_idx(raw / f"{prefix}-images-idx3-ubyte", dims=3)
    labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte", dims=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{raw}: {prefix} has {images.shape[0]} images but {labels.shape[0]} labels: delete the extracted "
            "files to have them extracted again from the .gz archives"
        )
    return Split(torch.from_numpy(images).unsqueeze(1).contiguous(), torch.from_numpy(labels.astype(np.int64)))


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """An uncompressed IDX file of unsigned bytes (magic 0x00000800 + number of dimensions)."""
    data = np.fromfile(path, dtype=np.uint8)
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i].tobytes(), "big") for i in range(dims))
    if data.size < header or data[:4].tolist() != [0, 0, 8, dims] or data.size != header + int(np.prod(shape)):
        raise DataError(f"{path} is not a complete IDX file of {dims} dimension(s): delete it to extract it again")
    return data[header:].reshape(shape)


def _cifar10(cfg: Any, data_dir: Path) -> tuple[Split, Split, tuple[str, ...]]:
    cls = cifar10_class(bool(cfg.verify_checksums))
    splits = []
    for train in (True, False):
        ds = _open_torchvision(cls, data_dir, train, bool(cfg.download), "CIFAR10")
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        splits.append(Split(images, torch.as_tensor(ds.targets, dtype=torch.long)))
    return splits[0], splits[1], CIFAR10_CLASSES


def cifar10_class(verify_checksums: bool = True):
    """torchvision's CIFAR10, or a subclass reading the same format without the md5 checks.

    The unchecked class lets tests and benchmarks use small batches written in the real format.
    """
    import torchvision.datasets as tvd

    if verify_checksums:
        return tvd.CIFAR10
    return type(
        "UncheckedCIFAR10",
        (tvd.CIFAR10,),
        {
            "_check_integrity": lambda self: True,
            "_load_meta": lambda self: setattr(self, "classes", list(CIFAR10_CLASSES)),
        },
    )


def write_cifar10_batches(root: str | Path, images: np.ndarray, labels: np.ndarray, test_size: int) -> Path:
    """Write uint8 ``(N, 32, 32, 3)`` images as CIFAR-10's python batches (5 train + 1 test)."""
    import pickle

    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    train_x, train_y = flat[test_size:], labels[test_size:]
    for i, chunk in enumerate(np.array_split(np.arange(len(train_x)), 5), start=1):
        # str keys: the official files were pickled by Python 2 and load with str keys.
        batch = {"data": train_x[chunk], "labels": [int(v) for v in train_y[chunk]], "batch_label": f"batch {i}"}
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {"data": flat[:test_size], "labels": [int(v) for v in labels[:test_size]], "batch_label": "test"}
    (base / "test_batch").write_bytes(pickle.dumps(test))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    return base


def _open_torchvision(cls, data_dir: Path, train: bool, download: bool, label: str):
    where = data_dir / ("cifar-10-batches-py" if label == "CIFAR10" else f"{label}/raw")
    try:
        return cls(root=str(data_dir), train=train, download=download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError... for missing files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{label} files not found or corrupt in {where} ({reason}); put the official files there "
            f"(torchvision {label} layout) or set paths.data_dir / DSCONV_DATA_DIR, with dataset.download=true "
            "on a machine with network"
        ) from exc


def _digits(cfg: Any, data_dir: Path) -> tuple[Split, Split, tuple[str, ...]]:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), resized to ``image_size``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0
    size = int(cfg.image_size)
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(bunch.target).long()
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx,
        test_size=float(cfg.test_fraction),
        stratify=labels.numpy(),
        random_state=int(cfg.split_seed),
    )
    train_idx, test_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    return (Split(images[train_idx], labels[train_idx]), Split(images[test_idx], labels[test_idx]), MNIST_CLASSES)


def _synthetic(cfg: Any, data_dir: Path) -> tuple[Split, Split, tuple[str, ...]]:
    """Class templates plus noise: learnable in an epoch, any shape, generated from a seed."""
    channels, size, classes = int(cfg.channels), int(cfg.image_size), int(cfg.num_classes)
    gen = torch.Generator().manual_seed(int(cfg.data_seed))
    # Smooth templates (upsampled 4x4 noise) so convolutions have spatial structure to find.
    templates = torch.rand(classes, channels, 4, 4, generator=gen)
    templates = torch.nn.functional.interpolate(templates, size=(size, size), mode="bilinear", align_corners=False)

    def make(n: int) -> Split:
        labels = torch.randint(0, classes, (n,), generator=gen)
        noise = torch.randn(n, channels, size, size, generator=gen) * float(cfg.noise)
        images = ((templates[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
        return Split(images, labels)

    return make(int(cfg.num_train)), make(int(cfg.num_test)), tuple(f"class_{i}" for i in range(classes))


def _image_folder(cfg: Any, data_dir: Path) -> tuple[Split, Split, tuple[str, ...]]:
    """Any ``root/{train,test}/<class>/<image>`` tree (``dsconv.data.image_folder``), e.g. the CIFAR-10 JPEG copy."""
    from dsconv.data.image_folder import load_image_folder, resolve_root

    root = resolve_root(str(cfg.root), None if cfg.archive is None else str(cfg.archive), data_dir)
    (train_x, train_y), (test_x, test_y), classes = load_image_folder(root, int(cfg.image_size), int(cfg.channels))
    return Split(train_x, train_y), Split(test_x, test_y), tuple(classes)


_LOADERS = {
    "mnist": _mnist_like("MNIST", MNIST_CLASSES),
    "fashion_mnist": _mnist_like("FashionMNIST", FASHION_CLASSES),
    "cifar10": _cifar10,
    "digits": _digits,
    "synthetic": _synthetic,
    "image_folder": _image_folder,
    "cifar10_jpeg": _image_folder,
}
