"""to_separable on arbitrary models and torchvision's ResNet-18, and the registered torchvision twins."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from dsconv.errors import ConfigError
from dsconv.layers import SeparableConv2d, separable_like, to_separable
from dsconv.registry import build_model

torch.set_num_threads(1)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dense_convs(model: nn.Module, min_kernel: int = 2) -> dict[str, nn.Conv2d]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups == 1 and max(m.kernel_size) >= min_kernel
    }


def test_resnet18_every_eligible_conv_replaced_and_report_matches_independent_count():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    eligible = dense_convs(model)
    assert len(eligible) == 17  # the 7x7 stem and sixteen 3x3 convs; 1x1 downsamples are not eligible
    out_sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        conv.register_forward_hook(lambda m, i, o, n=name: out_sizes.__setitem__(n, o.shape[-2:]))
        for name, conv in eligible.items()
    ]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    geometry = {
        n: (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation) for n, c in eligible.items()
    }
    params_before = n_params(model)
    saved_params = saved_macs = 0
    for name, (cin, cout, (kh, kw), *_rest) in geometry.items():
        dense, separable = cout * cin * kh * kw, cin * kh * kw + cin * cout
        saved_params += dense - separable
        saved_macs += out_sizes[name].numel() * (dense - separable)

    report = to_separable(model, input_shape=(3, 32, 32))

    assert report.count == 17 and set(report.replaced) == set(eligible)
    modules = dict(model.named_modules())
    for name, (cin, cout, kernel, stride, padding, dilation) in geometry.items():
        layer = modules[name]
        assert isinstance(layer, SeparableConv2d)
        assert (
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
        ) == (cin, cout, kernel, stride, padding, dilation)
        assert not layer.has_bias  # resnet's convs have none
    leftover = {n for n in dense_convs(model) if not n.endswith(".depthwise")}
    assert not leftover
    assert report.params_before == params_before
    assert report.params_after == n_params(model) == params_before - saved_params
    assert report.macs_before - report.macs_after == saved_macs
    assert report.param_ratio == pytest.approx(report.params_after / params_before)
    assert "replaced 17 conv(s)" in str(report)
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()


def test_min_kernel_size_options_and_untouched_convs():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2, padding_mode="reflect"),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # grouped: already cheaper, left alone
        nn.Conv2d(8, 6, 1),  # already pointwise
    )
    report = to_separable(model, min_kernel_size=4, depth_multiplier=2, norm="batch")
    assert report.replaced == ("0",)
    first = model[0]
    assert isinstance(first, SeparableConv2d) and first.padding_mode == "reflect" and first.has_bias
    assert first.depth_multiplier == 2 and isinstance(first.depthwise_norm, nn.BatchNorm2d)
    assert [type(m) for m in model[1:]] == [nn.Conv2d] * 3
    report = to_separable(model, skip=True)
    assert report.replaced == ("1",) and model[1].skip and not model[1].has_bias
    assert report.macs_before is None and report.mac_ratio is None
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 6, 8, 8)


def test_conversion_is_idempotent_and_keeps_shared_modules_shared():
    shared = nn.Conv2d(1, 1, 3, padding=1)  # in_channels 1: the new depthwise conv has groups == 1
    model = nn.Sequential(shared, nn.ReLU(), shared)
    report = to_separable(model)
    assert report.count == 1 and model[0] is model[2] and isinstance(model[0], SeparableConv2d)
    assert to_separable(model).count == 0


def test_dtype_and_mode_are_preserved():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)).double().eval()
    to_separable(model, norm="batch")
    layer = model[0]
    assert all(p.dtype == torch.float64 for p in layer.parameters()) and not layer.training
    assert layer.depthwise_norm.running_mean.dtype == torch.float64


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_kernel_size"):
        to_separable(nn.Sequential(nn.Conv2d(2, 2, 3)), min_kernel_size=1)
    with pytest.raises(ValueError, match="unknown SeparableConv2d option"):
        to_separable(nn.Sequential(nn.Conv2d(2, 2, 3)), stride=2)
    with pytest.raises(ValueError, match="separable_like"):
        to_separable(nn.Conv2d(2, 2, 3))
    assert isinstance(separable_like(nn.Conv2d(2, 2, 3)), SeparableConv2d)


def _tv(name: str, input_shape=(3, 32, 32), **options) -> nn.Module:
    return build_model({"name": name, **options}, input_shape, 10)


def test_tv_resnet18_cifar_stem_and_twins():
    standard = _tv("tv_resnet18")
    assert standard.conv1.kernel_size == (3, 3) and standard.conv1.stride == (1, 1)
    assert isinstance(standard.maxpool, nn.Identity)
    imagenet = torchvision.models.resnet18(num_classes=10)
    assert n_params(standard) == n_params(imagenet) - (7 * 7 - 3 * 3) * 3 * 64
    separable = _tv("tv_resnet18", conv="separable", conv_options={"skip": True})
    layers = [m for m in separable.modules() if isinstance(m, SeparableConv2d)]
    assert len(layers) == 17 and all(layer.skip for layer in layers)
    assert separable(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_tv_resnet18_hybrid_activation_and_one_channel_input():
    model = build_model(
        {"name": "tv_resnet18", "conv": ["standard", "standard", "separable", "separable", "separable"]},
        (1, 28, 28),
        10,
        act_layer=nn.SiLU,
    )
    assert type(model.conv1) is nn.Conv2d and model.conv1.in_channels == 1
    assert type(model.layer1[0].conv1) is nn.Conv2d and isinstance(model.layer2[0].conv1, SeparableConv2d)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert any(isinstance(m, nn.SiLU) for m in model.modules())
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"conv": "separable", "widht": 2}, r"unknown option model\.widht for model tv_resnet18: accepted .*conv"),
        ({"conv": "depthwise"}, "unknown conv kind"),
        ({"conv": ["standard", "separable"]}, "5 swappable stages"),
        ({"conv": "separable", "conv_options": {"stride": 2}}, r"unknown model\.conv_options \['stride'\]"),
    ],
)
def test_tv_resnet18_rejects_bad_config(options, message):
    with pytest.raises(ConfigError, match=message):
        _tv("tv_resnet18", **options)


def test_tv_mobilenet_v2_twins():
    native = _tv("tv_mobilenet_v2", width_mult=0.25)
    stem = native.features[0][0]
    assert stem.stride == (1, 1) and stem.in_channels == 3
    depthwise = [m for m in native.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    standard = _tv("tv_mobilenet_v2", conv="standard", width_mult=0.25)
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in standard.modules())
    densified = sum(m.out_channels * m.in_channels * 9 - m.in_channels * 9 for m in depthwise)
    assert n_params(standard) - n_params(native) == densified
    separable = _tv(
        "tv_mobilenet_v2", input_shape=(1, 28, 28), conv="separable", width_mult=0.25, conv_options={"norm": "batch"}
    )
    assert isinstance(separable.features[0][0], SeparableConv2d)
    assert separable.features[0][0].in_channels == 1
    assert separable(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"unknown option model\.depth for model tv_mobilenet_v2"):
        _tv("tv_mobilenet_v2", depth=3)
    with pytest.raises(ConfigError, match=r"one model\.conv"):
        _tv("tv_mobilenet_v2", conv="depthwise")


def test_tv_activation_replacement():
    model = build_model({"name": "tv_mobilenet_v2", "width_mult": 0.25}, (3, 32, 32), 10, act_layer=nn.GELU)
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules())
    # stem + first block (1, no expansion) + 16 blocks * 2 + the last 1x1 conv
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 1 + 1 + 16 * 2 + 1
