"""BatchNorm over the global batch of a data-parallel run: torch's SyncBatchNorm on CUDA, a gloo-friendly
version on the CPU (torch's refuses CPU tensors)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn


def convert_sync_batchnorm(model: nn.Module, device: torch.device, group: Any = None) -> nn.Module:
    """BatchNorm over the global batch: torch's SyncBatchNorm on CUDA, ``CpuSyncBatchNorm`` on the CPU
    (torch's refuses CPU tensors). Parameters are kept, so an optimizer built before still applies."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        return CpuSyncBatchNorm.from_batchnorm(model, group)
    for name, child in model.named_children():
        model.add_module(name, convert_sync_batchnorm(child, device, group))
    return model


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return _AllReduceSum.apply(grad.contiguous(), ctx.group), None


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (written for the CPU, where
    torch's SyncBatchNorm refuses to run; the arithmetic works on any device).

    Two passes (mean, then the centred second moment), each one small all-reduce, so the variance is
    as stable as BatchNorm's own; autograd through the all-reduces gives SyncBatchNorm's gradients.
    In eval mode it is plain BatchNorm on the (identical on every rank) running statistics.
    """

    group: Any = None

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, group: Any = None) -> CpuSyncBatchNorm:
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.group = group
        new.train(bn.training)
        return new

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:  # the BatchNorm1d/2d/3d it replaces checked the exact rank already
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), self.group)
        total = sums[-1]
        mean = sums[:-1] / total
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims), self.group) / total
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (total / (total - 1).clamp_min(1))
                # BatchNorm's own update formula, in double as its CPU kernel does.
                for buffer, value in ((self.running_mean, mean), (self.running_var, unbiased)):
                    buffer.copy_(factor * value.double() + (1.0 - factor) * buffer.double())
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)
