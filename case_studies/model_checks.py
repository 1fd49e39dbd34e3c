"""Posterior predictive checks of a fitted count model: does data simulated from it look like the data?

For a seeded sample of cells, codes are drawn from each cell's posterior q(z|x), counts are drawn from the
decoder's likelihood at the cell's library size (``N_REPLICATES`` times), and per gene the mean, variance,
coefficient of variation and zero fraction of the simulated counts are set against the data's — the checks
of ``scvi.criticism`` (scvi-tools) and of Gelman, Meng & Stern (1996, Stat. Sin. 6:733), per gene. A gene is
flagged where its observed zero fraction lies outside what the model simulates (more than
``ZERO_Z`` standard errors and ``ZERO_MARGIN`` away) or its observed variance is more than
``VARIANCE_RATIO`` times the simulated one (or less than its inverse) and outside the replicates' sampling
noise. The verdict is one line, e.g.
"nb under-predicts zeros for 12% of genes: try zinb".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sciencevae import BetaVAE, Prepared
from sciencevae.data import as_prepared
from sciencevae.streaming import Streamed, rows_of

__all__ = ["PredictiveCheck", "posterior_predictive", "statistics", "compare", "verdict", "MAX_CELLS",
           "N_REPLICATES"]

MAX_CELLS = 5000  # cells simulated (a seeded sample of larger data)
N_REPLICATES = 5  # simulated datasets
ZERO_Z, ZERO_MARGIN = 3.0, 0.02  # a zero fraction is off when this many standard errors and this far away
VARIANCE_RATIO = 1.5  # a variance is off when observed / simulated is above this or below its inverse
FLAG_SHARE = 0.10  # the verdict speaks of a misfit when this share of genes is off the same way
STATISTICS = ("mean", "variance", "cv", "zero_fraction")


@dataclass(frozen=True)
class PredictiveCheck:
    """``table``: per gene its observed and simulated statistics and flags; ``summary``: per statistic the
    Spearman correlation of observed with simulated over genes and the share of flagged genes; ``verdict``."""

    table: pd.DataFrame
    summary: pd.DataFrame
    verdict: str


def statistics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per gene (column) of ``counts`` (cells, genes): mean, variance (ddof 0), cv (sd / mean; NaN for an
    all-zero gene) and zero fraction.

    >>> {k: v.tolist() for k, v in statistics(np.array([[0.0, 2.0], [0.0, 4.0]])).items()}
    {'mean': [0.0, 3.0], 'variance': [0.0, 1.0], 'cv': [nan, 0.3333333333333333], 'zero_fraction': [1.0, 0.0]}
    """
    counts = np.asarray(counts, dtype=np.float64)
    mean, variance = counts.mean(0), counts.var(0)
    cv = np.divide(np.sqrt(variance), mean, out=np.full_like(mean, np.nan), where=mean > 0)
    return {"mean": mean, "variance": variance, "cv": cv, "zero_fraction": (counts == 0).mean(0)}


def compare(observed: dict[str, np.ndarray], simulated: list[dict[str, np.ndarray]], n_cells: int,
            genes: list[str]) -> pd.DataFrame:
    """Per gene: ``observed_<stat>`` and ``simulated_<stat>`` (mean over replicates) for :data:`STATISTICS`,
    ``zeros`` ("under" where the model simulates too few zeros, "over", or "ok") and ``variance`` (likewise)."""
    table = pd.DataFrame({"gene": list(genes)})
    for stat in STATISTICS:
        table[f"observed_{stat}"] = observed[stat]
        table[f"simulated_{stat}"] = _finite_mean(np.array([s[stat] for s in simulated])) if simulated else np.nan
    p = table["simulated_zero_fraction"].to_numpy()
    gap = table["observed_zero_fraction"].to_numpy() - p
    error = np.sqrt(2 * np.clip(p * (1 - p), 1e-12, None) / max(n_cells, 1))  # both sides are samples of n cells
    off = (np.abs(gap) > ZERO_Z * error) & (np.abs(gap) > ZERO_MARGIN)
    table["zeros"] = np.where(off, np.where(gap > 0, "under", "over"), "ok")
    table["variance"] = _variance_flags(observed["variance"], np.array([s["variance"] for s in simulated]))
    return table


def _finite_mean(stack: np.ndarray) -> np.ndarray:
    """Mean over the first axis of the finite values (NaN where there is none: e.g. the CV of a gene that the
    model never expresses), without numpy's empty-slice warning."""
    finite = np.isfinite(stack)
    count = finite.sum(0)
    total = np.where(finite, stack, 0.0).sum(0)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def _variance_flags(observed: np.ndarray, replicates: np.ndarray) -> np.ndarray:
    """"under" / "over" / "ok" per gene: the observed variance more than ``VARIANCE_RATIO`` times off the
    replicates' mean *and* outside their sampling noise (3 standard deviations of log variance over the
    replicates, widened for the observed sample's own noise) — a lowly expressed gene's variance over a few
    hundred cells rests on a handful of counts and is often 1.5x off by chance alone."""
    if not len(replicates):
        return np.full(len(observed), "ok")
    with np.errstate(divide="ignore", invalid="ignore"):  # a gene that never varies has log variance -inf
        logs = np.log(replicates)
        gap = np.log(observed) - np.log(replicates.mean(0))
    finite = np.isfinite(logs)
    n = finite.sum(0)
    centred = np.where(finite, logs - np.where(finite, logs, 0.0).sum(0) / np.maximum(n, 1), 0.0)
    spread = np.sqrt((centred**2).sum(0) / np.maximum(n - 1, 1))  # over the replicates where it is finite
    bound = np.maximum(np.log(VARIANCE_RATIO), 3 * np.nan_to_num(spread) * np.sqrt(2))
    gap = np.where(np.isfinite(gap), gap, 0.0)
    return np.where(gap > bound, "under", np.where(gap < -bound, "over", "ok"))


