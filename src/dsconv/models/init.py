"""Weight initialisation shared by the registry's models.

Convolutions (dense, depthwise and pointwise alike) use Kaiming-normal with ``fan_out``, the
choice of torchvision's ResNet and MobileNetV2: it keeps activation variance stable through ReLU
stacks and treats a depthwise conv by its real fan-out (k*k per channel). Norm layers start as
the identity (gamma 1, beta 0). Linear layers use Kaiming-uniform with ``fan_in`` so the very
wide fully connected heads of the comparison document (16384 -> 1024) start at unit gain; biases start at 0.
The last linear layer (the classifier) starts small, N(0, 0.01), so initial logits are near zero
and the first loss is close to log(num_classes) instead of a large, noisy value.
"""

from __future__ import annotations

import torch.nn as nn
from torch.nn.utils import parametrize


def init_weights(model: nn.Module) -> nn.Module:
    if any(p.is_meta for p in model.parameters()):
        # A model built on the meta device only checks a config: values do not exist, and meta
        # normal_() would import torch._dynamo (seconds) to trace a random-number reference.
        return model
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            weight = _raw_weight(module)
            nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if classifier:
        nn.init.normal_(classifier[-1].weight, std=0.01)
    return model


def _raw_weight(conv: nn.Conv2d):
    # A parametrized conv (normalize_weights) stores the trainable tensor as `original`.
    if parametrize.is_parametrized(conv, "weight"):
        return conv.parametrizations.weight.original
    return conv.weight
