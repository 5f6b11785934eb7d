"""Scratch attention and transformer blocks against torch.nn with copied weights (fp64 1e-10 and
fp32 1e-5 relative, forward and every parameter gradient), plus positional encoding and embeddings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from dsconv import scratch as S

torch.set_num_threads(1)

E, H = 16, 4
REL = {torch.float32: 1e-5, torch.float64: 1e-10}


def assert_rel(actual, expected, rel):
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1e-30))


def randn(*shape, dtype=torch.float64, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=gen).requires_grad_(grad)


def copied(ref: nn.Module, ours: nn.Module) -> nn.Module:
    with torch.no_grad():  # non-trivial biases and norm affines, so they are really compared
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours.load_state_dict(ref.state_dict())  # strict: names and shapes agree
    return ours


def check_module(ref, ours, call, inputs, rel, outputs=lambda out: out):
    """Outputs, and gradients of a random projection w.r.t. inputs and all parameters, by name."""
    out_ref, out_ours = outputs(call(ref, *inputs)), outputs(call(ours, *inputs))
    assert_rel(out_ours, out_ref, rel)
    proj = torch.randn(out_ref.shape, dtype=out_ref.dtype, generator=torch.Generator().manual_seed(7))
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    names = [n for n, _ in ref.named_parameters()]
    ours_params = dict(ours.named_parameters())
    assert sorted(names) == sorted(ours_params)
    g_ref = torch.autograd.grad(
        (out_ref * proj).sum(), leaves + [p for _, p in ref.named_parameters()], allow_unused=True
    )
    g_ours = torch.autograd.grad((out_ours * proj).sum(), leaves + [ours_params[n] for n in names], allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        assert (a is None) == (b is None)  # e.g. out_proj does not reach the attention weights
        if a is not None:
            assert_rel(a, b, rel)


def mha_pair(dtype=torch.float64, batch_first=True, dropout=0.0, bias=True):
    ref = nn.MultiheadAttention(E, H, dropout=dropout, bias=bias, batch_first=batch_first, dtype=dtype)
    ours = S.MultiHeadAttention(E, H, dropout=dropout, bias=bias, batch_first=batch_first, dtype=dtype)
    return ref, copied(ref, ours)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", ["none", "bool", "float", "per_head", "padding", "both", "causal"])
def test_self_attention_matches_torch(dtype, batch_first, mask):
    n, length = 3, 6
    ref, ours = mha_pair(dtype, batch_first)
    x = randn(n, length, E, dtype=dtype) if batch_first else randn(length, n, E, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    bool_mask = torch.rand(length, length, generator=gen) < 0.3
    bool_mask.fill_diagonal_(False)  # every query keeps one key: no all-masked rows
    padding = torch.zeros(n, length, dtype=torch.bool)
    padding[1, -2:] = True
    kwargs = {
        "none": {},
        "bool": {"attn_mask": bool_mask},
        "float": {"attn_mask": torch.randn(length, length, dtype=dtype, generator=gen)},
        "per_head": {"attn_mask": torch.randn(n * H, length, length, dtype=dtype, generator=gen)},
        "padding": {"key_padding_mask": padding},
        "both": {"attn_mask": bool_mask, "key_padding_mask": padding},
        "causal": {"attn_mask": nn.Transformer.generate_square_subsequent_mask(length, dtype=dtype), "is_causal": True},
    }[mask]
    for average in (True, False):
        for which in (0, 1):  # attention output, then attention weights

            def call(m, x, average=average, which=which):
                return m(x, x, x, average_attn_weights=average, **kwargs)[which]

            check_module(ref, ours, call, [x], REL[dtype])


def test_is_causal_without_mask_builds_the_causal_mask():
    ref, ours = mha_pair()
    x = randn(2, 5, E)
    causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    assert_rel(ours(x, x, x, is_causal=True)[0], ref(x, x, x, attn_mask=causal)[0], 1e-10)


def test_cross_attention_unbatched_no_weights_and_no_bias():
    ref, ours = mha_pair(bias=False)
    q, kv = randn(2, 3, E), randn(2, 7, E, seed=1)
    check_module(ref, ours, lambda m, q, kv: m(q, kv, kv)[0], [q, kv], 1e-10)
    k, v = randn(2, 7, E, seed=2), randn(2, 7, E, seed=3)
    check_module(ref, ours, lambda m, q, k, v: m(q, k, v)[0], [q, k, v], 1e-10)
    single = randn(5, E, seed=4)  # unbatched (L, E)
    check_module(ref, ours, lambda m, x: m(x, x, x)[0], [single], 1e-10)
    check_module(ref, ours, lambda m, x: m(x, x, x)[1], [single], 1e-10)
    assert ours(q, kv, kv, need_weights=False)[1] is None


def test_attention_dropout_is_off_in_eval_mode():
    ref, ours = mha_pair(dropout=0.5)
    ref.eval()
    ours.eval()
    x = randn(2, 5, E, grad=False)
    assert_rel(ours(x, x, x)[0], ref(x, x, x)[0], 1e-10)
    ours.train()
    torch.manual_seed(0)
    assert not torch.allclose(ours(x, x, x)[0], ref(x, x, x)[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(dtype, norm_first, activation):
    kwargs = dict(
        dim_feedforward=32,
        dropout=0.0,
        activation=activation,
        batch_first=True,
        norm_first=norm_first,
        layer_norm_eps=1e-6,
        dtype=dtype,
    )
    ref = nn.TransformerEncoderLayer(E, H, **kwargs)
    ours = copied(ref, S.TransformerEncoderLayer(E, H, **kwargs))
    x = randn(3, 7, E, dtype=dtype)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, 4:] = True
    check_module(ref, ours, lambda m, x: m(x), [x], REL[dtype])
    check_module(ref, ours, lambda m, x: m(x, src_key_padding_mask=padding), [x], REL[dtype])


def test_encoder_stack_matches_torch_for_any_length_and_batch():
    kwargs = dict(dim_feedforward=24, dropout=0.0, batch_first=False, norm_first=True, dtype=torch.float64)
    ref = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(E, H, **kwargs),
        2,
        norm=nn.LayerNorm(E, dtype=torch.float64),
        enable_nested_tensor=False,
    )
    ours = copied(
        ref,
        S.TransformerEncoder(S.TransformerEncoderLayer(E, H, **kwargs), 2, norm=S.LayerNorm(E, dtype=torch.float64)),
    )
    for length, batch in ((1, 1), (5, 2), (11, 4)):
        check_module(ref, ours, lambda m, x: m(x), [randn(length, batch, E, seed=length)], 1e-10)
    ref.load_state_dict(ours.state_dict())  # and back


def test_eval_mode_encoder_matches_torch_fast_path():
    layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.1, batch_first=True)
    ref = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    layer = S.TransformerEncoderLayer(E, H, 32, dropout=0.1, batch_first=True)
    ours = copied(ref, S.TransformerEncoder(layer, 2))
    ours.eval()
    x = randn(2, 9, E, dtype=torch.float32, grad=False)
    with torch.no_grad():
        assert_rel(ours(x), ref(x), 1e-5)


def test_feed_forward_is_linear_act_linear():
    ff = S.FeedForward(E, 40, activation="gelu").double()
    ref = nn.Sequential(nn.Linear(E, 40), nn.GELU(), nn.Linear(40, E)).double()
    renamed = {k.replace("linear1", "0").replace("linear2", "2"): v for k, v in ff.state_dict().items()}
    ref.load_state_dict(renamed)
    x = randn(2, 5, E)
    assert_rel(ff(x), ref(x), 1e-10)


def test_positional_encoding_table_and_lengths():
    pe = S.PositionalEncoding(7, max_len=12)
    for pos in range(12):
        for i in range(7):
            angle = pos / 10000 ** ((i - i % 2) / 7)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert pe.pe[pos, i].item() == pytest.approx(expected, abs=1e-6)
    assert "pe" not in pe.state_dict()  # derived from the shape: nothing to save
    for length in (1, 5, 12):
        x = randn(3, length, 7, grad=False)
        torch.testing.assert_close(pe(x), x + pe.pe[:length].double())
    seq_first = S.PositionalEncoding(7, max_len=12, batch_first=False)
    x = randn(5, 2, 7, grad=False)
    torch.testing.assert_close(seq_first(x), x + pe.pe[:5].double().unsqueeze(1))
    with pytest.raises(ValueError, match="exceeds"):
        pe(randn(1, 13, 7))
    with pytest.raises(ValueError, match="d_model"):
        pe(randn(1, 3, 8))


def test_token_embedding_matches_torch():
    ref = nn.Embedding(10, 6, padding_idx=0).double()
    ours = S.Embedding(10, 6, padding_idx=0).double()
    ours.load_state_dict(ref.state_dict())
    tokens = torch.tensor([[0, 3, 3, 9], [1, 0, 2, 5]])
    proj = randn(2, 4, 6, grad=False)
    (ref(tokens) * proj).sum().backward()
    (ours(tokens) * proj).sum().backward()
    assert_rel(ours(tokens), ref(tokens), 1e-12)
    assert_rel(ours.weight.grad, ref.weight.grad, 1e-12)
    assert torch.all(ours.weight.grad[0] == 0)
    with pytest.raises(ValueError, match="integer"):
        ours(tokens.float())


def test_patch_embedding_is_a_strided_conv():
    embed = S.PatchEmbedding(3, 4, 8).double()
    conv = nn.Conv2d(3, 8, 4, stride=4).double()
    conv.load_state_dict(embed.proj.state_dict())
    x = randn(2, 3, 12, 8)
    expected = conv(x).flatten(2).transpose(1, 2)  # (N, 3*2 patches, 8), row-major patch order
    check_module(conv, embed.proj, lambda m, x: m(x), [x], 1e-10)
    assert_rel(embed(x), expected, 1e-10)
    with pytest.raises(ValueError, match="divisible"):
        embed(randn(1, 3, 10, 8))


def _self_attend(**masks):
    x = torch.randn(3, 2, 8)  # (L, N, E)
    return S.MultiHeadAttention(8, 2)(x, x, x, **masks)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: S.MultiHeadAttention(10, 3), "multiple of num_heads"),
        (lambda: S.MultiHeadAttention(8, 2, add_bias_kv=True), "add_bias_kv"),
        (lambda: S.MultiHeadAttention(8, 2, kdim=4), "kdim"),
        (lambda: S.TransformerEncoderLayer(8, 2, activation="tanh"), "activation"),
        (lambda: S.TransformerEncoder(S.TransformerEncoderLayer(8, 2), 0), "num_layers"),
        (lambda: _self_attend(attn_mask=torch.zeros(2, 2)), "attn_mask"),
        (lambda: _self_attend(key_padding_mask=torch.zeros(3, 2, dtype=torch.bool)), "key_padding"),
        (lambda: _self_attend(attn_mask=torch.zeros(3, 3, dtype=torch.int64)), "bool or floating"),
    ],
)
def test_bad_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()
