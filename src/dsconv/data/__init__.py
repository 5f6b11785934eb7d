"""Datasets held as uint8 tensors on the training device, batched without a DataLoader."""

from dsconv.data.datasets import DatasetSplits, Split, load_dataset
from dsconv.data.loader import BatchAugment, DeviceBatches, GpuAugment, Normalize

__all__ = ["BatchAugment", "DatasetSplits", "DeviceBatches", "GpuAugment", "Normalize", "Split", "load_dataset"]
