"""Training-speed benchmark: this project's trainer against a plain PyTorch tutorial loop.

In one process, on the same CIFAR-10-shaped data (written in CIFAR-10's real on-disk format, since
the real files cannot be downloaded here), the same model and the same augmentation:

  (a) reference: torchvision ``CIFAR10`` + ``DataLoader`` (2 workers) + per-sample transforms
      (RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize), fp32, NCHW;
  (b) dsconv: the whole split as one uint8 tensor, batched crop/flip, then the project's
      ``Trainer`` in fp32 and with the fast settings (by default channels_last, with bf16 autocast on
      AVX-512 CPUs and fp32 elsewhere: ``--precision auto``), with
      dsconv-train's allocator setting (``trainer.keep_freed_memory``), switched on once every
      reference loop has run, since it holds for the whole process.

Prints images/s for each and the ratios, plus the data pipeline alone (batches/s). Usage:
    python scripts/bench_train.py [--models depthwise densenet4] [--n-train 5000] [--epochs 1]

``--speedrun DATA_DIR [--experiment mnist_speedrun|fashion_mnist_speedrun] [--seeds 5]`` instead races
whole processes: ``dsconv-train experiment=...`` against ``scripts/plain_mnist.py`` (a plain-PyTorch
script), alternating, one pair per seed. Each run's test accuracy is measured once, at its end; the
script prints median process seconds, the ratio dsconv / plain script, and mean ± std test accuracy.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dsconv.benchmark.environment import collect_environment
from dsconv.data import BatchAugment, DeviceBatches, Normalize, load_dataset
from dsconv.data.datasets import cifar10_class, write_cifar10_batches
from dsconv.layers.activations import get_act_layer
from dsconv.registry import build_model
from dsconv.training.host_memory import keep_freed_memory
from dsconv.training.optim import Schedule
from dsconv.training.setup import fast_precision
from dsconv.training.trainer import Trainer, TrainerSettings

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = {
    "depthwise": {"name": "cifar_cnn", "conv": "separable"},
    "standard": {"name": "cifar_cnn", "conv": "standard"},
    "densenet4": {"name": "densenet4", "conv": "separable"},
    "densenet4_standard": {"name": "densenet4", "conv": "standard"},
    "mnist_cnn": {"name": "mnist_cnn", "conv": "standard"},
}


def make_cifar_like(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Class templates plus noise, 32x32x3, stored as CIFAR-10 python batches."""
    cfg = OmegaConf.create(
        {
            "name": "synthetic",
            "channels": 3,
            "image_size": 32,
            "num_classes": 10,
            "num_train": n_train + n_test,
            "num_test": 10,
            "val_size": 1,
            "noise": 0.3,
            "data_seed": seed,
        }
    )
    from dsconv.data.datasets import _synthetic

    split, _, _ = _synthetic(cfg, root)
    images = split.images.permute(0, 2, 3, 1).numpy()
    write_cifar10_batches(root, images, split.labels.numpy(), test_size=n_test)


def reference_loader(root: Path, batch_size: int, workers: int):
    import torchvision.transforms as T

    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    dataset = cifar10_class(verify_checksums=False)(root=str(root), train=True, download=False, transform=transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )


def project_batches(root: Path, batch_size: int, channels_last: bool, seed: int = 0) -> DeviceBatches:
    cfg = OmegaConf.create(
        {"name": "cifar10", "download": False, "verify_checksums": False, "val_size": 1, "split_seed": 0}
    )
    data = load_dataset(cfg, root)
    train = data.train  # already on the CPU "device"
    return DeviceBatches(
        train,
        batch_size,
        Normalize((0.5,) * 3, (0.5,) * 3, "cpu"),
        shuffle=True,
        drop_last=True,
        augment=BatchAugment(4, True),
        generator=torch.Generator().manual_seed(seed),
        channels_last=channels_last,
    )


def time_pipeline(batches, limit: int) -> float:
    """Batches per second, iterating up to ``limit`` batches (after one warm-up batch)."""
    iterator = iter(batches)
    next(iterator)
    start, count = time.perf_counter(), 0
    for _ in iterator:
        count += 1
        if count >= limit:
            break
    return count / (time.perf_counter() - start)


def reference_epoch(model: torch.nn.Module, loader, optimizer) -> tuple[int, float]:
    """The loop from the PyTorch CIFAR-10 tutorial: per batch .item() included, as users write it."""
    model.train()
    seen, start = 0, time.perf_counter()
    running = 0.0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        running += loss.item()
        seen += labels.shape[0]
    return seen, time.perf_counter() - start


