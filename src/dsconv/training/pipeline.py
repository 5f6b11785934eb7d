"""The steps of one run, in the order ``dsconv.train.train`` calls them: build, start, fit, evaluate, finish.

``build_run`` checks everything that can be checked (device, data, model, teacher, the checkpoint to
resume from, the output dir) and writes nothing; the first file is written by ``RunWriter.on_start``.
The test split is evaluated once, on the best-validation checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf, open_dict

from dsconv import distributed
from dsconv.config_views import config_hash
from dsconv.data import DatasetSplits, load_dataset
from dsconv.errors import ConfigError
from dsconv.layers.activations import act_layer_from_config
from dsconv.registry import build_model
from dsconv.training.checkpoint import CheckpointError, load_checkpoint
from dsconv.training.criterion import build_criterion
from dsconv.training.faults import NonFiniteLossError
from dsconv.training.host_memory import keep_freed_memory, process_age_s
from dsconv.training.resume import ResumePoint, adopt_best, check_compatible, find_resume_point
from dsconv.training.run_writer import RunCallback, RunWriter
from dsconv.training.setup import RunComponents, build_components, run_training_config, seed_everything
from dsconv.training.sweep_guard import bad_output_dir_message
from dsconv.training.trainer import EarlyStopping, EvalResult, Trainer, TrainerSettings

log = logging.getLogger("dsconv")


@dataclass
class Run:
    cfg: DictConfig
    run_dir: Path
    execution: distributed.Execution
    data: DatasetSplits
    model: nn.Module
    parts: RunComponents
    trainer: Trainer
    writer: RunCallback
    resume: ResumePoint | None
    # Identities of what shaped the model or loss (teacher, pruning, width matching), for metrics.json.
    provenance: dict[str, Any] = field(default_factory=dict)
    # Seconds from process start to the first training step (the CLI's fixed start-up cost).
    startup_s: float | None = None


@dataclass(frozen=True)
class FinalEvaluation:
    result: EvalResult
    best_epoch: int
    time_s: float


def build_run(cfg: DictConfig, run_dir: Path, resume_hint: str | None = None) -> Run:
    """Data, model, batches, optimizer, loss and trainer, all checked; nothing written yet."""
    if OmegaConf.select(cfg, "prune") is not None:
        # A pruned model is fine-tuned: prune.finetune_epochs is this run's whole training length.
        from dsconv.compression.runs import group_defaults

        epochs = OmegaConf.select(cfg, "prune.finetune_epochs", default=group_defaults("prune")["finetune_epochs"])
        with open_dict(cfg):
            cfg.trainer.epochs = int(epochs)
    tcfg = cfg.trainer
    execution = distributed.setup(tcfg)
    if tcfg.num_threads is not None:
        torch.set_num_threads(int(tcfg.num_threads))
    if tcfg.keep_freed_memory:
        keep_freed_memory()
    seed_everything(int(tcfg.seed), bool(tcfg.deterministic))
    with execution.main_first():  # one rank downloads
        data = load_dataset(cfg.dataset, cfg.paths.data_dir)
    model, provenance = build_run_model(cfg, data)
    model = execution.prepare_model(model, tcfg)
    training_config = run_training_config(cfg, execution.world_size)
    resume = find_resume_point(tcfg.resume, run_dir, map_location=execution.device, tidy=execution.is_main)
    if resume is not None:
        check_compatible(resume, cfg, training_config)
    parts = build_components(cfg, data, model, execution.device, rank=execution.rank, world_size=execution.world_size)
    with _own_random_stream(execution.device):  # a teacher's construction leaves the student's stream alone
        criterion, teacher = build_criterion(cfg, data, execution.device)
    if teacher is not None:
        provenance["distill"] = teacher
    if execution.is_main:
        ensure_writable(run_dir)
    writer = RunWriter(cfg, run_dir) if execution.is_main else RunCallback()
    stopping = tcfg.early_stopping
    settings = TrainerSettings.from_config(
        tcfg, parts.speed.precision, parts.speed.compile, resume_hint or f"hydra.run.dir={run_dir} trainer.resume=auto"
    )
    trainer = Trainer(
        model,
        parts.optimizer,
        parts.schedule,
        settings,
        device=execution.device,
        run_dir=run_dir,
        data_generator=parts.data_generator,
        early_stopping=EarlyStopping(str(stopping.monitor), int(stopping.patience), float(stopping.min_delta)),
        criterion=criterion,
        execution=execution,
        on_epoch_end=writer.on_epoch_end,
        extra_state={"config_hash": config_hash(cfg), "training_config": training_config},
    )
    return Run(cfg, run_dir, execution, data, model, parts, trainer, writer, resume, provenance)


def build_run_model(cfg: DictConfig, data: DatasetSplits) -> tuple[nn.Module, dict[str, Any]]:
    """The registry's model, or, with ``prune`` or ``model.match``, the compressed/width-matched one
    ``dsconv.compression`` builds (its info dict goes to metrics.json as ``prune`` / ``match``)."""
    act_layer = act_layer_from_config(cfg.activation)
    if OmegaConf.select(cfg, "prune") is not None:
        compressed = "prune"
    elif "match" in cfg.model or "match_to" in cfg.model:
        compressed = "match"
    else:
        return build_model(cfg.model, data.input_shape, data.num_classes, act_layer), {}
    key = "prune" if compressed == "prune" else "model.match"
    try:
        from dsconv.compression import build_run_model as build_compressed
    except ImportError as exc:
        raise ConfigError(f"{key} needs dsconv.compression, which this install lacks ({exc}): drop {key}") from exc
    model, info = build_compressed(cfg, data, act_layer)
    return model, {compressed: info} if info else {}


def ensure_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as exc:
        raise ConfigError(bad_output_dir_message(run_dir, exc.strerror or type(exc).__name__)) from exc


def start_run(run: Run) -> None:
    """The first files: config, model tables, TensorBoard's graph (fresh runs).

    The tables run the model on random inputs; they draw from a forked random stream, so training's
    stream (dropout) is the same with or without them, on every rank, whatever the tables compute.
    """
    example = next(iter(run.parts.val_batches))[0][:2]
    with _own_random_stream(run.execution.device):
        run.writer.on_start(run.model, run.data, example, run.resume.epoch if run.resume is not None else None)


def _own_random_stream(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def fit_run(run: Run) -> list[dict[str, float]]:
    """Train (continuing a checkpoint if there is one); returns the per-epoch history."""
    trainer, resume = run.trainer, run.resume
    if resume is not None:
        # The checkpoint's RNG states are restored last, right before training continues.
        trainer.load_state_dict(resume.state)
        trainer.last_checkpoint, trainer.last_checkpoint_step = resume.path, resume.step
        if run.execution.is_main:
            adopt_best(resume, run.run_dir)
        log.info("resuming from %s", resume.describe())
    run.startup_s = process_age_s()
    if run.execution.is_main:
        prefetch_output_imports(bool(run.cfg.tensorboard))
    try:
        history = trainer.fit(run.parts.train_batches, run.parts.val_batches)
    except NonFiniteLossError:
        run.writer.on_failure(trainer.state.history)
        raise
    own_last = run.run_dir / "checkpoints" / "last.pt"
    if resume is not None and trainer.last_checkpoint == resume.path and resume.path.resolve() != own_last.resolve():
        trainer.save(own_last)  # nothing was left to train, but this run dir still gets a good last.pt
    return history


def prefetch_output_imports(tensorboard: bool) -> None:
    """Import matplotlib (~0.5 s on this CPU) and TensorBoard (~0.2 s) on a background thread while
    training runs.

    The figures need matplotlib only after the test evaluation, the run's SummaryWriter opens at the
    first epoch's end; the epoch loop spends most of its time in torch kernels that release the GIL, so
    the imports overlap with training instead of delaying it. Importing has no effect on any random
    stream, so runs stay bit-exact.
    """

    def load() -> None:
        import matplotlib.figure  # noqa: F401
        from matplotlib.backends import backend_agg  # noqa: F401

        if tensorboard:
            import torch.utils.tensorboard  # noqa: F401

    threading.Thread(target=load, name="output-imports", daemon=True).start()


def evaluate_best(run: Run) -> FinalEvaluation:
    """Load best.pt (the best validation epoch) and evaluate it on the test split, once."""
    best_epoch = int(run.trainer.early_stopping.best_epoch)
    path = run.run_dir / "checkpoints" / "best.pt"
    best = load_checkpoint(path, map_location=run.execution.device)
    if int(best["trainer"]["epoch"]) != best_epoch:
        raise CheckpointError(
            f"{path} holds epoch {best['trainer']['epoch']}, not the best epoch {best_epoch}: "
            "copy the original run's best.pt there"
        )
    run.model.load_state_dict(best["model"])
    if "prune" in run.provenance and run.provenance["prune"].get("method") == "unstructured":
        from dsconv.compression.sparse import make_masks_permanent

        # Fold the masks into plain weights: evaluation and the latency profile then time the sparse model,
        # not a mask multiply on every forward.
        make_masks_permanent(run.model)
    start = time.perf_counter()
    result = run.trainer.evaluate(run.parts.test_batches)  # under DDP: sharded, gathered on every rank
    return FinalEvaluation(result, best_epoch, time.perf_counter() - start)


def finish_run(run: Run, history: list[dict[str, float]], test: FinalEvaluation) -> dict[str, Any]:
    """Metrics, reports and figures (rank 0); the other ranks return their view of the test result."""
    if not run.execution.is_main:
        return {
            "rank": run.execution.rank,
            "test_accuracy": test.result.accuracy,
            "test_loss": test.result.loss,
            "best_epoch": test.best_epoch,
        }
    # Imported only now: scikit-learn adds seconds to every start, even failing ones.
    from dsconv.evaluation.metrics import classification_metrics, fit_diagnosis
    from dsconv.training.run_metrics import collect_metrics
    from dsconv.training.setup import inference_profile

    cls = classification_metrics(test.result.logits, test.result.labels, run.data.classes)
    inference = inference_profile(run.cfg, run.model, run.data.input_shape, run.parts.speed)
    diagnosis = fit_diagnosis(history, test.best_epoch)
    assert run.writer.complexity is not None
    metrics = collect_metrics(run, history, test, cls, inference, diagnosis)
    run.writer.on_end(metrics, cls, history, test.result)
    log.info(
        "test accuracy %.4f  macro F1 %.4f  (best epoch %d, %s) — outputs in %s",
        cls["accuracy"],
        cls["f1_macro"],
        test.best_epoch,
        diagnosis["verdict"],
        run.run_dir,
    )
    return metrics
