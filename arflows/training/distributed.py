"""Process-group setup, device choice and collective helpers for single- and multi-process runs."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "all_gather_objects",
    "all_reduce_sum",
    "init_distributed",
    "resolve_device",
    "shard_indices",
]

logger = logging.getLogger(__name__)


def resolve_device(name: str = "auto", *, local_rank: int = 0) -> torch.device:
    """Return the torch device for `name`.

    Args:
        name: `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.
        local_rank: Index of this process on its machine; `auto` and `cuda` pick `cuda:local_rank`.

    Raises:
        ValueError: If the name is unknown or CUDA is requested but not available.
    """
    cleaned = name.strip().lower()
    if cleaned == "auto":
        cleaned = "cuda" if torch.cuda.is_available() else "cpu"
    if cleaned == "cpu":
        return torch.device("cpu")
    if cleaned == "cuda" or cleaned.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available in this PyTorch "
                             f"({torch.__version__}); use --device cpu")
        if cleaned == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(cleaned)
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job: rank, number of processes and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process takes part, so collectives are needed."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only process that writes files and logs progress."""
        return self.rank == 0


def init_distributed(device: str = "auto", *, timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the process group that `torchrun` describes in the environment, if any.

    Reads `RANK`, `WORLD_SIZE` and `LOCAL_RANK`. With `WORLD_SIZE` above 1 it initialises
    `torch.distributed` with NCCL on CUDA devices and gloo on the CPU (`MASTER_ADDR` and `MASTER_PORT`
    must be set, as torchrun does). Without them it returns a single-process context.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank=local_rank)

    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
        logger.info("joined process group: rank %d of %d, backend %s, device %s",
                    rank, world_size, backend, torch_device)
    elif dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Return the elementwise sum of `values` over all processes (a no-op for one process)."""
    if not context.is_distributed:
        return values
    reduced = values.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def all_gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """Return `[value of rank 0, value of rank 1, ...]` gathered from every process."""
    if not context.is_distributed:
        return [value]
    gathered: list[Optional[Any]] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def shard_indices(num_items: int, context: DistributedContext) -> range:
    """Return this process's share of `range(num_items)` without padding or duplicates.

    Rank r takes items r, r + world_size, r + 2·world_size, ... so the shards partition the items
    exactly; shard sizes differ by at most one. `DistributedSampler` would instead pad the last shard
    with repeated items, which would count those items twice in an evaluation sum.
    """
    return range(context.rank, num_items, context.world_size)
