"""``densenet4``: the four-dense-block CIFAR-10 network of seeds 001/003 (DenseNet-BC style).

Each dense layer is pre-activation: BN -> act -> [1x1 bottleneck to ``bottleneck_width * growth``
-> BN -> act] -> 3x3 conv of ``model.conv`` kind -> dropout, and its ``growth_rate`` new channels
are concatenated to its input. Transitions (BN -> act -> 1x1 conv compressing by ``compression``
-> 2x2 average pool) sit between blocks. The 3x3 stem conv and the 1x1 convs are the same in both
twins (a 1x1 conv is already pointwise), so the twins differ exactly in the dense layers' 3x3 convs.

Each dense block is a stage (``model.conv``/``kernel_size``/``depth_multiplier`` per block); ``width``
multiplies the growth rate, the bottleneck and the stem (see ``layer_growths`` for fractional rates).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from dsconv.errors import ConfigError
from dsconv.layers import make_act, make_conv
from dsconv.models.init import init_weights
from dsconv.models.stages import Stage, check_width, plan_stages, scale_channels
from dsconv.registry import register_model


class DenseLayer(nn.Module):
    def __init__(
        self,
        in_ch: int,
        growth: int,
        mid: int | None,
        stage: Stage,
        dropout: float,
        act_layer: Any,
    ) -> None:
        super().__init__()
        if mid:
            self.bottleneck = nn.Sequential(
                nn.BatchNorm2d(in_ch), make_act(act_layer), make_conv("standard", in_ch, mid, 1, bias=False)
            )
        else:
            mid, self.bottleneck = in_ch, nn.Identity()
        self.norm = nn.BatchNorm2d(mid)
        self.act = make_act(act_layer)
        options = dict(stage.options)
        if stage.kind == "inverted_residual":
            options.setdefault("act_layer", act_layer)
        self.conv = make_conv(stage.kind, mid, growth, stage.kernel_size, bias=False, **options)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(self.act(self.norm(self.bottleneck(x)))))


class DenseBlock(nn.Module):
    """``len(growths)`` dense layers; layer i adds ``growths[i]`` channels to everything before it."""

    def __init__(self, in_ch: int, growths: Sequence[int], **layer_options: Any) -> None:
        super().__init__()
        offsets = [sum(growths[:i]) for i in range(len(growths))]
        self.layers = nn.ModuleList(
            DenseLayer(in_ch + offset, growth, **layer_options) for offset, growth in zip(offsets, growths)
        )
        self.out_channels = in_ch + sum(growths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


def layer_growths(num_layers: int, growth_rate: int, width: float) -> list[int]:
    """Per-layer growth for a fractional rate ``growth_rate * width``: layer i adds
    ``round((i+1)·r) − round(i·r)`` channels, so a block grows by ``round(n·r)`` in all.

    A whole-number rate (width 1.0) gives every layer exactly ``growth_rate``. Spreading the fraction over
    the layers keeps the cost monotone in ``width`` with steps of one channel, fine enough for a bisection
    to match a MAC budget; rounding the rate itself would move every layer at once (~9% MAC steps).
    """
    rate = growth_rate * width
    return [max(1, round((i + 1) * rate) - round(i * rate)) for i in range(num_layers)]


class Transition(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, act_layer: Any) -> None:
        super().__init__(
            nn.BatchNorm2d(in_ch),
            make_act(act_layer),
            make_conv("standard", in_ch, out_ch, 1, bias=False),
            nn.AvgPool2d(2),
        )


class DenseNet4(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        conv: str | Sequence[str] = "separable",
        kernel_size: int | Sequence[int] = 3,
        depth_multiplier: int | Sequence[int] = 1,
        width: float = 1.0,
        growth_rate: int = 16,
        block_layers: Sequence[int] = (4, 6, 8, 6),
        bottleneck_width: int | None = 4,
        compression: float = 0.5,
        stem_channels: int | None = None,
        dropout: float = 0.1,
        act_layer: Any = nn.ReLU,
        conv_options: dict | None = None,
    ) -> None:
        super().__init__()
        if growth_rate < 1:
            raise ConfigError(f"model.growth_rate must be >= 1, got {growth_rate}")
        if not 0 < compression <= 1:
            raise ConfigError(f"model.compression must be in (0, 1], got {compression}")
        if len(block_layers) < 1 or min(block_layers) < 1:
            raise ConfigError(f"model.block_layers needs positive layer counts, got {list(block_layers)}")
        width = check_width(width)
        stages = plan_stages(len(block_layers), conv, kernel_size, depth_multiplier, conv_options)
        self.num_stages = len(stages)
        mid = scale_channels(bottleneck_width * growth_rate, width) if bottleneck_width else None
        channels = scale_channels(stem_channels or 2 * growth_rate, width)
        self.stem = make_conv("standard", input_shape[0], channels, 3, bias=False)
        blocks: list[nn.Module] = []
        for index, (stage, num_layers) in enumerate(zip(stages, block_layers)):
            growths = layer_growths(num_layers, growth_rate, width)
            block = DenseBlock(channels, growths, mid=mid, stage=stage, dropout=dropout, act_layer=act_layer)
            blocks.append(block)
            channels = block.out_channels
            if index < len(block_layers) - 1:
                reduced = max(1, int(channels * compression))
                blocks.append(Transition(channels, reduced, act_layer))
                channels = reduced
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels),
            make_act(act_layer),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)))


register_model("densenet4")(DenseNet4)
