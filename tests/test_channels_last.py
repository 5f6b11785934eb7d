"""channels_last (NHWC) trains the same function as NCHW: one training step of every CIFAR-shaped model
and the MNIST net gives the same loss, logits and gradients in both memory formats.

Gradients are compared in float64. In fp32 an input within rounding of a kink (ReLU at 0, a near-tie
in a max-pool window) can fall on one side in one format and on the other in the other, and that one
element's gradient then differs entirely (seen on densenet4: ~1e-3 of the gradient norm of the layers
below); in float64 such flips are ~1e-9 as likely, so what is left to find is a layout mistake. Dropout
is off: its mask is drawn in memory order, so the two formats drop different elements. Both are why
one-epoch accuracies of the two formats can differ although they train the same function."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dsconv.layers.activations import get_act_layer
from dsconv.registry import build_model

MODELS = [
    ({"name": "cifar_cnn", "conv": "standard", "width": 0.25}, (3, 32, 32)),
    ({"name": "cifar_cnn", "conv": "separable", "width": 0.25}, (3, 32, 32)),
    ({"name": "densenet4", "conv": "standard"}, (3, 32, 32)),
    ({"name": "densenet4", "conv": "separable"}, (3, 32, 32)),
    ({"name": "mnist_cnn", "conv": "standard", "pool": "flatten"}, (1, 28, 28)),
]


def _step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
    model.train()
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return logits.detach(), loss.item(), {name: p.grad for name, p in model.named_parameters()}


def _id(value) -> str:
    return "-".join(map(str, value.values())) if isinstance(value, dict) else ""


@pytest.mark.parametrize("config,shape", MODELS, ids=_id)
def test_one_step_matches_nchw(config, shape):
    torch.manual_seed(0)
    model = build_model(config, shape, 10, get_act_layer("relu"))
    images, labels = torch.randn(8, *shape), torch.randint(0, 10, (8,))
    results = {}
    for dtype in (torch.float32, torch.float64):
        nchw = copy.deepcopy(model).to(dtype)
        nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
        batch = images.to(dtype)
        results[dtype] = (
            _step(nchw, batch, labels),
            _step(nhwc, batch.contiguous(memory_format=torch.channels_last), labels),
        )
    (logits, loss, _), (logits_cl, loss_cl, _) = results[torch.float32]
    assert loss_cl == pytest.approx(loss, rel=1e-5)
    torch.testing.assert_close(logits_cl, logits, rtol=1e-4, atol=1e-5)
    (_, loss, grads), (_, loss_cl, grads_cl) = results[torch.float64]
    assert loss_cl == pytest.approx(loss, rel=1e-12)
    for name, grad in grads.items():
        scale = grad.norm().item()
        if scale < 1e-10:  # a conv bias in front of BatchNorm: its true gradient is 0, what is left is rounding
            continue
        assert (grads_cl[name] - grad).norm().item() / scale < 1e-9, name
