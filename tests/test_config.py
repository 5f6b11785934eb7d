"""Every option of every config group composes, validates and builds."""

from __future__ import annotations

import math

import pytest
import torch.nn as nn
from omegaconf import OmegaConf

from dsconv.config import validate_config
from dsconv.config_views import config_hash
from dsconv.errors import ConfigError
from dsconv.layers.activations import act_layer_from_config
from dsconv.paths import CONF_DIR
from dsconv.registry import build_model
from dsconv.training.optim import build_optimizer, build_scheduler
from support import compose_config

GROUPS = ("dataset", "model", "optimizer", "scheduler", "activation", "trainer", "paths")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}"])
    validate_config(cfg)
    assert cfg[group] is not None


@pytest.mark.parametrize("option", _options("model"))
def test_every_model_config_builds(option):
    cfg = compose_config([f"model={option}"])
    model = build_model(cfg.model, (3, 32, 32), 10, act_layer_from_config(cfg.activation))
    assert isinstance(model, nn.Module)


def test_required_groups_are_present():
    assert {"mnist", "fashion_mnist", "cifar10", "digits", "synthetic"} <= set(_options("dataset"))
    assert {"standard", "depthwise", "densenet4", "mnist_cnn"} <= set(_options("model"))
    assert {"adam", "sgd", "rmsprop", "adamw"} <= set(_options("optimizer"))
    assert {"cosine", "onecycle", "step", "plateau", "none"} <= set(_options("scheduler"))
    assert {"relu", "leaky_relu", "swish", "gelu"} <= set(_options("activation"))


def test_stable_key_names():
    cfg = compose_config()
    for key in (
        "optimizer.lr",
        "trainer.epochs",
        "trainer.batch_size",
        "trainer.seed",
        "trainer.deterministic",
        "trainer.device",
        "trainer.precision",
        "trainer.resume",
        "paths.data_dir",
        "model.conv",
    ):
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key


def test_depthwise_inherits_standard_and_switches_conv():
    std, dw = compose_config(["model=standard"]).model, compose_config(["model=depthwise"]).model
    assert std.conv == "standard" and dw.conv == "separable"
    assert {k: v for k, v in dw.items() if k != "conv"} == {k: v for k, v in std.items() if k != "conv"}


def test_data_dir_env_override(monkeypatch):
    monkeypatch.setenv("DSCONV_DATA_DIR", "/somewhere/else")
    assert compose_config().paths.data_dir == "/somewhere/else"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=0", "optimizer.lr=0 must be > 0"),
        ("optimizer.lr=-1e-3", "optimizer.lr"),
        ("trainer.batch_size=0", "trainer.batch_size=0 must be >= 1"),
        ("trainer.epochs=0", "trainer.epochs=0 must be >= 1"),
        ("trainer.epochs=-2", "trainer.epochs"),
        ("model.dropout=1.0", r"model.dropout=1.0 is outside \[0, 1\)"),
        ("model.dropout=-0.1", "model.dropout"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("trainer.precision=fp16", "needs a CUDA device"),
        ("trainer.batch_size=abc", "not an integer"),
    ],
)
def test_bad_values_fail_validation_with_one_line(override, message):
    cfg = compose_config([override])
    with pytest.raises(ConfigError, match=message) as info:
        validate_config(cfg)
    assert "\n" not in str(info.value)


def test_cuda_without_gpu_is_a_config_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        validate_config(compose_config(["trainer.device=cuda"]))


@pytest.mark.parametrize("name", _options("scheduler"))
def test_schedulers_follow_their_shape(name):
    import torch

    cfg = compose_config([f"scheduler={name}"])
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optimizer)
    schedule = build_scheduler(opt, cfg.scheduler, epochs=20, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        for _ in range(5):
            opt.step()
            schedule.after_step()
        schedule.after_epoch(1.0)  # a flat validation loss
        lrs.append(opt.param_groups[0]["lr"])
    base = cfg.optimizer.lr
    if name == "none":
        assert lrs == [base] * 20
    elif name == "cosine":
        assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and all(a >= b for a, b in zip(lrs, lrs[1:]))
    elif name == "step":
        assert lrs[8] == pytest.approx(base) and lrs[9] == pytest.approx(base * 0.1)
    elif name == "plateau":
        assert lrs[-1] < base
    elif name == "onecycle":
        assert max(lrs) == pytest.approx(base, rel=0.05) and lrs[0] < base and lrs[-1] < base / 100


def test_warmup_rises_linearly_then_decays():
    import torch

    cfg = compose_config(["scheduler=cosine", "scheduler.warmup_epochs=2"])
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optimizer)
    schedule = build_scheduler(opt, cfg.scheduler, epochs=10, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.after_step()
    assert lrs[0] == pytest.approx(cfg.optimizer.lr * 0.01)
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:20]))
    assert lrs[20] == pytest.approx(cfg.optimizer.lr) and lrs[-1] < lrs[20]


