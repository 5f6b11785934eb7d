"""Pruning: structured filter pruning gives a real smaller module equal to the masked model; unstructured
pruning hits the parameter budget and keeps its zeros; pruned runs reload from their checkpoints."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from dsconv.benchmark.targets import compose_model_group
from dsconv.compression import build_run_model, load_pruned_model, prune_structured, prune_unstructured
from dsconv.compression.prune import prune_settings
from dsconv.compression.sparse import apply_saved_masks, nonzero_params
from dsconv.compression.structured import mask, plan_groups, resize_to_state_dict
from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import count_macs, count_params
from dsconv.registry import build_model
from dsconv.training.checkpoint import atomic_save
from support import TINY_RUN, compose_config
from test_distill import TINY_SHAPE, tiny_data, write_run

MNIST = (1, 28, 28)


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms, so masking a channel really differs from keeping it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("group", "target", "shape"),
    [("mnist_cnn", "mnist_cnn_separable", MNIST), ("standard", "depthwise", (3, 16, 16))],
)
def test_structured_output_has_reported_macs_and_masked_predictions(group, target, shape):
    torch.manual_seed(0)
    model = trained_like(build_model(compose_model_group(group), shape, 10))
    budget = count_macs(build_model(compose_model_group(target), shape, 10), shape)
    pruned, info = prune_structured(model, shape, budget)
    assert count_macs(pruned, shape) == info["achieved"]
    assert abs(info["achieved"] - budget) <= 0.02 * budget
    assert count_params(pruned).total < count_params(model).total
    assert info["sparsity"] == pytest.approx(1 - count_params(pruned).total / count_params(model).total)
    for producer, kept in info["channels"].items():
        assert pruned.get_submodule(producer).weight.shape[0] == kept < model.get_submodule(producer).weight.shape[0]
    masked = mask(model, info["groups"], info["keep"]).eval()
    images = torch.randn(16, *shape)
    with torch.no_grad():
        out_pruned, out_masked = pruned.eval()(images), masked(images)
        assert not torch.allclose(out_masked, model(images), atol=1e-3)  # masking changed the model
    assert torch.allclose(out_pruned, out_masked, atol=1e-5)
    assert torch.equal(out_pruned.argmax(1), out_masked.argmax(1))


def test_flatten_after_spatial_map_prunes_per_channel_blocks():
    model = build_model(compose_model_group("standard"), (3, 16, 16), 10)
    groups = plan_groups(model, (3, 16, 16))
    flatten_group = next(g for g in groups if g.consumer == "classifier.1")
    assert flatten_group.spatial == 4 * 4 and flatten_group.norms == []
    assert groups[-1].consumer == "classifier.6"  # the logits layer is consumed, never produced


def test_pruned_checkpoint_reloads_from_its_shapes():
    model = trained_like(build_model(compose_model_group("mnist_cnn"), MNIST, 10))
    pruned, _ = prune_structured(
        model, MNIST, count_macs(build_model(compose_model_group("mnist_cnn_separable"), MNIST, 10), MNIST)
    )
    fresh = resize_to_state_dict(build_model(compose_model_group("mnist_cnn"), MNIST, 10), pruned.state_dict())
    fresh.load_state_dict(pruned.state_dict())
    images = torch.randn(4, *MNIST)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images), pruned.eval()(images))


@pytest.mark.parametrize(
    ("group", "expected"),
    [("densenet4_standard", "plain layer chains"), ("mnist_cnn_separable", "grouped/depthwise conv")],
)
def test_structured_refuses_what_it_cannot_prune(group, expected):
    shape = (3, 16, 16) if group.startswith("densenet") else MNIST
    model = build_model(compose_model_group(group), shape, 10)
    with pytest.raises(ConfigError, match=re.escape(expected)) as error:
        prune_structured(model, shape, 1000)
    assert "\n" not in str(error.value)


def test_unstructured_hits_the_parameter_budget_and_keeps_zeros():
    torch.manual_seed(0)
    model = build_model(compose_model_group("mnist_cnn"), MNIST, 10)
    budget = count_params(build_model(compose_model_group("mnist_cnn_separable"), MNIST, 10)).total
    total = count_params(model).total
    pruned, info = prune_unstructured(model, budget)
    assert info["achieved"] == nonzero_params(pruned) == budget
    weights = sum(m.weight.numel() for m in pruned.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert info["sparsity"] == pytest.approx((total - budget) / weights)
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1)
    for _ in range(2):  # fine-tuning must not regrow pruned weights
        loss = nn.functional.cross_entropy(pruned.train()(torch.randn(8, *MNIST)), torch.arange(8))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert nonzero_params(pruned) == budget
    reloaded = apply_saved_masks(build_model(compose_model_group("mnist_cnn"), MNIST, 10), pruned.state_dict())
    reloaded.load_state_dict(pruned.state_dict())
    images = torch.randn(4, *MNIST)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(images), pruned.eval()(images))


@pytest.mark.parametrize("method", ["structured", "unstructured"])
def test_build_run_model_prunes_a_run_dir_and_the_result_reloads(tmp_path, method):
    full_size = ["model.channels=[32,64,128]", "model.hidden=64"]  # TINY_RUN narrows the model; undo that
    write_run(tmp_path / "source", full_size)
    overrides = [
        *full_size,
        f"+prune.method={method}",
        f"+prune.from={tmp_path / 'source'}",
        "+prune.match_to=mnist_cnn_separable",
        "+prune.finetune_epochs=2",
    ]
    cfg = compose_config([*TINY_RUN, *overrides])
    model, info = build_run_model(cfg, tiny_data())
    budget_model = build_model(compose_model_group("mnist_cnn_separable"), TINY_SHAPE, 10)
    assert {"method", "from", "sparsity", "finetune_epochs", "budget", "achieved"} <= set(info)
    assert info["method"] == method and info["from"] == str(tmp_path / "source") and info["finetune_epochs"] == 2
    if method == "structured":
        assert info["budget"] == count_macs(budget_model, TINY_SHAPE)
        assert info["achieved"] == count_macs(model, TINY_SHAPE)
    else:
        assert info["budget"] == info["achieved"] == count_params(budget_model).total == nonzero_params(model)
    assert 0 < info["sparsity"] < 1
    # The pruned run as the trainer would leave it, reloaded for evaluation or benchmarking.
    run = tmp_path / "pruned"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    atomic_save({"model": model.state_dict(), "trainer": {"epoch": 1}}, run / "checkpoints" / "best.pt")
    reloaded = load_pruned_model(run, "cpu")
    assert not [key for key in reloaded.state_dict() if key.endswith("_mask")]  # masks folded for evaluation
    images = torch.randn(4, *TINY_SHAPE)
    with torch.no_grad():
        assert torch.allclose(reloaded(images), model.eval()(images), atol=1e-6)


def test_prune_source_must_match_the_run_model(tmp_path):
    write_run(tmp_path / "source", ["model.channels=[8,16,32]"])
    cfg = compose_config([*TINY_RUN, f"+prune.from={tmp_path / 'source'}", "+prune.match_to=mnist_cnn_separable"])
    with pytest.raises(ConfigError, match="with other options than this run's model"):
        build_run_model(cfg, tiny_data())


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"from": "/x", "match_to": "m", "method": "random"}, "prune.method='random' is unknown"),
        ({"match_to": "m"}, "prune.from is not set"),
        ({"from": "/x"}, "prune.match_to is not set"),
        ({"from": "/x", "match_to": "m", "finetune_epochs": 0}, "prune.finetune_epochs=0"),
        ({"from": "/x", "match_to": "m", "ratio": 0.5}, "prune.ratio is not a pruning key"),
    ],
)
def test_bad_prune_settings(settings, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        prune_settings(settings)


def test_bench_measures_a_pruned_run_next_to_its_twins(tmp_path):
    """A ``{run: ...}`` bench entry is the pruned run's real smaller module, paired with the standard model."""
    from hydra import compose, initialize_config_dir

    from dsconv.benchmark.suite import build_plan, twin_pairs
    from dsconv.paths import CONF_DIR

    full_size = ["model.channels=[32,64,128]", "model.hidden=64"]
    write_run(tmp_path / "source", full_size)
    prune = [f"+prune.from={tmp_path / 'source'}", "+prune.match_to=mnist_cnn_separable"]
    cfg = compose_config([*TINY_RUN, *full_size, *prune])
    model, info = build_run_model(cfg, tiny_data())
    run = tmp_path / "pruned"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    atomic_save({"model": model.state_dict(), "trainer": {"epoch": 1}}, run / "checkpoints" / "best.pt")
    shape = ",".join(map(str, TINY_SHAPE))
    models = (
        f"models=[{{group:mnist_cnn,conv:standard,input_shape:[{shape}],label:std}},"
        f"{{group:mnist_cnn,conv:separable,input_shape:[{shape}],label:ds}},{{run:'{run}',pair_with:std}}]"
    )
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        plan = build_plan(compose("bench", overrides=[models, "layers=[]"]))
    pruned = plan.targets[2]
    assert (pruned.kind, pruned.conv, pruned.input_shape) == ("run", "standard", TINY_SHAPE)
    assert pruned.label == "mnist_cnn/standard pruned structured (pruned)"
    assert count_macs(pruned.build(), TINY_SHAPE) == info["achieved"]  # the real smaller module, not a mask
    assert twin_pairs(plan.targets) == [("std", "ds"), ("std", pruned.label)]


def test_bench_run_entries_fail_in_one_line(tmp_path):
    from dsconv.benchmark.targets import model_target
    from dsconv.errors import ConfigError

    with pytest.raises(ConfigError, match=r"models\[0\].run=.*does not exist"):
        model_target({"run": str(tmp_path / "missing")}, 0, {})
    with pytest.raises(ConfigError, match="a run entry takes run, label, pair_with, not conv"):
        model_target({"run": str(tmp_path), "conv": "separable"}, 0, {})
