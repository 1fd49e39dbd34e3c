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
  Stirling series for larger counts;
- the data-only constant ``sum_g w_g lgamma(x_g + 1)`` left to the caller (it
  never changes in training; see :func:`log_factorial_sum`);
- one compiled kernel: the per-entry work is a pure tensor function that
  ``torch.compile`` fuses into a few loops over the batch (C++ on the CPU,
  Triton on CUDA). Where compiling is impossible (no C++ compiler, an
  unsupported platform, ``TORCH_COMPILE_DISABLE=1``) the same function runs
  eagerly, with a warning: same numbers, about three times slower.

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

__all__ = ["nb_log_likelihood_sum", "log_factorial_sum", "TABLE_ROWS"]

TABLE_ROWS = 32
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _stirling_lgamma(z: torch.Tensor) -> torch.Tensor:
    """``lgamma(z)`` for z >= TABLE_ROWS (series error below 1e-16)."""
    r = 1.0 / z
    r2 = r * r
    series = r * (1.0 / 12 - r2 * (1.0 / 360 - r2 * (1.0 / 1260 - r2 / 1680)))
    return (z - 0.5) * torch.log(z) - z + _HALF_LOG_2PI + series


def _stirling_digamma(z: torch.Tensor) -> torch.Tensor:
    """``digamma(z)`` for z >= TABLE_ROWS (series error below 1e-16)."""
    r = 1.0 / z
    r2 = r * r
    return torch.log(z) - 0.5 * r - r2 * (1.0 / 12 - r2 * (1.0 / 120 - r2 * (1.0 / 252 - r2 / 240)))


