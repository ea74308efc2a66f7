"""Exact bits/dim of a flow over a whole dataset split, summed across distributed processes."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from arflows.training.distributed import DistributedContext, all_gather_objects, all_reduce_sum, shard_indices

__all__ = ["EvaluationResult", "autocast_context", "collate_by_shape", "evaluate_dataset"]


@dataclass(frozen=True)
class EvaluationResult:
    """Sums over every example of a split.

    Attributes:
        nll_nats: Sum over examples of −ln P(q), in nats.
        num_examples: Number of examples.
        num_dims: Total number of discrete dimensions, Σ_examples D (C·H·W for images, T for audio).
        dims_per_example: D when every example has the same size, else None (variable-length audio).
    """

    nll_nats: float
    num_examples: int
    num_dims: int
    dims_per_example: Optional[int]

    @property
    def bits_per_dim(self) -> float:
        """Σ −ln P(q) / (Σ D · ln 2): the split's total code length per dimension, in bits."""
        return self.nll_nats / (self.num_dims * math.log(2.0))

    @property
    def nats_per_example(self) -> float:
        """Mean negative log-likelihood per example, Σ −ln P(q) / number of examples, in nats."""
        return self.nll_nats / self.num_examples


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Return `torch.autocast` for `bf16`/`fp16` and a null context for `float32`/`float64`."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def collate_by_shape(batch: list[Any]) -> list[torch.Tensor]:
    """Stack the examples of a batch into one tensor per distinct shape.

    Items are `(q, label)` pairs or bare tensors. Audio evaluation splits return clips of different
    lengths, which cannot share one tensor without padding, and padding would change the likelihood.

    Returns:
        A list of integer tensors, each `B_i×C×H×W` or `B_i×1×T_i`, in first-seen shape order.
    """
    groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for item in batch:
        q = item[0] if isinstance(item, (tuple, list)) else item
        q = torch.as_tensor(q)
        groups.setdefault(tuple(q.shape), []).append(q)
    return [torch.stack(items) for items in groups.values()]


@torch.no_grad()
def evaluate_dataset(
    flow: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: Optional[torch.device] = None,
    precision: str = "float32",
    num_workers: int = 0,
    context: Optional[DistributedContext] = None,
    progress: bool = False,
) -> EvaluationResult:
    """Sum the exact negative log-likelihood of a flow over every example of a dataset.

    Each process evaluates the items `rank, rank + world_size, ...` and the sums are all-reduced, so the
    result does not depend on the number of processes, on uneven shards or on the batch size (up to
    floating-point summation order). Sums are accumulated in float64.

    Args:
        flow: An `AutoregressiveFlow` (or any module with `log_prob(q) -> (B,)` in nats).
        dataset: A dataset of `(q, label)` pairs with integer `q` of shape `C×H×W` or `1×T`.
        batch_size: Examples per forward pass in each process.
        device: Where to run; defaults to the flow's device.
        precision: `float32`, `float64` (the flow must already be float64), `bf16` or `fp16` autocast.
        num_workers: DataLoader worker processes.
        context: Distributed context; None evaluates everything in this process.
        progress: Show a tqdm progress bar (rank 0 only).

    Returns:
        The sums over the whole dataset, identical on every process.
    """
    context = context or DistributedContext(device=device or torch.device("cpu"))
    if device is None:
        device = next(flow.parameters()).device
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    shard = Subset(dataset, list(shard_indices(len(dataset), context)))
    # A private generator: DataLoader otherwise draws its worker seed from the global torch generator,
    # and validating in the middle of training would then shift the training run's dropout stream.
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_by_shape, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(0))

    nll = torch.zeros((), dtype=torch.float64, device=device)
    num_examples = 0
    num_dims = 0
    sizes: set[int] = set()

    was_training = flow.training
    flow.eval()
    try:
        batches = loader
        if progress and context.is_main:
            from tqdm.auto import tqdm

            # disable=None: no bar when stderr is not a terminal.
            batches = tqdm(loader, desc="evaluating", unit="batch", leave=False, dynamic_ncols=True,
                           disable=None)
        for groups in batches:
            for q in groups:
                q = q.to(device, non_blocking=True)
                with autocast_context(device, precision):
                    log_prob = flow.log_prob(q)  # (B,) nats
                nll -= log_prob.to(torch.float64).sum()
                num_examples += q.shape[0]
                dims = q[0].numel()
                num_dims += dims * q.shape[0]
                sizes.add(dims)
    finally:
        flow.train(was_training)

    # Counts travel as float64, exact up to 2**53 dimensions.
    totals = torch.stack([nll, torch.tensor(float(num_examples), dtype=torch.float64, device=device),
                          torch.tensor(float(num_dims), dtype=torch.float64, device=device)])
    totals = all_reduce_sum(totals, context)
    all_sizes: set[int] = set()
    for shard_sizes in all_gather_objects(sizes, context):
        all_sizes |= shard_sizes

    total_examples = int(totals[1].item())
    if total_examples == 0:
        raise ValueError("cannot evaluate an empty dataset (0 examples)")
    return EvaluationResult(
        nll_nats=float(totals[0].item()),
        num_examples=total_examples,
        num_dims=int(totals[2].item()),
        dims_per_example=next(iter(all_sizes)) if len(all_sizes) == 1 else None,
    )

