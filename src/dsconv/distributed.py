"""Data-parallel training: one process per device, launched by torchrun or by SLURM (submitit tasks).

Processes find each other through the usual ``env://`` variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), which torchrun sets; in a submitit job with several
tasks they are derived from the SLURM job (``submitit.helpers.TorchDistributedEnvironment``).

The default process group carries both backends: gloo for CPU tensors and, when CUDA is there, NCCL
for CUDA tensors. Control messages (stop flags, epoch sums, jobs, RNG states) are small CPU tensors
or objects and always take gloo, so they never force a device sync; gradients and evaluation outputs
take the backend of the device they live on (or ``trainer.distributed.backend`` when set).

Under torchrun only rank 0 runs Hydra (one run dir, one ``.hydra``, one log); it sends each job's
resolved config and run dir to the other ranks (``send_job``/``receive_job``). Only rank 0 writes.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from dsconv.errors import ConfigError, DsconvError

SEMANTICS = ("global", "per_rank")
BACKENDS = ("auto", "gloo", "nccl")
_CPU = torch.device("cpu")


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # "torchrun" (any env:// launcher) or "submitit"

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def launch_env() -> LaunchEnv | None:
    """The ``env://`` variables of a multi-process launch (torchrun), or None for a single process."""
    env = os.environ
    if not all(key in env for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")) or int(env["WORLD_SIZE"]) <= 1:
        return None
    world = int(env["WORLD_SIZE"])
    return LaunchEnv(
        int(env["RANK"]), world, int(env["LOCAL_RANK"]), int(env.get("LOCAL_WORLD_SIZE", world)), "torchrun"
    )


def submitit_env() -> LaunchEnv | None:
    """Inside a submitit job with several tasks: export the ``env://`` variables and describe the launch."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    from submitit.helpers import TorchDistributedEnvironment

    job = TorchDistributedEnvironment()
    if job.world_size <= 1:
        return None
    # SLURM binds GPUs itself (gres); keep CUDA_VISIBLE_DEVICES as it is and pick by local rank.
    job.export(set_cuda_visible_devices=False, overwrite=True)
    return LaunchEnv(job.rank, job.world_size, job.local_rank, job.local_world_size, "submitit")


class DistContext:
    """This process's place in the group, and the few collectives training needs."""

    def __init__(self, env: LaunchEnv, leads_followers: bool) -> None:
        self.env = env
        self.rank, self.world_size, self.local_rank = env.rank, env.world_size, env.local_rank
        # torchrun: rank 0 runs Hydra and hands jobs to the others (see the module docstring).
        self.leads_followers = leads_followers
        self.followers_idle = True  # False while they run a job rank 0 sent
        self.device = _CPU
        self.group: Any = None  # the data group (gradients, evaluation outputs); None = default group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------ control (gloo, CPU tensors)
    def barrier(self) -> None:
        # A CPU all-reduce rather than dist.barrier(): NCCL's barrier needs a device and may pick the wrong one.
        dist.all_reduce(torch.zeros(1))

    def any(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, values: list[float]) -> list[float]:
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()

    def min(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=_CPU)
        return box[0]

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (downloads, creates files); the others follow once it is done."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    # ------------------------------------------------------------ data (device tensors)
    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows in rank order (shards may differ in length by one)."""
        size = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size, group=self.group)
        counts = [int(s.item()) for s in sizes]
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around a model already on ``self.device`` (parameters broadcast from rank 0)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, process_group=self.group)

    def configure(self, tcfg: Any) -> DistContext:
        """Pick this rank's device and the data backend from ``trainer.device``/``trainer.distributed``."""
        spec = str(tcfg.device)
        use_cuda = spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available())
        if use_cuda:
            if not torch.cuda.is_available():
                raise ConfigError(f"trainer.device={spec} but no CUDA GPU is visible: use trainer.device=cpu")
            # One device per process: LOCAL_RANK picks it (modulo, for SLURM tasks that see one GPU each).
            self.device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        else:
            self.device = _CPU
        backend = str(options(tcfg).get("backend", "auto"))
        if backend not in BACKENDS:
            raise ConfigError(f"trainer.distributed.backend={backend!r}: choose one of {', '.join(BACKENDS)}")
        if backend == "nccl" and self.device.type != "cuda":
            raise ConfigError("trainer.distributed.backend=nccl needs CUDA devices: use auto or gloo on the CPU")
        default = "nccl" if self.device.type == "cuda" else "gloo"
        if backend not in ("auto", default) and self.group is None:
            self.group = dist.new_group(backend=backend)  # e.g. gloo for CUDA tensors, to rule NCCL out
        return self


