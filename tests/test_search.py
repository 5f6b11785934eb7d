"""The Pareto search (+hparams_search=pareto): its search space, resume bookkeeping, front and re-runs, and
a 3-trial search on the bundled digits that is killed after its first trial and resumed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.trial import TrialState

from dsconv.errors import ConfigError
from dsconv.paths import CONF_DIR, REPO_ROOT
from dsconv.search import rerun, setup, space
from dsconv.search.front import SearchError, front, load_trials, open_study
from support import cli_env

TRAIN = [sys.executable, str(REPO_ROOT / "scripts" / "train.py")]
# Tiny trials: a 4-8-8 channel mnist_cnn on digits for one epoch; widths kept small.
SEARCH = [
    "-m",
    "+hparams_search=pareto",
    "hydra.sweeper.n_trials=3",
    "model=mnist_cnn",
    "dataset=digits",
    "trainer.epochs=1",
    "model.channels=[4,8,8]",
    "model.hidden=16",
    "search.widths=[0.5,1.0]",
    "tensorboard=false",
    "profile_inference=false",
    "trainer.progress_bar=false",
]
TINY = [o for o in SEARCH[1:] if not o.startswith(("+hparams_search", "hydra."))]


def compose_search(tmp_path: Path, overrides: list[str] = (), base: list[str] = TINY):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=["+hparams_search=pareto", *base, f"paths.output_dir={tmp_path}", *overrides],
            return_hydra_config=True,
        )


def trial_overrides(trial) -> list[str]:
    return [f"{name}={value}" for name, value in trial.params.items()]  # exactly what the sweeper launches


def test_suggested_overrides_compose_into_per_stage_lists(tmp_path):
    cfg = compose_search(tmp_path)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen_kinds = set()
    for _ in range(8):
        trial = study.ask()
        space.suggest(cfg, trial)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            run = compose("config", overrides=["+hparams_search=pareto", *TINY, *trial_overrides(trial)])
        model = OmegaConf.to_container(run.model, resolve=True)
        arch = space.decode(trial.params, standard_kernel=3)
        assert model["conv"] == arch["conv"] and len(arch["conv"]) == 3
        assert model["kernel_size"] == arch["kernel_size"]
        assert (model["depth_multiplier"], model["width"]) == (arch["depth_multiplier"], arch["width"])
        for kind, kernel in zip(arch["conv"], arch["kernel_size"]):
            assert kernel == 3 if kind == "standard" else kernel == trial.params[space.DW_KERNEL_PARAM]
        assert run.search.trial == trial.number
        assert list(run.objective) == ["best_val_acc", "macs_per_image"]
        seen_kinds.update(arch["conv"])
        study.tell(trial, [0.5, 1.0])
    assert seen_kinds == {"standard", "separable", "inverted_residual"}


def test_cost_key_picks_the_objective(tmp_path):
    for cost, metric in (("macs", "macs_per_image"), ("params", "params_total"), ("latency", "latency_ms_b1")):
        cfg = compose_search(tmp_path, [f"search.cost={cost}", "profile_inference=true"])
        assert list(cfg.objective) == ["best_val_acc", metric]
        assert setup.check_objectives(cfg) == cost


def test_prepare_refuses_bad_searches(tmp_path):
    with pytest.raises(ConfigError, match=r"^search.cost=flops is unknown: choose one of macs, params, latency$"):
        setup.prepare(compose_search(tmp_path, ["search.cost=flops"]))
    with pytest.raises(ConfigError, match=r"search\.cost=latency needs profile_inference=true"):
        setup.prepare(compose_search(tmp_path, ["search.cost=latency"]))
    with pytest.raises(ConfigError, match=r"search.kinds names unknown conv kinds \['dense'\]"):
        setup.prepare(compose_search(tmp_path, ["search.kinds=[standard,dense]"]))
    with pytest.raises(ConfigError, match=r"^model=scratch_transformer cannot be searched \(unknown option model"):
        setup.prepare(compose_search(tmp_path, ["model=scratch_transformer"], base=[]))
    with pytest.raises(ConfigError, match=r"^model.conv is what the search varies: drop model.conv=\.\.\. and"):
        setup.prepare(compose_search(tmp_path, ["model.conv=separable"]))
    assert not (tmp_path / "search").exists()  # refused before anything was written
    setup.prepare(compose_search(tmp_path))
    with pytest.raises(ConfigError, match=r"started with other overrides \(differing: trainer.epochs=2\)"):
        setup.prepare(compose_search(tmp_path, ["trainer.epochs=2"]))


def test_prepare_resumes_a_killed_study(tmp_path):
    cfg = compose_search(tmp_path, ["hydra.sweeper.n_trials=5"])
    plan = setup.prepare(cfg)
    assert (plan.requested, plan.finished, plan.interrupted, plan.remaining, plan.seed) == (5, 0, (), 5, 0)
    study = open_study(tmp_path / "search" / "mnist_cnn_digits_macs")
    corners = [study.ask(), study.ask()]  # the two enqueued corners come first
    for trial in corners:
        space.suggest(cfg, trial)
    assert [t.params[space.conv_param(0)] for t in corners] == ["standard", "separable"]
    study.tell(corners[0], [0.9, 100.0])  # corners[1] stays RUNNING, as if its process was killed
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    plan = setup.prepare(cfg)
    assert (plan.finished, plan.interrupted, plan.remaining, plan.seed) == (2, (1,), 3, 3)
    study = open_study(tmp_path / "search" / "mnist_cnn_digits_macs")
    states = [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert [t.state for t in study.trials] == states  # the interrupted corner is queued again
    assert study.trials[3].system_attrs["fixed_params"] == study.trials[1].system_attrs["fixed_params"]
    assert study.user_attrs["interrupted_trials"] == [1]
    plan = setup.prepare(cfg)  # the interrupted trial stays uncounted on later launches
    assert (plan.finished, plan.interrupted, plan.remaining) == (2, (), 3)
    trials = load_trials(tmp_path / "search" / "mnist_cnn_digits_macs")
    assert [(t["state"], t["interrupted"], t["corner"]) for t in trials] == [
        ("COMPLETE", False, "all-standard"),
        ("FAIL", True, "all-separable"),
        ("FAIL", False, None),
        ("WAITING", False, None),
    ]


def _trial(number, accuracy, cost):
    return {"number": number, "accuracy": accuracy, "cost": cost}


def test_front_keeps_ties_and_drops_dominated():
    trials = [_trial(0, 0.9, 10.0), _trial(1, 0.8, 5.0), _trial(2, 0.8, 6.0), _trial(3, 0.9, 10.0)]
    trials += [_trial(4, 0.95, 50.0), _trial(5, 0.5, 5.0), _trial(6, None, None), _trial(7, float("nan"), 1.0)]
    assert [t["number"] for t in front(trials)] == [1, 0, 3, 4]
    with pytest.raises(SearchError):
        front([_trial(0, None, None)])


def test_rerun_summary_is_test_accuracy_over_seeds(tmp_path):
    trial = {"number": 4, "label": "S-D-D k5 m1 w1", "corner": None, "conv": ["standard", "separable", "separable"]}
    trial.update(kernel_size=[3, 5, 5], depth_multiplier=1, width=1.0, cost_metric="macs_per_image", cost=10.0)
    trial["accuracy"] = 0.9
    runs = []
    for seed, accuracy in zip((0, 1, 2), (0.5, 0.7, 0.9)):
        run_dir = tmp_path / f"seed_{seed}"
        run_dir.mkdir()
        (run_dir / "metrics.json").write_text(json.dumps({"test_accuracy": accuracy}))
        runs.append((trial, seed, run_dir))
    entry = rerun.summarize(tmp_path, runs, [0, 1, 2])["configs"][0]
    assert (entry["n"], entry["test_accuracy_mean"], entry["search_val_acc"]) == (3, pytest.approx(0.7), 0.9)
    assert entry["test_accuracy_std"] == pytest.approx(0.2)
    assert "| 4 | S-D-D k5 m1 w1 | 10 macs_per_image | 90.00 | 70.00 ± 20.00 | 3 |" in rerun.table(
        rerun.summarize(tmp_path, runs, [0, 1, 2])
    )
    search_overrides = ["+hparams_search=pareto", "search.cost=params", "trainer.seed=3", "dataset=digits"]
    assert rerun.base_overrides(search_overrides) == ["dataset=digits"]


def test_rerun_needs_three_seeds(tmp_path, capsys):
    assert rerun.main([str(tmp_path), "--seeds", "0", "1", "1"]) == 2
    assert capsys.readouterr().err == "error: --seeds 0 1: give at least 3 distinct seeds\n"
    assert rerun.main([str(tmp_path)]) == 2
    assert "no search.db in" in capsys.readouterr().err


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = cli_env(tmp_path)
    return subprocess.run([*TRAIN, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_bad_searches_fail_in_one_line_before_any_trial(tmp_path):
    result = _cli([*SEARCH, "search.cost=flops", f"paths.output_dir={tmp_path}"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: search.cost=flops is unknown: choose one of macs, params, latency\n" in result.stderr
    result = _cli([*SEARCH[1:], f"paths.output_dir={tmp_path}"], tmp_path)  # no -m
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.endswith("error: +hparams_search=pareto is a search: run it as a sweep, with -m\n")
    assert not (tmp_path / "search").exists() and not (tmp_path / "runs").exists()


def _states(db: Path) -> list[str]:
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
            return [row[0] for row in connection.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.OperationalError:  # not created yet, or locked by the writer for a moment
        return []


def _snapshot(sweep: Path) -> dict[int, tuple]:
    return {t.number: (t.state, t.params, t.values) for t in open_study(sweep).trials}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Start a 3-trial search, SIGKILL it while its second trial runs, relaunch the same command twice."""
    root = tmp_path_factory.mktemp("pareto")
    command = [*TRAIN, *SEARCH, f"paths.output_dir={root}"]
    sweep = root / "search" / "mnist_cnn_digits_macs"
    log = (root / "first.log").open("w")
    first = subprocess.Popen(command, cwd=root, env=cli_env(root), stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 300
    while _states(sweep / "search.db")[:2] != ["COMPLETE", "RUNNING"]:
        assert first.poll() is None, (root / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the first trial did not finish in time"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    log.close()
    before = _snapshot(sweep)
    first_metrics = sweep / "0" / "metrics.json"
    stamp = first_metrics.stat().st_mtime_ns
    runs = [
        subprocess.run(command, cwd=root, env=cli_env(root), capture_output=True, text=True, timeout=600)
        for _ in range(2)
    ]
    return {"sweep": sweep, "before": before, "stamp": stamp, "runs": runs, "first_metrics": first_metrics}


@pytest.mark.slow
def test_search_resumes_after_kill_without_redoing_trials(killed_and_resumed):
    sweep, before = killed_and_resumed["sweep"], killed_and_resumed["before"]
    resumed, again = killed_and_resumed["runs"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert again.returncode == 0, again.stderr[-3000:]
    after = _snapshot(sweep)
    complete = [n for n, (state, _, _) in after.items() if state == TrialState.COMPLETE]
    interrupted = [n for n, (state, _, _) in before.items() if state == TrialState.RUNNING]
    assert interrupted == [1] and len(complete) == 3
    assert len(after) == 3 + len(interrupted)  # no trial ran twice, none is missing
    assert all(after[n][0] == TrialState.FAIL for n in interrupted)
    assert open_study(sweep).user_attrs.get("interrupted_trials", []) == interrupted
    for number, (state, params, values) in before.items():
        if state == TrialState.COMPLETE:
            assert after[number] == (state, params, values)  # kept as it was, not redone
    assert killed_and_resumed["first_metrics"].stat().st_mtime_ns == killed_and_resumed["stamp"]
    assert "3 of 3 trials finished, 0 to run" in again.stderr + again.stdout


@pytest.mark.slow
def test_search_trials_are_ordinary_run_dirs_with_a_front(killed_and_resumed):
    sweep = killed_and_resumed["sweep"]
    trials = load_trials(sweep)
    done = [t for t in trials if t["state"] == "COMPLETE"]
    assert [t["corner"] for t in done[:2]] == ["all-standard", "all-separable"]  # the corners come first
    for trial in done:
        run_dir = Path(trial["run_dir"])
        assert run_dir == sweep / str(trial["number"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert trial["objectives"] == {
            "best_val_acc": pytest.approx(metrics["best_val_acc"]),
            "macs_per_image": metrics["macs_per_image"],
        }
        model = OmegaConf.load(run_dir / "config.yaml").model
        assert list(model.conv) == trial["conv"] and list(model.kernel_size) == trial["kernel_size"]
        assert (model.depth_multiplier, model.width) == (trial["depth_multiplier"], trial["width"])
        assert (run_dir / "checkpoints" / "best.pt").is_file()
    saved = json.loads((sweep / "front.json").read_text())
    assert [t["number"] for t in saved] == [t["number"] for t in front(trials)]
    costs = {t["corner"]: t["cost"] for t in done[:2]}
    assert costs["all-separable"] < costs["all-standard"]


@pytest.mark.slow
def test_rerun_dry_run_gives_plain_runs_of_the_front(killed_and_resumed, capsys):
    sweep = killed_and_resumed["sweep"]
    best = front(load_trials(sweep))
    assert rerun.main([str(sweep), "--dry-run", "--override", "trainer.epochs=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * len(rerun.distinct_configurations(best)[0])  # a repeated configuration runs once
    first = best[0]
    expected = [
        *sorted([o for o in TINY if not o.startswith("search.")] + [f"paths.output_dir={sweep.parents[1]}"]),
        f"++model.conv=[{','.join(first['conv'])}]",
        f"++model.kernel_size=[{','.join(map(str, first['kernel_size']))}]",
        f"++model.depth_multiplier={first['depth_multiplier']}",
        f"++model.width={first['width']:g}",
        "trainer.seed=0",
        "trainer.epochs=2",
        f"hydra.run.dir={sweep / 'rerun' / ('trial_' + str(first['number'])) / 'seed_0'}",
    ]
    assert rerun.run_commands(sweep, best, [0, 1, 2], ["trainer.epochs=2"], sweep / "rerun")[0][3][3:] == expected


@pytest.mark.slow
def test_report_on_a_search_writes_its_front_plot_and_table(killed_and_resumed, tmp_path):
    from dsconv.report.cli import main as report_main

    sweep = killed_and_resumed["sweep"]
    out = tmp_path / "report"
    assert report_main([str(sweep), "--out", str(out)]) == 0
    trials = json.loads((out / "trials.json").read_text())
    assert [t["number"] for t in trials] == [t["number"] for t in load_trials(sweep)]
    assert [t["number"] for t in json.loads((out / "front.json").read_text())] == [
        t["number"] for t in front(load_trials(sweep))
    ]
    assert (out / "pareto_search.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "report.md").read_text()
    assert "## The front" in text and "all-standard (trial 0" in text
    # Redrawn from the committed files alone (no search.db): the same front and table.
    again = tmp_path / "again"
    assert report_main([str(out), "--out", str(again)]) == 0
    assert (again / "report.md").read_text() == text


def test_a_configuration_proposed_twice_is_re_run_once():
    def trial(number, width):
        return {
            "number": number,
            "conv": ["separable"] * 3,
            "kernel_size": [3] * 3,
            "depth_multiplier": 1,
            "width": width,
        }

    trials = [trial(4, 0.5), trial(9, 1.0), trial(12, 0.5), trial(30, 0.5)]
    distinct, copies = rerun.distinct_configurations(trials)
    assert [t["number"] for t in distinct] == [4, 9]
    assert {k: [t["number"] for t in v] for k, v in copies.items()} == {4: [12, 30]}
