"""``mobilenet_small``: a MobileNetV2-style network for 28x28 / 32x32 inputs, built from the package's own
``InvertedResidual`` (``dsconv.layers``) through the conv factory.

The architecture is a table like torchvision's ``inverted_residual_setting``: one row ``(t, c, n, s)`` per
stage, ``n`` blocks of expand ratio ``t`` and ``c`` output channels, the first of them with stride ``s``.
A stride-1 3x3 stem (conv -> BN -> act) comes first and a 1x1 conv to ``last_channels`` (-> BN -> act),
global average pooling, dropout and a linear classifier last, as in Sandler et al. 2018, with a stem and
strides sized for small images (32 -> 16 -> 8 -> 4 instead of ImageNet's 224 -> 7).

Every row is a swappable stage: ``conv=inverted_residual`` (the default) is the network as designed;
``separable`` makes each block a MobileNetV1 ``conv_dw`` unit (depthwise -> BN -> act -> pointwise -> BN ->
act), ``standard`` a dense conv -> BN -> act; a list mixes them per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from dsconv.errors import ConfigError
from dsconv.layers import conv_norm_act
from dsconv.models.init import init_weights
from dsconv.models.stages import check_width, plan_stages, scale_channels
from dsconv.registry import register_model

# (expand ratio t, output channels c, repeats n, first stride s) per stage.
SMALL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 2, 2),
    (6, 96, 1, 1),
)


def _check_setting(setting: Sequence[Sequence[Any]]) -> list[tuple[float, int, int, int]]:
    rows = []
    for row in setting:
        values = list(row)
        ok = len(values) == 4 and all(not isinstance(v, bool) and isinstance(v, (int, float)) for v in values)
        if not ok or values[0] <= 0 or any(int(v) != v or v < 1 for v in values[1:]):
            raise ConfigError(
                f"model.setting row {values} is not [t > 0, channels >= 1, repeats >= 1, stride >= 1]: "
                "write each row as [expand_ratio, channels, repeats, stride], e.g. [6, 24, 2, 2]"
            )
        rows.append((values[0], int(values[1]), int(values[2]), int(values[3])))
    if not rows:
        raise ConfigError("model.setting is empty: give at least one [expand_ratio, channels, repeats, stride] row")
    return rows


class MobileNetSmall(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        conv: str | Sequence[str] = "inverted_residual",
        setting: Sequence[Sequence[float]] = SMALL_SETTING,
        kernel_size: int | Sequence[int] = 3,
        depth_multiplier: int | Sequence[int] = 1,
        width: float = 1.0,
        stem_channels: int = 32,
        last_channels: int = 256,
        dropout: float = 0.2,
        act_layer: Any = nn.ReLU6,
        conv_options: dict | None = None,
    ) -> None:
        super().__init__()
        rows = _check_setting(setting)
        width = check_width(width)
        stages = plan_stages(len(rows), conv, kernel_size, depth_multiplier, conv_options)
        self.num_stages = len(stages)
        in_ch = scale_channels(stem_channels, width)
        layers: list[nn.Module] = [conv_norm_act("standard", input_shape[0], in_ch, 3, act_layer=act_layer)]
        for stage, (expand_ratio, base_ch, repeats, stride) in zip(stages, rows):
            out_ch = scale_channels(base_ch, width)
            options = dict(stage.options)
            if stage.kind == "inverted_residual":
                options.setdefault("expand_ratio", expand_ratio)
            for index in range(repeats):
                block_stride = stride if index == 0 else 1
                layers.append(
                    conv_norm_act(
                        stage.kind, in_ch, out_ch, stage.kernel_size, block_stride, act_layer=act_layer, **options
                    )
                )
                in_ch = out_ch
        last = scale_channels(last_channels, width)
        layers.append(conv_norm_act("standard", in_ch, last, 1, act_layer=act_layer))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(last, num_classes)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


register_model("mobilenet_small")(MobileNetSmall)
