"""Training-speed benchmark: this project's trainer against a plain PyTorch tutorial loop.

In one process, on the same CIFAR-10-shaped data (written in CIFAR-10's real on-disk format, since
the real files cannot be downloaded here), the same model and the same augmentation:

  (a) reference: torchvision ``CIFAR10`` + ``DataLoader`` (2 workers) + per-sample transforms
      (RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize), fp32, NCHW;
  (b) dsconv: the whole split as one uint8 tensor, batched crop/flip, then the project's
      ``Trainer`` in fp32 and with the fast settings (bf16 autocast + channels_last by default).

Prints images/s for each and the ratios, plus the data pipeline alone (batches/s). Usage:
    python scripts/bench_train.py [--models depthwise densenet4] [--n-train 5000] [--epochs 1]

``--speedrun DATA_DIR`` instead times ``experiment=mnist_speedrun`` on real MNIST: wall-clock seconds
from the first training step until the test accuracy, checked after every epoch, reaches
``--target`` (0.99), median over ``--repeats`` seeds. Data loading is excluded (reported apart);
the per-epoch test evaluations are included. The test set is read only to stop the clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dsconv.data import DeviceBatches, GpuAugment, Normalize, load_dataset
from dsconv.data.datasets import cifar10_class, write_cifar10_batches
from dsconv.layers.activations import get_act_layer
from dsconv.registry import build_model
from dsconv.training.optim import Schedule
from dsconv.training.trainer import Trainer

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
        augment=GpuAugment(4, True),
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


def run_model(name: str, root: Path, args) -> dict:
    results = {"model": name}
    variants = [
        ("reference fp32 NCHW + DataLoader", None),
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
            trainer = Trainer(
                model,
                optimizer,
                Schedule(None, False),
                device=torch.device("cpu"),
                epochs=args.epochs,
                precision=precision,
                progress=False,
            )
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


def speedrun(data_dir: Path, target: float, repeats: int, overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir

    from dsconv.config import resolve_device
    from dsconv.paths import CONF_DIR
    from dsconv.training.setup import build_components

    times, reached = [], []
    for seed in range(repeats):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                "config",
                overrides=[
                    "experiment=mnist_speedrun",
                    f"paths.data_dir={data_dir}",
                    f"trainer.seed={seed}",
                    *overrides,
                ],
            )
        device = resolve_device(str(cfg.trainer.device))
        torch.manual_seed(seed)
        load_start = time.perf_counter()
        data = load_dataset(cfg.dataset, cfg.paths.data_dir)
        load_time = time.perf_counter() - load_start
        model = build_model(cfg.model, data.input_shape, data.num_classes, get_act_layer(cfg.activation.name))
        parts = build_components(cfg, data, model, device)
        trainer = Trainer(
            model,
            parts.optimizer,
            parts.schedule,
            device=device,
            epochs=int(cfg.trainer.epochs),
            precision=parts.speed.precision,
            progress=False,
            handle_signals=False,
        )
        start, hit = time.perf_counter(), None
        for epoch in range(1, int(cfg.trainer.epochs) + 1):
            trainer.train_epoch(parts.train_batches, epoch)
            acc = trainer.evaluate(parts.test_batches).accuracy
            elapsed = time.perf_counter() - start
            print(f"  seed {seed} epoch {epoch}: test accuracy {acc:.4f} at {elapsed:.1f} s", flush=True)
            if acc >= target:
                hit = elapsed
                break
        reached.append(hit is not None)
        times.append(hit if hit is not None else float("inf"))
        outcome = f"reached {target:.3f} in {hit:.1f} s" if hit is not None else f"MISSED {target:.3f}"
        print(f"  seed {seed}: {outcome} (data load {load_time:.1f} s, {parts.speed})", flush=True)
    median = statistics.median(times)
    print(
        f"time to {target:.1%} test accuracy: median {median:.1f} s over {repeats} runs "
        f"({sum(reached)}/{repeats} reached it); torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    return {"target": target, "times_s": times, "median_s": median, "reached": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["depthwise", "densenet4"], choices=sorted(MODEL_CONFIGS))
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--pipeline-batches", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--speedrun",
        type=Path,
        default=None,
        metavar="DATA_DIR",
        help="time experiment=mnist_speedrun to --target test accuracy on MNIST in DATA_DIR",
    )
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for --speedrun, e.g. trainer.epochs=4")
    args = parser.parse_args()
    if args.speedrun is not None:
        result = speedrun(args.speedrun, args.target, args.repeats, args.overrides)
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
        for name in args.models:
            entry = run_model(name, root, args)
            labels = [k for k in entry if k != "model"]
            base = entry[labels[0]]["images_per_s"]
            for label in labels[1:]:
                print(f"  {name:18s} {label:38s} speedup vs reference: {entry[label]['images_per_s'] / base:.2f}x")
            results["models"].append(entry)
    results["torch"] = torch.__version__
    results["threads"] = torch.get_num_threads()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