def test_config_hash_tracks_training_keys_only():
    base = compose_config()
    assert config_hash(base) == config_hash(compose_config(["trainer.progress_bar=false"]))
    assert config_hash(base) != config_hash(compose_config(["optimizer.lr=0.01"]))


# ------------------------------------------------------------------ weight decay groups
# mnist_cnn: features.<block>.0 is the conv (bias included), .1 its BatchNorm; head.1 and head.4 the linears.
BLOCK_NORMS = {f"features.{b}.1.{n}" for b in range(3) for n in ("weight", "bias")}
HEAD = ({"head.1.weight", "head.4.weight"}, {"head.1.bias", "head.4.bias"})
DECAY_GROUPS = {
    "mnist_cnn": (
        {f"features.{b}.0.weight" for b in range(3)} | HEAD[0],
        {f"features.{b}.0.bias" for b in range(3)} | BLOCK_NORMS | HEAD[1],
    ),
    "mnist_cnn_separable": (
        {f"features.{b}.0.{stage}.weight" for b in range(3) for stage in ("depthwise", "pointwise")} | HEAD[0],
        {f"features.{b}.0.pointwise.bias" for b in range(3)} | BLOCK_NORMS | HEAD[1],
    ),
}


@pytest.mark.parametrize("option", sorted(DECAY_GROUPS))
def test_no_weight_decay_on_norm_layers_and_biases(option):
    from dsconv.training.optim import split_weight_decay

    cfg = compose_config([f"model={option}", "optimizer=sgd"])
    model = build_model(cfg.model, (1, 28, 28), 10, act_layer_from_config(cfg.activation))
    decay, plain = DECAY_GROUPS[option]
    got_decay, got_plain = split_weight_decay(model)
    assert (set(got_decay), set(got_plain)) == (decay, plain)
    name_of = {id(p): n for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, cfg.optimizer)
    groups = [({name_of[id(p)] for p in g["params"]}, g["weight_decay"]) for g in optimizer.param_groups]
    assert groups == [(decay, 1e-4), (plain, 0.0)]
    # null: one group, every parameter decayed alike (the behaviour before parameter groups).
    single = build_optimizer(model, compose_config(["optimizer=sgd", "optimizer.norm_weight_decay=null"]).optimizer)
    assert [(len(g["params"]), g["weight_decay"]) for g in single.param_groups] == [(len(name_of), 1e-4)]


def test_norm_layers_inside_separable_convs_are_not_decayed():
    from dsconv.training.optim import NORM_LAYERS, split_weight_decay

    cfg = compose_config(["model=mnist_cnn_separable_options"])
    model = build_model(cfg.model, (1, 28, 28), 10, act_layer_from_config(cfg.activation))
    norms = [(m, mod) for m, mod in model.named_modules() if isinstance(mod, NORM_LAYERS)]
    norm = {f"{m}.{n}" for m, mod in norms for n, _ in mod.named_parameters()}
    decay, plain = split_weight_decay(model)
    assert norm and norm <= set(plain) and not norm & set(decay)
    assert all(dict(model.named_parameters())[n].ndim > 1 for n in decay)


