"""Scratch multi-head attention: scaled dot-product attention written with matmul and softmax.

``MultiHeadAttention`` mirrors ``nn.MultiheadAttention``'s constructor, parameter names
(``in_proj_weight (3E, E)``, ``in_proj_bias (3E,)``, ``out_proj.weight``, ``out_proj.bias``),
default init, masks and return value, so its state_dict loads into the torch.nn layer and back.
The projections go through the scratch ``linear`` (hand-written backward); the score matmuls,
softmax and mask arithmetic are tensor ops left to autograd.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dsconv.scratch import functional as SF
from dsconv.scratch.layers import Linear

Tensor = torch.Tensor


def _additive_mask(mask: Tensor | None, like: Tensor, name: str) -> Tensor | None:
    """Bool masks (True = may not attend) become ``-inf``; float masks are added as they are."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask, -math.inf)
    if not mask.is_floating_point():
        raise ValueError(f"{name} must be a bool or floating-point tensor, got {mask.dtype}")
    return mask.to(like.dtype)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, Tensor]:
    """``softmax(q k^T / sqrt(d) + mask) v`` over ``(..., L, d)`` tensors; returns (output, weights)."""
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    if mask is not None:
        scores = scores + mask
    weights = SF.dropout(SF.softmax(scores, dim=-1), dropout_p, training)
    return torch.matmul(weights, v), weights


class MultiHeadAttention(nn.Module):
    """``nn.MultiheadAttention`` twin (same ``kdim``/``vdim`` as the embedding, no bias_kv/zero_attn)."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if embed_dim < 1 or num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a positive multiple of num_heads ({num_heads})")
        if add_bias_kv or add_zero_attn:
            raise ValueError("scratch MultiHeadAttention supports neither add_bias_kv nor add_zero_attn")
        if kdim not in (None, embed_dim) or vdim not in (None, embed_dim):
            raise ValueError("scratch MultiHeadAttention needs kdim == vdim == embed_dim")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first = float(dropout), batch_first
        factory = {"device": device, "dtype": dtype}
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, **factory)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # As torch.nn: Xavier-uniform packed projection (fan_in E, fan_out 3E), zero biases.
        bound = math.sqrt(6.0 / (self.embed_dim + 3 * self.embed_dim))
        with torch.no_grad():
            self.in_proj_weight.uniform_(-bound, bound)
            if self.in_proj_bias is not None:
                self.in_proj_bias.zero_()
                self.out_proj.bias.zero_()

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w, b = self.in_proj_weight, self.in_proj_bias
        if query is key and key is value:  # self-attention: one GEMM for q, k and v
            return SF.linear(query, w, b).chunk(3, dim=-1)
        ws, bs = w.chunk(3), (b.chunk(3) if b is not None else (None, None, None))
        return SF.linear(query, ws[0], bs[0]), SF.linear(key, ws[1], bs[1]), SF.linear(value, ws[2], bs[2])

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Same contract as ``nn.MultiheadAttention.forward``.

        ``attn_mask``: ``(L, S)`` or ``(N*num_heads, L, S)``; ``key_padding_mask``: ``(N, S)``; bool
        masks mark positions that may *not* be attended. ``is_causal`` without ``attn_mask`` builds
        the causal mask. Returns ``(output, weights)``, weights ``(N, L, S)`` averaged over heads (or
        ``(N, H, L, S)``) when ``need_weights``, else ``None``.
        """
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))  # (L, 1, E)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            # Transpose views keep `query is key` true for self-attention inputs.
            same_qk, same_kv = query is key, key is value
            query = query.transpose(0, 1)
            key = query if same_qk else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"attention expects (L, N, {self.embed_dim}) inputs, got {tuple(query.shape)}")
        tgt_len, batch, _ = query.shape
        src_len = key.shape[0]
        q, k, v = self._project(query, key, value)
        heads = self.num_heads
        # (L, N, E) -> (N, H, L, d): heads split off the embedding dim.
        q, k, v = (t.reshape(t.shape[0], batch, heads, self.head_dim).permute(1, 2, 0, 3) for t in (q, k, v))

        if is_causal and attn_mask is None:
            attn_mask = torch.ones(tgt_len, src_len, dtype=torch.bool, device=q.device).triu(1)
        mask = _additive_mask(attn_mask, q, "attn_mask")
        if mask is not None:
            if mask.dim() == 3:
                mask = mask.view(batch, heads, tgt_len, src_len)
            elif mask.shape != (tgt_len, src_len):
                raise ValueError(f"attn_mask must be ({tgt_len}, {src_len}) or (N*H, L, S), got {tuple(mask.shape)}")
        padding = _additive_mask(key_padding_mask, q, "key_padding_mask")
        if padding is not None:
            if padding.shape != (batch, src_len):
                raise ValueError(f"key_padding_mask must be ({batch}, {src_len}), got {tuple(padding.shape)}")
            padding = padding.view(batch, 1, 1, src_len)
            mask = padding if mask is None else mask + padding

        out, weights = scaled_dot_product_attention(q, k, v, mask, self.dropout, self.training)
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, batch, self.embed_dim)  # heads concatenated
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, (weights.squeeze(0) if unbatched else weights)
