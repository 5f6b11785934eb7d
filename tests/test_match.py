"""Equal-budget twins: the width bisection lands within 2% on every registered CNN family with a width."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from dsconv.benchmark.targets import compose_model_group
from dsconv.compression import build_run_model, match_width
from dsconv.compression.match import bisect_budget, build_with_width
from dsconv.errors import ConfigError
from dsconv.evaluation.complexity import count_macs, count_params
from dsconv.registry import model_options, registered_models
from support import compose_config

# (DS twin, the standard model it must match, input shape): one per family. Inputs are small where
# the family follows the input size, to keep the many builds of a bisection fast.
CASES = {
    "mnist_cnn": ("mnist_cnn_separable", "mnist_cnn", {}, (1, 28, 28)),
    "cifar_cnn": ("depthwise", "standard", {}, (3, 16, 16)),
    "densenet4": ("densenet4", "densenet4_standard", {}, (3, 16, 16)),
    "mobilenet_small": ("mobilenet_small", "mobilenet_small", {"conv": "standard"}, (3, 16, 16)),
}


def test_every_family_with_width_has_a_case():
    with_width = {name for name in registered_models() if "width" in (model_options(name) or ())}
    assert with_width <= set(CASES), f"add a match case for {sorted(with_width - set(CASES))}"


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("by", ["macs", "params"])
def test_match_lands_within_two_percent(family, by):
    if "width" not in (model_options(family) or ()):
        pytest.skip(f"{family} has no width option yet")
    ds_group, std_group, std_overrides, shape = CASES[family]
    ds, std = compose_model_group(ds_group), {**compose_model_group(std_group), **std_overrides}
    width, budget, achieved = match_width(ds, std, shape, 10, by=by)
    model = build_with_width(ds, width, shape, 10)
    measured = count_macs(model, shape) if by == "macs" else count_params(model).total
    assert measured == achieved
    assert abs(achieved - budget) <= 0.02 * budget
    base = build_with_width(ds, 1.0, shape, 10)
    base_cost = count_macs(base, shape) if by == "macs" else count_params(base).total
    assert (width > 1.0) == (base_cost < budget)  # widened exactly when the twin is cheaper at width 1


def test_build_run_model_from_cli_keys():
    cfg = compose_config(["model=mnist_cnn_separable", "+model.match=macs", "+model.match_to=mnist_cnn"])
    data = SimpleNamespace(name="digits", input_shape=(1, 28, 28), num_classes=10)
    model, info = build_run_model(cfg, data)
    assert set(info) == {"by", "to", "width", "budget", "achieved"}
    assert info["by"] == "macs" and info["to"] == "mnist_cnn"
    assert info["budget"] == count_macs(
        build_with_width(compose_model_group("mnist_cnn"), 1.0, (1, 28, 28), 10), (1, 28, 28)
    )
    assert count_macs(model, (1, 28, 28)) == info["achieved"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["+model.match=flops", "+model.match_to=mnist_cnn"], "model.match='flops' is unknown"),
        (["+model.match=macs"], "needs +model.match_to"),
        (["+model.match_to=mnist_cnn"], "model.match_to is set without model.match"),
        (["+model.match=macs", "+model.match_to=no_such_model"], "unknown model config group"),
    ],
)
def test_bad_match_keys(overrides, expected):
    data = SimpleNamespace(name="digits", input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ConfigError, match=re.escape(expected)) as error:
        build_run_model(compose_config(["model=mnist_cnn_separable", *overrides]), data)
    assert "\n" not in str(error.value)


def test_model_without_width_is_refused():
    with pytest.raises(ConfigError, match=re.escape("model.name=scratch_cnn has none")):
        match_width(compose_model_group("scratch_cnn"), compose_model_group("mnist_cnn"), (1, 28, 28), 10)


def test_bisect_budget_on_a_step_function():
    def cost(x: float) -> int:
        return 100 * int(x * 10)  # steps of 100: 1000 at x=1.0

    value, achieved = bisect_budget(cost, 3050, 0.02, start=1.0, bounds=(1 / 64, 64), log_scale=True)
    assert achieved == 3000 and cost(value) == 3000
    value, achieved = bisect_budget(cost, 450, 0.2, start=1.0, bounds=(1 / 64, 64), log_scale=True)
    assert abs(achieved - 450) <= 90 and value < 1.0
