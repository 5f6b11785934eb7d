"""Width multiplier, hybrids and mobilenet_small: exact parameter counts by formula, monotone costs, a MAC match."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from dsconv.errors import ConfigError
from dsconv.layers import InvertedResidual
from dsconv.models.densenet import layer_growths
from dsconv.registry import build_model

torch.set_num_threads(1)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_linear_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of convs and linear layers for one image (the MobileNet paper's convention)."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * per_output
        else:
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for handle in handles:
        handle.remove()
    return total


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def bn(channels: int) -> int:
    return 2 * channels


def ir(cin: int, cout: int, k: int, t: float) -> int:
    """InvertedResidual with batch norm and no conv biases."""
    hidden = round(cin * t)
    expand = cin * hidden + bn(hidden) if t != 1 else 0
    return expand + hidden * k * k + bn(hidden) + hidden * cout + bn(cout)


def stage(kind: str, cin: int, cout: int, k: int = 3, *, bias: bool, norm_after: bool = False) -> int:
    """One conv stage: a bare factory conv (mnist_cnn/densenet) or a conv_norm_act unit (norm_after)."""
    if kind == "standard":
        return cin * cout * k * k + (cout if bias else 0) + (bn(cout) if norm_after else 0)
    if kind == "separable":
        return cin * k * k + cin * cout + (cout if bias else 0) + (bn(cin) + bn(cout) if norm_after else 0)
    return ir(cin, cout, k, 6)


def mnist_cnn_params(kinds, width=1.0, kernels=(3, 3, 3), cin=1, hidden=64, classes=10) -> int:
    total = 0
    for kind, base, k in zip(kinds, (32, 64, 128), kernels):
        cout = scaled(base, width)
        total += stage(kind, cin, cout, k, bias=kind != "inverted_residual") + bn(cout)
        cin = cout
    return total + cin * hidden + hidden + hidden * classes + classes


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 1.37, 2.0])
@pytest.mark.parametrize(
    "kinds",
    [("standard",) * 3, ("separable",) * 3, ("standard", "separable", "inverted_residual")],
)
def test_mnist_cnn_width_and_hybrids_exact(width, kinds):
    model = build_model({"name": "mnist_cnn", "conv": list(kinds), "width": width}, (1, 28, 28), 10)
    assert n_params(model) == mnist_cnn_params(kinds, width)


def test_mnist_cnn_exact_values_pin_the_formula():
    # Independent of the formula above: the README's numbers and one widened hybrid by hand.
    assert mnist_cnn_params(("standard",) * 3) == 102_026
    assert mnist_cnn_params(("separable",) * 3) == 20_723
    model = build_model(
        {"name": "mnist_cnn", "conv": ["standard", "separable", "separable"], "width": 0.5}, (1, 28, 28), 10
    )
    # 1->16 dense 3x3 (+bias, BN); 16->32 and 32->64 separable (+pw bias, BN); head 64->64->10
    by_hand = (9 * 16 + 16 + 32) + (16 * 9 + 16 * 32 + 32 + 64) + (32 * 9 + 32 * 64 + 64 + 128) + 64 * 64 + 64 + 650
    assert n_params(model) == by_hand == 8_282
    kernels = build_model({"name": "mnist_cnn", "kernel_size": [3, 5, 7]}, (1, 28, 28), 10)
    assert n_params(kernels) == mnist_cnn_params(("standard",) * 3, kernels=(3, 5, 7))


def cifar_cnn_params(kinds, width, hw=32, classes=10) -> int:
    convs = [(32, True, True), (64, True, True), (128, True, True), (128, False, False), (256, True, True)]
    convs.append((256, False, False))
    kinds = iter(kinds)
    total, cin = 0, 3
    for base, has_bn, swappable in convs:
        cout = scaled(base, width)
        kind = next(kinds) if swappable else "standard"
        if kind == "standard":
            total += cin * cout * 9 + cout + (bn(cout) if has_bn else 0)  # the seed keeps conv biases
        else:
            total += stage(kind, cin, cout, bias=False, norm_after=True)
        cin = cout
    flat = cin * (hw // 4) ** 2
    return total + flat * 1024 + 1024 + 1024 * 512 + 512 + 512 * classes + classes


@pytest.mark.parametrize("width", [0.5, 1.0, 1.21])
@pytest.mark.parametrize(
    "kinds", [("standard",) * 4, ("separable",) * 4, ("standard", "separable", "inverted_residual", "separable")]
)
def test_cifar_cnn_width_and_hybrids_exact(width, kinds):
    model = build_model({"name": "cifar_cnn", "conv": list(kinds), "width": width}, (3, 32, 32), 10)
    assert n_params(model) == cifar_cnn_params(kinds, width)
    if width == 1.0 and kinds[0] == kinds[1]:
        assert n_params(model) == {"standard": 18_435_210, "separable": 18_092_395}[kinds[0]]


def densenet4_params(kind: str, width: float, growth=16, layers=(4, 6, 8, 6), classes=10) -> int:
    mid = scaled(4 * growth, width)
    channels = scaled(2 * growth, width)
    total = 3 * channels * 9
    for b, n in enumerate(layers):
        for g in layer_growths(n, growth, width):
            total += bn(channels) + channels * mid + bn(mid)
            total += stage(kind, mid, g, bias=False)
            channels += g
        if b < len(layers) - 1:
            reduced = int(channels * 0.5)
            total += bn(channels) + channels * reduced
            channels = reduced
    return total + bn(channels) + channels * classes + classes


def test_layer_growths_spread_a_fractional_rate():
    assert layer_growths(4, 16, 1.0) == [16, 16, 16, 16]
    assert layer_growths(4, 16, 1.3) == [21, 21, 20, 21]  # 20.8 per layer: round(20.8 * i) differences
    assert sum(layer_growths(8, 16, 1.3)) == round(8 * 16 * 1.3)


@pytest.mark.parametrize(("kind", "width"), [("standard", 1.0), ("separable", 1.0), ("separable", 1.3)])
def test_densenet4_width_exact(kind, width):
    model = build_model({"name": "densenet4", "conv": kind, "width": width}, (3, 32, 32), 10)
    assert n_params(model) == densenet4_params(kind, width)
    if width == 1.0:
        assert n_params(model) == {"standard": 435_994, "separable": 253_210}[kind]


def mobilenet_small_params(width=1.0, kind="inverted_residual", cin=3, classes=10) -> int:
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 1, 1)]
    stem = scaled(32, width)
    total = cin * stem * 9 + bn(stem)
    cin = stem
    for t, c, n, _ in setting:
        cout = scaled(c, width)
        for _ in range(n):
            total += (
                ir(cin, cout, 3, t)
                if kind == "inverted_residual"
                else stage(kind, cin, cout, bias=False, norm_after=True)
            )
            cin = cout
    last = scaled(256, width)
    return total + cin * last + bn(last) + last * classes + classes


@pytest.mark.parametrize(
    ("kind", "width"), [("inverted_residual", 1.0), ("inverted_residual", 0.6), ("separable", 1.0)]
)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_mobilenet_small_exact_params_and_forward(kind, width, shape):
    model = build_model({"name": "mobilenet_small", "conv": kind, "width": width}, shape, 10)
    assert n_params(model) == mobilenet_small_params(width, kind, cin=shape[0])
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10) and out.isfinite().all()
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == (9 if kind == "inverted_residual" else 0)
    # residuals exactly where stride 1 and channels match: the 2nd of 24, 2nd/3rd of 32, 2nd of 64
    assert sum(b.use_residual for b in blocks) == (4 if blocks else 0)


def test_mobilenet_small_pinned_size_and_bad_setting():
    assert mobilenet_small_params() == 225_098
    assert n_params(build_model({"name": "mobilenet_small"}, (3, 32, 32), 10)) == 225_098
    with pytest.raises(ConfigError, match=r"model\.setting row \[6, 24, 0, 2\] is not"):
        build_model({"name": "mobilenet_small", "setting": [[6, 24, 0, 2]]}, (3, 32, 32), 10)
    small = build_model({"name": "mobilenet_small", "setting": [[1, 8, 1, 1], [4, 16, 2, 2]]}, (1, 28, 28), 10)
    assert small.num_stages == 2 and small(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_tv_mobilenet_v2_blocks_are_the_package_block_with_torchvision_size():
    from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionBlock

    model = build_model({"name": "tv_mobilenet_v2"}, (3, 32, 32), 10)
    assert not any(isinstance(m, TorchvisionBlock) for m in model.modules())
    assert sum(isinstance(m, InvertedResidual) for m in model.modules()) == 17
    assert n_params(model) == n_params(torchvision.models.mobilenet_v2(num_classes=10)) == 2_236_682
    se = build_model(
        {"name": "tv_mobilenet_v2", "width_mult": 0.25, "conv_options": {"se_ratio": 0.25}}, (3, 32, 32), 10
    )
    assert all(not isinstance(b.se, nn.Identity) for b in se.modules() if isinstance(b, InvertedResidual))


def test_tv_resnet18_convs_come_from_the_factory():
    model = build_model({"name": "tv_resnet18", "conv": ["standard"] * 4 + ["inverted_residual"]}, (3, 32, 32), 10)
    assert sum(isinstance(m, InvertedResidual) for m in model.layer4.modules()) == 4
    assert not any(isinstance(m, InvertedResidual) for m in model.layer3.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


FAMILIES = [
    ("mnist_cnn", "separable", (1, 28, 28)),
    ("cifar_cnn", "separable", (3, 32, 32)),
    ("densenet4", "separable", (3, 32, 32)),
    ("mobilenet_small", "inverted_residual", (3, 32, 32)),
]


@pytest.mark.parametrize(("name", "kind", "shape"), FAMILIES)
def test_width_is_monotone_in_params(name, kind, shape):
    counts = [
        n_params(build_model({"name": name, "conv": kind, "width": w}, shape, 10)) for w in (0.5, 0.8, 1, 1.3, 1.6)
    ]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


@pytest.mark.parametrize(("name", "shape"), [("mnist_cnn", (1, 28, 28)), ("densenet4", (3, 32, 32))])
def test_bisection_on_width_matches_the_standard_macs_within_two_percent(name, shape):
    target = conv_linear_macs(build_model({"name": name, "conv": "standard"}, shape, 10), shape)
    low, high = 1.0, 4.0
    for _ in range(14):
        mid = (low + high) / 2
        macs = conv_linear_macs(build_model({"name": name, "conv": "separable", "width": mid}, shape, 10), shape)
        low, high = (mid, high) if macs < target else (low, mid)
    widths = (low, high)
    best = min(
        (
            conv_linear_macs(build_model({"name": name, "conv": "separable", "width": w}, shape, 10), shape)
            for w in widths
        ),
        key=lambda m: abs(m - target),
    )
    assert abs(best - target) / target < 0.02
