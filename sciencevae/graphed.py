"""Training steps replayed from a CUDA graph: the host launches one graph per step instead of ~100 kernels.

On a GPU an eager step of our models costs ~4.5-5 ms of host time (Python, the dispatcher, autograd and ~100
kernel launches) for ~1 ms of device work at batch 4096, so an epoch is bound by the host. Capturing the whole
step (batch gather, forward, backward, Adam and the loss sums) once and replaying it leaves the device's work.

A graph replays fixed tensors: the batch's row positions are copied into one static tensor before each
replay, the step's Python numbers (the objective's schedule, the batch size) are baked in when it is
captured. So only full batches are replayed, and only once every schedule of the objective has ended; the
last, shorter batch of an epoch and the steps of a KL warm-up run eagerly. The reparameterisation noise's
generator is registered with the graph: each replay draws new noise.

If capturing fails (an operation that cannot be captured, an old torch), training goes on eagerly with a
warning; the results are the same, only slower.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch

__all__ = ["GraphedSteps", "WARMUP_STEPS"]

WARMUP_STEPS = 3  # eager steps on a side stream before the capture (lazy initialisations, as torch's docs advise)

StepRow = Callable[[torch.Tensor, int, bool], torch.Tensor]


class GraphedSteps:
    """Training steps of ``batch_size`` rows, captured in a CUDA graph at the first chance and replayed.

    Parameters
    ----------
    step_row
        ``step_row(positions, step, autocast_cache)`` runs one training step on the rows ``positions`` (a
        device int64 tensor) and returns the batch's row of loss sums; it must not make the host wait for the
        device. ``autocast_cache`` is False while capturing (torch's autocast weight cache cannot be captured).
    batch_size
        The size of the batches replayed; other sizes run eagerly.
    optimizer
        The optimizer stepped by ``step_row``: its gradients are set to None before the capture, so that the
        captured backward writes them afresh.
    generators
        The CUDA generators ``step_row`` draws from besides the default one (registered with the graph).
    from_step
        The first step whose Python numbers stay the same from then on (the end of the objective's schedules).
    """

    def __init__(self, step_row: StepRow, batch_size: int, optimizer: torch.optim.Optimizer, device: torch.device,
                 generators: Iterable[torch.Generator] = (), from_step: int = 0):
        self.step_row = step_row
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.device = device
        self.generators = list(generators)
        self.from_step = from_step
        self.positions = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.row: torch.Tensor | None = None  # the captured step's output, rewritten by every replay
        self.warmed_up = 0
        self.failed = False

    def epoch(self, chunks: Iterable[torch.Tensor], step: int) -> torch.Tensor | None:
        """Train on each batch of row positions in ``chunks`` in turn; the summed rows of the epoch."""
        totals = None
        for positions in chunks:
            row = self._replayed(positions, step)
            if row is None:
                row = self.step_row(positions, step, True)
            totals = row if totals is None else totals + row  # read before the next replay rewrites ``row``
            step += 1
        return totals

    def _replayed(self, positions: torch.Tensor, step: int) -> torch.Tensor | None:
        """The step as a replay (capturing first when due); None where it must run eagerly."""
        if self.failed or len(positions) != self.batch_size or step < self.from_step:
            return None
        if self.graph is None:
            if self.warmed_up < WARMUP_STEPS:
                self.warmed_up += 1
                return self._on_side_stream(positions, step)
            if not self._capture(step):
                return None
        self.positions.copy_(positions)
        self.graph.replay()
        return self.row

    def _on_side_stream(self, positions: torch.Tensor, step: int) -> torch.Tensor:
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            row = self.step_row(positions, step, False)
        main.wait_stream(side)
        return row

    def _capture(self, step: int) -> bool:
        """Record one step on ``self.positions`` (recording runs nothing); False, with a warning, if it fails."""
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            for generator in self.generators:
                graph.register_generator_state(generator)
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.row = self.step_row(self.positions, step, False)
        except Exception as error:  # noqa: BLE001  anything that cannot be captured: the same steps, eagerly
            self.failed, self.row = True, None
            self.optimizer.zero_grad(set_to_none=True)
            warnings.warn(f"the training step could not be captured in a CUDA graph ({type(error).__name__}: "
                          f"{str(error)[:300]}); training goes on step by step (same results, slower). "
                          "Pass cuda_graph=False to skip the attempt.", RuntimeWarning, stacklevel=4)
            return False
        self.graph = graph
        return True