def verdict(table: pd.DataFrame, likelihood: str) -> str:
    """One line on what the checks say, with the fix where there is one."""
    n = max(len(table), 1)
    under_zeros = float((table["zeros"] == "under").sum()) / n
    over_zeros = float((table["zeros"] == "over").sum()) / n
    under_variance = float((table["variance"] == "under").sum()) / n
    if likelihood == "poisson" and under_variance >= FLAG_SHARE:  # overdispersion also makes the extra zeros
        return f"poisson under-predicts the variance of {under_variance:.0%} of genes: try nb"
    if under_zeros >= FLAG_SHARE:
        fix = "try zinb" if likelihood != "zinb" else "even with zero inflation: check for empty droplets or doublets"
        return f"{likelihood} under-predicts zeros for {under_zeros:.0%} of genes: {fix}"
    if under_variance >= FLAG_SHARE:
        return (f"{likelihood} under-predicts the variance of {under_variance:.0%} of genes: more latents or an mlp "
                "decoder may capture what is missing")
    over_variance = float((table["variance"] == "over").sum()) / n
    if max(over_zeros, over_variance) >= FLAG_SHARE:
        what = (f"zeros for {over_zeros:.0%}" if over_zeros >= over_variance else
                f"the variance of {over_variance:.0%}")
        fix = ("try nb" if likelihood == "zinb" else
               "train longer (more epochs), or the counts were filtered or imputed")
        return f"{likelihood} over-predicts {what} of genes (the model is more dispersed than the data): {fix}"
    flagged = ((table["zeros"] != "ok") | (table["variance"] != "ok")).mean() if len(table) else 0.0
    return (f"data simulated from the {likelihood} model match the data's means, variances and zeros "
            f"({1 - flagged:.0%} of genes within bounds): no sign of a wrong count model")


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per statistic: Spearman correlation of observed with simulated over genes, and the shares flagged."""
    rows = []
    for stat in STATISTICS:
        pair = table[[f"observed_{stat}", f"simulated_{stat}"]].dropna()
        rho = pair.corr(method="spearman").iloc[0, 1] if len(pair) > 2 else np.nan
        flags = table["zeros"] if stat == "zero_fraction" else table["variance"] if stat == "variance" else None
        rows.append({"statistic": stat, "spearman": float(rho),
                     "share_under_predicted": float((flags == "under").mean()) if flags is not None else np.nan,
                     "share_over_predicted": float((flags == "over").mean()) if flags is not None else np.nan})
    return pd.DataFrame(rows)


def _draw_counts(distribution, rng: np.random.Generator) -> np.ndarray:
    """One draw of counts from an NB / ZINB / Poisson distribution of :mod:`sciencevae.likelihoods`."""
    mean = distribution.mean.double().cpu().numpy()
    if hasattr(distribution, "theta"):
        theta = np.broadcast_to(distribution.theta.double().cpu().numpy(), mean.shape)
        mu = distribution.mu.double().cpu().numpy()
        counts = rng.poisson(rng.gamma(theta, np.maximum(mu, 1e-12) / theta))
        if hasattr(distribution, "zero_probability"):
            counts = counts * (rng.random(mean.shape) >= distribution.zero_probability.double().cpu().numpy())
        return counts
    return rng.poisson(mean)


@torch.no_grad()
def posterior_predictive(model: BetaVAE, prepared: Prepared | Streamed | np.ndarray, genes: list[str],
                         max_cells: int = MAX_CELLS, n_replicates: int = N_REPLICATES, seed: int = 0,
                         genes_checked: np.ndarray | None = None) -> PredictiveCheck | None:
    """Simulate ``n_replicates`` datasets of (a seeded sample of at most ``max_cells``) cells from the fitted
    count model and compare them with the data gene by gene (:func:`compare`); ``genes_checked`` (bool,
    n_genes) limits the comparison to those genes (e.g. leaves out genes a query lacks). None for a
    likelihood without counts (nothing to simulate counts from)."""
    likelihood = model.config.likelihood
    if likelihood not in ("nb", "zinb", "poisson"):
        return None
    rng = np.random.default_rng(seed)
    prepared = prepared if isinstance(prepared, Streamed) else as_prepared(prepared)
    rows = np.arange(prepared.n_obs) if prepared.n_obs <= max_cells else np.sort(
        rng.choice(prepared.n_obs, max_cells, replace=False))
    part = rows_of(prepared, rows)
    counts = part.X.toarray() if hasattr(part.X, "toarray") else np.asarray(part.X)
    kept = np.ones(counts.shape[1], bool) if genes_checked is None else np.asarray(genes_checked, bool)
    library = counts.sum(1)
    mean, std = model.encode(part, return_std=True)
    module = model.module.eval()
    covariates = None if part.covariates is None else torch.as_tensor(part.covariates, dtype=torch.float32,
                                                                      device=model.device)
    size = torch.as_tensor(library, dtype=torch.float32, device=model.device)
    simulated = []
    for _ in range(n_replicates):
        z = torch.as_tensor(mean + std * rng.standard_normal(mean.shape), dtype=torch.float32, device=model.device)
        simulated.append(statistics(_draw_counts(module.generative(z, covariates, size), rng)[:, kept]))
    table = compare(statistics(counts[:, kept]), simulated, len(rows), list(np.asarray(genes)[kept]))
    return PredictiveCheck(table=table, summary=summary_table(table), verdict=verdict(table, likelihood))
