"""Model options: one signature check in build_model, constructor errors as one line, per-stage keys, stage_count."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dsconv.errors import ConfigError
from dsconv.layers import InvertedResidual, SeparableConv2d, conv_kind_options
from dsconv.models.stages import stage_count
from dsconv.registry import build_model, model_options

torch.set_num_threads(1)
SHAPE = {"mnist_cnn": (1, 28, 28), "cifar_cnn": (3, 32, 32), "densenet4": (3, 32, 32), "mobilenet_small": (3, 32, 32)}


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        (
            "mnist_cnn",
            "conv, channels, kernel_size, depth_multiplier, width, hidden, pool, dropout, pool_first, conv_options",
        ),
        (
            "cifar_cnn",
            "conv, kernel_size, depth_multiplier, width, dropout, fc_dropout, conv_options",
        ),
        (
            "densenet4",
            "conv, kernel_size, depth_multiplier, width, growth_rate, block_layers, bottleneck_width, compression, "
            "stem_channels, dropout, conv_options",
        ),
    ],
)
def test_unknown_option_is_one_line_naming_key_and_accepted_options(name, accepted):
    with pytest.raises(ConfigError) as caught:
        build_model({"name": name, "widht": 2.0}, SHAPE[name], 10)
    message = str(caught.value)
    assert message == f"unknown option model.widht for model {name}: accepted options are {accepted}"
    assert "\n" not in message


def test_act_layer_is_not_a_model_key_but_the_activation_group_reaches_the_model():
    assert "act_layer" not in model_options("mnist_cnn")
    with pytest.raises(ConfigError, match=r"unknown option model\.act_layer for model mnist_cnn"):
        build_model({"name": "mnist_cnn", "act_layer": "relu"}, (1, 28, 28), 10)
    model = build_model({"name": "mnist_cnn", "conv": "inverted_residual"}, (1, 28, 28), 10, act_layer=nn.SiLU)
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules())  # inside the blocks too


def test_match_keys_are_left_to_the_compression_tools():
    # dsconv.compression reads model.match/match_to and sets width; the builder never sees them.
    model = build_model({"name": "mnist_cnn", "match": "macs", "match_to": "mnist_cnn"}, (1, 28, 28), 10)
    assert isinstance(model, nn.Module)


def test_builders_with_bare_kwargs_accept_anything():
    from dsconv.registry import register_model

    register_model("test_kwargs_only_model")(lambda input_shape, num_classes, **_: nn.Flatten())
    assert model_options("test_kwargs_only_model") is None
    assert isinstance(build_model({"name": "test_kwargs_only_model", "anything": 1}, (1, 2, 2), 2), nn.Flatten)
    # a forwarding builder that declares what it forwards is checked like a class
    register_model("test_declared_model", options=("depth",))(lambda input_shape, num_classes, **_: nn.Flatten())
    assert model_options("test_declared_model") == ("depth",)
    with pytest.raises(
        ConfigError, match=r"^unknown option model\.anything for model test_declared_model: accepted options are depth$"
    ):
        build_model({"name": "test_declared_model", "anything": 1}, (1, 2, 2), 2)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {"name": "mnist_cnn", "conv": "separable", "conv_options": {"se_ratio": -1}},
            r"^model mnist_cnn rejected its options \(se_ratio must be > 0, got -1: .*\): "
            r"fix model\.conv_options\.se_ratio$",
        ),
        (
            {"name": "cifar_cnn", "conv": "separable", "conv_options": {"learnable_gain": True}},
            r"^model cifar_cnn rejected its options \(learnable_gain=True needs normalize_weights=True.*\): "
            r"fix model\.conv_options\.learnable_gain$",
        ),
        (
            {"name": "densenet4", "conv": "inverted_residual", "conv_options": {"expand_ratio": 0}},
            r"^model densenet4 rejected its options \(expand_ratio must be > 0.*\): "
            r"fix model\.conv_options\.expand_ratio$",
        ),
    ],
)
def test_constructor_value_errors_become_one_line_config_errors(cfg, message):
    with pytest.raises(ConfigError, match=message) as caught:
        build_model(cfg, SHAPE[cfg["name"]], 10)
    assert "\n" not in str(caught.value) and isinstance(caught.value.__cause__, ValueError)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernel_size": 4}, r"model\.kernel_size=4 is even: .* use odd sizes"),
        ({"kernel_size": [3, 4, 6]}, r"model\.kernel_size=\[3, 4, 6\] has even sizes \[4, 6\]: .* use odd sizes"),
        ({"kernel_size": [3, 5]}, r"model\.kernel_size lists 2 values but this model has 3 swappable stages"),
        ({"kernel_size": 0}, r"model\.kernel_size=0 is not a positive integer"),
        ({"depth_multiplier": 0}, r"model\.depth_multiplier=0 is not a positive integer"),
        ({"width": 0}, r"model\.width=0 must be a finite number > 0"),
        ({"width": float("nan")}, r"model\.width=nan must be a finite number > 0"),
        ({"conv": ["standard", "depthwise", "separable"]}, r"unknown conv kind\(s\) \['depthwise'\]"),
        ({"conv_options": {"skipp": True}}, r"unknown model\.conv_options \['skipp'\]: each conv kind accepts"),
        (
            {"conv": "separable", "depth_multiplier": 2, "conv_options": {"depth_multiplier": 2}},
            "both set: keep model.depth_multiplier",
        ),
    ],
)
def test_per_stage_keys_reject_bad_values_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message):
        build_model({"name": "mnist_cnn", **options}, (1, 28, 28), 10)


def test_kernel_size_and_depth_multiplier_per_stage():
    cfg = {"name": "mnist_cnn", "conv": "separable", "kernel_size": [3, 5, 7], "depth_multiplier": [1, 2, 3]}
    model = build_model(cfg, (1, 28, 28), 10)
    convs = [block[0] for block in model.features]
    assert [c.kernel_size for c in convs] == [(3, 3), (5, 5), (7, 7)]
    assert [c.depth_multiplier for c in convs] == [1, 2, 3]
    # the old spelling still works: conv_options.depth_multiplier reaches every separable stage
    legacy = build_model(
        {"name": "mnist_cnn", "conv": "separable", "conv_options": {"depth_multiplier": 2}}, (1, 28, 28), 10
    )
    assert all(block[0].depth_multiplier == 2 for block in legacy.features)
    ir = build_model({"name": "cifar_cnn", "conv": "inverted_residual", "kernel_size": 5}, (3, 32, 32), 10)
    blocks = [m for m in ir.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 4 and all(b.kernel_size == (5, 5) for b in blocks)
    assert ir(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_conv_options_reach_only_the_kinds_that_take_them():
    assert "skip" in conv_kind_options("separable") and "skip" not in conv_kind_options("inverted_residual")
    assert "expand_ratio" in conv_kind_options("inverted_residual")
    cfg = {
        "name": "mnist_cnn",
        "conv": ["standard", "separable", "inverted_residual"],
        "conv_options": {"skip": True, "expand_ratio": 2, "se_ratio": 0.25},
    }
    first, second, third = (block[0] for block in build_model(cfg, (1, 28, 28), 10).features)
    assert type(first) is nn.Conv2d
    assert isinstance(second, SeparableConv2d) and second.skip and not isinstance(second.se, nn.Identity)
    assert isinstance(third, InvertedResidual) and third.hidden_channels == 2 * 64
    assert not isinstance(third.se, nn.Identity)
    # an all-standard trial of a search may carry options meant for its separable trials
    standard = build_model({**cfg, "conv": "standard"}, (1, 28, 28), 10)
    assert all(type(block[0]) is nn.Conv2d for block in standard.features)


@pytest.mark.parametrize(
    ("cfg", "shape", "count"),
    [
        ({"name": "mnist_cnn"}, (1, 28, 28), 3),
        ({"name": "mnist_cnn", "channels": [8, 16, 32, 64], "conv": ["standard"]}, (1, 28, 28), 4),
        ({"name": "cifar_cnn", "kernel_size": [3, 5]}, (3, 32, 32), 4),
        ({"name": "densenet4", "block_layers": [2, 2, 2]}, (3, 32, 32), 3),
        ({"name": "mobilenet_small"}, (3, 32, 32), 5),
        ({"name": "tv_resnet18"}, (3, 32, 32), 5),
        ({"name": "tv_mobilenet_v2"}, (3, 32, 32), 1),
        ({"name": "scratch_cnn"}, (1, 28, 28), 3),
    ],
)
def test_stage_count_tells_the_length_of_per_stage_lists(cfg, shape, count):
    assert stage_count(cfg, shape, 10) == count
    full = {key: value for key, value in cfg.items() if key != "kernel_size"}
    if cfg["name"] != "tv_mobilenet_v2":
        full["conv"] = ["standard"] * count
    assert build_model(full, shape, 10).num_stages == count


def test_stage_count_of_a_model_without_stages_says_so():
    with pytest.raises(ConfigError, match="scratch_transformer has no swappable stages"):
        stage_count({"name": "scratch_transformer"}, (1, 28, 28), 10)


def test_check_model_raises_what_build_model_would_without_building_weights():
    from dsconv.registry import check_model

    options = {"normalize_weights": True, "skip": True, "depthwise_scale": 1.2}
    check_model({"name": "mnist_cnn", "conv": "separable", "conv_options": options}, (1, 28, 28), 10)
    check_model({"name": "cifar_cnn", "width": 1.5}, (3, 32, 32), 10)
    with pytest.raises(ConfigError, match=r"fix model\.conv_options\.se_ratio$"):
        check_model({"name": "mnist_cnn", "conv": "separable", "conv_options": {"se_ratio": -1}}, (1, 28, 28), 10)
    with pytest.raises(ConfigError, match=r"unknown option model\.widht"):
        check_model({"name": "densenet4", "widht": 2}, (3, 32, 32), 10)


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_mnist_cnn_flatten_head_parameter_count(width):
    channels = [round(c * width) for c in (32, 64, 128)]
    convs, in_ch = 0, 1
    for out_ch in channels:
        convs += in_ch * out_ch * 9 + out_ch + 2 * out_ch  # weights + bias + BN affine
        in_ch = out_ch
    head = (in_ch * 3 * 3) * 64 + 64 + 64 * 10 + 10  # 28 -> 14 -> 7 -> 3 after three 2x2 max-pools
    model = build_model({"name": "mnist_cnn", "pool": "flatten", "width": width}, (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == convs + head
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match="pool"):
        build_model({"name": "mnist_cnn", "pool": "max"}, (1, 28, 28), 10)
