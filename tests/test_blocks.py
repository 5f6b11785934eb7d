"""Inverted residual block, the conv factory across models and configs, and export of every block."""

from __future__ import annotations

import io
import itertools
import warnings

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import count_macs
from dsconv.layers import InvertedResidual, SeparableConv2d, conv_kinds, conv_norm_act, make_conv
from dsconv.paths import CONF_DIR
from dsconv.registry import build_model

torch.set_num_threads(1)
MODEL_CONF = CONF_DIR / "model"


def ir_params(cin, cout, k, *, expand_ratio=6, se_ratio=None, norm="batch", bias=None):
    hidden = round(cin * expand_ratio)
    conv_bias = (norm is None) if bias is None else bias
    per_conv = lambda ch: (ch if conv_bias else 0) + (2 * ch if norm else 0)  # noqa: E731
    total = 0
    if expand_ratio != 1:
        total += cin * hidden + per_conv(hidden)
    total += hidden * k * k + per_conv(hidden)
    if se_ratio:
        reduced = max(1, round(hidden * se_ratio))
        total += 2 * hidden * reduced + reduced + hidden
    return total + hidden * cout + per_conv(cout)


def test_inverted_residual_parameter_counts():
    grid = itertools.product(
        [(8, 8, 1, 3), (8, 12, 2, 5), (6, 6, 2, 3), (4, 4, 1, 7)],  # in, out, stride, kernel
        [1, 6, 2.5],  # expand_ratio (1: no expansion conv)
        [None, 0.25],  # se_ratio
        ["batch", None],  # norm
        [None, True, False],  # bias (None: only where no norm follows)
    )
    for (cin, cout, stride, k), expand, se, norm, bias in grid:
        block = InvertedResidual(cin, cout, k, stride, expand_ratio=expand, se_ratio=se, norm=norm, bias=bias)
        expected = ir_params(cin, cout, k, expand_ratio=expand, se_ratio=se, norm=norm, bias=bias)
        case = (cin, cout, stride, k, expand, se, norm, bias)
        assert sum(p.numel() for p in block.parameters()) == expected, case


def test_inverted_residual_structure_and_residual():
    torch.manual_seed(0)
    block = InvertedResidual(8, 8, 3, 1, expand_ratio=4).eval()
    assert block.use_residual and block.hidden_channels == 32
    assert block.depthwise.groups == 32 and block.depthwise.kernel_size == (3, 3)
    assert isinstance(block.depthwise_act, nn.ReLU6)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        block.project_norm.weight.zero_()  # zero the projection's output: only the residual is left
    torch.testing.assert_close(block(x), x)
    no_expand = InvertedResidual(8, 8, 3, 1, expand_ratio=1)
    assert isinstance(no_expand.expand, nn.Identity) and no_expand.hidden_channels == 8
    for cin, cout, stride in [(8, 12, 1), (8, 8, 2)]:
        down = InvertedResidual(cin, cout, 3, stride)
        assert not down.use_residual
        side = (7 - 1) // stride + 1
        assert down(torch.randn(1, cin, 7, 7)).shape == (1, cout, side, side)


def test_linear_bottleneck_has_no_final_activation():
    torch.manual_seed(0)
    block = InvertedResidual(4, 6, 3, 1, act_layer=nn.ReLU).eval()
    out = block(torch.randn(4, 4, 5, 5))
    assert out.min() < 0  # a ReLU after the projection could never give negative values
    x = torch.randn(1, 4, 5, 5)
    manual = block.project_norm(
        block.project(block.depthwise_act(block.depthwise_norm(block.depthwise(block.expand(x)))))
    )
    torch.testing.assert_close(block(x), manual)


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "expand", "size"),
    [
        (4, 4, 3, 1, 6, 8),
        (4, 8, 5, 2, 3, 9),
        (6, 6, 3, 1, 1, 7),
    ],
)
def test_inverted_residual_macs_match_the_formula(cin, cout, k, stride, expand, size):
    block = InvertedResidual(cin, cout, k, stride, expand_ratio=expand, norm=None)
    hidden = cin * expand
    out = (size - 1) // stride + 1
    expected = (size * size * cin * hidden if expand != 1 else 0) + out * out * hidden * (k * k + cout)
    assert count_macs(block, (cin, size, size)) == expected


def test_inverted_residual_bad_arguments():
    with pytest.raises(ValueError, match="expand_ratio"):
        InvertedResidual(4, 4, 3, expand_ratio=0)
    with pytest.raises(ValueError, match="padding must keep the size"):
        InvertedResidual(4, 4, 4)  # an even kernel cannot keep the size for the residual
    with pytest.raises(ValueError, match="padding must keep the size"):
        InvertedResidual(4, 4, 3, padding=0)
    with pytest.raises(ValueError, match="se_ratio"):
        InvertedResidual(4, 4, 3, se_ratio=-1)


def test_factory_builds_inverted_residuals():
    assert {"standard", "separable", "inverted_residual"} <= set(conv_kinds())
    block = make_conv("inverted_residual", 8, 8, 3, 1, expand_ratio=2, se_ratio=0.25, bias=False)
    assert isinstance(block, InvertedResidual) and block.use_residual
    assert block.se.reduce.out_channels == 4  # 16 hidden channels * 0.25
    with pytest.raises(ConfigError, match="do not apply to inverted_residual"):
        make_conv("inverted_residual", 8, 8, 3, skip=True)
    unit = conv_norm_act("inverted_residual", 8, 16, 3, 2, norm_layer=None, act_layer=nn.SiLU)
    assert isinstance(unit, InvertedResidual)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in unit.modules())
    assert isinstance(unit.depthwise_act, nn.SiLU) and unit.project.bias is not None


