"""A fused negative-binomial log-likelihood for training count models fast.

The textbook NB log-probability written with autograd evaluates ``lgamma``
three times and ``digamma`` twice on every (cell, gene) entry and makes some
thirty passes over the batch. :func:`nb_log_likelihood_sum` computes the same
value and gradients with

- analytic gradients: the forward pass also returns each cell's derivatives
  with respect to its logits and to theta, so the backward pass is one
  multiplication and one matrix-vector product;
- no special function per entry: ``lgamma(k + theta) - lgamma(theta)`` and
  ``digamma(k + theta) - digamma(theta)`` come from per-gene tables for the
  small counts ``k < TABLE_ROWS`` that make up almost every entry of a count
  matrix (sums of ``log(theta + j)`` and ``1 / (theta + j)``), and from
  Stirling series for larger counts, written as differences from the
  tables' edge so that float32 stays exact for large theta;
- the data-only constant ``sum_g w_g lgamma(x_g + 1)`` left to the caller (it
  never changes in training; see :func:`log_factorial_sum`);
- one compiled kernel: the per-entry work is a pure tensor function that
  ``torch.compile`` fuses into a few loops over the batch (C++ on the CPU,
  Triton on CUDA). Compiling costs a few seconds once per process, so short
  runs use the same maths eagerly (``compiled=False``; ``BetaVAE.fit``
  decides with :func:`compile_pays` unless told). Where compiling is
  impossible (no C++ compiler, an unsupported platform,
  ``TORCH_COMPILE_DISABLE=1``) the eager version runs, with a warning.

Counts must be non-negative integers (the count likelihoods validate this).
Values and gradients equal autograd through
:class:`~sciencevae.likelihoods.NegativeBinomial` (tested in float64).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import torch

__all__ = ["nb_log_likelihood_sum", "log_factorial_sum", "compile_pays", "TABLE_ROWS", "COMPILE_MIN_ENTRIES",
           "COMPILE_MIN_ENTRIES_CUDA"]

TABLE_ROWS = 16  # smaller counts (98.7% of the benchmark data) from per-gene tables, larger ones from the series
COMPILE_MIN_ENTRIES = 600_000_000  # cells × genes × epochs from which compiling pays on the CPU (see compile_pays)
COMPILE_MIN_ENTRIES_CUDA = 100_000_000_000  # the same on a GPU, where steps are replayed from a CUDA graph
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _lgamma_series(z: torch.Tensor) -> torch.Tensor:
    """``lgamma(z) - [(z - 1/2) log z - z + log(2 pi) / 2]``, Stirling's series (error below 2e-14 for z >= 16)."""
    r = 1.0 / z
    r2 = r * r
    return r * (1.0 / 12 - r2 * (1.0 / 360 - r2 * (1.0 / 1260 - r2 / 1680)))


def _digamma_series(z: torch.Tensor) -> torch.Tensor:
    """``log z - digamma(z)``, the asymptotic series (error below 1e-14 for z >= 16)."""
    r = 1.0 / z
    r2 = r * r
    return 0.5 * r + r2 * (1.0 / 12 - r2 * (1.0 / 120 - r2 * (1.0 / 252 - r2 / 240)))


