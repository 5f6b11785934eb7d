"""Any ``root/{train,test}/<class>/<image>`` tree as uint8 tensors, decoded once and cached.

The first load decodes every image (resized to ``image_size``, converted to RGB or grayscale) and
saves the two splits as one tensor file next to the data, named by a hash of the sorted file list
(paths, sizes, modification times) and the decoding settings. A second run with the same tree reads
that file in about a second; any added, removed or changed image gives another hash and a fresh
decode. Class names are the sub-directory names, sorted, and must be the same in both splits.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from dsconv.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1


def load_image_folder(
    root: str | Path, image_size: int, channels: int, *, cache: bool = True
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], tuple[str, ...]]:
    """``(train_images, train_labels), (test_images, test_labels), classes`` for an image-folder tree."""
    root = Path(root)
    if channels not in (1, 3):
        raise DataError(f"dataset.channels={channels} is not supported: use 1 (grayscale) or 3 (RGB)")
    files, classes = {}, None
    for split in ("train", "test"):
        split_classes, split_files = _list_split(root, split)
        if classes is not None and split_classes != classes:
            only_train, only_test = sorted(set(classes) - set(split_classes)), sorted(set(split_classes) - set(classes))
            raise DataError(
                f"{root}: train and test have different classes (only in train: {only_train or '-'}, "
                f"only in test: {only_test or '-'}): give both splits the same class sub-directories"
            )
        classes, files[split] = split_classes, split_files
    assert classes is not None
    key = _cache_key(files, image_size, channels)
    cache_file = root / f".dsconv-cache-{key}.pt"
    if cache and cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            return (cached["train"][0], cached["train"][1]), (cached["test"][0], cached["test"][1]), classes
        except Exception:  # a truncated cache (killed while writing elsewhere) is rebuilt, not trusted
            pass
    splits = {split: _decode_split(entries, image_size, channels) for split, entries in files.items()}
    if cache:
        _save_cache(cache_file, splits)
    return splits["train"], splits["test"], classes


def _list_split(root: Path, split: str) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    base = root / split
    if not base.is_dir():
        raise DataError(
            f"image folder {base} not found: dataset.root must hold train/<class>/*.jpg and test/<class>/*.jpg "
            "(set dataset.root or paths.data_dir)"
        )
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{base} has no class sub-directories: put each class's images in {base}/<class>/")
    entries: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"class {class_dir.name!r} in {base} has no images ({', '.join(IMAGE_SUFFIXES)})")
        entries.extend((path, label) for path in images)
    return tuple(p.name for p in class_dirs), entries


def _cache_key(files: dict[str, list[tuple[Path, int]]], image_size: int, channels: int) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION} size={image_size} channels={channels}".encode())
    for split, entries in files.items():
        for path, label in entries:
            stat = path.stat()
            digest.update(
                f"{split}/{path.parent.name}/{path.name}:{label}:{stat.st_size}:{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()[:16]


def _decode_split(entries: list[tuple[Path, int]], image_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.empty((len(entries), image_size, image_size, channels), dtype=np.uint8)

    def decode(i: int) -> None:
        images[i] = _decode(entries[i][0], image_size, channels)

    # PIL releases the GIL while decoding, so threads use every core for the one-off decode.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, range(len(entries))))
    labels = torch.tensor([label for _, label in entries], dtype=torch.long)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


def _decode(path: Path, image_size: int, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path} ({exc}): remove or replace the file") from exc
    return array.reshape(image_size, image_size, channels)


def _save_cache(cache_file: Path, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Atomic write; a read-only data directory only costs the next run another decode."""
    tmp = cache_file.with_name(cache_file.name + f".tmp{os.getpid()}")
    try:
        torch.save({k: list(v) for k, v in splits.items()}, tmp)
        os.replace(tmp, cache_file)
    except OSError:
        tmp.unlink(missing_ok=True)


def resolve_root(root: str | Path, archive: str | Path | None, data_dir: Path) -> Path:
    """``dataset.root`` (absolute, or relative to ``paths.data_dir``); when it is missing and
    ``dataset.archive`` names a ``.tar.gz`` holding it, the archive is unpacked into ``data_dir`` once."""
    root_path = Path(root) if Path(root).is_absolute() else data_dir / root
    if root_path.is_dir() or archive is None:
        return root_path
    archive_path = Path(archive) if Path(archive).is_absolute() else data_dir / archive
    if not archive_path.is_file():
        raise DataError(
            f"neither the image folder {root_path} nor its archive {archive_path} exists: put one of them there "
            "(or set dataset.root / dataset.archive / paths.data_dir)"
        )
    import tarfile

    try:
        with tarfile.open(archive_path) as tar:
            tar.extractall(root_path.parent, filter="data")  # "data": no absolute paths, links or devices
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"cannot unpack {archive_path} into {root_path.parent} ({exc}): check the file") from exc
    if not root_path.is_dir():
        raise DataError(f"{archive_path} does not contain {root_path.name}/: set dataset.root to the folder it holds")
    return root_path
