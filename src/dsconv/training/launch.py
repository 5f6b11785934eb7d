"""How this process was launched: alone, by torchrun (``env://`` variables) or as one of a submitit job's tasks.

Standard library only: ``dsconv-train`` asks this before Hydra parses the command line, and ``--help``
or ``--cfg job`` must not pay for importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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
