"""Choosing the number of programmes and β: stability against reconstruction error.

cNMF's k-selection (Kotliar et al. 2019) for a β-VAE, with β as a second axis:
for every (n_latent, β) of a grid, several fits with different seeds, their
consensus (:func:`sciencevae.consensus.consensus`), and per grid point the
number of programmes found again (and of stable ones), their mean stability
and the fits' reconstruction error and −ELBO per cell. :func:`choose` takes the
point with the most stable programmes (ties: fewer latents, then the lower
−ELBO); the plot shows the whole sweep so that a user can pick another.

>>> table = pd.DataFrame({"n_latent": [5, 10, 15], "beta": 1.0, "n_stable": [5, 8, 8], "neg_elbo": [9., 8., 7.]})
>>> choose(table)
(10, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from sciencevae import Prepared
from sciencevae.consensus import consensus

__all__ = ["Selection", "sweep", "choose", "N_LATENT_GRID", "BETA_GRID"]

#: The grids that ``n_latent="auto"`` / ``beta="auto"`` sweep.
N_LATENT_GRID = (6, 8, 10, 12, 15)
BETA_GRID = (0.5, 1.0, 2.0)


@dataclass
class Selection:
    """A sweep: ``table`` (one row per grid point), the ``chosen`` (n_latent, β) and its ``fits``."""

    table: pd.DataFrame
    chosen: tuple[int, float]
    fits: list[Any]


def _score(fits: list, prepared: Prepared, stable: float) -> dict:
    """Programmes found again, stable ones, mean stability, and the fits' mean distortion and −ELBO."""
    try:
        found = consensus([f.weights for f in fits])
        n_programmes, stability = found.loadings.shape[1], found.stability
    except ValueError:  # nothing found again: the fits disagree entirely
        n_programmes, stability = 0, np.zeros(0)
    evaluated = [f.model.evaluate(prepared) for f in fits]
    return {"n_programmes": n_programmes, "n_stable": int(np.sum(stability >= stable)),
            "mean_stability": float(stability.mean()) if len(stability) else 0.0,
            "reconstruction": float(np.mean([e["reconstruction"] for e in evaluated])),
            "neg_elbo": float(np.mean([e["neg_elbo"] for e in evaluated]))}


def sweep(train: Callable[[int, float], list], prepared: Prepared, n_latents: Sequence[int],
          betas: Sequence[float], stable: float = 0.8) -> Selection:
    """Fit every grid point with ``train(n_latent, beta)`` (its fits, each with ``weights``, genes x
    latents, and ``model``, a fitted ``BetaVAE``) and choose one.

    Returns a :class:`Selection` whose ``table`` has columns n_latent, beta,
    n_programmes, n_stable (stability at least ``stable``), mean_stability,
    reconstruction (mean NLL per cell over ``prepared``, nats), neg_elbo (nats
    per cell) and chosen. Raises ``ValueError`` for an empty grid; a grid point
    whose fits share no programme scores 0 programmes.
    """
    if not n_latents or not betas:
        raise ValueError("the n_latent and beta grids must not be empty")
    rows, fits_of = [], {}
    for beta in betas:
        for n_latent in n_latents:
            fits = train(int(n_latent), float(beta))
            if len(fits) < 2:
                raise ValueError("choosing n_latent or beta needs at least 2 fits per setting (--fits 2 or more)")
            rows.append({"n_latent": int(n_latent), "beta": float(beta), **_score(fits, prepared, stable)})
            fits_of[(int(n_latent), float(beta))] = fits
    table = pd.DataFrame(rows)
    chosen = choose(table)
    table["chosen"] = [(k, b) == chosen for k, b in zip(table["n_latent"], table["beta"])]
    return Selection(table=table, chosen=chosen, fits=fits_of[chosen])


def choose(table: pd.DataFrame) -> tuple[int, float]:
    """The (n_latent, β) with the most stable programmes; ties go to fewer latents, then the lower −ELBO."""
    best = table[table["n_stable"] == table["n_stable"].max()].sort_values(["n_latent", "neg_elbo"])
    return int(best["n_latent"].iloc[0]), float(best["beta"].iloc[0])
