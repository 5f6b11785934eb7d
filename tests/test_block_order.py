"""mnist_cnn's block order: a clamp after the max-pool is the same network (bit for bit, gradients too);
``pool_first`` is a different, cheaper one with the same parameters."""

from __future__ import annotations

import csv
import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from dsconv.layers import commutes_with_max_pool
from dsconv.models.cifar_cnn import CifarCNN
from dsconv.models.mnist_cnn import MnistCNN

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("act", "commutes"),
    [
        (nn.ReLU(), True),
        (nn.ReLU6(), True),
        (nn.Hardtanh(-2.0, 2.0), True),
        (nn.Identity(), True),
        (nn.LeakyReLU(0.1), False),
        (nn.SiLU(), False),
        (nn.GELU(), False),
        (nn.Tanh(), False),
    ],
)
def test_commutes_with_max_pool_names_the_clamps(act, commutes):
    assert commutes_with_max_pool(act) is commutes


def _seed_order(model: MnistCNN) -> nn.Sequential:
    """The same modules in the seed's order: conv -> BN -> act -> max-pool."""
    blocks = []
    for conv, norm, pool, act in model.features:
        assert isinstance(pool, nn.MaxPool2d)
        blocks.append(nn.Sequential(conv, norm, act, pool))
    return nn.Sequential(*blocks)


def _step(forward, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = forward(x)
    out.square().mean().backward()  # a loss whose gradient reaches every logit
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("act_layer", [nn.ReLU, nn.ReLU6], ids=["relu", "relu6"])
def test_clamp_after_pool_is_bit_exact(act_layer, channels_last):
    torch.manual_seed(0)
    model = MnistCNN((1, 28, 28), 10, channels=(8, 16, 16), pool="flatten", dropout=0.0, act_layer=act_layer)
    x = torch.randn(16, 1, 28, 28)
    for block in model.features:  # BN scale 4: ReLU6 clamps at 6 too, and those ties must get zero gradient
        nn.init.constant_(block[1].weight, 4.0)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    reference = _seed_order(model)
    clamped_at_6 = act_layer is nn.ReLU6 and bool((reference[0][:2](x) > 6).any())
    assert act_layer is nn.ReLU or clamped_at_6
    out, grads = _step(model, model, x)
    ref_out, ref_grads = _step(lambda t: model.head(model.pool(reference(t))), model, x)
    assert torch.equal(out, ref_out)
    for grad, ref_grad in zip(grads, ref_grads):
        assert torch.equal(grad, ref_grad)


def test_smooth_activation_keeps_the_seed_order():
    model = MnistCNN((1, 28, 28), 10, act_layer=nn.SiLU)
    assert [type(m) for m in model.features[0]] == [nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.MaxPool2d]
    leaky = MnistCNN((1, 28, 28), 10, act_layer=functools.partial(nn.LeakyReLU, 0.1))
    assert isinstance(leaky.features[0][3], nn.MaxPool2d)


def test_checkpoint_keys_do_not_depend_on_the_order():
    relu = MnistCNN((1, 28, 28), 10).state_dict()
    silu = MnistCNN((1, 28, 28), 10, act_layer=nn.SiLU).state_dict()
    assert list(relu) == list(silu)
    assert "features.0.1.running_mean" in relu  # BN stays at index 1: checkpoints from before still load


def test_pool_first_is_conv_pool_norm_act_with_the_same_parameters():
    torch.manual_seed(0)
    default = MnistCNN((1, 28, 28), 10, pool="flatten")
    first = MnistCNN((1, 28, 28), 10, pool="flatten", pool_first=True)
    assert [type(m) for m in first.features[1]] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]
    count = sum(p.numel() for p in default.parameters())
    assert sum(p.numel() for p in first.parameters()) == count
    x = torch.randn(4, 1, 28, 28)
    assert first(x).shape == (4, 10)
    # BN statistics come from the pooled map: a different function from the default network
    moved = {}  # the seed order's BN (block index 1) sits at index 2 after the pool
    for key, value in default.state_dict().items():
        parts = key.split(".")
        if parts[0] == "features" and parts[2] == "1":
            parts[2] = "2"
        moved[".".join(parts)] = value
    first.load_state_dict(moved)
    assert not torch.allclose(first(x), default(x))  # training mode: batch statistics


def _bench_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_block_order.py"
    spec = importlib.util.spec_from_file_location("bench_block_order", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_times_the_three_orders_and_writes_its_table(tmp_path, monkeypatch):
    bench = _bench_script()
    kinds = {}
    for order in bench.ORDERS:
        torch.manual_seed(0)
        kinds[order] = [type(m).__name__ for m in bench.build(order, [8, 8, 8], 1.0).features[0]]
    assert kinds == {
        "seed order": ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"],
        "clamp after": ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"],
        "pool first": ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"],
    }
    table = tmp_path / "block_order.csv"
    argv = ["bench", "--layouts", "8-8-8@1", "--steps", "1", "--repeats", "2", "--batch-size", "4", "--csv", str(table)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["block order"] for row in rows] == list(bench.ORDERS)
    assert rows[0]["time / seed order"] == "1.00"
    assert all(float(row["time / seed order"]) > 0 and row["channels@width"] == "8-8-8@1" for row in rows)


def _cifar_seed_order(model: CifarCNN) -> nn.Sequential:
    """cifar_cnn's features in the seed's order: each conv -> act -> max-pool, where the pool now runs first."""
    layers: list[nn.Module] = []
    for module in model.features:
        if isinstance(module, nn.Sequential) and isinstance(module[0], nn.MaxPool2d):
            pool, act = module
            conv, norm, identity = layers.pop()
            assert isinstance(identity, nn.Identity)
            layers += [nn.Sequential(conv, norm, act), pool]
        else:
            layers.append(module)
    return nn.Sequential(*layers)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cifar_cnn_pools_before_its_clamps_bit_exactly(channels_last):
    torch.manual_seed(0)
    model = CifarCNN((3, 16, 16), 10, width=0.25, dropout=0.0, fc_dropout=0.0)
    pools = [m for m in model.features if isinstance(m, nn.Sequential) and isinstance(m[0], nn.MaxPool2d)]
    assert len(pools) == 2 and all(isinstance(act, nn.ReLU) for _, act in pools)  # both of the seed's pools
    x = torch.randn(8, 3, 16, 16)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    reference = _cifar_seed_order(model)
    assert list(reference.state_dict()) == list(model.features.state_dict())  # checkpoint keys stay
    out, grads = _step(model, model, x)
    ref_out, ref_grads = _step(lambda t: model.classifier(reference(t)), model, x)
    assert torch.equal(out, ref_out)
    for grad, ref_grad in zip(grads, ref_grads):
        assert torch.equal(grad, ref_grad)


def test_cifar_cnn_keeps_the_seed_order_for_a_smooth_activation():
    model = CifarCNN((3, 32, 32), 10, width=0.25, act_layer=nn.SiLU)
    pools = [index for index, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 2 and all(isinstance(model.features[i - 1][2], nn.SiLU) for i in pools)
