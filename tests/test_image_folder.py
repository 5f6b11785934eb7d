"""Image-folder datasets: decoding, resizing, the tensor cache and one-line errors for broken trees."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsconv.data import image_folder
from dsconv.data.image_folder import load_image_folder, resolve_root
from dsconv.errors import DataError


def _write_tree(root: Path, classes=("cat", "dog"), per_class=(3, 2), size=8, mode="RGB") -> dict[str, np.ndarray]:
    """Each image is a constant colour derived from (split, class, index), so decoded values are checkable."""
    pixels = {}
    for split, count in zip(("train", "test"), per_class):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                value = 10 + 40 * c + 7 * i + (100 if split == "test" else 0)
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                array = np.full(shape, value, dtype=np.uint8)
                Image.fromarray(array, mode).save(root / split / name / f"{i:03d}.png")
                pixels[f"{split}/{name}/{i}"] = array
    return pixels


def test_loads_both_splits_with_labels_in_class_order(tmp_path):
    _write_tree(tmp_path)
    (x_train, y_train), (x_test, y_test), classes = load_image_folder(tmp_path, 8, 3)
    assert classes == ("cat", "dog")
    assert x_train.shape == (6, 3, 8, 8) and x_train.dtype == torch.uint8
    assert y_train.tolist() == [0, 0, 0, 1, 1, 1] and y_test.tolist() == [0, 0, 1, 1]
    assert x_train[4, :, 0, 0].tolist() == [10 + 40 + 7] * 3  # dog/001.png
    assert x_test[0, 0].unique().tolist() == [110]


def test_grayscale_and_resize(tmp_path):
    _write_tree(tmp_path, size=12, mode="L")
    (x_train, _), _, _ = load_image_folder(tmp_path, 4, 1)
    assert x_train.shape == (6, 1, 4, 4)
    assert x_train[0].unique().tolist() == [10]  # a constant image stays constant through bilinear resizing
    (rgb, _), _, _ = load_image_folder(tmp_path, 4, 3)  # grayscale files read as RGB: three equal channels
    assert torch.equal(rgb[:, 0], rgb[:, 2])


def test_second_load_reads_the_cache_and_a_changed_file_invalidates_it(tmp_path, monkeypatch):
    _write_tree(tmp_path)
    first = load_image_folder(tmp_path, 8, 3)
    assert len(list(tmp_path.glob(".dsconv-cache-*.pt"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although a valid cache exists")

    monkeypatch.setattr(image_folder, "_decode", no_decoding)
    second = load_image_folder(tmp_path, 8, 3)
    assert torch.equal(first[0][0], second[0][0]) and torch.equal(first[1][1], second[1][1])
    monkeypatch.undo()

    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "train" / "cat" / "009.png")
    (_, y_train), _, _ = load_image_folder(tmp_path, 8, 3)
    assert len(y_train) == 7 and len(list(tmp_path.glob(".dsconv-cache-*.pt"))) == 2


def test_a_corrupt_cache_is_rebuilt(tmp_path):
    _write_tree(tmp_path)
    load_image_folder(tmp_path, 8, 3)
    (cache,) = tmp_path.glob(".dsconv-cache-*.pt")
    cache.write_bytes(b"truncated")
    (x_train, _), _, _ = load_image_folder(tmp_path, 8, 3)
    assert x_train.shape[0] == 6


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("empty_class", "class 'dog' in"),
        ("bad_image", "cannot read image"),
        ("class_sets", "different classes"),
        ("no_test", "not found"),
    ],
)
def test_broken_trees_give_one_line_errors(tmp_path, breakage, message):
    _write_tree(tmp_path)
    if breakage == "empty_class":
        for f in (tmp_path / "test" / "dog").iterdir():
            f.unlink()
    elif breakage == "bad_image":
        (tmp_path / "train" / "cat" / "000.png").write_bytes(b"not an image")
    elif breakage == "class_sets":
        (tmp_path / "test" / "dog").rename(tmp_path / "test" / "bird")
    else:
        for f in sorted((tmp_path / "test").rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (tmp_path / "test").rmdir()
    with pytest.raises(DataError, match=message) as info:
        load_image_folder(tmp_path, 8, 3)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.glob(".dsconv-cache-*.pt"))  # nothing written for a broken tree


def test_archive_is_unpacked_once_when_the_folder_is_missing(tmp_path):
    source = tmp_path / "src" / "pets"
    _write_tree(source)
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="pets")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    root = resolve_root("pets", archive, data_dir)
    assert root == data_dir / "pets" and (root / "train" / "cat" / "000.png").is_file()
    assert resolve_root("pets", tmp_path / "gone.tar.gz", data_dir) == root  # present now: archive not needed
    with pytest.raises(DataError, match="neither the image folder"):
        resolve_root("other", tmp_path / "gone.tar.gz", data_dir)
