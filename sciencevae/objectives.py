"""Training objectives as functions of the per-sample ELBO terms.

**What β means.** The reconstruction term is the negative log-likelihood
summed over features (masked features drop out, feature weights scale it) and
the KL term is summed over latents; both are averaged over the batch. With
β = 1 and no schedule the ``beta`` objective is exactly the negative ELBO.

Objectives
----------
``beta``
    Higgins et al. 2017: ``recon + β · w(t) · KL`` where ``w(t)`` is the KL
    warm-up weight (linear from 0 to 1 over ``warmup_steps``). With
    ``free_bits > 0`` each latent's batch-mean KL is floored at that many nats
    (Kingma et al. 2016) before summing.
``capacity``
    Burgess et al. 2018: ``recon + γ · |KL − C(t)|`` with the capacity ``C``
    rising linearly from 0 to ``capacity_max`` nats over ``capacity_steps``.
``tcvae``
    Chen et al. 2018: ``recon + w(t) · (α · MI + β · TC + λ · dimKL)``, where
    the index-code mutual information, total correlation and dimension-wise KL
    are estimated on the batch with the minibatch-weighted (``mws``) or
    minibatch-stratified (``mss``, default) estimator, both using the dataset
    size N. ``mss`` weighs each sample's own posterior 1/N and every other batch
    member (N-1)/(N(M-1)); on the whole dataset (M = N) it is exact. ``mws``
    (weights 1/(NM)) is biased when posteriors are tight: its TC is offset by
    up to L log N - log M, so compare MWS values only with each other.

**Batch mixing.** With ``batch_mmd > 0`` every objective adds
``batch_mmd · Σ_g MMD²(z_g, z)``: the squared maximum mean discrepancy (Gretton
et al. 2012, biased V-statistic, a sum of Gaussian kernels of bandwidths
:data:`MMD_BANDWIDTHS`) between the latent samples of each batch ``g`` in the
minibatch (at least two cells) and those of the whole minibatch — the penalty
trVAE (Lotfollahi et al. 2020) puts on a layer, here on the codes. The batch
is read from the covariate columns ``batch_columns`` (its one-hot block). It
pulls the batches' codes onto one distribution, so it also removes biology
whose share differs between batches when the weight is large.

A loadings penalty with a stronger start (gene-set-guided programmes,
:meth:`sciencevae.networks.LinearDecoder.set_penalty`) falls linearly to its own over the same warm-up
(:meth:`Objective.penalty_anneal`): a continuation, as in homotopy methods for the lasso.

Schedules are computed from the step counter; nothing is mutated in training.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import torch

__all__ = ["Objective", "ElboTerms", "gaussian_log_density", "tc_decomposition", "batch_mmd", "BETA_CONVENTION"]

BETA_CONVENTION = (
    "reconstruction = negative log-likelihood summed over features (masked features dropped, "
    "feature weights applied); KL summed over latents; both averaged over the batch; "
    "beta = 1 with no schedule is the negative ELBO"
)
_LOG_2PI = math.log(2 * math.pi)
#: Bandwidths (in latent units; the prior is N(0, I)) of the Gaussian kernels summed in :func:`batch_mmd`.
MMD_BANDWIDTHS = (0.5, 1.0, 2.0, 4.0)


@dataclass
class ElboTerms:
    """Per-sample terms of one batch, produced by the model.

    reconstruction: (B,) negative log-likelihood summed over features.
    kl: (B, L) analytic KL(q(z|x) || N(0, I)) per latent.
    z, mu, logvar: (B, L) posterior sample and parameters.
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor
    z: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


