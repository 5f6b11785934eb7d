"""Data-parallel training on the CPU (DDP over gloo, 2 processes through torchrun): the same metrics as
one process with the same global batch, one run dir per job, exact resume after a kill, and a SLURM-style
multi-task job through submitit_local.

Equivalence: 2 ranks x 16 images (batch_size_semantics=global, batch_size=32) against 1 process x 32,
with SyncBatchNorm, no dropout (dropout masks are per-rank noise by design) and SGD: Adam turns the
float noise in the gradient of a conv bias followed by BatchNorm (zero in exact arithmetic) into
lr-sized steps, so the two runs' biases, and with them BN's running means, drift apart although the
training losses agree. Every log row and test metric must agree within ``TOL`` (relative and absolute,
on losses); accuracies, F1 and the confusion matrix must be equal. Measured on this CPU (3 epochs, SGD
lr 0.5, 88% test accuracy): largest loss difference 9.5e-7 (val loss 6.9415612 vs 6.9415603 in the
unstable epoch 2, 1.4e-7 relative), test loss 6e-8; accuracies, F1, confusion matrix identical.
Validation (41) and test (81) splits have odd sizes, so the gathered shards differ in length.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsconv.data import BatchAugment, DeviceBatches, Normalize, Split
from dsconv.data.loader import shard
from dsconv.distributed import LaunchEnv, own_rank_state, per_rank_batch_size
from dsconv.errors import ConfigError
from dsconv.paths import REPO_ROOT
from dsconv.train import train
from dsconv.training.resume import resume_command
from dsconv.training.setup import run_training_config
from support import TINY_RUN, cli_env, compose_config, iter_tensors

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TRAIN_SCRIPT = str(REPO_ROOT / "scripts" / "train.py")
RUN = [
    *TINY_RUN,
    "dataset.val_size=41",
    "dataset.num_test=81",
    "model.dropout=0",
    "trainer.epochs=3",
    "trainer.device=cpu",
    "trainer.deterministic=true",
    "trainer.checkpoint_every_steps=2",
    "trainer.distributed.sync_bn=true",
    "optimizer=sgd",
    "optimizer.lr=0.5",
    "tensorboard=false",
    "profile_inference=false",
]
TOL = 1e-5  # relative and absolute, on losses; accuracies must be equal
COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc")

FAULT_RUNNER = """
import os, signal
import torch.nn.functional as F

if os.environ["RANK"] == os.environ["FAULT_RANK"]:
    real_ce, calls = F.cross_entropy, [0]
    at, signum = int(os.environ["FAULT_AT"]), getattr(signal, os.environ["FAULT_KIND"])

    def cross_entropy(*args, **kwargs):  # one call per training step, one per evaluation
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signum)
        return real_ce(*args, **kwargs)

    F.cross_entropy = cross_entropy
