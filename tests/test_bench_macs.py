"""MACs by the MobileNet convention (conv + linear multiply-accumulates), checked against formulas
written out from each architecture, and fvcore's total kept beside it."""

from __future__ import annotations

import pytest
import torch.nn as nn

from dsconv.evaluation.complexity import count_fvcore_macs, count_macs, macs_by_module, model_summary
from dsconv.registry import build_model
from dsconv.scratch import Conv2d as ScratchConv2d
from dsconv.scratch import Linear as ScratchLinear


def ds(cin: int, cout: int, pixels: int, k: int = 3) -> int:
    """A depthwise k x k + pointwise 1 x 1 pair."""
    return pixels * (cin * k * k + cin * cout)


def dense(cin: int, cout: int, pixels: int, k: int = 3) -> int:
    return pixels * cin * cout * k * k


def mnist_cnn_macs(conv: str) -> int:
    layer = dense if conv == "standard" else ds
    convs = layer(1, 32, 28 * 28) + layer(32, 64, 14 * 14) + layer(64, 128, 7 * 7)
    return convs + 128 * 64 + 64 * 10


def cifar_cnn_macs(conv: str) -> int:
    swappable = dense if conv == "standard" else ds
    convs = swappable(3, 32, 1024) + swappable(32, 64, 1024) + swappable(64, 128, 1024)
    convs += dense(128, 128, 1024) + swappable(128, 256, 256) + dense(256, 256, 256)  # two stay standard
    return convs + 256 * 8 * 8 * 1024 + 1024 * 512 + 512 * 10


def densenet4_macs(conv: str, growth: int = 16, blocks=(4, 6, 8, 6)) -> int:
    """Stem 3x3; per dense layer a 1x1 bottleneck to 4 x growth and a 3x3 conv to growth channels;
    transitions halve the channels with a 1x1 conv before a 2x2 average pool; linear head."""
    mid, side, channels = 4 * growth, 32, 2 * growth
    total = dense(3, channels, side * side)
    for index, layers in enumerate(blocks):
        pixels = side * side
        for i in range(layers):
            total += dense(channels + growth * i, mid, pixels, k=1)
            total += (dense if conv == "standard" else ds)(mid, growth, pixels)
        channels += growth * layers
        if index < len(blocks) - 1:
            total += dense(channels, channels // 2, pixels, k=1)
            channels, side = channels // 2, side // 2
    return total + channels * 10


@pytest.mark.parametrize(
    ("name", "conv", "shape", "formula", "expected"),
    [
        ("mnist_cnn", "standard", (1, 28, 28), mnist_cnn_macs, 7_459_968),
        ("mnist_cnn", "separable", (1, 28, 28), mnist_cnn_macs, 928_464),
        ("cifar_cnn", "standard", (3, 32, 32), cifar_cnn_macs, 490_050_560),
        ("cifar_cnn", "separable", (3, 32, 32), cifar_cnn_macs, 339_476_480),
        ("densenet4", "standard", (3, 32, 32), densenet4_macs, 95_432_616),
        ("densenet4", "separable", (3, 32, 32), densenet4_macs, 47_908_776),
    ],
)
def test_conv_linear_macs_equal_the_architecture_formula(name, conv, shape, formula, expected):
    model = build_model({"name": name, "conv": conv}, shape, 10)
    assert count_macs(model, shape) == formula(conv) == expected
    assert count_macs(model, shape, batch_size=3) == 3 * expected  # per batch, not per image
    total, per_module, table = macs_by_module(model, shape)
    assert total == expected == sum(per_module.values())
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], nn.Conv2d | nn.Linear) for n in per_module)  # conv/linear only
    assert "module" in table  # fvcore's table, the third value as before


@pytest.mark.parametrize(
    ("conv", "fvcore"),
    [("standard", 7_548_928), ("separable", 1_017_424)],
)
def test_fvcore_total_adds_batch_norm_and_pooling(conv, fvcore):
    model = build_model({"name": "mnist_cnn", "conv": conv}, (1, 28, 28), 10)
    assert count_fvcore_macs(model, (1, 28, 28)) == fvcore
    # The MobileNet-convention ratio the README quotes (fvcore's would be 7.42x).
    assert count_macs(build_model({"name": "mnist_cnn", "conv": "standard"}, (1, 28, 28), 10), (1, 28, 28)) / (
        count_macs(build_model({"name": "mnist_cnn", "conv": "separable"}, (1, 28, 28), 10), (1, 28, 28))
    ) == pytest.approx(8.03, abs=0.005)


def test_scratch_layers_count_like_their_torch_twins():
    scratch = nn.Sequential(ScratchConv2d(3, 8, 3, padding=1, groups=1), ScratchConv2d(8, 8, 3, groups=8))
    twin = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, groups=8))
    expected = 10 * 10 * 8 * 3 * 9 + 8 * 8 * 8 * 9
    assert count_macs(scratch, (3, 10, 10)) == count_macs(twin, (3, 10, 10)) == expected
    linear = nn.Sequential(ScratchLinear(12, 5), nn.Linear(5, 7))
    assert count_macs(linear, (4, 12)) == 4 * (12 * 5 + 5 * 7)  # every leading dimension counts


def test_attention_counts_projections_and_both_matrix_products():
    attention = nn.MultiheadAttention(16, 4, batch_first=True)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attention

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    tokens, dim = 9, 16
    expected = tokens * 3 * dim * dim + 2 * tokens * tokens * dim + tokens * dim * dim
    assert count_macs(Block(), (tokens, dim)) == expected


def test_summary_shows_both_counts_and_container_totals():
    model = build_model({"name": "mnist_cnn", "conv": "separable"}, (1, 28, 28), 10)
    text = model_summary(model, (1, 28, 28))
    assert "MACs/image 928,464 (conv + linear" in text and "fvcore MACs/image 1,017,424" in text
    first = next(line for line in text.splitlines() if line.split()[:2] == ["0", "SeparableConv2d"])
    assert first.split()[-1] == f"{ds(1, 32, 28 * 28):,}"  # a container shows its stages' MACs, summed


def test_one_description_agrees_with_each_separate_count(monkeypatch):
    from dsconv.evaluation import complexity

    model = build_model({"name": "mnist_cnn", "conv": "separable"}, (1, 28, 28), 10)
    traces = []
    analysis = complexity._flop_analysis
    monkeypatch.setattr(complexity, "_flop_analysis", lambda *a: traces.append(1) or analysis(*a))
    info = complexity.describe(model, (1, 28, 28))
    assert len(traces) == 1  # one fvcore trace gives both its total and its table
    assert (info.macs, info.fvcore_macs, info.params.total) == (928_464, 1_017_424, 20_723)
    assert info.macs == count_macs(model, (1, 28, 28)) and "module" in info.flop_table
    assert info.summary == model_summary(model, (1, 28, 28))


def test_a_model_fvcore_cannot_trace_keeps_its_hook_counted_macs(monkeypatch):
    from dsconv.evaluation import complexity

    def refuse(*_args):
        raise RuntimeError("tracer failed on a dynamic branch\nsecond line")

    monkeypatch.setattr(complexity, "_flop_analysis", refuse)
    model = build_model({"name": "mnist_cnn", "conv": "standard"}, (1, 28, 28), 10)
    info = complexity.describe(model, (1, 28, 28))
    assert info.fvcore_macs is None and info.macs == 7_459_968
    assert info.flop_table == "fvcore could not trace this model: tracer failed on a dynamic branch"
    assert "fvcore MACs/image n/a" in info.summary