# ------------------------------------------------------------------ objectives and numeric ranges
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("objective=test_accuracy", "objective=test_accuracy cannot be optimised"),
        ("objective=[best_val_acc,test_loss]", "objective=test_loss cannot be optimised"),
        ("objective=[]", "names no metric"),
        ("optimizer.lr=nan", "optimizer.lr=nan is not a finite number"),
        ("optimizer.lr=inf", "optimizer.lr=inf is not a finite number"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1 must be >= 0"),
        ("optimizer.norm_weight_decay=-1", "optimizer.norm_weight_decay=-1 must be >= 0"),
        ("trainer.label_smoothing=1.0", r"trainer.label_smoothing=1.0 is outside \[0, 1\)"),
        ("trainer.early_stopping.min_delta=-0.5", "trainer.early_stopping.min_delta=-0.5 must be >= 0"),
        ("scheduler.warmup_epochs=-1", "scheduler.warmup_epochs=-1 must be >= 0"),
        ("trainer.num_threads=0", "trainer.num_threads=0 must be >= 1"),
        ("trainer.grad_clip=inf", "trainer.grad_clip=inf is not a finite number"),
        ("optimizer.betas=[1.5,0.9]", r"optimizer.betas\[0\]=1.5 is outside \[0, 1\)"),
        ("optimizer.eps=-1", "optimizer.eps=-1 must be >= 0"),
        ("scheduler=plateau scheduler.factor=1.5", r"scheduler.factor=1.5 is outside \(0, 1\)"),
        ("scheduler=onecycle scheduler.pct_start=0", "scheduler.pct_start=0 must be > 0"),
        ("scheduler=step scheduler.step_size=0", "scheduler.step_size=0 must be >= 1"),
        ("dataset.augment.crop_padding=-2", "dataset.augment.crop_padding=-2 must be >= 0"),
    ],
)
def test_objectives_and_numeric_ranges_are_checked(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate_config(compose_config(override.split()))
    assert "\n" not in str(info.value)


def test_objective_may_be_a_list_of_selection_and_cost_metrics():
    from dsconv.training.run_metrics import objective_value

    validate_config(compose_config(["objective=[best_val_acc,macs_per_image]"]))
    metrics = {"best_val_acc": 0.9, "macs_per_image": 1000, "latency_ms_b1": None}
    assert objective_value(metrics, "best_val_acc") == 0.9
    assert objective_value(metrics, OmegaConf.create(["best_val_acc", "macs_per_image"])) == [0.9, 1000.0]
    assert math.isnan(objective_value(metrics, "latency_ms_b1"))
    with pytest.raises(ConfigError, match="needs profile_inference=true"):
        validate_config(compose_config(["objective=latency_ms_b1", "profile_inference=false"]))


def test_label_smoothing_reaches_the_training_loss_only():
    import torch

    from dsconv.training.criterion import build_criterion

    cfg = compose_config(["trainer.label_smoothing=0.2"])
    criterion, teacher = build_criterion(cfg, None, torch.device("cpu"))
    logits, labels = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    want = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2)
    assert teacher is None and torch.equal(criterion(logits, labels, torch.zeros(6, 1, 2, 2)), want)


