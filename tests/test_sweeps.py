"""Experiments, sweeps, Optuna search and launchers compose and run (tiny, synthetic)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from dsconv.config import validate_config
from dsconv.paths import CONF_DIR, REPO_ROOT
from support import TINY_RUN, cli_env, compose_config

TRAIN = [sys.executable, str(REPO_ROOT / "scripts" / "train.py")]


def _sweeper_params(overrides: list[str]) -> dict[str, str]:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    return {str(k): str(v) for k, v in (cfg.hydra.sweeper.params or {}).items()}


def _jobs(params: dict[str, str]) -> list[list[str]]:
    """Every job's overrides of a basic sweeper's grid (comma-separated values, cartesian product)."""
    import itertools

    axes = [[f"{key}={value}" for value in values.split(",")] for key, values in params.items()]
    return [list(job) for job in itertools.product(*axes)]


# Each experiment: (dataset.name, model.name of the first job, its sweep grid).
EXPERIMENTS = {
    "cifar10_cnn_pair": ("cifar10", "cifar_cnn", {"model": "standard,depthwise", "trainer.seed": "0,1,2"}),
    "cifar10_densenet4": ("cifar10", "densenet4", {"model": "densenet4,densenet4_standard", "trainer.seed": "0,1,2"}),
    "mnist_separable_options": (
        "mnist",
        "mnist_cnn",
        {"model": "mnist_cnn,mnist_cnn_separable,mnist_cnn_separable_options", "trainer.seed": "0,1,2"},
    ),
    "mnist_speedrun": ("mnist", "mnist_cnn", {}),
    "fashion_mnist_speedrun": ("fashion_mnist", "mnist_cnn", {}),
}


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_job_of_every_experiment_validates(name):
    cfg = compose_config([f"experiment={name}"])
    validate_config(cfg)
    params = _sweeper_params([f"experiment={name}"])
    if name in EXPERIMENTS:  # a new preset is still validated job by job below
        dataset, model, grid = EXPERIMENTS[name]
        assert (cfg.dataset.name, cfg.model.name, params) == (dataset, model, grid)
    for job in _jobs(params) if params else []:
        job_cfg = compose_config([f"experiment={name}", *job])
        validate_config(job_cfg)
        overrides = dict(o.split("=", 1) for o in job)
        if "trainer.seed" in overrides:
            assert job_cfg.trainer.seed == int(overrides["trainer.seed"])


def test_cifar10_cnn_pair_experiment_matches_its_document():
    cfg = compose_config(["experiment=cifar10_cnn_pair"])
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        "sgd",
        0.1,
        0.9,
        1e-4,
    )
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.dataset.name) == (128, 10, "cifar10")


SWEEPS = {
    "activation": ("activation", "relu,leaky_relu,swish"),
    "batch_size": ("trainer.batch_size", "32,64,128,256"),
    "dropout": ("model.dropout", "0.0,0.1,0.3,0.5"),
    "lr": ("optimizer.lr", "3.0e-4,1.0e-3,3.0e-3,1.0e-2"),
    "optimizer": ("optimizer", "adam,rmsprop,sgd"),
}


def yaml_number(text: str) -> int | float:
    return int(text) if text.isdigit() else float(text)


def test_every_sweep_preset_has_its_expectation():
    # A new preset needs a line in SWEEPS (what it sweeps); the test below then checks it.
    assert {p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")} <= set(SWEEPS)


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_sweep_presets_sweep_their_key_over_three_seeds(name):
    key, values = SWEEPS[name]
    params = _sweeper_params([f"+sweep={name}"])
    assert params == {key: values, "trainer.seed": "0,1,2"}
    jobs = _jobs(params)
    assert len(jobs) == 3 * len(values.split(","))
    for job in jobs[::3]:  # one seed per value: the seeds change nothing that validation checks
        cfg = compose_config([f"+sweep={name}", *job])
        validate_config(cfg)
        want, got = job[0].split("=", 1)[1], OmegaConf.select(cfg, key)
        if key in ("activation", "optimizer"):  # a group choice: the composed group carries its name
            assert got.name == want
        else:
            assert got == float(want) and type(got) is type(yaml_number(want))


def _run(args, tmp_path, timeout=300):
    return subprocess.run(
        TRAIN + args, cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_optuna_three_trials_optimise_validation_metric(tmp_path):
    sweep = tmp_path / "optuna"
    result = _run(
        [
            "-m",
            "+hparams_search=optuna",
            "hydra.sweeper.n_trials=3",
            *TINY_RUN,
            "trainer.epochs=1",
            f"hydra.sweep.dir={sweep}",
            "tensorboard=false",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(sweep.glob("*/metrics.json"))
    assert len(runs) == 3
    best_logged = max(json.loads(p.read_text())["best_val_acc"] for p in runs)
    optimization = (sweep / "optimization_results.yaml").read_text()
    assert f"best_value: {best_logged}" in optimization


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "joblib"
    result = _run(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *TINY_RUN,
            "trainer.epochs=1",
            "trainer.seed=0,1",
            f"hydra.sweep.dir={sweep}",
            "tensorboard=false",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seeds = sorted(json.loads(p.read_text())["seed"] for p in sweep.glob("*/metrics.json"))
    assert seeds == [0, 1]


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "submitit"
    result = _run(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
            *TINY_RUN,
            "trainer.epochs=1",
            "model.conv=standard,separable",
            f"hydra.sweep.dir={sweep}",
            "tensorboard=false",
        ],
        tmp_path,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep.glob("*/metrics.json"))) == 2


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 240


def test_run_dirs_do_not_collide_within_a_second():
    from hydra import compose, initialize_config_dir

    import dsconv.train  # noqa: F401  (registers the dsconv_uid resolver, as the CLI does; else order-dependent)

    dirs = set()
    for _ in range(2):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", return_hydra_config=True)
        OmegaConf.clear_cache(cfg)
        dirs.add(str(cfg.hydra.run.dir))
    assert len(dirs) == 2
