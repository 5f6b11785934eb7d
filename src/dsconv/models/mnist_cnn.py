"""The separable-options document's MNIST network: three conv blocks (conv -> BN -> act -> max-pool), global average
pooling, and a dense head with dropout 0.5; about 100K parameters with standard convs.

The seed's Keras model puts BN and the activation *after* the whole (separable) conv, so the conv
here is a bare ``make_conv`` layer and ``conv_options`` (activations inside the separable conv,
``normalize_weights``, ``skip``, ``depthwise_scale`` ...) reach it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from dsconv.layers import make_act, make_conv
from dsconv.models.init import init_weights
from dsconv.models.stages import stage_kinds
from dsconv.registry import register_model


class MnistCNN(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        conv: str | Sequence[str] = "standard",
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int = 3,
        hidden: int = 64,
        dropout: float = 0.5,
        act_layer: Any = nn.ReLU,
        conv_options: dict | None = None,
    ) -> None:
        super().__init__()
        in_ch = input_shape[0]
        blocks: list[nn.Module] = []
        for kind, out_ch in zip(stage_kinds(conv, len(channels)), channels):
            options = dict(conv_options or {}) if kind != "standard" else {}
            blocks.append(
                nn.Sequential(
                    make_conv(kind, in_ch, out_ch, kernel_size, **options),
                    nn.BatchNorm2d(out_ch),
                    make_act(act_layer),
                    nn.MaxPool2d(2),
                )
            )
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch, hidden),
            make_act(act_layer),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


@register_model("mnist_cnn")
def mnist_cnn(input_shape, num_classes, **options) -> nn.Module:
    return MnistCNN(input_shape, num_classes, **options)