_CURRENT: DistContext | None = None


def current() -> DistContext | None:
    return _CURRENT


def init(env: LaunchEnv, *, leads_followers: bool = False) -> DistContext:
    """Join the default process group (idempotent); ``shutdown`` or process exit leaves it."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and dist.is_nccl_available()
        dist.init_process_group(
            backend="cpu:gloo,cuda:nccl" if cuda else "gloo",
            init_method="env://",
            rank=env.rank,
            world_size=env.world_size,
        )
        atexit.register(shutdown)
    _CURRENT = DistContext(env, leads_followers)
    if env.rank != 0:
        # Rank 0 reports; the others would only repeat it. Warnings and errors still show, marked.
        logging.basicConfig(format=f"[rank {env.rank}] %(levelname)s %(name)s: %(message)s")
        logging.getLogger().setLevel(logging.WARNING)
    return _CURRENT


def setup(tcfg: Any) -> DistContext | None:
    """The context ``train()`` runs in: joins the group if the launch has several processes."""
    ctx = _CURRENT
    if ctx is None:
        env = launch_env() or submitit_env()
        if env is None:
            return None
        ctx = init(env)
    return ctx.configure(tcfg)


def shutdown() -> None:
    global _CURRENT
    _CURRENT = None
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # a peer that already died must not hide the real error
            dist.destroy_process_group()


def own_rank_state(state: dict[str, Any], ctx: DistContext | None) -> dict[str, Any]:
    """This rank's RNG state and in-epoch sums from a checkpoint: its ``ranks`` entry when the world
    size is the same. Otherwise rank 0 takes the saved values, and the others keep their own RNG
    (``rng`` None) and start their sums at zero, so no rank's partial epoch is counted twice."""
    ranks, world = state.get("ranks"), ctx.world_size if ctx is not None else 1
    if ranks is not None and len(ranks) == world:
        return ranks[ctx.rank if ctx is not None else 0]
    if ctx is None or ctx.is_main:
        return {"rng": state["rng"], "in_epoch": state.get("in_epoch")}
    in_epoch = state.get("in_epoch")
    if in_epoch:
        in_epoch = {
            **in_epoch,
            "seen": 0,
            "loss_sum": torch.zeros(()),
            "correct": torch.zeros((), dtype=torch.long),
            "first_bad_step": torch.full((), -1, dtype=torch.long),
        }
    return {"rng": None, "in_epoch": in_epoch}


# ---------------------------------------------------------------- jobs (torchrun: rank 0 -> others)
@dataclass
class Job:
    config: dict[str, Any]  # resolved on rank 0, so every rank trains exactly the same config
    run_dir: str
    overrides: list[str]
    multirun: bool
    job_num: int


def run_torchrun(
    env: LaunchEnv, hydra_main: Callable[[], Any], run_job: Callable[[DictConfig, Job, DistContext], Any]
) -> None:
    """The process of one torchrun rank: rank 0 runs ``hydra_main`` (whose task function sends each
    job); the others run every job they receive, until rank 0 sends None."""
    ctx = init(env, leads_followers=True)
    try:
        if not ctx.is_main:
            while (job := receive_job(ctx)) is not None:
                cfg = OmegaConf.create(job.config)
                OmegaConf.set_struct(cfg, True)
                run_job(cfg, job, ctx)
            return
        try:
            hydra_main()
        except SystemExit as exc:
            # No job in flight (Hydra refused the command line, --help): release the others. After a
            # failed job they have ended themselves, or torchrun stops them when this process exits.
            if exc.code in (None, 0) or ctx.followers_idle:
                send_job(ctx, None)
            raise
        send_job(ctx, None)
    finally:
        shutdown()