def _gene_terms(log_theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-gene quantities: theta, the (TABLE_ROWS, G) lgamma / digamma difference tables, and the tables' edge.

    Row k of the tables holds ``lgamma(k + theta) - lgamma(theta) = sum_{j<k} log(theta + j)`` and
    ``digamma(k + theta) - digamma(theta) = sum_{j<k} 1 / (theta + j)``: both cumulative sums are one product
    with a triangular matrix. ``edge`` (5, G) holds what :func:`_large_count_terms` needs at
    ``z0 = theta + TABLE_ROWS``: both sums at k = TABLE_ROWS, log z0 and the two series at z0.
    """
    theta = log_theta.exp()
    steps = theta + torch.arange(TABLE_ROWS, dtype=theta.dtype, device=theta.device)[:, None]  # theta + j
    below = torch.ones(TABLE_ROWS + 1, TABLE_ROWS, dtype=theta.dtype, device=theta.device).tril_(-1)  # j < k
    sums = below @ torch.cat([steps.log(), steps.reciprocal()], dim=1)  # (TABLE_ROWS + 1, 2G)
    lgamma_sums, digamma_sums = sums[:, :len(theta)], sums[:, len(theta):]
    z0 = theta + TABLE_ROWS
    edge = torch.stack([lgamma_sums[TABLE_ROWS], digamma_sums[TABLE_ROWS], z0.log(), _lgamma_series(z0),
                        _digamma_series(z0)])
    return theta, lgamma_sums[:TABLE_ROWS], digamma_sums[:TABLE_ROWS], edge


def _large_count_terms(x, theta, edge) -> tuple[torch.Tensor, torch.Tensor]:
    """``lgamma(x + theta) - lgamma(theta)`` and the digamma difference for counts x >= TABLE_ROWS.

    From the tables' edge z0 = theta + TABLE_ROWS to z1 = theta + x (d = x - TABLE_ROWS), Stirling's series
    gives ``lgamma(z1) - lgamma(z0) = (z1 - 1/2) log1p(d / z0) + d (log z0 - 1) + s(z1) - s(z0)`` and
    ``digamma(z1) - digamma(z0) = log1p(d / z0) - t(z1) + t(z0)``: no term is large, so float32 stays exact for
    a huge theta (where ``lgamma(z1) - lgamma(theta)`` would cancel two numbers of size theta log theta).
    """
    lgamma_edge, digamma_edge, log_z0, lgamma_series_z0, digamma_series_z0 = edge
    d = x - TABLE_ROWS
    z1 = x + theta
    step = torch.log1p(d / (theta + TABLE_ROWS))
    lgamma_term = lgamma_edge + (z1 - 0.5) * step + d * (log_z0 - 1.0) + (_lgamma_series(z1) - lgamma_series_z0)
    digamma_term = digamma_edge + step - (_digamma_series(z1) - digamma_series_z0)
    return lgamma_term, digamma_term


def _gamma_terms_selected(x, theta, lgamma_table, digamma_table, edge):
    """``lgamma(x + theta) - lgamma(theta)`` and the digamma difference: tables, or the series where x is large.

    Both branches are evaluated everywhere and one is selected: free inside a compiled loop, wasteful eagerly.
    """
    large = x >= TABLE_ROWS
    row = torch.clamp(x, max=TABLE_ROWS - 1).long()
    lgamma_large, digamma_large = _large_count_terms(torch.clamp(x, min=TABLE_ROWS), theta, edge)
    lgamma_term = torch.where(large, lgamma_large, torch.gather(lgamma_table, 0, row))
    digamma_term = torch.where(large, digamma_large, torch.gather(digamma_table, 0, row))
    return lgamma_term, digamma_term


def _gamma_terms_patched(x, theta, lgamma_table, digamma_table, edge):
    """The same as :func:`_gamma_terms_selected`, for eager mode: tables, then the few large entries patched."""
    row = torch.clamp(x, max=TABLE_ROWS - 1).long()
    lgamma_term, digamma_term = torch.gather(lgamma_table, 0, row), torch.gather(digamma_table, 0, row)
    cells, genes = torch.nonzero(x >= TABLE_ROWS, as_tuple=True)  # ~0.4% of a typical count matrix
    if len(cells):
        large = _large_count_terms(x[cells, genes], theta[genes], edge[:, genes])
        lgamma_term[cells, genes], digamma_term[cells, genes] = large
    return lgamma_term, digamma_term


def _entry_terms(logits, log_size, x, weights, log_theta, gamma_terms, theta, lgamma_table, digamma_table,
                 edge) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per cell: the weighted NB sum, its derivatives with respect to the logits (B, G) and to theta (B, G).

    Written with as few transcendental functions per entry as the maths allows (they bound the compiled loop):
    ``log(theta + mu) = log theta + log1p(mu / theta)``, which also keeps ``theta log(theta / (theta + mu))``
    exact for large theta, and one division ``(x - mu) / (theta + mu)`` shared by both derivatives.
    """
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    mu = p * log_size.exp()
    log1p_mu_theta = torch.log1p(mu / theta)
    scaled_residual = (x - mu) / (theta + mu)
    lgamma_term, digamma_term = gamma_terms(x, theta, lgamma_table, digamma_table, edge)
    # lgamma(x+theta) - lgamma(theta) + x log(mu / (theta + mu)) + theta log(theta / (theta + mu))
    log_mu_over_theta_mu = log_p + log_size - log_theta - log1p_mu_theta
    entry = lgamma_term + x * log_mu_over_theta_mu - theta * log1p_mu_theta
    total = (entry * weights).sum(-1)
    d_log_mu = theta * scaled_residual * weights  # d/d log mu = x - mu (x + theta) / (theta + mu)
    d_logits = d_log_mu - p * d_log_mu.sum(-1, keepdim=True)  # through the softmax
    d_theta = (digamma_term - log1p_mu_theta - scaled_residual) * weights
    return total, d_logits, d_theta


def _kernel(logits, log_size, log_theta, x, weights,
            gamma_terms=_gamma_terms_selected) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-gene tables and the per-entry terms: what is compiled, as one region (one call, fused loops)."""
    return _entry_terms(logits, log_size, x, weights, log_theta, gamma_terms, *_gene_terms(log_theta))


def _detached(tensors) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach() for t in tensors)


def _eager(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernels op by op on (logits, log_size, log_theta, x, weights), detached. On the CPU the few large
    counts are patched by index; elsewhere both branches are evaluated and selected, since finding them
    (``nonzero``) would make every step wait for the device."""
    on_cpu = tensors[0].device.type == "cpu"
    return _kernel(*tensors, gamma_terms=_gamma_terms_patched if on_cpu else _gamma_terms_selected)


_COMPILE_OPTIONS = (
    {"cpp.dynamic_threads": True, "cpp.vec_isa_ok": True},  # first choice: no ISA probe (~1.3 s less per process)
    {"cpp.dynamic_threads": True},  # if that fails: torch's default, which probes what the compiler can build
)


class CompiledFunction:
    """``function`` compiled at its first call (``torch.compile``, dynamic sizes); ``eager`` if compiling fails.

    Compiling lazily lets the compiler see the real batch shape (sizes stay symbolic, so other batch sizes reuse
    the code). ``cpp.dynamic_threads`` keeps the loops parallel whatever sizes that first call had (torch caches
    compiled code on disk by graph, not by size: a first call on a tiny batch would otherwise leave serial loops
    for every later process). ``cpp.vec_isa_ok`` takes the CPU's vector instructions from torch's own CPU
    detection (which checks that the OS enables them) instead of building and loading a probe library per
    instruction set in subprocesses; should the compiler be unable to build for them, the compile is retried
    with torch's probing, and failing that ``eager`` runs (the same maths) with a warning.
    """

    def __init__(self, function: Callable, eager: Callable, what: str):
        self.function = None
        self.eager = eager
        self.what = what
        self.attempts = [torch.compile(function, dynamic=True, options=options) for options in _COMPILE_OPTIONS]

    def __call__(self, *args):
        if self.function is not None:
            return self.function(*args)
        while self.attempts:
            try:
                out = self.attempts[0](*args)
            except Exception as error:  # noqa: BLE001  a compiler failure: next options, or the same maths eagerly
                self.attempts.pop(0)
                if not self.attempts:
                    warnings.warn(f"torch.compile is unavailable here ({type(error).__name__}: {str(error)[:300]}); "
                                  f"{self.what} runs eagerly (same values, slower)", RuntimeWarning, stacklevel=4)
                continue
            self.function = self.attempts[0]
            return out
        return self.eager(*args)


@functools.cache
def _compiled(device_type: str, dtype: torch.dtype) -> CompiledFunction:
    """One set of compiled kernels per device type and dtype for the process."""
    return CompiledFunction(_kernel, _eager, "the NB likelihood")


class _NBLogLikelihoodSum(torch.autograd.Function):
    """Per-cell sum over genes of w_g [log NB(x | mu, theta) + lgamma(x + 1)]."""

    @staticmethod
    def forward(ctx, logits, log_size, log_theta, x, weights, compiled):
        if torch.compiler.is_compiling():  # inside a larger compiled region (a whole training step): inline
            kernels = _kernel
        else:
            kernels = _compiled(logits.device.type, logits.dtype) if compiled else _eager
        total, d_logits, d_theta = kernels(*_detached((logits, log_size, log_theta, x, weights)))
        ctx.save_for_backward(d_logits, d_theta, log_theta)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        d_logits, d_theta, log_theta = ctx.saved_tensors
        grad_logits = d_logits * grad_total[:, None] if ctx.needs_input_grad[0] else None
        grad_log_theta = (grad_total @ d_theta) * log_theta.exp() if ctx.needs_input_grad[2] else None
        return grad_logits, None, grad_log_theta, None, None, None


def compile_pays(n_rows: int, n_features: int, epochs: int, device_type: str = "cpu") -> bool:
    """Whether compiling the kernel repays itself over a training run (the default of ``fit(compile=None)``).

    On the CPU the whole training step is compiled (``VAEModule.terms``: the kernel with the encoder, decoder
    and KL, forward and backward): ~3.5 s per process (~7 s the first time on a machine), saving about 6.5 ns
    per (cell, gene) entry and epoch (2,000 genes, batch 128, 2 threads: ~3.2 ms a step against ~5 eager and
    3.4 with the kernel alone compiled): it pays from about ``COMPILE_MIN_ENTRIES`` entries × epochs. On a
    GPU, with the training steps replayed from a CUDA graph (``fit(cuda_graph=True)``), the device's work
    bounds an epoch and the compiled (Triton) kernel more than halves it (H200, 90k cells × 2,000 genes,
    batch 4096: 4.5M cells/s against 1.8M eager), but compiling takes ~13 s (cold cache): ~0.16 ns saved per
    entry and epoch, so it pays from ``COMPILE_MIN_ENTRIES_CUDA`` (e.g. 1M cells × 2,000 genes × 50 epochs).

    >>> compile_pays(10_000, 2_000, 100), compile_pays(1_000, 50, 20), compile_pays(10_000, 2_000, 100, "cuda")
    (True, False, False)
    >>> compile_pays(1_000_000, 2_000, 50, "cuda")
    True
    """
    threshold = {"cpu": COMPILE_MIN_ENTRIES, "cuda": COMPILE_MIN_ENTRIES_CUDA}.get(device_type)
    return threshold is not None and n_rows * n_features * epochs >= threshold


def nb_log_likelihood_sum(
    logits: torch.Tensor,
    size_factor: torch.Tensor,
    log_theta: torch.Tensor,
    x: torch.Tensor,
    weights: torch.Tensor | None = None,
    compiled: bool = False,
) -> torch.Tensor:
    """Sum over genes of ``w_g * (log NB(x_g | mu_g, theta_g) + lgamma(x_g + 1))`` per cell.

    ``mu = size_factor * softmax(logits)``, ``theta = exp(log_theta)``; ``x``
    holds non-negative integer counts. Subtract :func:`log_factorial_sum` of
    the same x to get the log-likelihood. Gradients flow to ``logits`` and
    ``log_theta`` only. ``compiled=True`` runs the compiled kernel (faster
    per batch after a one-off compile of a few seconds per process).

    >>> logits, x = torch.zeros(1, 2), torch.tensor([[1.0, 3.0]])
    >>> out = nb_log_likelihood_sum(logits, torch.tensor([4.0]), torch.zeros(2), x) - log_factorial_sum(x)
    >>> round(float(out), 4)  # scipy.stats.nbinom(1, 1/3).logpmf([1, 3]).sum()
    -3.8191
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 is too coarse for the NB terms
    # a cell with no counts (size 0) has mu = 0 and log-likelihood 0; a tiny floor keeps log(size) finite
    log_size = size_factor.reshape(-1, 1).to(dtype).clamp_min(1e-12).log()
    # no weights: a 0-d one, which the compiled kernel specialises on (10% faster than a vector of ones)
    weights = torch.ones((), dtype=dtype, device=logits.device) if weights is None else weights.to(dtype)
    return _NBLogLikelihoodSum.apply(logits.to(dtype), log_size, log_theta.to(dtype), x.to(dtype), weights,
                                      compiled)


def log_factorial_sum(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_g w_g lgamma(x_g + 1)`` per row: the data-only part of count log-likelihoods."""
    log_factorial = torch.lgamma(x + 1.0)
    return log_factorial.sum(-1) if weights is None else (log_factorial * weights).sum(-1)
