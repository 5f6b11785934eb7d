"""Layers from scratch (the from-scratch document): conv, pooling, linear, activations, attention and transformer
blocks written with tensor operations only, with hand-written backward passes for Conv2d, Linear,
MaxPool2d and ReLU (``torch.autograd.Function``s in :mod:`dsconv.scratch.functional`).

No ``torch.nn`` layer and no ``torch.nn.functional`` call is used. From ``torch.nn`` only the
bookkeeping classes appear: ``nn.Module`` and ``nn.Parameter`` (so optimizers, ``.to()`` and
state_dicts work) and the ``nn.Sequential`` / ``nn.ModuleList`` containers, which compute nothing.
Every layer takes torch.nn's constructor arguments and uses its parameter names and shapes, so
state_dicts load into the torch.nn twin and back; ``tests/test_scratch_*.py`` check forward and
gradients against torch.nn with copied weights.
"""

from dsconv.scratch.attention import MultiHeadAttention, scaled_dot_product_attention
from dsconv.scratch.im2col import clear_workspace, workspace_bytes
from dsconv.scratch.layers import GELU, Conv2d, Dropout, Flatten, LayerNorm, Linear, MaxPool2d, ReLU
from dsconv.scratch.transformer import (
    Embedding,
    FeedForward,
    PatchEmbedding,
    PositionalEncoding,
    TransformerEncoder,
    TransformerEncoderLayer,
    sinusoidal_table,
)

__all__ = [
    "GELU",
    "Conv2d",
    "Dropout",
    "Embedding",
    "FeedForward",
    "Flatten",
    "LayerNorm",
    "Linear",
    "MaxPool2d",
    "MultiHeadAttention",
    "PatchEmbedding",
    "PositionalEncoding",
    "ReLU",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "clear_workspace",
    "scaled_dot_product_attention",
    "sinusoidal_table",
    "workspace_bytes",
]