def follower_failure(exc: Exception, multirun: bool, debug: bool, ctx: DistContext | None) -> float:
    """Another rank's error: rank 0 reports the shared ones; a config error is the same on every rank."""
    if not isinstance(exc, DsconvError) and (debug or not multirun):
        raise exc
    if not isinstance(exc, ConfigError):
        from dsconv.training.callbacks import one_line

        print(f"error: [rank {ctx.rank if ctx else '?'}] {one_line(exc)}", file=sys.stderr)
    if not multirun:
        sys.exit(getattr(exc, "exit_code", 2))
    return float("nan")


def send_job(ctx: DistContext, job: Job | None) -> None:
    """Rank 0: hand the next job (None: no more jobs) to the other ranks."""
    ctx.broadcast_object(job)


def receive_job(ctx: DistContext) -> Job | None:
    return ctx.broadcast_object(None)


# ---------------------------------------------------------------- batch size and SyncBatchNorm
def options(tcfg: Any) -> Any:
    """``trainer.distributed`` (empty when absent)."""
    return tcfg.get("distributed") or {}


def per_rank_batch_size(tcfg: Any, world_size: int) -> int:
    """``global``: ``trainer.batch_size`` is one step's batch over all ranks; ``per_rank``: each rank's."""
    batch, semantics = int(tcfg.batch_size), str(options(tcfg).get("batch_size_semantics", "global"))
    if semantics not in SEMANTICS:
        raise ConfigError(f"trainer.distributed.batch_size_semantics={semantics!r}: choose global or per_rank")
    if semantics == "per_rank" or world_size == 1:
        return batch
    if batch % world_size:
        raise ConfigError(
            f"trainer.batch_size={batch} is not divisible by the {world_size} processes "
            "(batch_size_semantics=global): use a multiple of the world size, or per_rank"
        )
    return batch // world_size


def prepare_model(model: nn.Module, tcfg: Any, ctx: DistContext) -> nn.Module:
    """Before the model moves to its device: per-rank dropout noise, and SyncBatchNorm if asked for.

    Every rank built the same initial weights from the seed (DDP broadcasts rank 0's anyway); from
    here on the global RNG draws dropout masks, which must differ between ranks.
    """
    if ctx.rank:
        torch.manual_seed(int(tcfg.seed) + 100_003 * ctx.rank)
    if bool(options(tcfg).get("sync_bn", False)):
        model = convert_sync_batchnorm(model, ctx.device, ctx.group)
    return model


def convert_sync_batchnorm(model: nn.Module, device: torch.device, group: Any = None) -> nn.Module:
    """BatchNorm over the global batch: torch's SyncBatchNorm on CUDA, ``CpuSyncBatchNorm`` on the CPU
    (torch's refuses CPU tensors). Parameters are kept, so an optimizer built before still applies."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        return CpuSyncBatchNorm.from_batchnorm(model, group)
    for name, child in model.named_children():
        model.add_module(name, convert_sync_batchnorm(child, device, group))
    return model


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return _AllReduceSum.apply(grad.contiguous(), ctx.group), None


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (written for the CPU, where
    torch's SyncBatchNorm refuses to run; the arithmetic works on any device).

    Two passes (mean, then the centred second moment), each one small all-reduce, so the variance is
    as stable as BatchNorm's own; autograd through the all-reduces gives SyncBatchNorm's gradients.
    In eval mode it is plain BatchNorm on the (identical on every rank) running statistics.
    """

    group: Any = None

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, group: Any = None) -> CpuSyncBatchNorm:
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.group = group
        new.train(bn.training)
        return new

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:  # the BatchNorm1d/2d/3d it replaces checked the exact rank already
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), self.group)
        total = sums[-1]
        mean = sums[:-1] / total
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims), self.group) / total
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (total / (total - 1).clamp_min(1))
                # BatchNorm's own update formula, in double as its CPU kernel does.
                for buffer, value in ((self.running_mean, mean), (self.running_var, unbiased)):
                    buffer.copy_(factor * value.double() + (1.0 - factor) * buffer.double())
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)
