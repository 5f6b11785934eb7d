"""torchvision's ResNet-18 and MobileNetV2 with CIFAR-sized stems, registered as ``tv_resnet18`` and
``tv_mobilenet_v2`` so that ``model=tv_resnet18 model.conv=separable`` trains through ``train.py``.

Stems: ImageNet stems shrink a 32x32 image 4x (ResNet) or 2x (MobileNetV2) before the first block;
on CIFAR/MNIST that throws away most of the image, so both use a stride-1 3x3 first conv (ResNet
also drops its max-pool), as in He et al. 2016 §4.2. The first conv takes ``input_shape[0]``
channels, so 1-channel datasets work unchanged. ``model.conv`` picks the kind of the swappable convs:

* ``tv_resnet18``: ``standard``, ``separable`` or ``inverted_residual`` (every k x k conv rebuilt by the
  conv factory, ``replace_convs``, with ``conv_options``), or a list of 5 kinds for the stem and
  ``layer1``..``layer4`` (hybrids).
* ``tv_mobilenet_v2``: torchvision's layout (channel table, width rounding, head) whose blocks are
  rebuilt as the package's ``InvertedResidual`` by the conv factory, so ``inverted_residual`` means the
  same block here as everywhere else (torchvision's own class of that name is not kept; the layers and
  parameter count are the same). ``inverted_residual`` is the network as designed (``conv_options`` reach
  every block, e.g. ``se_ratio``); ``standard`` is its dense twin (each block's depthwise conv becomes a
  full k x k conv: many more parameters); ``separable`` also makes the dense stem conv separable, so no
  dense k x k conv is left (``conv_options`` reach that stem).

Weights are re-initialised with ``init_weights`` so these twins start like the other registry models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn as nn

from dsconv.errors import ConfigError
from dsconv.layers import get_act_layer, make_act, make_conv
from dsconv.layers.convert import replace_convs
from dsconv.models.init import init_weights
from dsconv.models.stages import plan_stages
from dsconv.registry import register_model

RESNET_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")
MOBILENET_KINDS = ("inverted_residual", "standard", "separable")


@register_model("tv_resnet18")
def tv_resnet18(
    input_shape: tuple[int, int, int],
    num_classes: int,
    conv: str | Sequence[str] = "standard",
    conv_options: Mapping[str, Any] | None = None,
    act_layer: Any = None,
) -> nn.Module:
    from torchvision.models import resnet18

    stages = plan_stages(len(RESNET_STAGES), conv, conv_options=conv_options)
    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = make_conv("standard", input_shape[0], 64, 3, bias=False)
    model.maxpool = nn.Identity()
    for name, stage in zip(RESNET_STAGES, stages):
        if name == "conv1":  # a bare conv: replace_convs walks children, so wrap it for the walk
            holder = nn.Module()
            holder.conv1 = model.conv1
            replace_convs(holder, stage.kind, **stage.options)
            model.conv1 = holder.conv1
        else:
            replace_convs(getattr(model, name), stage.kind, **stage.options)
    _replace_activations(model, act_layer)
    model.num_stages = len(stages)
    return init_weights(model)


@register_model("tv_mobilenet_v2")
def tv_mobilenet_v2(
    input_shape: tuple[int, int, int],
    num_classes: int,
    conv: str = "inverted_residual",
    conv_options: Mapping[str, Any] | None = None,
    act_layer: Any = None,
    width_mult: float = 1.0,
    dropout: float = 0.2,
) -> nn.Module:
    if not isinstance(conv, str) or conv not in MOBILENET_KINDS:
        kinds = ", ".join(MOBILENET_KINDS)
        raise ConfigError(f"tv_mobilenet_v2 takes one model.conv of {kinds}, got {conv!r}")
    if not width_mult > 0:
        raise ConfigError(f"model.width_mult must be > 0, got {width_mult}")
    from torchvision.models import mobilenet_v2
    from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionInvertedResidual

    stage = plan_stages(1, conv, conv_options=conv_options)[0]
    model = mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    stem = model.features[0][0]
    model.features[0][0] = make_conv("standard", input_shape[0], stem.out_channels, 3, bias=False)
    # torchvision's blocks become the package's InvertedResidual (same layers and parameter count), so
    # "inverted_residual" names one block across the registry and conv_options reach every block.
    block_options = stage.options if conv == "inverted_residual" else {}
    for index, block in enumerate(model.features):
        if isinstance(block, TorchvisionInvertedResidual):
            model.features[index] = _package_block(block, block_options)
    if conv == "separable":
        model.features[0][0] = make_conv("separable", input_shape[0], stem.out_channels, 3, bias=False, **stage.options)
    elif conv == "standard":
        _densify_depthwise(model)
    _replace_activations(model, act_layer)
    model.num_stages = 1
    return init_weights(model)


def _package_block(block: nn.Module, options: Mapping[str, Any]) -> nn.Module:
    """The package's ``InvertedResidual`` with the geometry of a torchvision MobileNetV2 block."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    depthwise = next(m for m in convs if m.groups > 1)
    in_ch, hidden = convs[0].in_channels, depthwise.out_channels
    options = {"expand_ratio": hidden / in_ch, "act_layer": nn.ReLU6, **options}
    return make_conv("inverted_residual", in_ch, block.out_channels, 3, block.stride, **options)


def _densify_depthwise(model: nn.Module) -> None:
    """Swap every depthwise conv for a dense conv of the same geometry (the standard twin)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and child.groups > 1:
                setattr(
                    parent,
                    name,
                    nn.Conv2d(
                        child.in_channels,
                        child.out_channels,
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        child.dilation,
                        bias=child.bias is not None,
                        padding_mode=child.padding_mode,
                    ),
                )


def _replace_activations(model: nn.Module, act_layer: Any) -> None:
    """Put ``act_layer()`` wherever torchvision put a ReLU/ReLU6 (``None`` keeps torchvision's)."""
    factory = get_act_layer(act_layer)
    if factory is None:
        return
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):  # every name, even of a module shared in it
            if type(child) in (nn.ReLU, nn.ReLU6):
                setattr(parent, name, make_act(factory))
