"""scratch_cnn and scratch_transformer: exact parameter and MAC counts from formulas, equivalence with
torch.nn twins loaded from their state_dicts (forward, gradients, and a few SGD steps), registry and
config handling, and a short training smoke run."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from dsconv import scratch as S
from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import count_macs, count_params
from dsconv.paths import CONF_DIR
from dsconv.registry import build_model, registered_models

torch.set_num_threads(1)
CONF = CONF_DIR / "model"
RELU = functools.partial(nn.ReLU)


def cnn_params(cin=1, channels=(16, 32, 64), k=3, hidden=128, classes=10, side=28):
    convs = sum(cout * cin_ * k * k + cout for cin_, cout in zip((cin, *channels[:-1]), channels))
    flat = channels[-1] * (side // 2 ** len(channels)) ** 2
    return convs + flat * hidden + hidden + hidden * classes + classes


def vit_params(cin=1, patch=4, dim=64, depth=4, ff=128, classes=10, cls=True, final_norm=True):
    layer = (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (dim * ff + ff) + (ff * dim + dim) + 4 * dim
    return (
        (cin * patch * patch * dim + dim)
        + (dim if cls else 0)
        + depth * layer
        + (2 * dim if final_norm else 0)
        + dim * classes
        + classes
    )


def vit_macs(tokens=50, patches=49, cin=1, patch=4, dim=64, depth=4, ff=128, classes=10):
    attention = 2 * tokens * tokens * dim  # q k^T and weights @ v, summed over heads
    layer = tokens * dim * 3 * dim + attention + tokens * dim * dim + 2 * tokens * dim * ff
    return patches * cin * patch * patch * dim + depth * layer + dim * classes


def torch_cnn(model: nn.Module) -> nn.Module:
    """The torch.nn network with the same structure, for a scratch CNN (convs, pools, linears...)."""
    twin = nn.Module()
    swap = {
        S.Conv2d: lambda m: nn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            bias=m.bias is not None,
        ),
        S.ReLU: lambda m: nn.ReLU(),
        S.GELU: lambda m: nn.GELU(),
        S.MaxPool2d: lambda m: nn.MaxPool2d(2),
        S.Flatten: lambda m: nn.Flatten(),
        S.Dropout: lambda m: nn.Dropout(m.p),
        S.Linear: lambda m: nn.Linear(m.in_features, m.out_features),
    }
    twin.features = nn.Sequential(*(swap[type(m)](m) for m in model.features))
    twin.classifier = nn.Sequential(*(swap[type(m)](m) for m in model.classifier))
    twin.forward = lambda x: twin.classifier(twin.features(x))
    twin.load_state_dict(model.state_dict())
    return twin


class TorchViT(nn.Module):
    """scratch_transformer rebuilt from torch.nn layers, names matching so the state_dict loads."""

    def __init__(self, cin, patch, dim, depth, heads, ff, classes, norm_first=True):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(cin, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(
            layer, depth, norm=nn.LayerNorm(dim) if norm_first else None, enable_nested_tensor=False
        )
        self.head = nn.Linear(dim, classes)
        self.register_buffer("pe", S.sinusoidal_table(64, dim).float(), persistent=False)

    def forward(self, x):
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        tokens = self.encoder(tokens + self.pe[: tokens.shape[1]].to(tokens.dtype))
        return self.head(tokens[:, 0])


def assert_equivalent(ours: nn.Module, twin: nn.Module, x: torch.Tensor, rel: float = 1e-10) -> None:
    ours, twin = ours.double(), twin.double()
    x = x.double()
    out, ref = ours(x), twin(x)
    torch.testing.assert_close(out, ref, rtol=rel, atol=rel * ref.abs().max().item())
    labels = torch.arange(len(x)) % out.shape[1]
    nn.functional.cross_entropy(out, labels).backward()
    nn.functional.cross_entropy(ref, labels).backward()
    twin_params = dict(twin.named_parameters())
    for name, p in ours.named_parameters():
        g_ref = twin_params[name].grad
        torch.testing.assert_close(p.grad, g_ref, rtol=rel, atol=rel * g_ref.abs().max().item(), msg=name)


def test_registered_and_built_from_the_yaml_configs():
    assert {"scratch_cnn", "scratch_transformer"} <= set(registered_models())
    for name in ("scratch_cnn", "scratch_transformer"):
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert cfg.name == name
        model = build_model(cfg, (1, 28, 28), 10, act_layer=RELU)
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_scratch_cnn_counts():
    model = build_model({"name": "scratch_cnn"}, (1, 28, 28), 10, act_layer=RELU)
    assert count_params(model).total == cnn_params() == 98_442
    macs = 28 * 28 * 16 * 9 + 14 * 14 * 32 * 16 * 9 + 7 * 7 * 64 * 32 * 9 + 576 * 128 + 128 * 10
    assert count_macs(model, (1, 28, 28)) == macs == 1_994_240
    cifar = build_model({"name": "scratch_cnn", "hidden": 64}, (3, 32, 32), 100, act_layer=RELU)
    assert count_params(cifar).total == cnn_params(cin=3, hidden=64, classes=100, side=32)
    separable = build_model({"name": "scratch_cnn", "conv": "separable"}, (1, 28, 28), 10, act_layer=RELU)
    dw_pw = sum(cin * 9 + cin * cout + cout for cin, cout in ((1, 16), (16, 32), (32, 64)))
    assert count_params(separable).total == cnn_params() - (160 + 4640 + 18496) + dw_pw


def test_scratch_transformer_counts():
    model = build_model(OmegaConf.load(CONF / "scratch_transformer.yaml"), (1, 28, 28), 10, act_layer=RELU)
    assert count_params(model).total == vit_params() == 135_818
    assert count_macs(model, (1, 28, 28)) == vit_macs() == 7_884_416
    mean_pool = build_model(
        {
            "name": "scratch_transformer",
            "pool": "mean",
            "norm_first": False,
            "dim": 32,
            "heads": 2,
            "depth": 2,
            "mlp_ratio": 3,
        },
        (3, 32, 32),
        10,
        act_layer=RELU,
    )
    expected = vit_params(cin=3, dim=32, depth=2, ff=96, cls=False, final_norm=False)
    assert count_params(mean_pool).total == expected
    assert mean_pool(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("conv", ["standard", "separable", ["separable", "standard", "standard"]])
def test_scratch_cnn_equals_its_torch_twin(conv):
    torch.manual_seed(0)
    cfg = {"name": "scratch_cnn", "conv": conv, "dropout": 0.0}
    model = build_model(cfg, (1, 28, 28), 10, act_layer=RELU)
    assert_equivalent(model, torch_cnn(model), torch.randn(4, 1, 28, 28))


@pytest.mark.parametrize("norm_first", [True, False])
def test_scratch_transformer_equals_its_torch_twin(norm_first):
    torch.manual_seed(0)
    options = {
        "patch_size": 7,
        "dim": 32,
        "depth": 2,
        "heads": 4,
        "mlp_ratio": 2.0,
        "dropout": 0.0,
        "norm_first": norm_first,
    }
    model = build_model({"name": "scratch_transformer", **options}, (1, 28, 28), 10, act_layer=RELU)
    twin = TorchViT(1, 7, 32, 2, 4, 64, 10, norm_first=norm_first)
    twin.load_state_dict(model.state_dict())
    assert_equivalent(model, twin, torch.randn(3, 1, 28, 28))


def test_sgd_steps_keep_scratch_and_torch_cnn_identical():
    torch.manual_seed(1)
    model = build_model({"name": "scratch_cnn", "dropout": 0.0}, (1, 28, 28), 10, act_layer=RELU).double()
    twin = torch_cnn(model).double()
    x, y = torch.randn(8, 1, 28, 28, dtype=torch.float64), torch.arange(8)
    for net in (model, twin):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    twin_params = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, twin_params[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("name, steps", [("scratch_cnn", 25), ("scratch_transformer", 40)])
def test_training_smoke_loss_falls(name, steps):
    torch.manual_seed(0)
    model = build_model({"name": name, "dropout": 0.0}, (1, 28, 28), 10, act_layer=RELU)
    x, y = torch.randn(32, 1, 28, 28), torch.arange(32) % 10
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("name", ["scratch_cnn", "scratch_transformer"])
def test_train_step_under_autocast_and_eval_under_inference_mode(name):
    # What the trainer does with precision=bf16: autocast forward, fp32 loss, backward, then eval.
    model = build_model({"name": name}, (1, 28, 28), 10, act_layer=RELU)
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    model.eval()
    with torch.inference_mode():
        expected = model(x)
    model.train()
    model(x).sum().backward()  # training again after inference mode
    model.eval()
    torch.testing.assert_close(model(x), expected)


def test_models_contain_only_scratch_layers():
    containers = (nn.Sequential, nn.ModuleList)
    for name in ("scratch_cnn", "scratch_transformer"):
        model = build_model({"name": name}, (1, 28, 28), 10, act_layer=RELU)
        for module_name, module in model.named_modules():
            if module is model or isinstance(module, containers):
                continue
            assert type(module).__module__.startswith("dsconv.scratch"), (name, module_name, type(module))


def test_activation_mapping():
    gelu = build_model({"name": "scratch_cnn"}, (1, 28, 28), 10, act_layer=functools.partial(nn.GELU))
    assert isinstance(gelu.features[1], S.GELU) and isinstance(gelu.classifier[2], S.GELU)
    vit = build_model({"name": "scratch_transformer"}, (1, 28, 28), 10, act_layer=functools.partial(nn.GELU))
    assert isinstance(vit.encoder.layers[0].activation, S.GELU)
    default = build_model({"name": "scratch_cnn"}, (1, 28, 28), 10)
    assert isinstance(default.features[1], S.ReLU)
    with pytest.raises(ConfigError, match="no scratch twin"):
        build_model({"name": "scratch_cnn"}, (1, 28, 28), 10, act_layer=functools.partial(nn.SiLU))
    with pytest.raises(ConfigError, match="no scratch twin"):
        build_model(
            {"name": "scratch_transformer"}, (1, 28, 28), 10, act_layer=functools.partial(nn.GELU, approximate="tanh")
        )


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"name": "scratch_cnn", "filters": [8, 8, 8]}, "unknown option"),
        ({"name": "scratch_transformer", "patch": 4}, "unknown option"),
        ({"name": "scratch_cnn", "conv": "dilated"}, "standard"),
        ({"name": "scratch_cnn", "conv": ["standard"]}, "one conv kind per stage"),
        ({"name": "scratch_cnn", "kernel_size": 4}, "odd"),
        ({"name": "scratch_cnn", "channels": [8, 8, 8, 8, 8]}, "too small"),
        ({"name": "scratch_transformer", "patch_size": 5}, "divisible"),
        ({"name": "scratch_transformer", "dim": 30, "heads": 4}, "divisible by heads"),
        ({"name": "scratch_transformer", "pool": "max"}, "pool"),
    ],
)
def test_bad_model_options_raise_config_error(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_model(cfg, (1, 28, 28), 10, act_layer=RELU)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = build_model({"name": "scratch_transformer"}, (1, 28, 28), 10, act_layer=RELU).eval()
    b = build_model({"name": "scratch_transformer"}, (1, 28, 28), 10, act_layer=RELU).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(a(x), b(x))
