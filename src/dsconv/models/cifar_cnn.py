"""The CIFAR-10 CNN pair of the comparison document, reproduced layer for layer.

``conv=standard`` is the seed's ``cnn.py``; ``conv=separable`` its ``depthwise.py``: the first three
convs and Conv(128->256) become MobileNet ``conv_dw`` blocks (3x3 depthwise, BN, act; 1x1 pointwise,
BN, act; no biases) while Conv(128->128) and Conv(256->256) stay standard in both twins, as in the
seed. Standard convs keep PyTorch's default bias, as the seed's code does. The four swappable convs are
the model's stages (``model.conv``/``kernel_size``/``depth_multiplier`` per stage, ``inverted_residual``
too); ``width`` scales all six convs' channels while the 1024/512 hidden layers stay. Where the seed
pools after a conv's activation and the activation is a clamp (ReLU), the pool runs first: the same
outputs and gradients, bit for bit, with the activation on a quarter of the elements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from dsconv.layers import commutes_with_max_pool, conv_norm_act, make_act
from dsconv.models.init import init_weights
from dsconv.models.stages import Stage, check_width, plan_stages, scale_channels
from dsconv.registry import register_model

# (out_channels, batch norm, max-pool + dropout after, swappable to DS) per conv, as in the seed.
CNN_CONVS: tuple[tuple[int, bool, bool, bool], ...] = (
    (32, True, False, True),
    (64, True, False, True),
    (128, True, False, True),
    (128, False, True, False),
    (256, True, False, True),
    (256, False, True, False),
)
CNN_HIDDEN = (1024, 512)


class CifarCNN(nn.Module):
    """The seed's CNN; per-stage keys address its four swappable convs, ``width`` scales all six convs."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        conv: str | Sequence[str] = "standard",
        kernel_size: int | Sequence[int] = 3,
        depth_multiplier: int | Sequence[int] = 1,
        width: float = 1.0,
        act_layer: Any = nn.ReLU,
        dropout: float = 0.25,
        fc_dropout: float = 0.5,
        conv_options: dict | None = None,
    ) -> None:
        super().__init__()
        width = check_width(width)
        in_ch, height, size = input_shape
        swappable = sum(1 for spec in CNN_CONVS if spec[3])
        stages = iter(plan_stages(swappable, conv, kernel_size, depth_multiplier, conv_options))
        self.num_stages = swappable
        layers: list[nn.Module] = []
        for base_ch, use_bn, pool, swappable_conv in CNN_CONVS:
            out_ch = scale_channels(base_ch, width)
            stage = next(stages) if swappable_conv else Stage("standard", 3)
            options = dict(stage.options) if stage.kind != "standard" else {"bias": True}
            # A clamp after the pool is the same function on a quarter of the elements; the unit keeps an
            # Identity in its activation's place and the pool's slot holds pool -> act, so no key moves.
            clamp_after_pool = pool and commutes_with_max_pool(make_act(act_layer))
            layers.append(
                conv_norm_act(
                    stage.kind,
                    in_ch,
                    out_ch,
                    stage.kernel_size,
                    norm_layer="batch" if use_bn else None,
                    act_layer=None if clamp_after_pool else act_layer,
                    **options,
                )
            )
            if pool:
                layers.append(
                    nn.Sequential(nn.MaxPool2d(2), make_act(act_layer)) if clamp_after_pool else nn.MaxPool2d(2)
                )
                height, size = height // 2, size // 2
                if base_ch == 128:  # the seed drops out after the first pool only
                    layers.append(nn.Dropout(dropout))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        flat = in_ch * height * size  # 256 * 8 * 8 = 16384 at 32x32; follows the input shape and width
        hidden1, hidden2 = CNN_HIDDEN
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, hidden1),
            make_act(act_layer),
            nn.Linear(hidden1, hidden2),
            make_act(act_layer),
            nn.Dropout(fc_dropout),
            nn.Linear(hidden2, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


register_model("cifar_cnn")(CifarCNN)
