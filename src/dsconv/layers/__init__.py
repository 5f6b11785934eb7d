"""Convolution building blocks: separable convs, inverted residuals, factories, activations and norms.

Importing this package registers every conv kind (``inverted_residual`` registers itself on import).
"""

from dsconv.layers.activations import commutes_with_max_pool, get_act_layer, make_act
from dsconv.layers.convert import ConversionReport, separable_like, to_separable
from dsconv.layers.factory import conv_kind_options, conv_kinds, conv_norm_act, make_conv, register_conv
from dsconv.layers.inverted_residual import InvertedResidual
from dsconv.layers.norm import get_norm_layer, make_norm
from dsconv.layers.separable import SeparableConv2d, SqueezeExcite

__all__ = [
    "ConversionReport",
    "InvertedResidual",
    "SeparableConv2d",
    "SqueezeExcite",
    "commutes_with_max_pool",
    "conv_kind_options",
    "conv_kinds",
    "conv_norm_act",
    "get_act_layer",
    "get_norm_layer",
    "make_act",
    "make_conv",
    "make_norm",
    "register_conv",
    "separable_like",
    "to_separable",
]
