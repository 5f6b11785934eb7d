"""``train(cfg) -> metrics``: one run from a composed config; ``main`` is the thin Hydra CLI.

The pure function does everything (validation, data, model, training, test evaluation, outputs);
``main`` adds only Hydra's run directory and turns user errors into a one-line message.

Data-parallel runs (``dsconv.distributed``): under torchrun only rank 0 runs Hydra and hands each job
(resolved config, run dir) to the other ranks, so a job has exactly one run dir; in a submitit job with
several tasks every task runs the job Hydra's launcher gave it, in the same job dir. Either way ``train``
runs on every rank and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dsconv import distributed
from dsconv.config import config_hash, flat_hparams, resolve_device, validate_config
from dsconv.data import load_dataset
from dsconv.errors import ConfigError, DsconvError
from dsconv.evaluation.complexity import count_params, macs_by_module, model_summary
from dsconv.layers.activations import act_layer_from_config
from dsconv.models.stages import describe_conv
from dsconv.paths import CONF_DIR
from dsconv.registry import build_model
from dsconv.training.callbacks import bad_output_dir_message, clear_failure, one_line, write_failure
from dsconv.training.checkpoint import CheckpointError, load_checkpoint
from dsconv.training.faults import NonFiniteLossError, TrainingInterrupted
from dsconv.training.resume import adopt_best, check_compatible, find_resume_point, resume_command
from dsconv.training.setup import build_components, inference_profile, run_training_config, seed_everything
from dsconv.training.trainer import EarlyStopping, Trainer

log = logging.getLogger("dsconv")

# Run directories get a random suffix so jobs started in the same second never share one.
OmegaConf.register_new_resolver("dsconv_uid", lambda: secrets.token_hex(3), use_cache=True, replace=True)


def train(cfg: DictConfig, run_dir: str | Path, *, resume_hint: str | None = None) -> dict[str, Any]:
    """Train, select the best validation checkpoint, evaluate it once on test, write every output.

    Everything that can be checked (config, device, data, model, the checkpoint to resume from, the
    output dir) is checked before the first file is written. ``resume_hint`` is the command shown
    when a signal interrupts training.
    """
    run_dir = Path(run_dir)
    validate_config(cfg)
    tcfg = cfg.trainer
    ctx = distributed.setup(tcfg)  # None in a single process
    device = ctx.device if ctx is not None else resolve_device(str(tcfg.device))
    rank, world_size = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    is_main = rank == 0
    if tcfg.get("num_threads"):
        torch.set_num_threads(int(tcfg.num_threads))
    seed_everything(int(tcfg.seed), bool(tcfg.deterministic))

    with ctx.main_first() if ctx is not None else contextlib.nullcontext():  # one rank downloads
        data = load_dataset(cfg.dataset, cfg.paths.data_dir)
    model = build_model(cfg.model, data.input_shape, data.num_classes, act_layer_from_config(cfg.activation))
    if ctx is not None:
        model = distributed.prepare_model(model, tcfg, ctx)
    training_config = run_training_config(cfg, world_size)
    resume = find_resume_point(tcfg.get("resume"), run_dir, map_location=device, tidy=is_main)
    if resume is not None:
        check_compatible(resume, cfg, training_config)
    if is_main:
        ensure_writable(run_dir)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        params = count_params(model)
        macs, _, flop_table = macs_by_module(model, data.input_shape)
        summary = model_summary(model, data.input_shape)
        (run_dir / "model_summary.txt").write_text(summary + "\n\n" + flop_table + "\n")
        log.info(
            "model %s (conv=%s) on %s %s\n%s",
            cfg.model.name,
            describe_conv(cfg.model.get("conv", "-")),
            data.name,
            "x".join(map(str, data.input_shape)),
            summary,
        )

    parts = build_components(cfg, data, model, device, rank=rank, world_size=world_size)
    train_batches, val_batches, test_batches = parts.train_batches, parts.val_batches, parts.test_batches
    optimizer, schedule, data_gen, speed = parts.optimizer, parts.schedule, parts.data_generator, parts.speed
    writer = None
    if cfg.get("tensorboard", True) and is_main:
        from torch.utils.tensorboard import SummaryWriter

        # On resume, events past the checkpoint's epoch are hidden so curves do not fold back.
        purge = resume.epoch + 1 if resume is not None else None
        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        if resume is None:
            from dsconv.evaluation.run_outputs import log_graph

            example = next(iter(val_batches))[0][:2]
            log_graph(writer, model.eval(), example)

    def on_epoch_end(row: dict[str, float]) -> None:
        if writer is None:
            return
        epoch = int(row["epoch"])
        for key in ("train_loss", "val_loss"):
            writer.add_scalar(f"loss/{key.split('_')[0]}", row[key], epoch)
        for key in ("train_acc", "val_acc"):
            writer.add_scalar(f"accuracy/{key.split('_')[0]}", row[key], epoch)
        writer.add_scalar("lr", row["lr"], epoch)
        writer.add_scalar("speed/images_per_s", row["images_per_s"], epoch)
        writer.add_scalar("speed/epoch_time_s", row["epoch_time_s"], epoch)
        writer.flush()

    stopper = EarlyStopping(
        str(tcfg.early_stopping.monitor), int(tcfg.early_stopping.patience), float(tcfg.early_stopping.min_delta)
    )
    trainer = Trainer(
        model,
        optimizer,
        schedule,
        device=device,
        epochs=int(tcfg.epochs),
        precision=speed.precision,
        grad_clip=tcfg.get("grad_clip"),
        early_stopping=stopper,
        run_dir=run_dir,
        data_generator=data_gen,
        compile_model=speed.compile,
        progress=bool(tcfg.get("progress_bar", True)),
        on_epoch_end=on_epoch_end,
        extra_state={"config_hash": config_hash(cfg), "training_config": training_config},
        checkpoint_every_steps=tcfg.get("checkpoint_every_steps"),
        nan_policy=str(tcfg.get("nan_policy", "stop")),
        max_skipped_steps=int(tcfg.get("max_skipped_steps", 0)),
        resume_hint=resume_hint or f"hydra.run.dir={run_dir} trainer.resume=auto",
        dist=ctx,
    )
    if resume is not None:
        trainer.load_state_dict(resume.state)
        trainer.last_checkpoint, trainer.last_checkpoint_step = resume.path, resume.step
        if is_main:
            adopt_best(resume, run_dir)
        log.info("resuming from %s", resume.describe())
    try:
        history = trainer.fit(train_batches, val_batches)
    except NonFiniteLossError:
        if is_main:
            _keep_curves(run_dir, trainer.state.history, cfg)
        raise
    train_time = trainer.state.train_time_s
    own_last = run_dir / "checkpoints" / "last.pt"
    if resume is not None and trainer.last_checkpoint == resume.path and resume.path.resolve() != own_last.resolve():
        trainer.save(own_last)  # nothing was left to train, but this run dir still gets a good last.pt

    # Imported only now: sklearn and matplotlib add seconds to every start, even failing ones.
    from dsconv.evaluation.metrics import classification_metrics, fit_diagnosis
    from dsconv.evaluation.run_outputs import (
        classification_report_text,
        log_tensorboard_summary,
        write_figures,
        write_json,
    )

    best_epoch = int(trainer.early_stopping.best_epoch)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=device)
    if int(best["trainer"]["epoch"]) != best_epoch:
        raise CheckpointError(
            f"{run_dir / 'checkpoints' / 'best.pt'} holds epoch {best['trainer']['epoch']}, not the "
            f"best epoch {best_epoch}: copy the original run's best.pt there"
        )
    model.load_state_dict(best["model"])
    test_start = time.perf_counter()
    test = trainer.evaluate(test_batches)  # under DDP: sharded, gathered on every rank
    test_time = time.perf_counter() - test_start
    if not is_main:
        return {"rank": rank, "test_accuracy": test.accuracy, "test_loss": test.loss, "best_epoch": best_epoch}
    cls = classification_metrics(test.logits, test.labels, data.classes)
    inference = inference_profile(cfg, model, data.input_shape, speed)
    diagnosis = fit_diagnosis(history, best_epoch)
    best_row = next(r for r in history if int(r["epoch"]) == best_epoch)

    metrics: dict[str, Any] = {
        "model": str(cfg.model.name),
        "conv": describe_conv(cfg.model.get("conv", "standard")),
        "dataset": data.name,
        "seed": int(tcfg.seed),
        "test_accuracy": cls["accuracy"],
        "test_precision_macro": cls["precision_macro"],
        "test_recall_macro": cls["recall_macro"],
        "test_f1_macro": cls["f1_macro"],
        "test_loss": test.loss,
        "per_class_f1": cls["per_class_f1"],
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "best_val_acc": best_row["val_acc"],
        "best_val_loss": best_row["val_loss"],
        "params_total": params.total,
        "params_trainable": params.trainable,
        "macs_per_image": macs,
        "macs_unit": "multiply-accumulates per image (fvcore; 1 fused multiply-add = 1)",
        "train_time_s": train_time,
        "mean_epoch_time_s": float(np.mean([r["epoch_time_s"] for r in history])),
        "train_images_per_s": float(np.median([r["images_per_s"] for r in history])),
        "test_eval_time_s": test_time,
        # Inference speed of the selected model, measured once here; dsconv-bench measures more.
        "latency_ms_b1": inference.get("latency_ms_b1_median"),
        "latency_ms_b1_p90": inference.get("latency_ms_b1_p90"),
        "throughput_img_s": inference.get("throughput_img_s"),
        "inference_profile": inference,
        "fit_diagnosis": diagnosis,
        "device": str(device),
        "world_size": world_size,
        "global_batch_size": train_batches.batch_size * world_size,
        "precision": speed.precision,
        "channels_last": speed.channels_last,
        "torch_version": torch.__version__,
        "run_dir": str(run_dir),
    }
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "classification_report.json", cls["report"])
    write_json(run_dir / "confusion_matrix.json", cls["confusion_matrix"])
    title = f"{cfg.model.name} ({metrics['conv']})"
    write_figures(
        run_dir,
        history=history,
        best_epoch=best_epoch,
        confusion=cls["confusion_matrix"],
        classes=data.classes,
        test_images=data.test.images,
        test_labels=data.test.labels,
        test_logits=test.logits,
        title=title,
        writer=writer,
    )
    if writer is not None:
        final = {k: float(metrics[k]) for k in ("test_accuracy", "test_f1_macro", "best_val_acc", "train_time_s")}
        final["macs_per_image"], final["params_total"] = float(macs), float(params.total)
        log_tensorboard_summary(
            writer,
            hparams=flat_hparams(cfg),
            final=final,
            report_text=classification_report_text(cls["report"]),
            flop_table=flop_table,
            summary=summary,
        )
        writer.close()
    log.info(
        "test accuracy %.4f  macro F1 %.4f  (best epoch %d, %s) — outputs in %s",
        cls["accuracy"],
        cls["f1_macro"],
        best_epoch,
        diagnosis["verdict"],
        run_dir,
    )
    return metrics


def ensure_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as exc:
        raise ConfigError(bad_output_dir_message(run_dir, exc.strerror or type(exc).__name__)) from exc


def _keep_curves(run_dir: Path, history: list[dict[str, float]], cfg: DictConfig) -> None:
    """A diverged run still leaves its curves up to the last good epoch (training_log.csv stays too)."""
    if not history:
        return
    try:
        from dsconv.evaluation.plots import curves_figure, save_figure

        figure = curves_figure(history, None, f"{cfg.model.name} (stopped: non-finite loss)")
        save_figure(figure, run_dir / "curves.png")
    except Exception as exc:  # the figure is a courtesy; the error being raised matters more
        log.warning("could not draw curves.png: %s", exc)


def main() -> None:
    """``dsconv-train`` and ``scripts/train.py``. Under torchrun, rank 0 runs Hydra (one run dir per
    job) and hands every job to the other ranks, which wait for it."""
    env = distributed.launch_env()
    if env is None:
        _hydra_main()
    else:
        distributed.run_torchrun(
            env,
            _hydra_main,
            lambda cfg, job, ctx: _run_job(cfg, Path(job.run_dir), job.overrides, job.multirun, job.job_num, ctx),
        )


def _task(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    overrides = [str(o) for o in hydra_cfg.overrides.task]
    job_num = int(hydra_cfg.job.num) if multirun else 0
    ctx = distributed.current()
    if ctx is None and distributed.launch_env() is not None:
        print("error: under torchrun, sweeps run with Hydra's basic launcher: drop hydra/launcher=...", file=sys.stderr)
        sys.exit(2)
    if ctx is None and (env := distributed.submitit_env()) is not None:
        ctx = distributed.init(env)  # a submitit job with several tasks: every task runs this job
    if ctx is not None and ctx.leads_followers:
        job = distributed.Job(OmegaConf.to_container(cfg, resolve=True), str(run_dir), overrides, multirun, job_num)
        distributed.send_job(ctx, job)
        ctx.followers_idle = False
    result = _run_job(cfg, run_dir, overrides, multirun, job_num, ctx)
    if ctx is not None:
        ctx.followers_idle = True  # this job ended on every rank without ending the process
    return result


_hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)


def _run_job(
    cfg: DictConfig,
    run_dir: Path,
    overrides: list[str],
    multirun: bool,
    job_num: int,
    ctx: distributed.DistContext | None,
) -> float | None:
    is_main = ctx is None or ctx.is_main
    launch = ctx.env if ctx is not None else None
    hint = resume_command(sys.argv[0], overrides, run_dir, launch)
    if multirun and is_main:
        clear_failure(run_dir)
    try:
        metrics = train(cfg, run_dir, resume_hint=hint)
    except TrainingInterrupted as exc:
        # Preemption ends the whole sweep too: the scheduler is taking the machine away.
        if is_main:
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if is_main:
            print(
                f"error: stopped by a second Ctrl-C; the newest checkpoint in {run_dir / 'checkpoints'} is "
                f"intact: resume with {hint}",
                file=sys.stderr,
            )
        sys.exit(130)
    except Exception as exc:
        user_error = isinstance(exc, DsconvError)
        debug = bool(cfg.get("debug", False))
        if not is_main:
            return distributed.follower_failure(exc, multirun, debug, ctx)
        if not multirun:
            if not user_error or debug:
                raise
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(getattr(exc, "exit_code", 2))
        # In a sweep the other jobs go on; the failure is recorded for the summary and dsconv-report.
        path = write_failure(run_dir, exc, overrides, cfg)
        if user_error and not debug:
            print(f"error: job {job_num} [{' '.join(overrides)}]: {one_line(exc)} ({path})", file=sys.stderr)
        else:
            log.error("job %s [%s] failed (%s)", job_num, " ".join(overrides), path, exc_info=exc)
        return float("nan")  # Optuna records a NaN objective as a failed trial
    if not is_main:
        return None
    # Sweepers (Optuna) optimise this return value: a validation metric, never a test one.
    return float(metrics[str(cfg.get("objective", "best_val_acc"))])


if __name__ == "__main__":
    main()