def batch_mmd(z: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Sum over groups of the squared MMD between a group's rows of ``z`` and all rows (Gretton et al. 2012).

    Parameters
    ----------
    z : (B, L) tensor
        Latent samples of one minibatch.
    groups : (B, G) tensor
        One-hot group membership (a batch covariate's columns). Groups with fewer than two rows in the
        minibatch add nothing.

    Returns
    -------
    Scalar tensor ``Σ_g [mean k(g, g) − 2 mean k(g, ·) + mean k(·, ·)]`` with ``k`` the sum of Gaussian
    kernels ``exp(−|a − b|² / 2s²)`` over ``s`` in :data:`MMD_BANDWIDTHS` (the biased V-statistic; 0 when
    every group has the batch's distribution of rows). No data-dependent shapes: capturable in a CUDA graph.

    >>> z = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    >>> round(float(batch_mmd(z, torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]]))), 6)
    0.0
    """
    distance = torch.cdist(z, z).square()
    kernel = sum(torch.exp(distance / (-2.0 * s * s)) for s in MMD_BANDWIDTHS)
    groups = groups.to(z.dtype)
    size = groups.sum(0)
    weights = groups / size.clamp_min(1.0)                      # (B, G): each group's mean
    whole = torch.full_like(z[:, :1], 1.0 / z.shape[0])          # (B, 1): the batch's mean
    within = (weights * (kernel @ weights)).sum(0)
    between = (weights * (kernel @ whole)).sum(0)
    overall = (whole * (kernel @ whole)).sum()
    return ((within - 2.0 * between + overall) * (size > 1).to(z.dtype)).sum()


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mu, exp(logvar)).

    >>> float(gaussian_log_density(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0)))
    -0.9189385175704956
    """
    return -0.5 * (_LOG_2PI + logvar + (z - mu).square() * torch.exp(-logvar))


def _log_weights(batch_size: int, dataset_size: int, estimator: str, like: torch.Tensor) -> torch.Tensor:
    """log w_ij with log q(z_i) ≈ logsumexp_j (log q(z_i|x_j) + log w_ij)."""
    n, m = float(dataset_size), float(batch_size)
    if estimator == "mws":  # Chen 2018 eq. S6: every batch member weighs 1 / (N M)
        return torch.full((batch_size, batch_size), -math.log(n * m), dtype=like.dtype, device=like.device)
    # mss: the sample's own x_i stands for itself (1/N); the other M-1 batch
    # members are a uniform sample of the other N-1 points, each (N-1)/(N(M-1)).
    other = math.log((n - 1) / (n * (m - 1))) if m > 1 else -math.inf
    w = torch.full((batch_size, batch_size), other, dtype=like.dtype, device=like.device)
    w.fill_diagonal_(-math.log(n))
    return w


