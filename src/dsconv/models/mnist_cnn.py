"""The separable-options document's MNIST network: three conv blocks (conv -> BN -> act -> max-pool), global average
pooling, and a dense head with dropout 0.5; about 100K parameters with standard convs.

A clamp activation (ReLU) runs after the max-pool instead, the same function at a quarter of the cost.
``pool_first`` moves the pool before BN too (airbench's order): a different, cheaper network.

The seed's Keras model puts BN and the activation *after* the whole (separable) conv, so the conv
here is a bare ``make_conv`` layer and ``conv_options`` (activations inside the separable conv,
``normalize_weights``, ``skip``, ``depthwise_scale`` ...) reach it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from dsconv.layers import commutes_with_max_pool, make_act, make_conv
from dsconv.models.init import init_weights
from dsconv.models.stages import check_width, plan_stages, scale_channels
from dsconv.registry import register_model


class MnistCNN(nn.Module):
    """Three conv stages; ``width`` scales their channels, the hidden FC size stays (see ``models.stages``)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        conv: str | Sequence[str] = "standard",
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int | Sequence[int] = 3,
        depth_multiplier: int | Sequence[int] = 1,
        width: float = 1.0,
        hidden: int = 64,
        pool: str = "avg",
        dropout: float = 0.5,
        pool_first: bool = False,
        act_layer: Any = nn.ReLU,
        conv_options: dict | None = None,
    ) -> None:
        super().__init__()
        width = check_width(width)
        stages = plan_stages(len(channels), conv, kernel_size, depth_multiplier, conv_options)
        self.num_stages = len(stages)
        in_ch = input_shape[0]
        blocks: list[nn.Module] = []
        for stage, base_ch in zip(stages, channels):
            out_ch = scale_channels(base_ch, width)
            options = dict(stage.options)
            if stage.kind == "inverted_residual":
                options.setdefault("act_layer", act_layer)  # the activation group reaches inside the block
            conv_layer = make_conv(stage.kind, in_ch, out_ch, stage.kernel_size, **options)
            norm, act, max_pool = nn.BatchNorm2d(out_ch), make_act(act_layer), nn.MaxPool2d(2)
            if pool_first:
                layers = (conv_layer, max_pool, norm, act)
            elif commutes_with_max_pool(act):
                # the same block on a quarter of the elements: the MNIST speed-run net's training step
                # took 0.86x the time (fp32, channels_last, 2 threads; scripts/bench_block_order.py)
                layers = (conv_layer, norm, max_pool, act)
            else:
                layers = (conv_layer, norm, act, max_pool)
            blocks.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        if pool not in ("avg", "flatten"):
            raise ValueError(f"pool={pool!r} is unknown: use avg (global average pooling) or flatten")
        # flatten keeps the last feature map's positions (3x3 at 28x28): a larger first FC layer that learns
        # faster in a one-epoch budget than global average pooling.
        side = input_shape[1] // 2 ** len(stages), input_shape[2] // 2 ** len(stages)
        features = in_ch if pool == "avg" else in_ch * side[0] * side[1]
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.Identity()
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, hidden),
            make_act(act_layer),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


register_model("mnist_cnn")(MnistCNN)
