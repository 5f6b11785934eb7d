"""The plain-PyTorch baseline that `scripts/bench_train.py --speedrun` races: no framework, ~50 lines.

All of (Fashion-)MNIST as one tensor, a 40K-parameter conv net with BatchNorm, Adam(0.01, betas 0.7/0.9),
one-cycle, batch 256, label smoothing 0.1, bf16 autocast where the CPU has AVX-512 (fp32 on AVX2-only CPUs,
where bf16 convolutions fall back to slow kernels); test accuracy printed once at the end.
    python scripts/plain_mnist.py DATA_DIR [SEED] [--dataset mnist|fashion_mnist] [--epochs 1] [--precision auto]
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

start = time.perf_counter()
parser = argparse.ArgumentParser()
parser.add_argument("root")
parser.add_argument("seed", type=int, nargs="?", default=0)
parser.add_argument("--dataset", choices=["mnist", "fashion_mnist"], default="mnist")
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
args = parser.parse_args()
bf16 = args.precision == "bf16" or (args.precision == "auto" and "AVX512" in torch.backends.cpu.get_cpu_capability())
torch.manual_seed(args.seed)
dataset = torchvision.datasets.MNIST if args.dataset == "mnist" else torchvision.datasets.FashionMNIST
train, test = (dataset(args.root, train=t, download=True) for t in (True, False))
x_train = ((train.data[:55000].float() / 255 - 0.1307) / 0.3081).unsqueeze(1)
y_train = train.targets[:55000]
x_test, y_test = ((test.data.float() / 255 - 0.1307) / 0.3081).unsqueeze(1), test.targets


def block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]


model = nn.Sequential(*block(1, 20), *block(20, 40), *block(40, 72), nn.Flatten(), nn.Linear(72 * 3 * 3, 10))
batch, epochs = 256, args.epochs
steps = epochs * (len(x_train) // batch)
optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.7, 0.9))
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=steps)
train_start = time.perf_counter()
for _ in range(epochs):
    order = torch.randperm(len(x_train))
    for i in range(len(x_train) // batch):
        idx = order[i * batch : (i + 1) * batch]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x_train[idx]).float(), y_train[idx], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
train_time = time.perf_counter() - train_start
model.eval()
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
    accuracy = (model(x_test).float().argmax(1) == y_test).float().mean().item()
precision = "bf16" if bf16 else "fp32"
print(f"test_accuracy={accuracy:.4f} precision={precision} train_s={train_time:.2f}", end=" ")
print(f"process_s={time.perf_counter() - start:.2f}")
