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
