"""torchvision's ResNet-18 and MobileNetV2 with CIFAR-sized stems, registered as ``tv_resnet18`` and
``tv_mobilenet_v2`` so that ``model=tv_resnet18 model.conv=separable`` trains through ``train.py``.

Stems: ImageNet stems shrink a 32x32 image 4x (ResNet) or 2x (MobileNetV2) before the first block;
on CIFAR/MNIST that throws away most of the image, so both use a stride-1 3x3 first conv (ResNet
also drops its max-pool), as in He et al. 2016 §4.2. The first conv takes ``input_shape[0]``
channels, so 1-channel datasets work unchanged. ``model.conv`` picks the kind of the swappable convs:

* ``tv_resnet18``: ``standard`` or ``separable`` (every k x k conv through ``to_separable`` with
  ``conv_options``), or a list of 5 kinds for the stem and ``layer1``..``layer4`` (hybrids).
* ``tv_mobilenet_v2``: ``inverted_residual`` is torchvision's network as designed; ``standard`` is its
  dense twin (each block's depthwise conv becomes a full k x k conv: many more parameters);
  ``separable`` also makes the dense stem conv separable, so no dense k x k conv is left.

Weights are re-initialised with ``init_weights`` so these twins start like the other registry models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn as nn

from dsconv.errors import ConfigError
from dsconv.layers import get_act_layer, make_act, separable_like, to_separable
from dsconv.layers.convert import SEPARABLE_OPTIONS
from dsconv.models.init import init_weights
from dsconv.models.stages import stage_kinds
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
    **unknown: Any,
) -> nn.Module:
    _reject_unknown("tv_resnet18", unknown, ("conv", "conv_options"))
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    _replace_activations(model, act_layer)
    kinds = stage_kinds(conv, len(RESNET_STAGES))
    bad = sorted(set(kinds) - {"standard", "separable"})
    if bad:
        raise ConfigError(f"tv_resnet18 takes model.conv standard or separable (or a list of 5), got {bad}")
    options = _options_for("tv_resnet18", conv_options, "separable" in kinds)
    for stage, kind in zip(RESNET_STAGES, kinds):
        if kind != "separable":
            continue
        if stage == "conv1":
            model.conv1 = separable_like(model.conv1, **options)
        else:
            to_separable(getattr(model, stage), **options)
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
    **unknown: Any,
) -> nn.Module:
    _reject_unknown("tv_mobilenet_v2", unknown, ("conv", "conv_options", "width_mult", "dropout"))
    if not isinstance(conv, str) or conv not in MOBILENET_KINDS:
        kinds = ", ".join(MOBILENET_KINDS)
        raise ConfigError(f"tv_mobilenet_v2 takes one model.conv of {kinds}, got {conv!r}")
    if not width_mult > 0:
        raise ConfigError(f"model.width_mult must be > 0, got {width_mult}")
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(input_shape[0], stem.out_channels, 3, stride=1, padding=1, bias=False)
    _replace_activations(model, act_layer)
    options = _options_for("tv_mobilenet_v2", conv_options, conv == "separable")
    if conv == "separable":
        model.features[0][0] = separable_like(model.features[0][0], **options)
    elif conv == "standard":
        _densify_depthwise(model)
    return init_weights(model)


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


def _options_for(model_name: str, conv_options: Mapping[str, Any] | None, has_separable: bool) -> dict[str, Any]:
    options = dict(conv_options or {})
    if options and not has_separable:
        raise ConfigError(
            f"{model_name}: model.conv_options {sorted(options)} apply to separable convs only: "
            "drop them or use model.conv=separable"
        )
    unknown = sorted(set(options) - set(SEPARABLE_OPTIONS))
    if unknown:
        raise ConfigError(
            f"{model_name}: unknown model.conv_options {unknown}: choose from {', '.join(SEPARABLE_OPTIONS)}"
        )
    return options


def _reject_unknown(model_name: str, unknown: Mapping[str, Any], known: Sequence[str]) -> None:
    if unknown:
        raise ConfigError(
            f"{model_name} got unknown model option(s) {sorted(unknown)}: it takes only {', '.join(known)}"
        )
