"""Datasets: real on-disk formats, deterministic splits, batched device-side augmentation."""

from __future__ import annotations

import hashlib

import pytest
import torch
from omegaconf import OmegaConf

from dsconv.data import BatchAugment, DeviceBatches, Normalize, Split, load_dataset
from dsconv.errors import ConfigError, DataError
from support import SHARED_MNIST, compose_config


def _dataset_cfg(name: str, **overrides):
    cfg = compose_config([f"dataset={name}"]).dataset
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_digits_split_is_stratified_deterministic_and_disjoint():
    cfg = _dataset_cfg("digits")
    a, b = load_dataset(cfg, "unused"), load_dataset(cfg, "unused")
    assert (len(a.train), len(a.val), len(a.test)) == (1293, 144, 360)
    assert a.input_shape == (1, 28, 28) and a.train.images.dtype == torch.uint8
    assert torch.equal(a.val.images, b.val.images)
    counts = torch.bincount(a.test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    train_hashes = {hashlib.md5(img.numpy().tobytes()).hexdigest() for img in a.train.images}
    assert not any(hashlib.md5(img.numpy().tobytes()).hexdigest() in train_hashes for img in a.val.images[:50])
    assert load_dataset(_dataset_cfg("digits", image_size=32), "unused").input_shape == (1, 32, 32)


def test_validation_larger_than_train_set_is_a_config_error():
    with pytest.raises(ConfigError, match="val_size"):
        load_dataset(_dataset_cfg("digits", val_size=5000), "unused")


def test_synthetic_shape_and_seed():
    cfg = _dataset_cfg("synthetic", channels=2, image_size=12, num_train=100, num_test=20, val_size=10)
    data = load_dataset(cfg, "unused")
    assert data.input_shape == (2, 12, 12) and (len(data.train), len(data.val), len(data.test)) == (90, 10, 20)


def test_mnist_reads_real_idx_format(tiny_mnist_dir):
    data = load_dataset(_dataset_cfg("mnist", val_size=20, download=False), tiny_mnist_dir)
    assert (len(data.train), len(data.val), len(data.test)) == (100, 20, 40)
    assert data.input_shape == (1, 28, 28)
    assert sorted(torch.cat([data.train.labels, data.val.labels]).tolist()) == sorted([i % 10 for i in range(120)])


def test_cifar10_reads_real_pickle_format(tiny_cifar_dir):
    data = load_dataset(_dataset_cfg("cifar10", val_size=10, verify_checksums=False), tiny_cifar_dir)
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 30)
    assert data.input_shape == (3, 32, 32)
    assert data.classes[0] == "airplane"


def test_cifar10_checksum_failure_is_one_clear_line(tiny_cifar_dir):
    with pytest.raises(DataError) as info:
        load_dataset(_dataset_cfg("cifar10", download=False), tiny_cifar_dir)
    message = str(info.value)
    assert "\n" not in message and "cifar-10-batches-py" in message and "corrupt" in message


def test_missing_mnist_offline_names_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"MNIST files not found .* in .*MNIST/raw"):
        load_dataset(_dataset_cfg("mnist", download=False), tmp_path)


@pytest.mark.real_data
def test_real_mnist_is_found_md5_checked_and_split_55k_5k_10k(real_mnist_dir):
    data = load_dataset(_dataset_cfg("mnist"), real_mnist_dir)
    assert (len(data.train), len(data.val), len(data.test)) == (55_000, 5_000, 10_000)
    assert torch.bincount(data.test.labels).tolist()[:3] == [980, 1135, 1032]
    assert (real_mnist_dir / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # extracted locally
    assert SHARED_MNIST.is_dir()


def test_normalize_half_maps_uint8_to_minus_one_one():
    norm = Normalize((0.5,), (0.5,), "cpu")
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 1, 1, 3)
    assert torch.allclose(norm(x).flatten(), torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(3)
    out = BatchAugment(crop_padding=2)(images, gen)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(out, images)


def test_hflip_flips_about_half_exactly():
    images = torch.randint(0, 256, (200, 1, 4, 4), dtype=torch.uint8)
    out = BatchAugment(hflip=True)(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) and not torch.equal(o, i) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 70 < sum(flipped) < 130


def _split(n=50):
    return Split(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), torch.arange(n))


def test_batches_cover_each_sample_once_and_order_follows_the_generator():
    norm = Normalize((0.0,), (1 / 255,), "cpu")  # identity on values

    def make(seed):
        return DeviceBatches(
            _split(),
            8,
            norm,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )

    labels = torch.cat([y for _, y in make(1)])
    assert sorted(labels.tolist()) == list(range(50))
    assert torch.equal(labels, torch.cat([y for _, y in make(1)]))
    assert not torch.equal(labels, torch.cat([y for _, y in make(2)]))
    images, y = next(iter(make(1)))
    assert torch.equal(images.flatten(), y.float())


def test_drop_last_and_len():
    norm = Normalize((0.0,), (1.0,), "cpu")
    assert len(DeviceBatches(_split(50), 8, norm, drop_last=True)) == 6
    assert sum(len(y) for _, y in DeviceBatches(_split(50), 8, norm, drop_last=True)) == 48
    assert len(DeviceBatches(_split(50), 8, norm)) == 7


def test_rank_shards_are_disjoint_and_seed_synchronised():
    norm = Normalize((0.0,), (1.0,), "cpu")
    shards = [
        torch.cat(
            [
                y
                for _, y in DeviceBatches(
                    _split(50), 5, norm, shuffle=True, rank=r, world_size=2, generator=torch.Generator().manual_seed(7)
                )
            ]
        )
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 25
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_channel_stats_equal_the_float64_mean_and_std_of_the_training_split():
    from dsconv.data.datasets import DatasetSplits, Split

    gen = torch.Generator().manual_seed(0)
    train = Split(torch.randint(0, 256, (300, 3, 6, 6), dtype=torch.uint8, generator=gen), torch.zeros(300).long())
    other = Split(torch.full((4, 3, 6, 6), 255, dtype=torch.uint8), torch.zeros(4).long())  # must not count
    splits = DatasetSplits("x", train, other, other, ("a",))
    scaled = train.images.double() / 255
    assert splits.mean == pytest.approx(scaled.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert splits.std == pytest.approx(scaled.std(dim=(0, 2, 3)).tolist(), abs=1e-12)
    constant = DatasetSplits("c", other, other, other, ("a",))
    assert constant.mean == (1.0, 1.0, 1.0) and constant.std == (1e-6, 1e-6, 1e-6)  # clamped, never 0
