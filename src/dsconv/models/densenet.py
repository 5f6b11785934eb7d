"""``densenet4``: the four-dense-block CIFAR-10 network of seeds 001/003 (DenseNet-BC style).

Each dense layer is pre-activation: BN -> act -> [1x1 bottleneck to ``bottleneck_width * growth``
-> BN -> act] -> 3x3 conv of ``model.conv`` kind -> dropout, and its ``growth_rate`` new channels
are concatenated to its input. Transitions (BN -> act -> 1x1 conv compressing by ``compression``
-> 2x2 average pool) sit between blocks. The 3x3 stem conv and the 1x1 convs are the same in both
twins (a 1x1 conv is already pointwise), so the twins differ exactly in the dense layers' 3x3 convs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from dsconv.errors import ConfigError
from dsconv.layers import make_act, make_conv
from dsconv.models.init import init_weights
from dsconv.models.stages import stage_kinds
from dsconv.registry import register_model


class DenseLayer(nn.Module):
    def __init__(
        self,
        in_ch: int,
        growth_rate: int,
        kind: str,
        bottleneck_width: int | None,
        dropout: float,
        act_layer: Any,
        conv_options: dict,
    ) -> None:
        super().__init__()
        if bottleneck_width:
            mid = bottleneck_width * growth_rate
            self.bottleneck = nn.Sequential(
                nn.BatchNorm2d(in_ch), make_act(act_layer), nn.Conv2d(in_ch, mid, 1, bias=False)
            )
        else:
            mid, self.bottleneck = in_ch, nn.Identity()
        self.norm = nn.BatchNorm2d(mid)
        self.act = make_act(act_layer)
        self.conv = make_conv(kind, mid, growth_rate, 3, bias=False, **conv_options)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(self.act(self.norm(self.bottleneck(x)))))


class DenseBlock(nn.Module):
    def __init__(self, num_layers: int, in_ch: int, growth_rate: int, **layer_options: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_ch + i * growth_rate, growth_rate, **layer_options) for i in range(num_layers)
        )
        self.out_channels = in_ch + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, act_layer: Any) -> None:
        super().__init__(
            nn.BatchNorm2d(in_ch), make_act(act_layer), nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.AvgPool2d(2)
        )


class DenseNet4(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        conv: str | Sequence[str] = "separable",
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
        kinds = stage_kinds(conv, len(block_layers))
        channels = stem_channels or 2 * growth_rate
        self.stem = nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for index, (kind, num_layers) in enumerate(zip(kinds, block_layers)):
            options = dict(conv_options or {}) if kind != "standard" else {}
            block = DenseBlock(
                num_layers,
                channels,
                growth_rate,
                kind=kind,
                bottleneck_width=bottleneck_width,
                dropout=dropout,
                act_layer=act_layer,
                conv_options=options,
            )
            stages.append(block)
            channels = block.out_channels
            if index < len(block_layers) - 1:
                reduced = max(1, int(channels * compression))
                stages.append(Transition(channels, reduced, act_layer))
                channels = reduced
        self.features = nn.Sequential(*stages)
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


@register_model("densenet4")
def densenet4(input_shape, num_classes, **options) -> nn.Module:
    return DenseNet4(input_shape, num_classes, **options)
