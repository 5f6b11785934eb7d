"""Eager optimizers skip torch.optim's import of torch._dynamo, and step exactly as torch's own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

from dsconv.training import dynamo_import
from dsconv.training.optim import build_optimizer

TORCH = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}
OPTIMIZERS = {
    "adam": {"name": "adam", "lr": 0.01, "weight_decay": 0.0, "betas": [0.7, 0.9], "eps": 1e-8},
    "adamw": {"name": "adamw", "lr": 0.01, "weight_decay": 0.05, "betas": [0.9, 0.999], "eps": 1e-8},
    "sgd": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4, "momentum": 0.9, "nesterov": True},
    "rmsprop": {"name": "rmsprop", "lr": 0.01, "weight_decay": 0.0, "alpha": 0.99, "momentum": 0.5, "eps": 1e-8},
}


def _train(eager: bool, name: str) -> tuple[list[torch.Tensor], dict]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    cfg = OmegaConf.create({**OPTIMIZERS[name], "norm_weight_decay": 0.0})
    optimizer = build_optimizer(model, cfg, compiled=True)  # torch's own class
    if eager:  # the same optimizer, as the eager class (this process may have imported torch._dynamo)
        optimizer.__class__ = dynamo_import.eager_class(type(optimizer))
        assert type(optimizer).step is not torch.optim.Optimizer.step and type(optimizer) is not TORCH[name]
    data = torch.randn(5, 16, 6)
    for x in data:
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], optimizer.state_dict()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_eager_optimizer_steps_bit_exactly_like_torch(name):
    eager_params, eager_state = _train(True, name)
    torch_params, torch_state = _train(False, name)
    assert all(torch.equal(a, b) for a, b in zip(eager_params, torch_params, strict=True))
    assert eager_state["param_groups"] == torch_state["param_groups"]
    for index, state in torch_state["state"].items():
        for key, value in state.items():
            assert torch.equal(eager_state["state"][index][key], value), (index, key)


def test_compiled_runs_get_torch_classes_and_marks():
    eager = dynamo_import.optimizer_class(torch.optim.SGD, compiled=False)
    compiled = dynamo_import.optimizer_class(torch.optim.SGD, compiled=True)
    assert compiled is torch.optim.SGD
    assert issubclass(eager, torch.optim.SGD) and eager.__name__ == "SGD"
    # no plain function left cached as its own "disabled" mark once a compiled run asked
    for function in dynamo_import._lazily_disabled(torch.optim.Optimizer):
        assert getattr(function, dynamo_import.CACHE_ATTRIBUTE, None) is not function


def test_an_eager_training_loop_never_imports_torch_dynamo():
    # A fresh interpreter: this test process may have imported torch._dynamo already.
    script = textwrap.dedent(
        """
        import sys
        import torch
        from omegaconf import OmegaConf
        from dsconv.training.optim import build_optimizer, build_scheduler

        model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 10))
        cfg = OmegaConf.create({"name": "adam", "lr": 0.01, "weight_decay": 0.0, "betas": [0.7, 0.9],
                                "eps": 1e-8, "norm_weight_decay": 0.0})
        optimizer = build_optimizer(model, cfg)
        schedule = build_scheduler(optimizer, OmegaConf.create({"name": "onecycle", "pct_start": 0.25,
                                   "div_factor": 25.0, "final_div_factor": 1e4}), epochs=1, steps_per_epoch=3)
        for _ in range(3):
            with torch.autocast("cpu", torch.bfloat16):
                loss = model(torch.randn(4, 1, 8, 8)).float().logsumexp(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.after_step()
        optimizer.load_state_dict(optimizer.state_dict())
        print("torch._dynamo" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