def _gene_terms(log_theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-gene quantities: theta, the (TABLE_ROWS, G) lgamma / digamma difference tables, lgamma / digamma of theta.

    Row k of the tables holds ``lgamma(k + theta) - lgamma(theta) = sum_{j<k} log(theta + j)`` and
    ``digamma(k + theta) - digamma(theta) = sum_{j<k} 1 / (theta + j)``: both cumulative sums are one product
    with a triangular matrix. Row ``TABLE_ROWS`` then gives ``lgamma(theta)`` and ``digamma(theta)`` from the
    Stirling series at ``theta + TABLE_ROWS`` (vectorised, unlike ``torch.lgamma``).
    """
    theta = log_theta.exp()
    steps = theta + torch.arange(TABLE_ROWS, dtype=theta.dtype, device=theta.device)[:, None]  # theta + j
    below = torch.ones(TABLE_ROWS + 1, TABLE_ROWS, dtype=theta.dtype, device=theta.device).tril_(-1)  # j < k
    sums = below @ torch.cat([steps.log(), steps.reciprocal()], dim=1)  # (TABLE_ROWS + 1, 2G)
    lgamma_sums, digamma_sums = sums[:, :len(theta)], sums[:, len(theta):]
    edge = theta + TABLE_ROWS
    lgamma_theta = _stirling_lgamma(edge) - lgamma_sums[TABLE_ROWS]
    digamma_theta = _stirling_digamma(edge) - digamma_sums[TABLE_ROWS]
    return theta, lgamma_sums[:TABLE_ROWS], digamma_sums[:TABLE_ROWS], lgamma_theta, digamma_theta


def _entry_terms(logits, log_size, x, weights, log_theta, theta, lgamma_table, digamma_table, lgamma_theta,
                 digamma_theta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per cell: the weighted NB sum, its derivatives with respect to the logits (B, G) and to theta (B, G).

    Written with as few transcendental functions per entry as the maths allows (they bound the compiled loop):
    ``log(theta + mu) = log theta + log1p(mu / theta)``, which also keeps ``theta log(theta / (theta + mu))``
    exact for large theta, and one reciprocal ``1 / (theta + mu)`` shared by both derivatives.
    """
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    mu = p * log_size.exp()
    log1p_mu_theta = torch.log1p(mu / theta)
    scaled_residual = (x - mu) / (theta + mu)  # (x - mu) / (theta + mu)
    large = x >= TABLE_ROWS
    z = torch.clamp(x, min=TABLE_ROWS) + theta  # the Stirling branch, evaluated where it is valid
    row = torch.clamp(x, max=TABLE_ROWS - 1).long()
    lgamma_term = torch.where(large, _stirling_lgamma(z) - lgamma_theta, torch.gather(lgamma_table, 0, row))
    digamma_term = torch.where(large, _stirling_digamma(z) - digamma_theta, torch.gather(digamma_table, 0, row))
    # lgamma(x+theta) - lgamma(theta) + x log(mu / (theta + mu)) + theta log(theta / (theta + mu))
    log_mu_over_theta_mu = log_p + log_size - log_theta - log1p_mu_theta
    entry = lgamma_term + x * log_mu_over_theta_mu - theta * log1p_mu_theta
    total = (entry * weights).sum(-1)
    d_log_mu = theta * scaled_residual * weights  # d/d log mu = x - mu (x + theta) / (theta + mu)
    d_logits = d_log_mu - p * d_log_mu.sum(-1, keepdim=True)  # through the softmax
    d_theta = (digamma_term - log1p_mu_theta - scaled_residual) * weights
    return total, d_logits, d_theta


class _Kernels:
    """The two kernels, compiled for one device and dtype at their first call; eager if that compile fails.

    Compiling lazily lets the compiler pick loop tiling and threading for the real batch shape (the sizes stay
    symbolic, so other batch sizes reuse the same code).
    """

    def __init__(self):
        options = {"cpp.dynamic_threads": True}  # parallel loops whatever sizes the first call had
        self.functions = tuple(torch.compile(fn, dynamic=True, options=options) for fn in (_gene_terms, _entry_terms))
        self.checked = False

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.checked:
            return _run(self.functions, *tensors)
        try:
            out = _run(self.functions, *tensors)
        except Exception as error:  # noqa: BLE001  a compiler failure falls back to the same maths, eagerly
            warnings.warn(f"torch.compile is unavailable here ({type(error).__name__}: {str(error)[:300]}); the NB "
                          "likelihood runs eagerly (same values, about 3x slower)", RuntimeWarning, stacklevel=4)
            self.functions = _gene_terms, _entry_terms
            out = _run(self.functions, *tensors)
        self.checked = True
        return out


@functools.cache
def _kernels(device_type: str, dtype: torch.dtype) -> _Kernels:
    """One set of kernels per device type and dtype for the process (compiled code is cached by torch anyway)."""
    return _Kernels()


def _run(functions, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Call the kernels on (logits, log_size, log_theta, x, weights), detached: one compiled version serves all."""
    logits, log_size, log_theta, x, weights = (t.detach() for t in tensors)
    gene_terms, entry_terms = functions
    return entry_terms(logits, log_size, x, weights, log_theta, *gene_terms(log_theta))


class _NBLogLikelihoodSum(torch.autograd.Function):
    """Per-cell sum over genes of w_g [log NB(x | mu, theta) + lgamma(x + 1)]."""

    @staticmethod
    def forward(ctx, logits, log_size, log_theta, x, weights):
        kernels = _kernels(logits.device.type, logits.dtype)
        total, d_logits, d_theta = kernels(logits, log_size, log_theta, x, weights)
        ctx.save_for_backward(d_logits, d_theta, log_theta)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        d_logits, d_theta, log_theta = ctx.saved_tensors
        grad_logits = d_logits * grad_total[:, None] if ctx.needs_input_grad[0] else None
        grad_log_theta = (grad_total @ d_theta) * log_theta.exp() if ctx.needs_input_grad[2] else None
        return grad_logits, None, grad_log_theta, None, None


def nb_log_likelihood_sum(
    logits: torch.Tensor,
    size_factor: torch.Tensor,
    log_theta: torch.Tensor,
    x: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over genes of ``w_g * (log NB(x_g | mu_g, theta_g) + lgamma(x_g + 1))`` per cell.

    ``mu = size_factor * softmax(logits)``, ``theta = exp(log_theta)``; ``x``
    holds non-negative integer counts. Subtract :func:`log_factorial_sum` of
    the same x to get the log-likelihood. Gradients flow to ``logits`` and
    ``log_theta`` only.

    >>> logits, x = torch.zeros(1, 2), torch.tensor([[1.0, 3.0]])
    >>> out = nb_log_likelihood_sum(logits, torch.tensor([4.0]), torch.zeros(2), x) - log_factorial_sum(x)
    >>> round(float(out), 4)  # scipy.stats.nbinom(1, 1/3).logpmf([1, 3]).sum()
    -3.8191
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 is too coarse for the NB terms
    # a cell with no counts (size 0) has mu = 0 and log-likelihood 0; a tiny floor keeps log(size) finite
    log_size = size_factor.reshape(-1, 1).to(dtype).clamp_min(1e-12).log()
    weights = torch.ones_like(log_theta, dtype=dtype) if weights is None else weights.to(dtype)
    return _NBLogLikelihoodSum.apply(logits.to(dtype), log_size, log_theta.to(dtype), x.to(dtype), weights)


def log_factorial_sum(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_g w_g lgamma(x_g + 1)`` per row: the data-only part of count log-likelihoods."""
    log_factorial = torch.lgamma(x + 1.0)
    return log_factorial.sum(-1) if weights is None else (log_factorial * weights).sum(-1)