@torch.inference_mode()
def accuracy(model, batches) -> float:
    model.eval()
    correct = total = 0
    for images, labels in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
            correct += (model(images).argmax(1) == labels).sum().item()
        total += labels.shape[0]
    return correct / total


def run_model(name: str, root: Path, args, reference: bool) -> dict:
    """The reference loop (``reference``) or dsconv's two settings, on one model."""
    results = {}
    variants = [("reference fp32 NCHW + DataLoader", None)] if reference else []
    if not reference:
        variants += [
            ("dsconv fp32 NCHW", ("fp32", False)),
            (
                f"dsconv {args.precision} {'channels_last' if args.channels_last else 'NCHW'}",
                (args.precision, args.channels_last),
            ),
        ]
    eval_batches = project_batches(root, 512, False, seed=1)
    eval_batches.shuffle, eval_batches.augment = False, None
    for label, setting in variants:
        torch.manual_seed(0)
        model = build_model(MODEL_CONFIGS[name], (3, 32, 32), 10, get_act_layer("relu"))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        rates = []
        if setting is None:
            loader = reference_loader(root, args.batch_size, args.workers)
            for _ in range(args.epochs):
                seen, seconds = reference_epoch(model, loader, optimizer)
                rates.append(seen / seconds)
        else:
            precision, channels_last = setting
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            batches = project_batches(root, args.batch_size, channels_last)
            settings = TrainerSettings(epochs=args.epochs, precision=precision, progress=False, handle_signals=False)
            trainer = Trainer(model, optimizer, Schedule(None, False), settings, device=torch.device("cpu"))
            for epoch in range(1, args.epochs + 1):
                rates.append(trainer.train_epoch(batches, epoch)["images_per_s"])
        acc = accuracy(model.to(memory_format=torch.contiguous_format), eval_batches)
        results[label] = {"images_per_s": statistics.median(rates), "train_acc_after": acc}
        print(
            f"  {name:18s} {label:38s} {statistics.median(rates):9.1f} img/s   acc after {args.epochs} "
            f"epoch(s): {acc:.4f}",
            flush=True,
        )
    return results


SPEEDRUNS = {
    # experiment preset -> the plain script's dataset and epochs (the baseline the issue measured)
    "mnist_speedrun": ("mnist", 1),
    "fashion_mnist_speedrun": ("fashion_mnist", 4),
}


def _timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds, done.stdout