from dsconv.train import main
main()
"""


def _torchrun(tmp_path: Path, args: list[str], script: str = TRAIN_SCRIPT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TORCHRUN, script, *args],
        cwd=tmp_path,
        env=cli_env(tmp_path) | env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _log(run_dir: Path) -> list[dict[str, float]]:
    return [
        {k: float(row[k]) for k in ("epoch", *COMPARED)}
        for row in csv.DictReader((run_dir / "training_log.csv").open())
    ]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory) -> Path:
    """One uninterrupted 2-process run, shared by the tests (and by xdist workers, through a lock)."""
    from filelock import FileLock

    session = tmp_path_factory.getbasetemp()
    root = (session.parent if os.environ.get("PYTEST_XDIST_WORKER") else session) / "ddp_baseline"
    root.mkdir(exist_ok=True)
    with FileLock(str(root) + ".lock"):
        runs = sorted((root / "outputs").rglob("metrics.json"))
        if not runs:
            result = _torchrun(root, RUN)
            assert result.returncode == 0, result.stderr[-3000:]
            runs = sorted((root / "outputs").rglob("metrics.json"))
    return runs[0].parent


@pytest.mark.slow
def test_two_processes_write_one_run_dir_and_match_one_process(ddp_run, tmp_path):
    # Exactly one Hydra run dir, and nothing written by rank 1 anywhere else.
    root = ddp_run.parents[3]
    assert [p.parent for p in root.rglob(".hydra")] == [ddp_run]
    assert sorted(p.name for p in root.iterdir()) == ["outputs"]
    assert len(list(root.rglob("checkpoints"))) == 1 and len(list(root.rglob("*.log"))) == 1
    metrics = _metrics(ddp_run)
    assert (metrics["world_size"], metrics["global_batch_size"]) == (2, 32)

    single = tmp_path / "single"
    reference = train(compose_config(RUN), single)
    torch.use_deterministic_algorithms(False)
    assert [r["epoch"] for r in _log(ddp_run)] == [1.0, 2.0, 3.0]
    for got, want in zip(_log(ddp_run), _log(single), strict=True):
        for key in COMPARED:
            tol = TOL if key.endswith("loss") else 0
            assert got[key] == pytest.approx(want[key], rel=tol, abs=tol), key
    for key in ("test_accuracy", "test_f1_macro", "best_val_acc", "best_epoch"):
        assert metrics[key] == reference[key], key
    for key in ("test_loss", "best_val_loss"):
        assert metrics[key] == pytest.approx(reference[key], rel=TOL, abs=TOL), key
    assert json.loads((ddp_run / "confusion_matrix.json").read_text()) == json.loads(
        (single / "confusion_matrix.json").read_text()
    )


def _fault_run(tmp_path: Path, run_dir: Path, kind: str, rank: int, at: int, extra: list[str]):
    runner = tmp_path / "fault_runner.py"
    runner.write_text(FAULT_RUNNER)
    return _torchrun(
        tmp_path,
        [*RUN, *extra, f"hydra.run.dir={run_dir}"],
        str(runner),
        FAULT_KIND=kind,
        FAULT_RANK=str(rank),
        FAULT_AT=str(at),
    )


@pytest.mark.slow
def test_kill_then_preempt_one_rank_then_resume_is_bit_identical(ddp_run, tmp_path):
    """6 steps per epoch, a checkpoint every 2. 1: rank 0 (the writer) SIGKILLed inside step 5.
    2: resumed; SIGTERM reaches only rank 1, inside step 8: both ranks stop after step 8 and rank 0
    checkpoints it. 3: resumed to the end: bit-identical to the uninterrupted run."""
    run_dir = tmp_path / "run"
    result = _fault_run(tmp_path, run_dir, "SIGKILL", 0, 5, [])
    assert result.returncode != 0
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["trainer"]["step"] == 4 and len(last["ranks"]) == 2

    # After the resume: steps 5-6 are calls 1-2, validation 3, steps 7-8 are calls 4-5.
    result = _fault_run(tmp_path, run_dir, "SIGTERM", 1, 5, ["trainer.resume=auto"])
    assert result.returncode != 0
    assert "interrupted by SIGTERM at epoch 2, step 8" in result.stderr, result.stderr[-3000:]
    assert "torchrun --standalone --nproc_per_node=2" in result.stderr  # the resume hint keeps the launch shape
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["trainer"]["step"] == 8 and last["in_epoch"]["batches_done"] == 2

    result = _torchrun(tmp_path, [*RUN, f"hydra.run.dir={run_dir}", "trainer.resume=auto"])
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("last.pt", "best.pt"):
        got, want = (torch.load(d / "checkpoints" / name, weights_only=True) for d in (run_dir, ddp_run))
        parts = ("model", "optimizer", "ranks", "data_generator")
        got_t, want_t = (dict(iter_tensors({k: s[k] for k in parts})) for s in (got, want))
        assert got_t.keys() == want_t.keys() and len(want_t) > 20
        for key, tensor in want_t.items():
            assert torch.equal(got_t[key], tensor), f"{name}{key} differs"
        untimed = [
            [
                {k: v for k, v in row.items() if k not in ("epoch_time_s", "images_per_s")}
                for row in s["trainer"]["history"]
            ]
            for s in (got, want)
        ]
        assert untimed[0] == untimed[1]
    assert _log(run_dir) == _log(ddp_run)
    for key in ("test_accuracy", "test_loss", "best_val_loss", "per_class_f1"):
        assert _metrics(run_dir)[key] == _metrics(ddp_run)[key], key


@pytest.mark.slow
def test_submitit_local_job_with_two_tasks_trains_data_parallel(ddp_run, tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            TRAIN_SCRIPT,
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.timeout_min=5",
            *RUN,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = [p.parent for p in sweep.glob("*/metrics.json")]
    metrics = _metrics(job)
    assert metrics["world_size"] == 2
    # The same two-rank run as under torchrun, so the same numbers to the bit.
    assert _log(job) == _log(ddp_run)
    assert metrics["test_loss"] == _metrics(ddp_run)["test_loss"]


# ------------------------------------------------------------------ the pieces, in process
def test_rank_batches_together_are_the_single_process_batches_augmentation_included():
    split = Split(torch.randint(0, 256, (70, 1, 6, 6), dtype=torch.uint8), torch.arange(70))
    normalize, augment = Normalize([0.5], [0.5], "cpu"), BatchAugment(crop_padding=2, hflip=True)

    def batches(batch_size, rank, world):
        gen = torch.Generator().manual_seed(3)
        return list(
            DeviceBatches(
                split,
                batch_size,
                normalize,
                shuffle=True,
                drop_last=True,
                augment=augment,
                generator=gen,
                rank=rank,
                world_size=world,
            )
        )

    single, ranks = batches(12, 0, 1), [batches(4, r, 3) for r in range(3)]
    assert len(single) == len(ranks[0]) == 5
    for k, (images, labels) in enumerate(single):
        # Rank r holds positions r, r + 3, ... of the global batch.
        merged = torch.stack([ranks[r][k][0] for r in range(3)], 1).flatten(0, 1)
        assert torch.equal(merged, images)
        assert torch.equal(torch.stack([ranks[r][k][1] for r in range(3)], 1).flatten(), labels)


def test_shards_cover_the_split_in_order():
    split = Split(torch.zeros(41, 1, 2, 2, dtype=torch.uint8), torch.arange(41))
    pieces = [shard(split, r, 2).labels for r in range(2)]
    assert [len(p) for p in pieces] == [20, 21]
    assert torch.equal(torch.cat(pieces), split.labels)


def test_batch_size_semantics():
    cfg = compose_config(["trainer.batch_size=64"]).trainer
    assert per_rank_batch_size(cfg, 1) == 64 and per_rank_batch_size(cfg, 4) == 16
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        per_rank_batch_size(cfg, 3)
    per_rank = compose_config(["trainer.batch_size=64", "trainer.distributed.batch_size_semantics=per_rank"])
    assert per_rank_batch_size(per_rank.trainer, 3) == 64
    # A checkpoint records the global batch only where it differs from batch_size, so it cannot be
    # resumed with another number of per_rank processes; single-process checkpoints are unaffected.
    assert run_training_config(per_rank, 3)["trainer.global_batch_size"] == 192
    assert "trainer.global_batch_size" not in run_training_config(per_rank, 1)
    assert "trainer.global_batch_size" not in run_training_config(compose_config(["trainer.batch_size=64"]), 4)


def test_resume_hint_and_rank_state():
    launch = LaunchEnv(rank=0, world_size=4, local_rank=0, local_world_size=4, launcher="torchrun")
    hint = resume_command("scripts/train.py", ["trainer.epochs=3"], Path("/runs/a"), launch)
    assert hint == (
        "torchrun --standalone --nproc_per_node=4 scripts/train.py trainer.epochs=3 "
        "hydra.run.dir=/runs/a trainer.resume=auto"
    )
    state = {"rng": "rank0", "in_epoch": {"seen": 5, "epoch": 1}, "ranks": [{"rng": "a"}, {"rng": "b"}]}
    # A 2-rank checkpoint resumed by one process: rank 0's RNG and sums.
    assert own_rank_state(state, None) == {"rng": "rank0", "in_epoch": {"seen": 5, "epoch": 1}}
