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

A run in one process gets ``SingleProcess``, which has the same methods with every collective a no-op:
the trainer and ``train()`` never ask which of the two they run under.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from dsconv.errors import ConfigError, DsconvError
from dsconv.training.launch import LaunchEnv, launch_env, submitit_env
from dsconv.training.sync_batchnorm import CpuSyncBatchNorm, convert_sync_batchnorm

# Re-exported: callers import the launch helpers and SyncBatchNorm from here, as before they moved.
__all__ = ["CpuSyncBatchNorm", "LaunchEnv", "convert_sync_batchnorm", "launch_env", "submitit_env"]
SEMANTICS = ("global", "per_rank")
BACKENDS = ("auto", "gloo", "nccl")
_CPU = torch.device("cpu")


class SingleProcess:
    """One process: ``DistContext``'s interface with every collective a no-op."""

    rank, world_size, local_rank = 0, 1, 0
    env: LaunchEnv | None = None
    leads_followers = False

    def __init__(self, device: torch.device = _CPU) -> None:
        self.device = device
        self.followers_idle = True

    @property
    def is_main(self) -> bool:
        return True

    def configure(self, tcfg: Any) -> SingleProcess:
        from dsconv.config import resolve_device

        self.device = resolve_device(str(tcfg.device))
        return self

    def prepare_model(self, model: nn.Module, tcfg: Any) -> nn.Module:
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def barrier(self) -> None:
        pass

    def any(self, flag: bool) -> bool:
        return flag

    def sum(self, values: list[float]) -> list[float]:
        return list(values)

    def min(self, value: int) -> int:
        return value

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def main_first(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


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

    def prepare_model(self, model: nn.Module, tcfg: Any) -> nn.Module:
        """Before the model moves to its device: per-rank dropout noise, and SyncBatchNorm if asked for.

        Every rank built the same initial weights from the seed (DDP broadcasts rank 0's anyway); from
        here on the global RNG draws dropout masks, which must differ between ranks.
        """
        if self.rank:
            torch.manual_seed(int(tcfg.seed) + 100_003 * self.rank)
        if bool(tcfg.distributed.sync_bn):
            model = convert_sync_batchnorm(model, self.device, self.group)
        return model

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
        backend = str(tcfg.distributed.backend)
        if backend not in BACKENDS:
            raise ConfigError(f"trainer.distributed.backend={backend!r}: choose one of {', '.join(BACKENDS)}")
        if backend == "nccl" and self.device.type != "cuda":
            raise ConfigError("trainer.distributed.backend=nccl needs CUDA devices: use auto or gloo on the CPU")
        default = "nccl" if self.device.type == "cuda" else "gloo"
        if backend not in ("auto", default) and self.group is None:
            self.group = dist.new_group(backend=backend)  # e.g. gloo for CUDA tensors, to rule NCCL out
        return self


# What the trainer and train() are given: one process or a process group, behind one interface.
Execution = DistContext | SingleProcess
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


def setup(tcfg: Any) -> Execution:
    """The execution ``train()`` runs in: joins the group if the launch has several processes."""
    ctx = _CURRENT
    if ctx is None:
        env = launch_env() or submitit_env()
        if env is None:
            return SingleProcess().configure(tcfg)
        ctx = init(env)
    return ctx.configure(tcfg)


def for_job() -> Execution:
    """The execution of a job Hydra started: the torchrun group ``run_torchrun`` joined, the tasks of a
    submitit job (joined now: every task runs the job), or a single process."""
    if _CURRENT is not None:
        return _CURRENT
    if launch_env() is not None:
        raise ConfigError("under torchrun, sweeps run with Hydra's basic launcher: drop hydra/launcher=...")
    env = submitit_env()
    return init(env) if env is not None else SingleProcess()


def shutdown() -> None:
    global _CURRENT
    _CURRENT = None
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # a peer that already died must not hide the real error
            dist.destroy_process_group()


def own_rank_state(state: dict[str, Any], ctx: Execution | None) -> dict[str, Any]:
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


def follower_failure(exc: Exception, multirun: bool, debug: bool, ctx: Execution) -> float:
    """Another rank's error: rank 0 reports the shared ones; a config error is the same on every rank."""
    if not isinstance(exc, DsconvError) and (debug or not multirun):
        raise exc
    if not isinstance(exc, ConfigError):
        from dsconv.training.sweep_guard import one_line

        print(f"error: [rank {ctx.rank}] {one_line(exc)}", file=sys.stderr)
    if not multirun:
        sys.exit(getattr(exc, "exit_code", 2))
    return float("nan")


def send_job(ctx: DistContext, job: Job | None) -> None:
    """Rank 0: hand the next job (None: no more jobs) to the other ranks."""
    ctx.broadcast_object(job)


def receive_job(ctx: DistContext) -> Job | None:
    return ctx.broadcast_object(None)


# ---------------------------------------------------------------- batch size
def per_rank_batch_size(tcfg: Any, world_size: int) -> int:
    """``global``: ``trainer.batch_size`` is one step's batch over all ranks; ``per_rank``: each rank's."""
    batch, semantics = int(tcfg.batch_size), str(tcfg.distributed.batch_size_semantics)
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
