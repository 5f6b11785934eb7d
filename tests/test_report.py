"""dsconv-report on real (tiny) runs: grouping by seed, pairs, Welch and Mann-Whitney tests, failures, files."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf
from scipy import stats

from dsconv.report.cli import main as report_main
from dsconv.train import train
from support import TINY_RUN, compose_config


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Four finished runs (standard/separable x seeds 0, 1), one failure, one killed run."""
    root = tmp_path_factory.mktemp("sweep")
    for index, (conv, seed) in enumerate([(c, s) for c in ("standard", "separable") for s in (0, 1)]):
        cfg = compose_config([*TINY_RUN, f"model.conv={conv}", f"trainer.seed={seed}", "tensorboard=false"])
        train(cfg, root / str(index))
    failed = root / "4"
    failed.mkdir()
    cfg = compose_config([*TINY_RUN, "optimizer.lr=0.5"])
    (failed / "failure.json").write_text(
        json.dumps(
            {
                "error": "loss is NaN at epoch 1 step 3",
                "type": "NonFiniteLossError",
                "overrides": ["optimizer.lr=0.5"],
                "config": OmegaConf.to_container(cfg, resolve=True),
            }
        )
    )
    killed = root / "5" / ".hydra"
    killed.mkdir(parents=True)
    (killed / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return root


def test_report_groups_pairs_and_tests(sweep_dir, tmp_path):
    assert report_main([str(sweep_dir), "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "metrics_comparison.json").read_text())
    groups = {g["label"]: g for g in payload["groups"]}
    assert set(groups) == {"mnist_cnn [standard]", "mnist_cnn [separable]"}
    for group in groups.values():
        assert sorted(group["seeds"]) == [0, 1]
        assert group["metrics"]["test_accuracy"]["n"] == 2
    runs = {
        g["label"]: [json.loads((sweep_dir / p.rsplit("/", 1)[-1] / "metrics.json").read_text()) for p in g["runs"]]
        for g in payload["groups"]
    }
    acc_std = [m["test_accuracy"] for m in runs["mnist_cnn [standard]"]]
    acc_sep = [m["test_accuracy"] for m in runs["mnist_cnn [separable]"]]
    (pair,) = payload["pairs"]
    assert pair["accuracy_diff"] == pytest.approx(sum(acc_sep) / 2 - sum(acc_std) / 2)
    if len(set(acc_std)) > 1 or len(set(acc_sep)) > 1:
        assert pair["welch_p_value"] == pytest.approx(stats.ttest_ind(acc_sep, acc_std, equal_var=False).pvalue)
    else:  # every seed tied within its group: no t-test, however different the groups are
        assert pair["welch_p_value"] is None and pair["note"].startswith("no variance within groups")
    exact = stats.PermutationMethod(n_resamples=float("inf"))
    if len(set(acc_std + acc_sep)) > 1:
        mw = stats.mannwhitneyu(acc_sep, acc_std, alternative="two-sided", method=exact).pvalue
        assert pair["mannwhitney_p_value"] == pytest.approx(mw)
    (comparison,) = payload["comparisons"]
    assert [r["role"] for r in comparison["rows"]] == ["standard", "DS"]
    assert comparison["rows"][0]["welch_p_value_vs_ds"] == pair["welch_p_value"]
    params_std = runs["mnist_cnn [standard]"][0]["params_total"]
    params_sep = runs["mnist_cnn [separable]"][0]["params_total"]
    assert pair["param_ratio"] == pytest.approx(params_std / params_sep)
    statuses = sorted(r["status"] for r in payload["runs"])
    assert statuses == ["failed", "ok", "ok", "ok", "ok", "unfinished"]

    report = (tmp_path / "report.md").read_text()
    assert "| mnist_cnn [standard] | mnist_cnn [separable] |" in report
    assert "loss is NaN at epoch 1 step 3" in report
    assert "no metrics.json (killed" in report
    assert "Rule:" in report and "overfitting" in report
    for name in payload["figures"].values():
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert {"learning_curves", "pareto_accuracy_vs_macs"} <= set(payload["figures"])


def test_report_on_missing_dir_is_one_line_error(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert report_main([str(tmp_path)]) == 2
    assert "no runs found" in capsys.readouterr().err


def test_single_seed_pairs_say_n_too_small(sweep_dir, tmp_path):
    assert report_main([str(sweep_dir / "0"), str(sweep_dir / "2"), "--out", str(tmp_path)]) == 0
    (pair,) = json.loads((tmp_path / "metrics_comparison.json").read_text())["pairs"]
    assert pair["welch_p_value"] is None and "n too small" in pair["note"]
