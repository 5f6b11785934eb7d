"""Scratch transformer pieces: feed-forward block, encoder layer and stack, sinusoidal positional
encoding, token and patch embeddings.

``TransformerEncoderLayer`` / ``TransformerEncoder`` take ``nn.TransformerEncoderLayer`` /
``nn.TransformerEncoder``'s arguments and use their attribute names (``self_attn``, ``linear1``,
``linear2``, ``norm1``, ``norm2``, ``layers.<i>``, ``norm``), so state_dicts move both ways. That
is why the encoder layer keeps ``linear1``/``linear2`` itself instead of nesting a
``FeedForward``: both run the same :func:`feed_forward`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn as nn

from dsconv.scratch.attention import MultiHeadAttention
from dsconv.scratch.layers import GELU, Conv2d, Dropout, LayerNorm, Linear, ReLU

Tensor = torch.Tensor


def make_activation(activation: str | nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """``"relu"``/``"gelu"`` -> scratch module; a scratch module instance is used as is."""
    if isinstance(activation, str):
        table = {"relu": ReLU, "gelu": GELU}
        if activation not in table:
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        return table[activation]()
    if isinstance(activation, ReLU | GELU):
        return activation
    raise ValueError(f"activation must be 'relu', 'gelu' or a scratch ReLU/GELU, got {activation!r}")


def feed_forward(x: Tensor, linear1: Linear, activation: nn.Module, dropout: Dropout, linear2: Linear) -> Tensor:
    return linear2(dropout(activation(linear1(x))))


class FeedForward(nn.Module):
    """Position-wise MLP ``linear2(dropout(act(linear1(x))))`` applied to every token alike."""

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int,
        dropout: float = 0.0,
        activation: str | nn.Module = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias)
        self.activation = make_activation(activation)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return feed_forward(x, self.linear1, self.activation, self.dropout, self.linear2)


class TransformerEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` twin: self-attention and feed-forward sub-blocks, each with a
    residual connection and layer norm, post-norm (``norm(x + f(x))``) or pre-norm (``x + f(norm(x))``)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | nn.Module = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.self_attn = MultiHeadAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **factory
        )
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = make_activation(activation)

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(self, x: Tensor, mask: Tensor | None, padding: Tensor | None, is_causal: bool) -> Tensor:
        out = self.self_attn(
            x, x, x, key_padding_mask=padding, need_weights=False, attn_mask=mask, is_causal=is_causal
        )[0]
        return self.dropout1(out)

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout2(feed_forward(x, self.linear1, self.activation, self.dropout, self.linear2))


class TransformerEncoder(nn.Module):
    """``nn.TransformerEncoder`` twin: ``num_layers`` deep copies of ``encoder_layer``, then ``norm``."""

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: LayerNorm | None = None) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = norm

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        return self.norm(x) if self.norm is not None else x


def sinusoidal_table(max_len: int, d_model: int) -> Tensor:
    """``pe[pos, 2i] = sin(pos / 10000^(2i/d))``, ``pe[pos, 2i+1] = cos(...)`` (Vaswani et al.)."""
    position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])  # odd d_model: one cosine fewer
    return table


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal table to ``(N, L, d)`` (``batch_first``) or ``(L, N, d)`` inputs, any
    ``L <= max_len``. The table is a non-persistent buffer: it is a function of the shape, so it
    stays out of state_dicts and ``max_len`` can change between save and load."""

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0, batch_first: bool = True) -> None:
        super().__init__()
        if d_model < 1 or max_len < 1:
            raise ValueError(f"d_model and max_len must be >= 1, got {d_model}, {max_len}")
        self.d_model, self.max_len, self.batch_first = d_model, max_len, batch_first
        self.register_buffer("pe", sinusoidal_table(max_len, d_model).float(), persistent=False)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1] if self.batch_first else x.shape[0]
        if x.shape[-1] != self.d_model:
            raise ValueError(f"PositionalEncoding expects d_model={self.d_model}, got shape {tuple(x.shape)}")
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds PositionalEncoding max_len={self.max_len}")
        pe = self.pe[:length].to(x.dtype)
        return self.dropout(x + (pe if self.batch_first else pe.unsqueeze(1)))


class Embedding(nn.Module):
    """``nn.Embedding`` twin (token embedding): ``weight (num_embeddings, embedding_dim)``, N(0, 1) init."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, device=None, dtype=None
    ) -> None:
        super().__init__()
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"padding_idx {padding_idx} out of range for {num_embeddings} embeddings")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim, device=device, dtype=dtype))
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].zero_()

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"Embedding expects integer token ids, got {tokens.dtype}")
        out = self.weight[tokens]
        if self.padding_idx is not None:
            # The padding row gets no gradient, as in torch.nn.
            out = torch.where((tokens == self.padding_idx).unsqueeze(-1), out.detach(), out)
        return out


class PatchEmbedding(nn.Module):
    """Image ``(N, C, H, W)`` -> tokens ``(N, (H/p)*(W/p), embed_dim)`` through a p x p, stride-p scratch
    conv (``proj``): one linear map of each flattened non-overlapping patch (ViT)."""

    def __init__(self, in_channels: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        self.proj = Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)

    def num_patches(self, height: int, width: int) -> int:
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not divisible by patch size {self.patch_size}")
        return (height // self.patch_size) * (width // self.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        self.num_patches(x.shape[2], x.shape[3])
        out = self.proj(x)  # (N, D, h, w) shape, NHWC memory: the permute below is free
        return out.permute(0, 2, 3, 1).flatten(1, 2)
