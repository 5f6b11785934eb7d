"""Scratch layers against torch.nn with copied weights: forward and every gradient (fp32 1e-5 and
fp64 1e-10 relative), gradcheck of every hand-written backward, state_dict interchange, bad args.

"Relative" means ``|a - b| <= rel * (|b| + max|b|)`` elementwise: a tolerance scaled by the
tensor's magnitude, so near-zero entries produced by cancellation do not demand more digits than
the arithmetic has.
"""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsconv import scratch as S
from dsconv.evaluation.complexity import count_macs
from dsconv.scratch import functional as SF

torch.set_num_threads(1)

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REL = {torch.float32: 1e-5, torch.float64: 1e-10}


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1e-30))


def compare(scratch_fn, torch_fn, inputs: list[torch.Tensor], rel: float, seed: int = 0) -> None:
    """Forward outputs and the gradients of a random projection of them w.r.t. every input."""
    ours, ref = scratch_fn(*inputs), torch_fn(*inputs)
    assert_rel(ours, ref, rel)
    proj = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=ref.dtype)
    needs = [t for t in inputs if t.requires_grad]
    for g_ours, g_ref in zip(
        torch.autograd.grad((ours * proj).sum(), needs), torch.autograd.grad((ref * proj).sum(), needs)
    ):
        assert_rel(g_ours, g_ref, rel)


def randn(*shape, dtype=torch.float64, grad=True, seed=0):
    t = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    return t.requires_grad_(grad)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3, "depthwise"]))
    cin = draw(st.integers(1, 4)) * (1 if groups == "depthwise" else groups)
    if groups == "depthwise":
        groups = cin
    cout = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(dilation[0] * (kh - 1) + 1, 11))
    w = draw(st.integers(dilation[1] * (kw - 1) + 1, 11))
    return dict(
        n=draw(st.integers(1, 3)),
        cin=cin,
        cout=cout,
        kernel=(kh, kw),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        h=h,
        w=w,
        bias=draw(st.booleans()),
        channels_last=draw(st.booleans()),
        seed=draw(st.integers(0, 10_000)),
    )


def _conv_inputs(case, dtype):
    x = randn(case["n"], case["cin"], case["h"], case["w"], dtype=dtype, seed=case["seed"])
    if case["channels_last"]:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    weight_shape = (case["cout"], case["cin"] // case["groups"], *case["kernel"])
    weight = randn(*weight_shape, dtype=dtype, seed=case["seed"] + 1)
    bias = randn(case["cout"], dtype=dtype, seed=case["seed"] + 2) if case["bias"] else None
    return [x, weight] + ([bias] if bias is not None else [])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@SETTINGS
@given(case=conv_cases())
def test_conv2d_matches_torch(case, dtype):
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])

    def ours(x, w, b=None):
        return SF.conv2d(x, w, b, *args)

    def ref(x, w, b=None):
        return F.conv2d(x, w, b, *args)

    compare(ours, ref, _conv_inputs(case, dtype), REL[dtype], seed=case["seed"])


