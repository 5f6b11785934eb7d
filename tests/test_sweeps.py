"""Experiments, sweeps, Optuna search and launchers compose and run (tiny, synthetic)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dsconv.config import validate_config
from dsconv.paths import CONF_DIR, REPO_ROOT
from support import TINY_RUN, cli_env, compose_config

TRAIN = [sys.executable, str(REPO_ROOT / "scripts" / "train.py")]


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_experiments_compose(name):
    cfg = compose_config([f"experiment={name}"])
    validate_config(cfg)


def test_cifar10_cnn_pair_experiment_matches_its_document():
    cfg = compose_config(["experiment=cifar10_cnn_pair"])
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        "sgd",
        0.1,
        0.9,
        1e-4,
    )
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.dataset.name) == (128, 10, "cifar10")


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
def test_sweep_presets_compose(name):
    compose_config([f"+sweep={name}"])


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
    from omegaconf import OmegaConf

    dirs = set()
    for _ in range(2):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", return_hydra_config=True)
        OmegaConf.clear_cache(cfg)
        dirs.add(str(cfg.hydra.run.dir))
    assert len(dirs) == 2
