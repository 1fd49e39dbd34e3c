"""Data-parallel training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N ...`` starts N processes and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``. :meth:`sciencevae.BetaVAE.fit` then joins the
process group (gloo on the CPU, NCCL on CUDA, one GPU per process), gives
every rank its own equal shard of the training rows (only that shard is
copied to the rank's device), wraps the network in DistributedDataParallel
so gradients are averaged across ranks after every step, and all-reduces the
epoch's loss sums once per epoch. ``batch_size`` is per rank: the effective
batch is ``N * batch_size``. Rank 0 alone writes checkpoints and outputs; a
checkpoint holds every rank's random state, so resuming with the same number
of processes continues exactly.

Without torchrun's variables nothing here does anything.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Workers", "launched_workers", "start", "shard_rows", "all_reduce_sum", "gather_objects"]


@dataclass(frozen=True)
class Workers:
    """This process's place among the training processes.

    >>> Workers().active, Workers(rank=1, world_size=2).is_main
    (False, False)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_workers() -> Workers:
    """Rank and world size from torchrun's environment (one process when unset)."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as err:
        raise ValueError(f"torchrun's RANK / WORLD_SIZE / LOCAL_RANK are not integers: {err}") from None
    return Workers(rank=rank, world_size=world_size, local_rank=local_rank)


def start(device: str | torch.device) -> tuple[Workers, str | torch.device]:
    """Join torchrun's process group if launched by it; return the workers and this rank's device.

    ``device`` is the requested device ("auto", "cpu", "cuda"); under torchrun
    with CUDA each process takes GPU ``LOCAL_RANK``.
    """
    workers = launched_workers()
    if not workers.active:
        return workers, device
    use_cuda = str(device) in ("auto", "cuda") and torch.cuda.is_available() or str(device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(workers.local_rank)
        device = torch.device("cuda", workers.local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        atexit.register(_stop)
    return workers, device


def _stop() -> None:
    """At exit: wait for every rank (rank 0 may still be writing outputs), then leave the group together.

    A rank that tore its gloo group down while another was still working was
    seen to abort ("terminate called without an active exception") in CI.
    """
    if not dist.is_initialized():
        return
    try:
        dist.barrier()
    except RuntimeError:  # another rank is gone already: nothing to wait for
        pass
    dist.destroy_process_group()


def shard_rows(rows: torch.Tensor, workers: Workers, equal: bool = True, contiguous: bool = False) -> torch.Tensor:
    """This rank's rows: every ``world_size``-th one, or (``contiguous``) one block of the sorted rows.

    ``equal`` trims all shards to one length: training shards must be equal
    (every rank takes the same number of steps, or the gradient all-reduce
    would wait forever); validation shards need not. Contiguous blocks let each
    rank of a streamed run read only its own chunks of the file.

    >>> shard_rows(torch.arange(7), Workers(rank=1, world_size=2)).tolist()
    [1, 3, 5]
    >>> shard_rows(torch.arange(7), Workers(rank=1, world_size=2), contiguous=True).tolist()
    [3, 4, 5]
    """
    if not contiguous:
        shard = rows[workers.rank::workers.world_size]
        return shard[: len(rows) // workers.world_size] if equal else shard
    rows = rows.sort().values
    if equal:
        size = len(rows) // workers.world_size
        return rows[workers.rank * size:(workers.rank + 1) * size]
    bounds = [len(rows) * r // workers.world_size for r in range(workers.world_size + 1)]
    return rows[bounds[workers.rank]:bounds[workers.rank + 1]]


def all_reduce_sum(values: torch.Tensor, workers: Workers) -> torch.Tensor:
    """Sum ``values`` over the ranks (in place; a no-op for one process)."""
    if workers.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(value, workers: Workers) -> list:
    """Every rank's ``value`` as a list indexed by rank (``[value]`` for one process)."""
    if not workers.active:
        return [value]
    gathered: list = [None] * workers.world_size
    dist.all_gather_object(gathered, value)
    return gathered
