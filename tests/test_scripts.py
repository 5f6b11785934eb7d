"""The study driver's pieces: which overrides each variant runs with, and what gets committed."""

from __future__ import annotations

import importlib.util
from argparse import Namespace

from dsconv.paths import REPO_ROOT

spec = importlib.util.spec_from_file_location("study", REPO_ROOT / "scripts" / "study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_each_variant_runs_with_its_overrides(tmp_path):
    args = Namespace(finetune_epochs=2)
    pair = study.PAIRS["mnist_cnn"]
    teacher = tmp_path / "standard" / "seed1"
    assert study.variant_overrides("ds", pair, tmp_path, 1, args) == ["model=mnist_cnn_separable"]
    assert study.variant_overrides("ds_kd", pair, tmp_path, 1, args) == [
        "model=mnist_cnn_separable",
        f"+distill.teacher={teacher}",
    ]
    assert study.variant_overrides("ds_equal_macs", pair, tmp_path, 1, args) == [
        "model=mnist_cnn_separable",
        "+model.match=macs",
        "+model.match_to=mnist_cnn",
    ]
    assert study.variant_overrides("pruned", pair, tmp_path, 1, args) == [
        "model=mnist_cnn",
        f"+prune.from={teacher}",
        "+prune.match_to=mnist_cnn_separable",
        "+prune.finetune_epochs=2",
    ]


def test_only_small_artifacts_are_copied(tmp_path):
    run = tmp_path / "runs" / "ds" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "tensorboard").mkdir()
    for name in (*study.ARTIFACTS, "checkpoints/best.pt", "tensorboard/events.out", "curves.png"):
        (run / name).write_text("x")
    (tmp_path / "runs" / "ds" / "seed1").mkdir()  # unfinished: no metrics.json, not copied
    study.copy_artifacts(tmp_path / "runs", tmp_path / "results")
    copied = sorted(p.relative_to(tmp_path / "results").as_posix() for p in (tmp_path / "results").rglob("*"))
    assert copied == ["ds", "ds/seed0", *sorted(f"ds/seed0/{name}" for name in study.ARTIFACTS)]


def test_the_bench_measures_one_seed_of_each_network_paired_with_standard(tmp_path):
    variants = list(study.VARIANTS)
    for variant in variants:
        run_dir = tmp_path / variant / "seed2"
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text("dataset:\n  name: mnist\nmodel:\n  name: mnist_cnn\n")
    command = study.bench_command(tmp_path, variants, 2, tmp_path / "out")
    models = next(arg for arg in command if arg.startswith("models="))
    assert models.count("{run:") == 5 and "ds_kd" not in models  # the student is the DS network
    assert f"{{run:'{tmp_path}/standard/seed2',label:'mnist_cnn/standard'}}" in models
    pruned = f"{{run:'{tmp_path}/pruned/seed2',label:'mnist_cnn/pruned',pair_with:'mnist_cnn/standard'}}"
    assert pruned in models
    assert f"output.dir={tmp_path / 'out'}" in command and "dtypes=[fp32]" in command
