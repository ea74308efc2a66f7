"""Deterministic, resumable batches: each epoch's order is a function of (seed, epoch) alone."""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler, Sampler

__all__ = ["EpochBatchSampler"]


class EpochBatchSampler(Sampler[list[int]]):
    """Yield this process's training batches of one epoch, starting at any batch of that epoch.

    The order comes from `DistributedSampler` (a permutation seeded with `seed + epoch`, dealt round
    robin to `world_size` processes, the tail dropped so every process gets the same number of items).
    Incomplete batches at the end of an epoch are dropped. Because the permutation does not depend on the
    number of processes, local batch i of rank r contains the items `perm[world_size·(i·b + j) + r]` for
    j < b, and the union over ranks is global batch i of a single process with batch size `world_size·b`.

    Args:
        dataset: The training dataset (only its length is used).
        batch_size: Examples per batch in this process.
        rank: This process's rank.
        world_size: Number of processes.
        seed: Base seed of the shuffling.
    """

    def __init__(self, dataset: Sized, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self._sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                           seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        """Number of full batches each process receives per epoch."""
        return len(self._sampler) // self.batch_size

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration yield epoch `epoch` from its batch `start_batch` (0-based) onwards."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch must be in [0, {self.batches_per_epoch}], got {start_batch}")
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        self._sampler.set_epoch(self.epoch)
        indices = list(self._sampler)
        for batch in range(self.start_batch, self.batches_per_epoch):
            yield indices[batch * self.batch_size:(batch + 1) * self.batch_size]