def load_model_cfg(name: str):
    """A conf/model file with its ``defaults`` merged, as Hydra composes it (without Hydra)."""
    raw = OmegaConf.load(MODEL_CONF / f"{name}.yaml")
    defaults = list(raw.pop("defaults", ["_self_"]))
    merged = OmegaConf.create()
    for entry in defaults if "_self_" in defaults else [*defaults, "_self_"]:
        merged = OmegaConf.merge(merged, raw if entry == "_self_" else load_model_cfg(entry))
    return merged


def _convs(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_one_config_key_switches_every_conv_of_mnist_cnn():
    standard = build_model(load_model_cfg("mnist_cnn"), (1, 28, 28), 10)
    separable = build_model(load_model_cfg("mnist_cnn_separable"), (1, 28, 28), 10)
    assert len(_convs(separable, SeparableConv2d)) == 3 and not _convs(standard, SeparableConv2d)
    # Only the three k x k convs change: 1*32*9 -> 1*9 + 1*32, 32*64*9 -> 32*9 + 32*64, 64*128*9 -> ...
    saved = sum(cin * cout * 9 - (cin * 9 + cin * cout) for cin, cout in [(1, 32), (32, 64), (64, 128)])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(standard) - count(separable) == saved
    inverted = build_model({**load_model_cfg("mnist_cnn"), "conv": "inverted_residual"}, (1, 28, 28), 10)
    assert len(_convs(inverted, InvertedResidual)) == 3
    assert inverted(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_separable_options_config_reaches_every_separable_conv():
    model = build_model(load_model_cfg("mnist_cnn_separable_options"), (1, 28, 28), 10)
    layers = _convs(model, SeparableConv2d)
    assert len(layers) == 3
    for layer in layers:
        assert layer.normalize_weights and layer.skip and isinstance(layer.shortcut, nn.Sequential)
        assert isinstance(layer.depthwise_act, nn.ReLU) and isinstance(layer.pointwise_act, nn.ReLU)
        assert float(layer.depthwise_scale.scale) == pytest.approx(1.2)
        assert not layer.depthwise_scale.learnable
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_hybrid_stages_and_densenet_twin():
    cfg = {**load_model_cfg("mnist_cnn"), "conv": ["standard", "separable", "inverted_residual"]}
    model = build_model(cfg, (1, 28, 28), 10)
    first, second, third = (block[0] for block in model.features)
    assert type(first) is nn.Conv2d and isinstance(second, SeparableConv2d)
    assert isinstance(third, InvertedResidual)
    standard = build_model(load_model_cfg("densenet4_standard"), (3, 32, 32), 10)
    separable = build_model(load_model_cfg("densenet4"), (3, 32, 32), 10)
    assert load_model_cfg("densenet4_standard").conv == "standard"
    assert not _convs(standard, SeparableConv2d)
    assert len(_convs(separable, SeparableConv2d)) == sum(load_model_cfg("densenet4").block_layers)


def _example_blocks() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    separable = SeparableConv2d(
        3,
        8,
        3,
        2,
        1,
        bias=False,
        depth_multiplier=2,
        norm="batch",
        depthwise_activation="relu",
        pointwise_activation="silu",
        depthwise_scale=1.2,
        learnable_scale=True,
        normalize_weights=True,
        learnable_gain=True,
        skip=True,
        se_ratio=0.25,
    )
    inverted = nn.Sequential(InvertedResidual(3, 8, 3, 2, expand_ratio=4), InvertedResidual(8, 8, 5, 1, se_ratio=0.25))
    models = {}
    for name, block in [("separable", separable), ("inverted_residual", inverted)]:
        model = nn.Sequential(block, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
        model.train()
        with torch.no_grad():
            for _ in range(3):  # non-trivial BN running statistics
                model(torch.randn(8, 3, 12, 12))
        models[name] = model.eval()
    return models


@pytest.mark.parametrize("name", ["separable", "inverted_residual"])
def test_jit_trace_and_state_dict_match_eager(name):
    model = _example_blocks()[name]
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x))
        assert traced(torch.randn(3, 3, 10, 10)).shape == (3, 5)
    rebuilt = _example_blocks()[name]
    for p in rebuilt.parameters():
        p.data.normal_()
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["separable", "inverted_residual"])
def test_onnx_export_matches_eager(name):
    ort = pytest.importorskip("onnxruntime")
    model = _example_blocks()[name]
    x = torch.randn(2, 3, 12, 12)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # dynamo=False: the TorchScript exporter needs no onnxscript.
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"], output_names=["y"])
        session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"x": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-4, atol=1e-5)


def _compile_and_compare(backend: str) -> None:
    model = nn.ModuleDict(_example_blocks())
    x = torch.randn(2, 3, 12, 12)

    def both(x):
        return model["separable"](x) + model["inverted_residual"](x)

    compiled = torch.compile(both, backend=backend, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), both(x), rtol=1e-4, atol=1e-5)


def test_torch_compile_matches_eager():
    # aot_eager runs dynamo and AOTAutograd (where modules break: graph breaks, parametrizations)
    # without inductor's C++ build, which takes ~20 s on a cold cache.
    _compile_and_compare("aot_eager")


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    _compile_and_compare("inductor")
