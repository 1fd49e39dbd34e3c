"""Consensus of components across fits: which are found again, how closely, and their median.

The cNMF idea (Kotliar et al. 2019, eLife 8:e43803) for any model whose fits
give a matrix of feature loadings (features x components): pool the
components of K fits with different seeds, orient each so that its
largest loadings are positive, cluster them by correlation (average linkage,
cut at ``min_correlation``), take from each fit the member that agrees best
with the rest, and report per cluster the median loadings and how often and
how closely the fits find it again. Pure numpy/scipy; the case studies call it.

>>> rng = np.random.default_rng(0)
>>> truth = np.kron(np.eye(3), np.ones((20, 1)))            # 60 features, 3 programmes
>>> fits = [truth[:, rng.permutation(3)] * rng.choice([-1, 1], 3) + rng.normal(0, .1, (60, 3)) for _ in range(4)]
>>> found = consensus(fits)
>>> found.loadings.shape, np.round(found.stability, 2).tolist()
((60, 3), [0.97, 0.96, 0.95])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

__all__ = ["Consensus", "consensus", "orient"]


@dataclass(frozen=True)
class Consensus:
    """Programmes found across fits.

    Attributes
    ----------
    loadings : (features, programmes) median over the member fits of their oriented loadings.
    members : (fits, programmes) int, the component of each fit in the programme, -1 where the fit has none.
    signs : (fits, programmes) +1 or -1, the orientation applied to that member (0 where none).
    correlation : (fits, programmes) the Pearson correlation of each fit's best-matching component
        (any component, either sign) with the consensus loadings.
    found : (programmes,) share of fits with a member.
    stability : (programmes,) mean over all pairs of fits of the correlation of their members (0 for a
        pair where either fit has none, negative ones floored at 0): how often *and* how closely the
        programme is found again (1 = every fit, identically; NaN for a single fit).
    """

    loadings: np.ndarray
    members: np.ndarray
    signs: np.ndarray
    correlation: np.ndarray
    found: np.ndarray
    stability: np.ndarray

    def activities(self, latents: Sequence[np.ndarray]) -> np.ndarray:
        """(samples, programmes): per programme, the mean over member fits of their oriented latent.

        ``latents[i]`` is fit i's (samples, components) activity matrix, in the order of its loadings.
        """
        out = np.zeros((len(latents[0]), self.loadings.shape[1]))
        for p in range(self.loadings.shape[1]):
            fits = np.flatnonzero(self.members[:, p] >= 0)
            out[:, p] = np.mean([self.signs[f, p] * latents[f][:, self.members[f, p]] for f in fits], axis=0)
        return out


def orient(loadings: np.ndarray) -> np.ndarray:
    """+1 or -1 per column so that its largest loadings are positive (positive sum of cubes)."""
    return np.where(np.sum(loadings**3, axis=0) < 0, -1.0, 1.0)


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation between the columns of a (features, m) and b (features, n): (m, n)."""
    a = (a - a.mean(0)) / np.maximum(a.std(0), 1e-300)
    b = (b - b.mean(0)) / np.maximum(b.std(0), 1e-300)
    return a.T @ b / len(a)


def consensus(loadings: Sequence[np.ndarray], min_correlation: float = 0.5, min_fits: int = 2) -> Consensus:
    """Cluster the components of several fits and summarise each cluster found in ``min_fits`` fits or more.

    Parameters
    ----------
    loadings : one (features, components) array per fit; component counts may differ.
    min_correlation : components join a cluster when their average correlation is at least this.
    min_fits : clusters found in fewer fits are dropped (set to 1 to keep singletons; a single
        fit keeps all its components).

    Returns
    -------
    Consensus, programmes sorted by decreasing stability.

    Raises
    ------
    ValueError : no fits, fits with different numbers of features, or no cluster found in ``min_fits`` fits.
    """
    if not loadings or len({w.shape[0] for w in loadings}) != 1:
        raise ValueError("consensus needs at least one fit, all with the same features")
    n_fits = len(loadings)
    oriented = [w * orient(w) for w in loadings]
    fit_of = np.concatenate([np.full(w.shape[1], i) for i, w in enumerate(oriented)])
    column_of = np.concatenate([np.arange(w.shape[1]) for w in oriented])
    pooled = np.concatenate(oriented, axis=1)
    if pooled.shape[1] == 1:
        labels = np.ones(1, int)
    else:
        distance = np.clip(1 - _correlation(pooled, pooled), 0, 2)
        condensed = distance[np.triu_indices(len(distance), 1)]
        labels = fcluster(linkage(condensed, method="average"), t=1 - min_correlation, criterion="distance")
    programmes = []
    for label in np.unique(labels):
        inside = np.flatnonzero(labels == label)
        if len(set(fit_of[inside])) >= min(min_fits, n_fits):
            programmes.append(_summarise(inside, pooled, fit_of, column_of, loadings))
    if not programmes:
        raise ValueError(f"no component was found again in {min_fits} of the {n_fits} fits (correlation at least "
                         f"{min_correlation}): the fits disagree entirely; train longer or with fewer latents")
    programmes.sort(key=lambda p: -np.nan_to_num(p[4], nan=1.0))
    stack = lambda i: np.stack([p[i] for p in programmes], axis=-1)  # noqa: E731
    members, signs, median, correlation, stability = (stack(i) for i in range(5))
    return Consensus(loadings=median, members=members, signs=signs, correlation=correlation,
                     found=(members >= 0).mean(0), stability=stability)


def _summarise(inside, pooled, fit_of, column_of, loadings):
    """One cluster: per fit its best-agreeing member, their median, and every fit's best match."""
    n_fits = len(loadings)
    agreement = _correlation(pooled[:, inside], pooled[:, inside]).mean(1)
    members, signs = np.full(n_fits, -1), np.zeros(n_fits)
    chosen = []
    for fit in np.unique(fit_of[inside]):
        best = inside[fit_of[inside] == fit][np.argmax(agreement[fit_of[inside] == fit])]
        members[fit] = column_of[best]
        signs[fit] = orient(loadings[fit][:, [column_of[best]]])[0]
        chosen.append(pooled[:, best])
    median = np.median(chosen, axis=0)
    correlation = np.array([np.max(np.abs(_correlation(w, median[:, None]))) for w in loadings])
    pairs = np.maximum(_correlation(np.stack(chosen, 1), np.stack(chosen, 1)), 0)
    stability = (pairs.sum() - np.trace(pairs)) / (n_fits * (n_fits - 1)) if n_fits > 1 else float("nan")
    return members, signs, median, correlation, float(stability)