def speedrun(data_dir: Path, experiment: str, seeds: int, overrides: list[str]) -> dict:
    """Whole processes, dsconv and the plain script alternating (ABAB, order swapped every seed).

    The speed-run convention: a fixed recipe, test accuracy measured once at the end of each run, the
    claim is the mean over seeds with its spread, and the clock covers everything from process start
    (imports, config, data, training, test evaluation, every output file) to exit.
    """
    dataset, plain_epochs = SPEEDRUNS[experiment]
    # dsconv's bytecode up to date, as for an installed package (an editable one under
    # PYTHONDONTWRITEBYTECODE=1 would be compiled again by every process; results/speedrun/bytecode_ab.json)
    compileall.compile_dir(REPO / "src", quiet=1)
    rows: dict[str, list[dict]] = {"dsconv": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            run_dir = Path(tmp) / f"run{seed}"
            ours = [sys.executable, str(REPO / "scripts" / "train.py"), f"experiment={experiment}"]
            ours += [f"paths.data_dir={data_dir}", f"trainer.seed={seed}", f"hydra.run.dir={run_dir}", *overrides]
            plain = [sys.executable, str(REPO / "scripts" / "plain_mnist.py"), str(data_dir), str(seed)]
            plain += ["--dataset", dataset, "--epochs", str(plain_epochs)]
            for name in ("dsconv", "plain") if seed % 2 == 0 else ("plain", "dsconv"):
                seconds, stdout = _timed(ours if name == "dsconv" else plain)
                row = {"seed": seed, "process_s": seconds}
                if name == "dsconv":
                    metrics = json.loads((run_dir / "metrics.json").read_text())
                    # The fixed costs around training: start to first step, and last step to exit.
                    row.update(startup_s=metrics["startup_s"], fit_s=metrics["train_time_s"])
                    row["after_fit_s"] = seconds - metrics["startup_s"] - metrics["train_time_s"]
                    accuracy, row["precision"] = metrics["test_accuracy"], metrics["precision"]
                else:
                    accuracy = float(stdout.split("test_accuracy=")[1].split()[0])
                    row["precision"] = stdout.split("precision=")[1].split()[0]
                rows[name].append({**row, "test_accuracy": accuracy})
                print(f"  seed {seed} {name:6s} {seconds:6.2f} s  test accuracy {accuracy:.4f}", flush=True)
    summary = {}
    for name, runs in rows.items():
        accs, times = [r["test_accuracy"] for r in runs], [r["process_s"] for r in runs]
        summary[name] = {
            "median_process_s": statistics.median(times),
            "min_process_s": min(times),
            "max_process_s": max(times),
            "mean_test_accuracy": statistics.fmean(accs),
            "std_test_accuracy": statistics.stdev(accs) if len(accs) > 1 else None,
            **{
                f"median_{key}": statistics.median(r[key] for r in runs)
                for key in ("startup_s", "fit_s", "after_fit_s")
                if key in runs[0]
            },
            "runs": runs,
        }
        std = summary[name]["std_test_accuracy"]
        spread = f" ± {100 * std:.2f}" if std is not None else ""
        print(
            f"{name:6s} median {summary[name]['median_process_s']:.2f} s (min {min(times):.2f}, max {max(times):.2f}), "
            f"test accuracy {100 * summary[name]['mean_test_accuracy']:.2f}{spread} % over {len(runs)} seeds"
        )
    ratio = summary["dsconv"]["median_process_s"] / summary["plain"]["median_process_s"]
    print(f"whole process, dsconv / plain script: {ratio:.2f}x ({experiment}, {os.cpu_count()} CPUs)")
    return {
        "experiment": experiment,
        "overrides": overrides,
        "ratio_dsconv_over_plain": ratio,
        **summary,
        **machine_facts(),
    }


def machine_facts() -> dict:
    """What the figures depend on: whether the CPU runs bf16 fast (AVX-512) or on slow kernels (AVX2)."""
    env = collect_environment(torch.device("cpu"))
    return {key: env[key] for key in ("cpu_model", "cpu_count", "cpu_flags", "cpu_capability")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["depthwise", "densenet4"], choices=sorted(MODEL_CONFIGS))
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 on AVX-512 CPUs, else fp32"
    )
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--pipeline-batches", type=int, default=30)
    parser.add_argument(
        "--keep-freed-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="dsconv's runs keep freed memory in the allocator, as dsconv-train does by default",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--speedrun",
        type=Path,
        default=None,
        metavar="DATA_DIR",
        help="race `dsconv-train experiment=EXPERIMENT` against scripts/plain_mnist.py on the data in DATA_DIR",
    )
    parser.add_argument("--experiment", default="mnist_speedrun", choices=sorted(SPEEDRUNS))
    parser.add_argument("--seeds", type=int, default=5, help="speed-run seeds (each runs both contestants)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for --speedrun, e.g. trainer.epochs=2")
    args = parser.parse_args()
    if args.precision == "auto":
        args.precision = fast_precision(torch.device("cpu"))
    if args.speedrun is not None:
        result = speedrun(args.speedrun, args.experiment, args.seeds, args.overrides)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CIFAR-10-shaped synthetic data "
        f"({args.n_train} train images, batch {args.batch_size})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_cifar_like(root, args.n_train + 1, 500)
        ref_rate = time_pipeline(reference_loader(root, args.batch_size, args.workers), args.pipeline_batches)
        own_rate = time_pipeline(project_batches(root, args.batch_size, False), args.pipeline_batches * 10)
        print(
            f"data pipeline (crop+flip+normalise): DataLoader {ref_rate:.1f} batches/s, "
            f"dsconv {own_rate:.1f} batches/s -> {own_rate / ref_rate:.1f}x"
        )
        results = {
            "pipeline": {
                "dataloader_batches_per_s": ref_rate,
                "dsconv_batches_per_s": own_rate,
                "ratio": own_rate / ref_rate,
            },
            "models": [],
        }
        entries = {name: {"model": name, **run_model(name, root, args, reference=True)} for name in args.models}
        if args.keep_freed_memory:
            # What dsconv-train does by default (trainer.keep_freed_memory). The allocator setting is
            # process-wide, so it is switched on only after every reference loop has run without it.
            keep_freed_memory()
        for name in args.models:
            entry = entries[name]
            entry.update(run_model(name, root, args, reference=False))
            labels = [k for k in entry if k != "model"]
            base = entry[labels[0]]["images_per_s"]
            for label in labels[1:]:
                print(f"  {name:18s} {label:38s} speedup vs reference: {entry[label]['images_per_s'] / base:.2f}x")
            results["models"].append(entry)
    results["torch"] = torch.__version__
    results["threads"] = torch.get_num_threads()
    results["keep_freed_memory"] = args.keep_freed_memory
    results["precision"] = args.precision
    results.update(machine_facts())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
