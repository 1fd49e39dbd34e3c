"""CPU threads for training on a machine that other work shares.

torch's OpenMP threads spin at every barrier of a parallel loop; when another
process holds one of the cores, the thread that lost its core makes the others
spin until it is scheduled again. On a 2-core machine with one CPU-bound
process beside it, a fit with torch's default 2 threads ran ~10× slower than
with 1. :func:`training_threads` therefore trains with no more threads than
the cores other work leaves idle, measured over a short window from
``/proc/stat`` (Linux); elsewhere it keeps torch's setting. It never raises the
count above what torch is set to (``torch.set_num_threads`` or
``OMP_NUM_THREADS`` stay the ceiling), decides once per fit (results depend on
the thread count, so a fit does not change it midway) and restores torch's
setting afterwards.

>>> with training_threads() as choice:
...     choice.threads >= 1
True
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

__all__ = ["ThreadChoice", "training_threads", "keep_torch_threads", "cores_busy_elsewhere", "available_cores"]

PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class ThreadChoice:
    """``threads`` used for training, out of ``cores`` available, with ``busy`` cores' worth of other
    work measured (None where it could not be measured)."""

    threads: int
    cores: int
    busy: float | None

    def describe(self) -> str:
        """One line for a run's record, e.g. ``'1 thread: 2 cores, 1.0 busy with other work'``."""
        busy = "load not measured" if self.busy is None else f"{self.busy:.1f} busy with other work"
        return f"{self.threads} thread{'s' if self.threads > 1 else ''}: {self.cores} cores, {busy}"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where there is none."""
    try:
        fields = PROC_STAT.read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def cores_busy_elsewhere(window: float = 0.05) -> float | None:
    """Cores' worth of CPU used by other processes over ``window`` seconds (this process's own use is
    left out), or None where /proc/stat cannot be read."""
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    before, own_before = _cpu_jiffies(), time.process_time()
    if before is None:
        return None
    time.sleep(window)
    after, own_after = _cpu_jiffies(), time.process_time()
    if after is None or after[1] <= before[1]:
        return None
    n_cpus = os.cpu_count() or 1
    busy = (after[0] - before[0]) / (after[1] - before[1]) * n_cpus  # cores' worth, all processes
    own = (own_after - own_before) / window
    return max(0.0, busy - own)


@contextmanager
def training_threads(window: float = 0.05) -> Iterator[ThreadChoice]:
    """Set torch's threads for one fit to the idle cores (at most torch's current setting); restore after.

    Threads = ``floor(cores - busy + 0.25)``, at least 1 and at most
    ``torch.get_num_threads()``: half a core of other work already costs a
    thread (a partly busy core still makes the other threads spin).
    """
    ceiling = torch.get_num_threads()
    cores = available_cores()
    busy = cores_busy_elsewhere(window) if ceiling > 1 else None
    threads = ceiling if busy is None else max(1, min(ceiling, math.floor(cores - busy + 0.25)))
    with keep_torch_threads():
        torch.set_num_threads(threads)
        yield ThreadChoice(threads=threads, cores=cores, busy=busy)


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Run a block and set torch's thread count back to what it was: numba's OpenMP pool, which scanpy's
    highly variable genes, neighbours and UMAP start, sets the process's threads (torch's too) to the
    CPU count, and a later fit in the same process then spun on a busy machine, 9× slower (measured).

    >>> with keep_torch_threads():
    ...     torch.set_num_threads(1)
    """
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
