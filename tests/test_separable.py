"""SeparableConv2d: exact parameter counts, the dense-kernel identity, options, gradients, MACs, state."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import count_macs
from dsconv.layers import SeparableConv2d, conv_norm_act, make_conv
from dsconv.layers.activations import activation_names

torch.set_num_threads(1)


def expected_params(
    cin,
    cout,
    k,
    *,
    stride=1,
    depth_multiplier=1,
    bias=True,
    norm=None,
    depthwise_scale=None,
    learnable_scale=False,
    normalize_weights=False,
    learnable_gain=False,
    skip=False,
    se_ratio=None,
):
    mid = cin * depth_multiplier
    total = mid * k * k + mid * cout + (cout if bias else 0)
    if norm:
        total += 2 * mid + 2 * cout  # gamma and beta per channel, after each stage
    if learnable_scale:
        total += 1
    if learnable_gain:
        total += mid + cout  # one gain per depthwise and per pointwise filter
    if se_ratio:
        hidden = max(1, round(mid * se_ratio))
        total += mid * hidden + hidden + hidden * mid + mid
    if skip and (cin != cout or stride != 1):
        total += cin * cout + (2 * cout if norm else cout)  # 1x1 projection: norm, or a bias without norm
    return total


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_for_every_option_combination():
    grid = itertools.product(
        # (in, out, stride, kernel): identity and projection skips, several kernel sizes
        [(4, 4, 1, 3), (4, 6, 1, 5), (4, 4, 2, 7), (3, 8, 2, 3)],
        [1, 2],  # depth_multiplier
        [True, False],  # bias
        [None, "batch"],  # norm
        [(None, False), (1.5, False), (0.5, True)],  # depthwise_scale, learnable_scale
        [(False, False), (True, False), (True, True)],  # normalize_weights, learnable_gain
        [False, True],  # skip
        [None, 0.5],  # se_ratio
    )
    checked = 0
    for (cin, cout, stride, k), dm, bias, norm, (scale, learn), (nw, gain), skip, se in grid:
        options = dict(
            depth_multiplier=dm,
            norm=norm,
            depthwise_scale=scale,
            learnable_scale=learn,
            normalize_weights=nw,
            learnable_gain=gain,
            skip=skip,
            se_ratio=se,
        )
        layer = SeparableConv2d(cin, cout, k, stride, k // 2, bias=bias, **options)
        expected = expected_params(cin, cout, k, stride=stride, bias=bias, **options)
        assert n_params(layer) == expected, (cin, cout, stride, k, bias, options)
        checked += 1
    assert checked == 4 * 2 * 2 * 2 * 3 * 3 * 2 * 2


def test_learnable_scale_alone_starts_at_one():
    layer = SeparableConv2d(2, 3, 3, learnable_scale=True)
    assert isinstance(layer.depthwise_scale.scale, nn.Parameter)
    assert float(layer.depthwise_scale.scale.detach()) == 1.0
    assert n_params(layer) == expected_params(2, 3, 3, learnable_scale=True)


def dense_kernel(layer: SeparableConv2d) -> torch.Tensor:
    """W[o, i] = sum_j P[o, i*m + j] * D[i*m + j]: the dense kernel a plain separable conv computes."""
    depthwise = layer.depthwise.weight[:, 0]  # (in*m, kh, kw)
    pointwise = layer.pointwise.weight[:, :, 0, 0]  # (out, in*m)
    cin, m = layer.in_channels, layer.depth_multiplier
    per_mid = pointwise[:, :, None, None] * depthwise[None]  # (out, in*m, kh, kw)
    return per_mid.view(layer.out_channels, cin, m, *depthwise.shape[-2:]).sum(dim=2)


GEOMETRIES = [
    # kernel, stride, padding, dilation, padding_mode
    (3, 1, 0, 1, "zeros"),
    (3, 2, 1, 1, "zeros"),
    (3, 1, "same", 2, "zeros"),
    (5, 1, 2, 1, "reflect"),
    (5, 2, (1, 2), 2, "zeros"),
    (7, 1, 3, 1, "circular"),
    (7, 3, "valid", 1, "zeros"),
    ((3, 5), (2, 1), (1, 2), 1, "replicate"),
    (4, 1, "same", 1, "zeros"),  # even kernel: nn.Conv2d pads asymmetrically, so must we
]


@pytest.mark.parametrize("depth_multiplier", [1, 3])
@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation", "padding_mode"), GEOMETRIES)
def test_equals_dense_conv_with_factored_kernel(kernel, stride, padding, dilation, padding_mode, depth_multiplier):
    torch.manual_seed(0)
    cin, cout = 3, 4
    layer = SeparableConv2d(
        cin, cout, kernel, stride, padding, dilation, padding_mode=padding_mode, depth_multiplier=depth_multiplier
    ).double()
    dense = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, padding_mode=padding_mode).double()
    with torch.no_grad():
        dense.weight.copy_(dense_kernel(layer))
        dense.bias.copy_(layer.pointwise.bias)
    x = torch.randn(2, cin, 13, 12, dtype=torch.float64)
    out = layer(x)
    assert out.shape == dense(x).shape
    torch.testing.assert_close(out, dense(x), rtol=1e-12, atol=1e-12)


def test_drop_in_attributes_mirror_conv2d():
    layer = SeparableConv2d(3, 5, 5, 2, 4, 2, bias=False, padding_mode="reflect", depth_multiplier=2)
    conv = nn.Conv2d(3, 5, 5, 2, 4, 2, bias=False, padding_mode="reflect")
    names = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "padding_mode")
    for name in names:
        assert getattr(layer, name) == getattr(conv, name), name
    assert (layer.mid_channels, layer.depth_multiplier, layer.has_bias) == (6, 2, False)
    assert layer.depthwise.groups == 3 and layer.depthwise.bias is None
    assert type(layer.depthwise) is nn.Conv2d and type(layer.pointwise) is nn.Conv2d


def test_activations_are_independent_and_in_the_right_place():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    dw_only = SeparableConv2d(3, 4, 3, padding=1, depthwise_activation="relu")
    assert isinstance(dw_only.depthwise_act, nn.ReLU) and isinstance(dw_only.pointwise_act, nn.Identity)
    torch.testing.assert_close(dw_only(x), dw_only.pointwise(F.relu(dw_only.depthwise(x))))
    pw_only = SeparableConv2d(3, 4, 3, padding=1, pointwise_activation=nn.Tanh)
    assert isinstance(pw_only.depthwise_act, nn.Identity)
    torch.testing.assert_close(pw_only(x), torch.tanh(pw_only.pointwise(pw_only.depthwise(x))))
    for name in activation_names():  # every member of the activation group is accepted on both stages
        SeparableConv2d(3, 4, 3, depthwise_activation=name, pointwise_activation=name)
    with pytest.raises(ConfigError, match="unknown activation"):
        SeparableConv2d(3, 4, 3, depthwise_activation="relu7")


def test_norm_and_scale_order():
    torch.manual_seed(0)
    layer = SeparableConv2d(3, 4, 3, padding=1, norm="bn", depthwise_scale=1.2, depthwise_activation="relu")
    assert isinstance(layer.depthwise_norm, nn.BatchNorm2d)
    assert isinstance(layer.pointwise_norm, nn.BatchNorm2d)
    layer.eval()
    with torch.no_grad():
        for bn in (layer.depthwise_norm, layer.pointwise_norm):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 5, 5)
    mid = F.relu(1.2 * layer.depthwise_norm(layer.depthwise(x)))
    torch.testing.assert_close(layer(x), layer.pointwise_norm(layer.pointwise(mid)))


def _unit_norms(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.flatten(1).norm(dim=1)


def test_normalize_weights_keeps_unit_filters_after_an_optimizer_step():
    torch.manual_seed(0)
    layer = SeparableConv2d(3, 5, 3, padding=1, depth_multiplier=2, normalize_weights=True)
    raw = layer.depthwise.parametrizations.weight.original
    with torch.no_grad():
        raw.mul_(7.0)  # far from unit norm: only the parametrization brings it back
        raw[0].zero_()  # a dead filter must not produce NaN gradients
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(4, 3, 6, 6)).pow(2).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
        optimizer.step()
    torch.testing.assert_close(_unit_norms(layer.depthwise)[1:], torch.ones(5))
    torch.testing.assert_close(_unit_norms(layer.pointwise), torch.ones(5))
    assert layer.depthwise.weight.shape == (6, 1, 3, 3) and layer.pointwise.weight.shape == (5, 6, 1, 1)


def test_learnable_gain_sets_filter_norms():
    torch.manual_seed(0)
    layer = SeparableConv2d(2, 3, 3, padding=1, normalize_weights=True, learnable_gain=True)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(torch.randn(2, 2, 5, 5)).sum().backward()
    optimizer.step()
    for conv in (layer.depthwise, layer.pointwise):
        gain = conv.parametrizations.weight[0].gain
        assert not torch.allclose(gain, torch.ones_like(gain))  # the step moved it
        torch.testing.assert_close(_unit_norms(conv), gain.detach().abs())


def test_identity_skip_adds_the_input():
    torch.manual_seed(0)
    layer = SeparableConv2d(4, 4, 3, padding=1, skip=True, pointwise_activation="relu")
    assert isinstance(layer.shortcut, nn.Identity)
    x = torch.randn(2, 4, 7, 7)
    branch = copy.deepcopy(layer)
    branch.shortcut = None
    torch.testing.assert_close(layer(x), branch(x) + x)
    with torch.no_grad():
        layer.pointwise.weight.zero_()
        layer.pointwise.bias.zero_()
    torch.testing.assert_close(layer(x), x)  # relu(0) + x


@pytest.mark.parametrize(("cin", "cout", "stride", "norm"), [(4, 6, 1, None), (4, 4, 2, None), (3, 5, 2, "batch")])
def test_projection_skip_adds_a_strided_1x1_projection(cin, cout, stride, norm):
    torch.manual_seed(0)
    layer = SeparableConv2d(cin, cout, 3, stride, padding=1, skip=True, norm=norm).eval()
    projection, projection_norm = layer.shortcut[0], layer.shortcut[1]
    assert projection.kernel_size == (1, 1) and projection.stride == (stride, stride)
    assert (projection.bias is None) == (norm is not None)
    x = torch.randn(2, cin, 7, 7)  # odd size: strided branch and projection must still line up
    branch = copy.deepcopy(layer)
    branch.shortcut = None
    projected = projection_norm(F.conv2d(x, projection.weight, projection.bias, stride))
    torch.testing.assert_close(layer(x), branch(x) + projected)
    with torch.no_grad():  # zero the branch's last stage: only the projection is left
        zeroed = copy.deepcopy(layer)
        zeroed.pointwise.weight.zero_()
        zeroed.pointwise.bias.zero_()
        if norm:
            zeroed.pointwise_norm.weight.zero_()
    torch.testing.assert_close(zeroed(x), projected)
    with torch.no_grad():  # zero the projection: only the branch is left
        projection.weight.zero_()
        if projection.bias is not None:
            projection.bias.zero_()
    torch.testing.assert_close(layer(x), branch(x))


GRADCHECK_OPTIONS = [
    {},
    {"depth_multiplier": 2},
    {"bias": False},
    {"norm": "batch"},
    {"depthwise_scale": 1.3},
    {"depthwise_scale": 0.7, "learnable_scale": True},
    {"normalize_weights": True},
    {"normalize_weights": True, "learnable_gain": True},
    {"depthwise_activation": "silu", "pointwise_activation": "gelu"},
    {"skip": True},
    {"skip": True, "out_channels": 3},
    {"skip": True, "stride": 2, "norm": "batch"},
    {"se_ratio": 0.5},
    {"padding_mode": "reflect", "dilation": 2, "padding": 2},
    {
        "depth_multiplier": 2,
        "norm": "batch",
        "depthwise_scale": 1.1,
        "learnable_scale": True,
        "normalize_weights": True,
        "learnable_gain": True,
        "depthwise_activation": "silu",
        "pointwise_activation": "tanh",
        "skip": True,
        "se_ratio": 0.5,
    },
]


@pytest.mark.parametrize("options", GRADCHECK_OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_gradcheck_inputs_and_parameters(options):
    torch.manual_seed(0)
    options = dict(options)
    geometry_keys = ("stride", "padding", "dilation", "padding_mode")
    geometry = {key: options.pop(key) for key in geometry_keys if key in options}
    geometry.setdefault("padding", 1)
    layer = SeparableConv2d(2, options.pop("out_channels", 2), 3, **geometry, **options).double()
    names = [name for name, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)

    def run(x, *values):
        return functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "dilation", "dm", "skip", "size"),
    [
        (3, 8, 3, 1, 1, 1, False, 9),
        (4, 6, 5, 2, 1, 2, False, 11),
        (4, 4, 7, 1, 2, 1, True, 16),  # identity skip: no extra MACs
        (3, 5, 3, 2, 1, 3, True, 9),  # projection skip
    ],
)
def test_fvcore_macs_match_the_formula(cin, cout, k, stride, dilation, dm, skip, size):
    padding = dilation * (k - 1) // 2
    layer = SeparableConv2d(cin, cout, k, stride, padding, dilation, depth_multiplier=dm, skip=skip)
    out = (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    expected = out * out * (cin * dm * k * k + cin * dm * cout)
    if skip and (cin != cout or stride != 1):
        expected += out * out * cin * cout
    assert count_macs(layer, (cin, size, size)) == expected


def test_state_dict_round_trip_with_every_option():
    torch.manual_seed(0)
    options = dict(
        depth_multiplier=2,
        norm="batch",
        depthwise_scale=0.8,
        learnable_scale=True,
        normalize_weights=True,
        learnable_gain=True,
        skip=True,
        se_ratio=0.5,
        depthwise_activation="relu",
        pointwise_activation="relu",
    )
    source = SeparableConv2d(3, 4, 3, 2, 1, **options)
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1)
    for _ in range(2):  # move weights, gains, scale and BN statistics away from their initial values
        optimizer.zero_grad()
        source(torch.randn(4, 3, 8, 8)).sum().backward()
        optimizer.step()
    target = SeparableConv2d(3, 4, 3, 2, 1, **options)
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(target.eval()(x), source.eval()(x), rtol=0, atol=0)
    assert "depthwise.parametrizations.weight.original" in source.state_dict()


def test_extra_repr_is_readable():
    text = repr(
        SeparableConv2d(
            4, 8, 3, 2, 1, bias=False, depth_multiplier=2, normalize_weights=True, skip=True, depthwise_scale=1.2
        )
    )
    first = text.splitlines()[1]
    for piece in (
        "4, 8, kernel_size=(3, 3)",
        "stride=(2, 2)",
        "padding=(1, 1)",
        "bias=False",
        "depth_multiplier=2",
        "normalize_weights=True",
        "skip=projection",
    ):
        assert piece in first, piece
    assert "Scale(1.2, learnable=False)" in text
    assert "skip=identity" in repr(SeparableConv2d(4, 4, 3, padding="same", skip=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(depth_multiplier=0), "depth_multiplier"),
        (dict(depth_multiplier=1.5), "depth_multiplier"),
        (dict(learnable_gain=True), "normalize_weights"),
        (dict(skip=True, padding=0), "skip=True needs a padding"),
        (dict(skip=True, padding="valid"), "skip=True needs a padding"),
        (dict(se_ratio=-0.5), "se_ratio"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SeparableConv2d(4, 4, 3, **kwargs)


def test_bad_channels_raise():
    with pytest.raises(ValueError, match="channels"):
        SeparableConv2d(0, 4, 3)


def test_factory_builds_separable_layers_with_options():
    layer = make_conv("separable", 4, 6, 5, 2, skip=True, depth_multiplier=2)
    assert isinstance(layer, SeparableConv2d)
    geometry = (layer.kernel_size, layer.stride, layer.padding, layer.depth_multiplier)
    assert geometry == ((5, 5), (2, 2), (2, 2), 2)
    assert isinstance(layer.shortcut, nn.Sequential)
    with pytest.raises(ConfigError, match="separable convs only"):
        make_conv("standard", 4, 6, 3, skip=True)
    unit = conv_norm_act("separable", 4, 6, 3, act_layer=nn.SiLU)
    assert not unit.has_bias and isinstance(unit.depthwise_norm, nn.BatchNorm2d)
    assert isinstance(unit.depthwise_act, nn.SiLU) and isinstance(unit.pointwise_act, nn.SiLU)