# ------------------------------------------------------------------ every class of numeric key
@pytest.mark.parametrize(
    ("override", "message"),
    [
        # counts: integers with a floor
        ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0 must be >= 1"),
        ("trainer.max_skipped_steps=-1", "trainer.max_skipped_steps=-1 must be >= 0"),
        ("trainer.checkpoint_every_steps=1.5", "trainer.checkpoint_every_steps=1.5 is not an integer"),
        ("trainer.early_stopping.patience=-1", "trainer.early_stopping.patience=-1 must be >= 0"),
        ("trainer.early_stopping.patience=inf", "trainer.early_stopping.patience=inf is not an integer"),
        ("scheduler=plateau scheduler.patience=1.5", "scheduler.patience=1.5 is not an integer"),
        ("scheduler=plateau scheduler.patience=-2", "scheduler.patience=-2 must be >= 0"),
        ("dataset.val_size=0", "dataset.val_size=0 must be >= 1"),
        ("dataset=synthetic dataset.num_test=0", "dataset.num_test=0 must be >= 1"),
        ("dataset=synthetic dataset.num_classes=1", "dataset.num_classes=1 must be >= 2"),
        ("dataset=synthetic dataset.image_size=0", "dataset.image_size=0 must be >= 1"),
        ("dataset=synthetic dataset.channels=0", "dataset.channels=0 must be >= 1"),
        ("dataset.image_size=abc", "dataset.image_size='abc' is not an integer"),
        ("+dataset.limit_train=0", "dataset.limit_train=0 must be >= 1"),
        # seeds: integers >= 0
        ("trainer.seed=-1", "trainer.seed=-1 must be >= 0"),
        ("dataset.split_seed=-1", "dataset.split_seed=-1 must be >= 0"),
        ("dataset=synthetic dataset.data_seed=0.5", "dataset.data_seed=0.5 is not an integer"),
        # non-negative reals, nan and inf refused
        ("dataset=synthetic dataset.noise=-0.1", "dataset.noise=-0.1 must be >= 0"),
        ("dataset=synthetic dataset.noise=nan", "dataset.noise=nan is not a finite number"),
        ("trainer.early_stopping.min_delta=inf", "trainer.early_stopping.min_delta=inf is not a finite number"),
        ("scheduler.warmup_epochs=nan", "scheduler.warmup_epochs=nan is not a finite number"),
        ("optimizer.weight_decay=nan", "optimizer.weight_decay=nan is not a finite number"),
        ("trainer.grad_clip=0", "trainer.grad_clip=0 must be > 0"),
        ("trainer.grad_clip=-1", "trainer.grad_clip=-1 must be > 0"),
        # fractions: bounded on both sides
        ("optimizer=sgd optimizer.momentum=1.0", r"optimizer.momentum=1.0 is outside \[0, 1\)"),
        ("optimizer=sgd optimizer.momentum=-0.5", "optimizer.momentum=-0.5 must be >= 0"),
        ("optimizer=rmsprop optimizer.alpha=1.5", r"optimizer.alpha=1.5 is outside \[0, 1\]"),
        ("dataset.test_fraction=1.5", r"dataset.test_fraction=1.5 is outside \(0, 1\)"),
        ("dataset.test_fraction=0", "dataset.test_fraction=0 must be > 0"),
        ("scheduler.warmup_start_factor=0", "scheduler.warmup_start_factor=0 must be > 0"),
        ("scheduler.min_lr_factor=2", r"scheduler.min_lr_factor=2 is outside \[0, 1\]"),
        ("model.dropout=nan", "model.dropout=nan is not a finite number"),
        ("model=standard model.fc_dropout=-0.1", "model.fc_dropout=-0.1 must be >= 0"),
        ("model=densenet4 model.compression=0", "model.compression=0 must be > 0"),
        # model sizes, single and per stage
        ("model.hidden=-1", "model.hidden=-1 must be >= 1"),
        ("model.channels=[4,-8,8]", r"model.channels\[1\]=-8 must be >= 1"),
        ("model.channels=5", "model.channels=5 is not a list"),
        ("model.kernel_size=[3,3,nan]", r"model.kernel_size\[2\]=nan is not an integer"),
        ("model.depth_multiplier=nan", "model.depth_multiplier=nan is not an integer"),
        ("model=scratch_transformer model.heads=0", "model.heads=0 must be >= 1"),
        ("model=scratch_transformer model.mlp_ratio=inf", "model.mlp_ratio=inf is not a finite number"),
        ("model=densenet4 model.block_layers=[4,0,8,6]", r"model.block_layers\[1\]=0 must be >= 1"),
        # optional groups
        ("+distill.alpha=1.5", r"distill.alpha=1.5 is outside \[0, 1\]"),
        ("+distill.alpha=nan", "distill.alpha=nan is not a finite number"),
        ("+distill.temperature=0", "distill.temperature=0 must be > 0"),
        ("+distill.temperature=inf", "distill.temperature=inf is not a finite number"),
        ("+prune.finetune_epochs=-1", "prune.finetune_epochs=-1 must be >= 1"),
        # booleans, choices, names and groups
        ("trainer.compile=abc", "trainer.compile='abc' is not a boolean"),
        ("trainer.distributed.sync_bn=2", "trainer.distributed.sync_bn=2 is not a boolean"),
        ("dataset.augment.hflip=yes", "dataset.augment.hflip='yes' is not a boolean"),
        ("tensorboard=1", "tensorboard=1 is not a boolean"),
        ("dataset.normalize=foo", "dataset.normalize='foo' is unknown: choose one of half, stats"),
        ("trainer.distributed.batch_size_semantics=foo", "batch_size_semantics='foo' is unknown"),
        ("trainer.distributed.backend=mpi", "trainer.distributed.backend='mpi' is unknown"),
        ("optimizer.name=5", "optimizer.name=5 is not a name"),
        ("trainer.early_stopping=5", "trainer.early_stopping=5 is not a group of keys"),
        ("dataset.augment=null", "dataset.augment=None is not a group of keys"),
        ("model.conv_options=5", "model.conv_options=5 is not a group of keys"),
        ("optimizer.betas=nan", "optimizer.betas=nan must hold two numbers"),
        # keys that only make sense together
        ("optimizer=sgd optimizer.nesterov=true optimizer.momentum=0", "nesterov=true needs optimizer.momentum"),
    ],
)
def test_every_class_of_key_is_checked(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate_config(compose_config(override.split()))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override",
    [
        "trainer.grad_clip=1.0",
        "optimizer=sgd optimizer.nesterov=true",
        "+distill.alpha=1.0 +distill.temperature=1",
        "+dataset.limit_train=null",
        "trainer.checkpoint_every_steps=0",
        "scheduler.min_lr_factor=1.0",
        "model.kernel_size=[3,5,7]",
    ],
)
def test_edge_values_that_mean_something_pass(override):
    validate_config(compose_config(override.split()))


def test_model_arithmetic_errors_become_one_line(monkeypatch):
    """A builder that trips over a size (a zero divisor, a negative dimension) is a ConfigError, not a traceback."""
    import dsconv.registry

    def broken(*args, **kwargs):
        raise RuntimeError("Trying to create tensor with negative dimension -1: [-1, 128]")

    monkeypatch.setattr(dsconv.registry, "check_model", broken)
    with pytest.raises(ConfigError, match=r"^model mnist_cnn rejected its options \(Trying to create") as info:
        validate_config(compose_config())
    assert "\n" not in str(info.value)