def tc_decomposition(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    dataset_size: int,
    estimator: Literal["mws", "mss"] = "mss",
) -> dict[str, torch.Tensor]:
    """Per-sample β-TCVAE decomposition of log q(z|x) − log p(z).

    Returns ``mi`` (index-code MI), ``tc`` (total correlation) and ``dim_kl``
    (dimension-wise KL), each (B,), which add up exactly to
    ``log_qz_x − log_pz``: a one-sample estimate of KL(q(z|x) || p(z)).

    >>> z = torch.randn(64, 3)
    >>> d = tc_decomposition(z, z, torch.full_like(z, -4.0), dataset_size=1000)
    >>> sorted(d)
    ['dim_kl', 'log_pz', 'log_qz_x', 'mi', 'tc']
    """
    if estimator not in ("mws", "mss"):
        raise ValueError(f"estimator must be 'mws' or 'mss', got {estimator!r}")
    batch_size = z.shape[0]
    if dataset_size < batch_size:
        raise ValueError(f"dataset_size ({dataset_size}) is smaller than the batch ({batch_size})")
    log_qz_x = gaussian_log_density(z, mu, logvar).sum(-1)
    log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(-1)
    pairwise = gaussian_log_density(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # (B, B, L)
    log_w = _log_weights(batch_size, dataset_size, estimator, z)
    log_qz = torch.logsumexp(pairwise.sum(-1) + log_w, dim=1)
    log_prod_qz = torch.logsumexp(pairwise + log_w[:, :, None], dim=1).sum(-1)
    return {
        "mi": log_qz_x - log_qz,
        "tc": log_qz - log_prod_qz,
        "dim_kl": log_prod_qz - log_pz,
        "log_qz_x": log_qz_x,
        "log_pz": log_pz,
    }


@dataclass(frozen=True)
class Objective:
    """Which loss to minimise; one frozen config, saved with every model.

    >>> Objective(kind="tcvae", beta=6.0).schedule_steps
    0
    """

    kind: Literal["beta", "capacity", "tcvae"] = "beta"
    beta: float = 1.0
    warmup_steps: int = 0
    free_bits: float = 0.0
    gamma: float = 1000.0
    capacity_max: float = 25.0
    capacity_steps: int = 100_000
    alpha: float = 1.0
    dim_kl_weight: float = 1.0
    estimator: Literal["mws", "mss"] = "mss"
    batch_mmd: float = 0.0
    batch_columns: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("beta", "capacity", "tcvae"):
            raise ValueError(f"objective kind must be 'beta', 'capacity' or 'tcvae', got {self.kind!r}")
        if self.estimator not in ("mws", "mss"):
            raise ValueError(f"estimator must be 'mws' or 'mss', got {self.estimator!r}")
        for name in ("beta", "free_bits", "gamma", "capacity_max", "alpha", "dim_kl_weight", "batch_mmd"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"objective {name} must be a finite number >= 0, got {value!r}")
        for name in ("warmup_steps", "capacity_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"objective {name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.free_bits > 0 and self.kind != "beta":
            raise ValueError("free_bits applies to the 'beta' objective only")
        if self.warmup_steps > 0 and self.kind == "capacity":
            raise ValueError("the capacity objective has its own schedule; use capacity_steps, not warmup_steps")
        self._check_batch_columns()

    def _check_batch_columns(self) -> None:
        if self.batch_columns is None:
            if self.batch_mmd > 0:
                raise ValueError("batch_mmd needs batch_columns=(start, stop): the covariate columns of the batch")
            return
        columns = tuple(self.batch_columns)
        if len(columns) != 2 or not all(isinstance(c, int) for c in columns) or not 0 <= columns[0] < columns[1]:
            raise ValueError(f"batch_columns must be (start, stop) with 0 <= start < stop, got {self.batch_columns!r}")
        object.__setattr__(self, "batch_columns", columns)  # a list after a JSON round trip

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def schedule_steps(self) -> int:
        """Number of optimiser steps until every schedule has reached its end."""
        return self.capacity_steps if self.kind == "capacity" else self.warmup_steps

    def kl_weight(self, step: int) -> float:
        """KL warm-up factor w(t) in [0, 1]."""
        return 1.0 if self.warmup_steps == 0 else min(1.0, step / self.warmup_steps)

    def penalty_anneal(self, step: int) -> float:
        """How far a loadings penalty still is at its start value, in [0, 1]: 1 at step 0, falling linearly
        to 0 at the end of the warm-up (0 throughout without one).

        >>> Objective(warmup_steps=10).penalty_anneal(4)
        0.6
        """
        return 0.0 if self.warmup_steps == 0 else max(0.0, 1.0 - step / self.warmup_steps)

    def capacity(self, step: int) -> float:
        """Capacity C(t) in nats (capacity objective)."""
        if self.capacity_steps == 0:
            return self.capacity_max
        return self.capacity_max * min(1.0, step / self.capacity_steps)

    def warn_if_unfinished(self, total_steps: int) -> None:
        """Warn when a warm-up or capacity schedule cannot finish within training."""
        if self.schedule_steps > total_steps:
            what = "capacity schedule (capacity_steps)" if self.kind == "capacity" else "KL warm-up (warmup_steps)"
            warnings.warn(
                f"the {what} needs {self.schedule_steps} steps but training runs only {total_steps}; "
                "train longer or shorten the schedule",
                UserWarning,
                stacklevel=4,
            )

    def loss(self, terms: ElboTerms, step: int, dataset_size: int,
             covariates: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Scalar ``loss`` plus batch-mean ``reconstruction``, ``kl`` and ``kl_per_latent`` (and ``mmd`` with
        ``batch_mmd``, read from the ``batch_columns`` of ``covariates``, (B, n_covariates))."""
        kl_per_latent = terms.kl.mean(0)
        out = {
            "reconstruction": terms.reconstruction.mean(),
            "kl": kl_per_latent.sum(),
            "kl_per_latent": kl_per_latent,
        }
        if self.kind == "beta":
            kl = kl_per_latent.clamp_min(self.free_bits).sum() if self.free_bits > 0 else out["kl"]
            out["loss"] = out["reconstruction"] + self.beta * self.kl_weight(step) * kl
        elif self.kind == "capacity":
            out["loss"] = out["reconstruction"] + self.gamma * (out["kl"] - self.capacity(step)).abs()
        else:
            parts = tc_decomposition(terms.z, terms.mu, terms.logvar, dataset_size, self.estimator)
            mi, tc, dim_kl = parts["mi"].mean(), parts["tc"].mean(), parts["dim_kl"].mean()
            penalty = self.alpha * mi + self.beta * tc + self.dim_kl_weight * dim_kl
            out.update(mi=mi, tc=tc, dim_kl=dim_kl)
            out["loss"] = out["reconstruction"] + self.kl_weight(step) * penalty
        if self.batch_mmd > 0:
            start, stop = self.batch_columns
            out["mmd"] = batch_mmd(terms.z, covariates[:, start:stop])
            out["loss"] = out["loss"] + self.batch_mmd * out["mmd"]
        return out
