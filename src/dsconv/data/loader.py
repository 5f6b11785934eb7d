"""Batches drawn from device-resident uint8 tensors; normalisation and augmentation as batched ops.

No DataLoader, no workers, no per-sample Python: an epoch is one ``randperm`` (from a seeded CPU
generator, so the order is reproducible and resumable), each batch one gather, one float
conversion and a couple of vectorised augmentations (airbench-style). ``rank``/``world_size``
shard each epoch's permutation so data-parallel processes see disjoint, seed-synchronised batches:
rank r takes every world_size-th index, so step k's batches of all ranks together are exactly step k's
batch of a single process whose batch is world_size times larger. ``shard`` splits an evaluation
split into contiguous pieces whose concatenation in rank order is the split itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from dsconv.data.datasets import Split


class Normalize:
    """uint8 -> float, then ``(x / 255 - mean) / std`` per channel, in one fused multiply-add."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str) -> None:
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)


class BatchAugment:
    """Random crop with zero padding and horizontal flip for a whole batch (uint8 in, uint8 out), on
    whatever device the batch is on."""

    def __init__(self, crop_padding: int = 0, hflip: bool = False) -> None:
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, rank: int = 0, world_size: int = 1
    ) -> torch.Tensor:
        """Augment one rank's batch. Random numbers are drawn for the whole global batch (every rank
        draws the same) and the rank keeps its stride of them, the stride ``DeviceBatches`` takes of
        the images: each image is augmented exactly as in a single-process run with the global batch."""
        n, _, h, w = images.shape
        total, pad = n * world_size, self.crop_padding
        device = images.device
        # Draw order (row offsets, column offsets, flips) is part of the reproducible data stream.
        dy = dx = torch.zeros(n, dtype=torch.long)
        if pad:
            dy = torch.randint(0, 2 * pad + 1, (total,), generator=generator)[rank::world_size]
            dx = torch.randint(0, 2 * pad + 1, (total,), generator=generator)[rank::world_size]
        flip = torch.zeros(n, dtype=torch.bool)
        if self.hflip:
            flip = torch.rand(total, generator=generator)[rank::world_size].lt(0.5)
        # Crop and flip as ONE gather from the zero-padded batch: the source pixel of output (i, j)
        # is (dy + i, dx + j), or (dy + i, dx + w - 1 - j) when flipped. Measured ~2.5x faster than
        # separate row/column gathers plus a flip.
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)) if pad else images
        width = w + 2 * pad
        cols = torch.arange(w)
        cols = torch.where(flip.view(n, 1), w - 1 - cols, cols) + dx.view(n, 1)
        rows = dy.view(n, 1) + torch.arange(h)
        index = (rows.view(n, h, 1) * width + cols.view(n, 1, w)).view(n, 1, h * w).to(device)
        flat = padded.reshape(n, padded.shape[1], -1)
        return flat.gather(2, index.expand(n, flat.shape[1], h * w)).view(n, -1, h, w)


# The old name, until scripts/bench_train.py imports the new one.
GpuAugment = BatchAugment


def shard(split: Split, rank: int, world_size: int) -> Split:
    """Rank ``rank``'s contiguous piece of ``split`` (sizes differ by at most one; none is dropped)."""
    if world_size == 1:
        return split
    n = len(split)
    start, stop = n * rank // world_size, n * (rank + 1) // world_size
    return Split(split.images[start:stop], split.labels[start:stop])


class DeviceBatches:
    """Iterate ``(images, labels)`` batches of a device-resident split.

    ``shuffle`` draws a new permutation per epoch from ``generator``; its state before the draw is
    part of a checkpoint, so a resumed run sees the same order. ``drop_last`` avoids a size-1
    batch that BatchNorm cannot train on.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        normalize: Normalize,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: BatchAugment | None = None,
        generator: torch.Generator | None = None,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.normalize = normalize
        self.shuffle = shuffle
        self.drop_last = drop_last and len(split) // world_size >= batch_size
        self.augment = augment if augment is not None and augment.enabled else None
        self.generator = generator or torch.Generator().manual_seed(0)
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size

    def _indices(self) -> torch.Tensor:
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        # Every rank draws the same permutation (same seed) and keeps its own stride of it.
        per_rank = n // self.world_size if self.world_size > 1 else n
        return order[self.rank : per_rank * self.world_size : self.world_size] if self.world_size > 1 else order

    def __len__(self) -> int:
        n = len(self.split) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices().to(self.split.images.device)
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            images = self.split.images.index_select(0, idx)
            if self.augment is not None:
                images = self.augment(images, self.generator, self.rank, self.world_size)
            images = self.normalize(images)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, self.split.labels.index_select(0, idx)
