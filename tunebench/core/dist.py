"""Running under `torchrun` / `accelerate launch`: who am I, wait for the others, gather their records.

tunebench does not launch processes itself; the launchers set RANK / WORLD_SIZE / LOCAL_RANK and this
module reads them. With one process every function is a no-op, so the same code runs both ways.
"""

from __future__ import annotations

import os
from typing import Any


def world_size() -> int:
    """Processes in the job (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its host: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Only the main process writes run folders, manifests, results and reports."""
    return rank() == 0


def init() -> bool:
    """Join the process group if launched with several processes (NCCL on GPUs, gloo on CPUs).

    Returns:
        True when running distributed.
    """
    if world_size() <= 1:
        return False
    import torch  # heavy: torch, imported when needed
    import torch.distributed as dist  # heavy: torch, imported when needed

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def barrier() -> None:
    """Wait for every process (no-op alone)."""
    if world_size() > 1:
        import torch.distributed as dist  # heavy: torch, imported when needed

        init()
        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process (``[obj]`` alone)."""
    if world_size() <= 1:
        return [obj]
    import torch.distributed as dist  # heavy: torch, imported when needed

    init()
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(n: int) -> range:
    """Indices 0..n-1 that this process handles: every world_size-th, starting at its rank."""
    return range(rank(), n, world_size())