@pytest.mark.parametrize("padding", ["same", "valid", (2, 0)])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own, about itself
@pytest.mark.parametrize("dilation", [(1, 2), 1])  # 'same' with (3, 4) and dilation 1 pads 1 left, 2 right
def test_conv2d_layer_loads_nn_state_dict(padding, groups, dilation):
    ref = nn.Conv2d(8, 12, (3, 4), padding=padding, dilation=dilation, groups=groups, dtype=torch.float64)
    ours = S.Conv2d(8, 12, (3, 4), padding=padding, dilation=dilation, groups=groups, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    assert ours.weight.shape == ref.weight.shape == (12, 8 // groups, 3, 4)
    x = randn(2, 8, 9, 10)
    compare(ours, ref, [x], 1e-10)
    ref.load_state_dict(ours.state_dict())  # and back


def test_conv2d_noncontiguous_input_and_nchw_grad():
    x = randn(2, 3, 12, 10)[:, :, ::2, 1:]  # strided view
    w = randn(5, 3, 3, 3, seed=1)
    compare(lambda x, w: SF.conv2d(x, w, None, 2, 1), lambda x, w: F.conv2d(x, w, None, 2, 1), [x, w], 1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@SETTINGS
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    h=st.integers(3, 12),
    w=st.integers(3, 12),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_max_pool2d_matches_torch(n, c, h, w, k, s, d, seed, data, dtype):
    p = (data.draw(st.integers(0, k[0] // 2)), data.draw(st.integers(0, k[1] // 2)))
    if h + 2 * p[0] < d[0] * (k[0] - 1) + 1 or w + 2 * p[1] < d[1] * (k[1] - 1) + 1:
        return
    x = randn(n, c, h, w, dtype=dtype, seed=seed)
    compare(lambda x: SF.max_pool2d(x, k, s, p, d), lambda x: F.max_pool2d(x, k, s, p, d), [x], REL[dtype])


def test_max_pool2d_ties_route_the_gradient_like_torch():
    # Integer-valued input: many windows hold several equal maxima; torch takes the first (row-major).
    x = torch.randint(0, 3, (2, 3, 9, 9), generator=torch.Generator().manual_seed(0)).double()
    x.requires_grad_()
    compare(lambda x: SF.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), [x], 1e-10)
    compare(lambda x: S.MaxPool2d(2)(x), nn.MaxPool2d(2), [x], 1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5), (2, 1, 4, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(dtype, shape, bias):
    ref = nn.Linear(shape[-1], 6, bias=bias, dtype=dtype)
    ours = S.Linear(shape[-1], 6, bias=bias, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = randn(*shape, dtype=dtype)
    compare(lambda x, *p: SF.linear(x, *p), lambda x, *p: F.linear(x, *p), [x, *ref.parameters()], REL[dtype])
    assert_rel(ours(x), ref(x), REL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_activations_dropout_flatten_layernorm_match_torch(dtype):
    x = randn(4, 3, 5, 6, dtype=dtype)
    rel = REL[dtype]
    compare(S.ReLU(), nn.ReLU(), [x], rel)
    compare(S.GELU(), nn.GELU(), [x], rel)
    compare(S.Flatten(), nn.Flatten(), [x], rel)
    compare(S.Flatten(0, 2), nn.Flatten(0, 2), [x], rel)
    ref = nn.LayerNorm((5, 6), eps=1e-3, dtype=dtype)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours = S.LayerNorm((5, 6), eps=1e-3, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    compare(
        lambda x, w, b: SF.layer_norm(x, (5, 6), w, b, 1e-3),
        lambda x, w, b: F.layer_norm(x, (5, 6), w, b, 1e-3),
        [x, ref.weight, ref.bias],
        rel,
    )
    assert_rel(ours(x), ref(x), rel)
    logits = randn(3, 7, dtype=dtype)
    compare(lambda t: SF.softmax(t, -1), lambda t: torch.softmax(t, -1), [logits], rel)


def test_dropout_masks_and_scales():
    layer = S.Dropout(0.25)
    x = torch.ones(200_000, dtype=torch.float64)
    torch.manual_seed(0)
    out = layer(x)
    kept = out != 0
    assert torch.all(out[kept] == 1 / 0.75)  # survivors are scaled so the expectation is unchanged
    assert abs(kept.double().mean().item() - 0.75) < 0.005
    layer.eval()
    assert layer(x) is x
    assert torch.all(S.Dropout(1.0)(x) == 0)
    assert S.Dropout(0.0)(x) is x


def test_hand_written_backwards_are_used():
    x = randn(2, 3, 6, 6)
    f64 = {"dtype": torch.float64}
    for layer, function in [
        (S.Conv2d(3, 4, 3, padding=1, **f64), "Conv2dFunction"),
        (S.Conv2d(3, 3, 3, groups=3, **f64), "Conv2dFunction"),
        (S.MaxPool2d(2), "MaxPool2dFunction"),
        (S.ReLU(), "ReLUFunction"),
        (S.Linear(6, 2, **f64), "LinearFunction"),
        (S.LayerNorm(6, **f64), "LayerNormFunction"),
    ]:
        assert type(layer(x).grad_fn).__name__ == function + "Backward"
    assert type(SF.softmax(x, -1).grad_fn).__name__ == "SoftmaxFunctionBackward"


@pytest.mark.parametrize(
    "conf",
    [
        dict(cin=3, cout=4, k=(3, 3), stride=1, padding=1, dilation=1, groups=1),
        dict(cin=4, cout=6, k=(2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
        dict(cin=3, cout=6, k=(3, 3), stride=2, padding=2, dilation=2, groups=3),  # depthwise, multiplier 2
        dict(cin=3, cout=3, k=(3, 3), stride=1, padding=1, dilation=1, groups=3),  # depthwise
        dict(cin=3, cout=5, k=(1, 1), stride=1, padding=0, dilation=1, groups=1),  # pointwise, no im2col
        dict(cin=2, cout=3, k=(2, 2), stride=2, padding=0, dilation=1, groups=1),  # non-overlapping col2im
    ],
)
def test_gradcheck_conv2d(conf):
    x = randn(2, conf["cin"], 6, 7)
    w = randn(conf["cout"], conf["cin"] // conf["groups"], *conf["k"], seed=1)
    b = randn(conf["cout"], seed=2)
    args = (conf["stride"], conf["padding"], conf["dilation"], conf["groups"])
    assert torch.autograd.gradcheck(lambda x, w, b: SF.conv2d(x, w, b, *args), (x, w, b))


def test_gradcheck_linear_maxpool_relu():
    assert torch.autograd.gradcheck(SF.linear, (randn(2, 3, 4), randn(5, 4, seed=1), randn(5, seed=2)))
    assert torch.autograd.gradcheck(lambda x, w: SF.linear(x, w), (randn(3, 4), randn(2, 4, seed=1)))
    # Distinct values a few gradcheck-steps apart so the finite differences never flip an arg-max.
    x = torch.randperm(2 * 3 * 7 * 6, generator=torch.Generator().manual_seed(0)).double() / 10
    x = x.view(2, 3, 7, 6).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: SF.max_pool2d(x, 3, 2, 1), (x,))
    assert torch.autograd.gradcheck(lambda x: SF.max_pool2d(x, (2, 3), (1, 2), 0, (2, 1)), (x,))
    x = randn(4, 5)
    x = (x + x.detach().sign() * 0.1).detach().requires_grad_()  # keep away from the kink at 0
    assert torch.autograd.gradcheck(SF.relu, (x,))


def test_gradcheck_softmax_and_layer_norm():
    assert torch.autograd.gradcheck(lambda t: SF.softmax(t, -1), (randn(3, 5),))
    assert torch.autograd.gradcheck(lambda t: SF.softmax(t, 0), (randn(4, 2, 3),))
    x, w, b = randn(3, 4, 5), randn(4, 5, seed=1), randn(4, 5, seed=2)
    assert torch.autograd.gradcheck(lambda x, w, b: SF.layer_norm(x, (4, 5), w, b, 1e-5), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: SF.layer_norm(x, (5,), None, None, 1e-5), (x,))


@pytest.mark.parametrize(
    "build",
    [
        lambda m: m.Conv2d(16, 32, 3),
        lambda m: m.Conv2d(6, 12, (2, 3), groups=3),
        lambda m: m.Linear(300, 10),
        lambda m: m.LayerNorm(7),
        lambda m: m.MultiheadAttention(16, 4) if m is nn else m.MultiHeadAttention(16, 4),
    ],
)
def test_default_init_draws_what_torch_draws(build):
    # Same RNG stream and bounds as torch.nn's reset_parameters: equal seeds give equal weights.
    torch.manual_seed(0)
    ref = build(nn)
    torch.manual_seed(0)
    ours = build(S)
    ref_state = ref.state_dict()
    assert ours.state_dict().keys() == ref_state.keys()
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(tensor, ref_state[name], rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_forward_counts_the_real_macs():
    # fvcore traces the model; the scratch ops must show it their matmuls.
    model = nn.Sequential(
        S.Conv2d(3, 8, 3, padding=1),
        S.ReLU(),
        S.MaxPool2d(2),
        S.Conv2d(8, 8, 3, padding=1, groups=8),
        S.Flatten(),
        S.Linear(8 * 8 * 8, 10),
    )
    twin = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )
    twin.load_state_dict(model.state_dict())
    macs = 16 * 16 * 8 * 3 * 9 + 8 * 8 * 8 * 9 + 8 * 8 * 8 * 10
    assert count_macs(model, (3, 16, 16)) == count_macs(twin, (3, 16, 16)) == macs
    x = torch.randn(2, 3, 16, 16)
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), twin(x), rtol=1e-5, atol=1e-5)


def test_workspace_is_reused_and_can_be_freed():
    S.clear_workspace()
    assert S.workspace_bytes() == 0
    conv = S.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 10, 10)
    first = conv(x)
    held = S.workspace_bytes()
    assert held == 2 * 10 * 10 * 4 * 9 * 4  # fp32 column matrix
    conv(torch.randn(2, 4, 10, 10))  # reuses the buffer: the first result must be untouched
    torch.testing.assert_close(first, F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-6)
    assert S.workspace_bytes() == held
    S.clear_workspace()
    assert S.workspace_bytes() == 0
    with torch.inference_mode():  # a workspace first made here must still be usable for training
        conv(x)
    conv(x).sum().backward()
    assert conv.weight.grad is not None


def test_autocast_casts_like_torch_and_backward_runs():
    # The scratch Functions must see one dtype in forward and backward under autocast.
    torch.manual_seed(0)
    pairs = [
        (nn.Conv2d(3, 8, 3, padding=1), S.Conv2d(3, 8, 3, padding=1)),
        (nn.Linear(10, 8), S.Linear(10, 8)),
        (nn.LayerNorm(10), S.LayerNorm(10)),
    ]
    for ref, ours in pairs:
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(2, 3, 6, 10)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_ref, out = ref(x), ours(x)
        assert out.dtype == out_ref.dtype  # bf16 for conv/linear, fp32 for layer norm
        torch.testing.assert_close(out.float(), out_ref.float(), rtol=2e-2, atol=2e-2)
        out.float().sum().backward()
        assert all(p.grad.dtype == torch.float32 for p in ours.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert SF.softmax(torch.randn(3, 4).bfloat16(), -1).dtype == torch.float32


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: S.Conv2d(3, 4, 3, groups=2), "divisible by groups"),
        (lambda: S.Conv2d(4, 4, 3, padding_mode="reflect"), "padding_mode"),
        (lambda: S.Conv2d(4, 4, 3, padding="full"), "padding"),
        (lambda: S.Conv2d(4, 4, 3, stride=2, padding="same"), "strided"),
        (lambda: S.Conv2d(4, 4, 0), "kernel_size"),
        (lambda: S.Conv2d(4, 4, 3, stride=(1, 0)), "stride"),
        (lambda: S.Conv2d(4, 4, 3, padding=-1), "padding"),
        (lambda: S.Conv2d(4, 4, 3)(torch.randn(1, 4, 2, 5)), "smaller than the dilated kernel"),
        (lambda: S.Conv2d(4, 4, 3)(torch.randn(1, 3, 5, 5)), "channels"),
        (lambda: S.Conv2d(4, 4, 3)(torch.randn(4, 5, 5)), "4-D"),
        (lambda: S.MaxPool2d(2, padding=2), "half the kernel"),
        (lambda: S.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
        (lambda: S.Linear(0, 3), "in_features"),
        (lambda: S.Linear(4, 3)(torch.randn(2, 5)), "features"),
        (lambda: S.Dropout(1.5), "probability"),
        (lambda: S.ReLU(inplace=True), "out of place"),
        (lambda: S.GELU("tanh"), "approximate"),
        (lambda: S.LayerNorm(4)(torch.randn(2, 5)), "LayerNorm"),
    ],
)
def test_bad_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_scratch_package_uses_no_torch_nn_layers_or_functional():
    """Source scan: torch.nn appears only as nn.Module/Parameter/ModuleList/Sequential; no functional."""
    allowed = {"Module", "Parameter", "ModuleList", "Sequential"}
    root = pathlib.Path(S.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module is None or not node.module.startswith("torch.nn"), (path.name, node.module)
            if isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
                assert names <= {"torch", "torch.nn", "math", "copy", "contextlib", "threading"}, (path.name, names)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "nn":
                assert node.attr in allowed, f"{path.name} uses nn.{node.attr}"
            if isinstance(node, ast.Attribute) and node.attr == "functional":
                pytest.fail(f"{path.name} touches a functional module")
