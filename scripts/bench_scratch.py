#!/usr/bin/env python
"""Speed and memory of the dsconv.scratch layers and models against their torch.nn twins.

Prints one table measured in one run: forward time (under ``torch.no_grad``), forward+backward time
(autograd recording, then ``backward`` of a fixed random output gradient), the scratch/nn ratios,
and the peak memory of one forward+backward. Times are medians over ``--repeats`` runs after
``--warmup`` runs; CUDA runs are synchronised. Both twins get the same NCHW-contiguous input and
the same weights (the nn twin is loaded from the scratch state_dict).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above the pre-step baseline. On CPU,
the allocation events of ``torch.profiler`` (``profile_memory=True``): the maximum of the running
total of bytes held through PyTorch's CPU allocator during the step, above its start. oneDNN's
private scratchpads (used by ``nn.Conv2d`` on CPU) bypass that allocator and are not counted;
the scratch conv's reusable im2col workspace is freed before the step so its allocation counts.

    python scripts/bench_scratch.py            # full table (a few minutes on 2 CPU cores)
    python scripts/bench_scratch.py --quick    # fewer cases and repeats (< 1 minute)
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from dsconv import scratch as S
from dsconv.registry import build_model


# --------------------------------------------------------------------------- torch.nn twins
def _leaf_twin(m: nn.Module) -> nn.Module | None:
    if isinstance(m, S.Conv2d):
        return nn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            bias=m.bias is not None,
        )
    if isinstance(m, S.Linear):
        return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if isinstance(m, S.MaxPool2d):
        return nn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation)
    if isinstance(m, S.LayerNorm):
        return nn.LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine, bias=m.bias is not None)
    if isinstance(m, S.MultiHeadAttention):
        return nn.MultiheadAttention(
            m.embed_dim, m.num_heads, m.dropout, bias=m.in_proj_bias is not None, batch_first=m.batch_first
        )
    if isinstance(m, S.TransformerEncoderLayer):
        return nn.TransformerEncoderLayer(
            m.linear1.in_features,
            m.self_attn.num_heads,
            m.linear1.out_features,
            m.dropout.p,
            "gelu" if isinstance(m.activation, S.GELU) else "relu",
            m.norm1.eps,
            m.self_attn.batch_first,
            m.norm_first,
            bias=m.linear1.bias is not None,
        )
    if isinstance(m, S.TransformerEncoder):
        norm = _leaf_twin(m.norm) if m.norm is not None else None
        return nn.TransformerEncoder(_leaf_twin(m.layers[0]), m.num_layers, norm, enable_nested_tensor=False)
    simple = {S.ReLU: nn.ReLU, S.GELU: nn.GELU}
    if type(m) in simple:
        return simple[type(m)]()
    if isinstance(m, S.Dropout):
        return nn.Dropout(m.p)
    if isinstance(m, S.Flatten):
        return nn.Flatten(m.start_dim, m.end_dim)
    return None


def torch_twin(module: nn.Module) -> nn.Module:
    """Copy of ``module`` with every scratch layer replaced by its torch.nn twin, same weights.

    Scratch modules without a twin (PatchEmbedding, PositionalEncoding, the model classes) stay and
    have their children swapped, so they run torch.nn compute inside.
    """
    twin = _leaf_twin(module)
    if twin is None:
        twin = copy.deepcopy(module)
        for name, child in module.named_children():
            setattr(twin, name, torch_twin(child))
    twin.load_state_dict(module.state_dict())
    return twin


# --------------------------------------------------------------------------- measurement
@dataclass
class Case:
    name: str
    shape: str
    build: Callable[[], nn.Module]
    make_input: Callable[[], torch.Tensor]
    call: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda m, x: m(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fns: list[Callable[[], object]], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Median ms of each function. The functions take turns within every repeat, so load from other
    processes on a shared machine lands on the nn and the scratch twin alike instead of on one."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) * 1e3 for bucket in times]


def _peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    S.clear_workspace()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            allocations.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.total_allocated))
    if not allocations:
        return 0
    allocations.sort()
    base = allocations[0][2] - allocations[0][1]
    return max(total for _, _, total in allocations) - base


def _steps(module: nn.Module, case: Case, x: torch.Tensor, grad: torch.Tensor):
    """(forward under no_grad, forward + backward w.r.t. the input and every parameter)."""
    leaves = [*(p for p in module.parameters() if p.requires_grad), x.detach().requires_grad_()]

    def forward():
        with torch.no_grad():
            return case.call(module, x)

    def forward_backward():
        torch.autograd.backward(case.call(module, leaves[-1]), grad, inputs=leaves)
        for leaf in leaves:
            leaf.grad = None

    return forward, forward_backward


def run_case(case: Case, device: torch.device, warmup: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    scratch = case.build().to(device)
    twin = torch_twin(scratch).to(device)
    scratch.train()
    twin.train()
    x = case.make_input().to(device)
    with torch.no_grad():
        grad = torch.randn_like(case.call(twin, x))
    (n_f, n_fb_step), (s_f, s_fb_step) = _steps(twin, case, x, grad), _steps(scratch, case, x, grad)
    n_fwd, s_fwd = _median_ms([n_f, s_f], device, warmup, repeats)
    n_fb, s_fb = _median_ms([n_fb_step, s_fb_step], device, warmup, repeats)
    n_mem, s_mem = _peak_bytes(n_fb_step, device), _peak_bytes(s_fb_step, device)
    mib = 2**20
    return [
        case.name,
        case.shape,
        f"{n_fwd:.2f}",
        f"{s_fwd:.2f}",
        f"{s_fwd / n_fwd:.2f}x",
        f"{n_fb:.2f}",
        f"{s_fb:.2f}",
        f"{s_fb / n_fb:.2f}x",
        f"{n_mem / mib:.1f}",
        f"{s_mem / mib:.1f}",
        f"{s_mem / max(n_mem, 1):.2f}x",
    ]


# --------------------------------------------------------------------------- cases
def _image(n, c, h, w=None):
    return lambda: torch.randn(n, c, h, w or h)


def _conv(cin, cout, k=3, **kw):
    return lambda: S.Conv2d(cin, cout, k, padding=kw.pop("padding", k // 2), **kw)


def _no_dropout(name: str) -> Callable[[], nn.Module]:
    relu = functools.partial(nn.ReLU)
    return lambda: build_model({"name": name, "dropout": 0.0}, (1, 28, 28), 10, act_layer=relu)


def cases(batch: int, quick: bool) -> list[Case]:
    b = batch
    conv_cases = [
        Case("Conv2d 3x3 (MNIST 1)", f"{b}x1x28x28->16", _conv(1, 16), _image(b, 1, 28)),
        Case("Conv2d 3x3 (MNIST 2)", f"{b}x16x14x14->32", _conv(16, 32), _image(b, 16, 14)),
        Case("Conv2d 3x3 (MNIST 3)", f"{b}x32x7x7->64", _conv(32, 64), _image(b, 32, 7)),
        Case("Conv2d 3x3 (CIFAR)", f"{b}x3x32x32->32", _conv(3, 32), _image(b, 3, 32)),
        Case("Conv2d 3x3 (CIFAR)", f"{b}x32x32x32->64", _conv(32, 64), _image(b, 32, 32)),
        Case("Conv2d 3x3 (CIFAR)", f"{b}x64x16x16->128", _conv(64, 128), _image(b, 64, 16)),
        Case("Conv2d 3x3 (CIFAR)", f"{b}x128x8x8->256", _conv(128, 256), _image(b, 128, 8)),
        Case("Conv2d 3x3 s2", f"{b}x64x16x16->128", _conv(64, 128, stride=2), _image(b, 64, 16)),
        Case("Conv2d 3x3 depthwise", f"{b}x32x32x32", _conv(32, 32, groups=32), _image(b, 32, 32)),
        Case("Conv2d 1x1 pointwise", f"{b}x32x32x32->64", _conv(32, 64, 1), _image(b, 32, 32)),
        Case("Conv2d 3x3 groups=4", f"{b}x64x16x16->64", _conv(64, 64, groups=4), _image(b, 64, 16)),
    ]
    other_cases = [
        Case("MaxPool2d 2x2", f"{b}x16x28x28", lambda: S.MaxPool2d(2), _image(b, 16, 28)),
        Case("ReLU", f"{b}x16x28x28", S.ReLU, _image(b, 16, 28)),
        Case("Linear", f"{b}x576->128", lambda: S.Linear(576, 128), lambda: torch.randn(b, 576)),
        Case(
            "MultiHeadAttention",
            f"{b}x50x64 h4",
            lambda: S.MultiHeadAttention(64, 4, batch_first=True),
            lambda: torch.randn(b, 50, 64),
            lambda m, x: m(x, x, x, need_weights=False)[0],
        ),
        Case(
            "TransformerEncoderLayer",
            f"{b}x50x64 h4 ff128",
            lambda: S.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True, norm_first=True),
            lambda: torch.randn(b, 50, 64),
        ),
    ]
    model_cases = [
        Case("model scratch_cnn", f"{b}x1x28x28", _no_dropout("scratch_cnn"), _image(b, 1, 28)),
        Case("model scratch_transformer", f"{b}x1x28x28", _no_dropout("scratch_transformer"), _image(b, 1, 28)),
    ]
    if quick:
        return conv_cases[:3] + conv_cases[8:10] + other_cases[:3] + model_cases
    return conv_cases + other_cases + model_cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and repeats (< 1 minute on CPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this text")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    repeats = args.repeats or (5 if args.quick else 20)
    warmup = args.warmup or (2 if args.quick else 5)
    selected = [c for c in cases(args.batch, args.quick) if not args.only or args.only in c.name]
    threads = f"CPU, {torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(
        f"# dsconv.scratch vs torch.nn on {where}; torch {torch.__version__}; fp32; median of {repeats} "
        f"after {warmup} warm-up runs; ms per call; ratio = scratch / nn (lower is better)"
    )
    print("# fwd: forward under no_grad; fwd+bwd: forward with autograd + backward of a fixed output grad")
    how = (
        "torch.cuda.max_memory_allocated above baseline"
        if device.type == "cuda"
        else "torch.profiler CPU-allocator events (oneDNN private scratchpads not counted)"
    )
    print(f"# peak MiB: one fwd+bwd, {how}; nn and scratch timings interleaved per repeat")
    header = [
        "layer/model",
        "shape",
        "nn fwd",
        "scr fwd",
        "ratio",
        "nn f+b",
        "scr f+b",
        "ratio",
        "nn MiB",
        "scr MiB",
        "ratio",
    ]
    rows = []
    for case in selected:
        rows.append(run_case(case, device, warmup, repeats))
        print("  ... " + " | ".join(rows[-1]), flush=True)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    print()
    print("\n".join([lines[0], "-" * len(lines[0]), *lines[1:]]))


if __name__ == "__main__":
    main()
