"""Synthetic data with known generating factors, shipped as code (no download).

Used by the tests, the README's first run and the benchmarks: every generator
returns the data together with the truth that produced it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["linear_factors", "count_programmes"]


def linear_factors(
    n_obs: int, n_features: int = 50, noise: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """X = z A + noise with 3 independent non-Gaussian factors.

    The factors are uniform on [-1.7, 1.7], a centred Gamma(4, 0.5) and a
    Laplace(0, 0.7); ``A`` is a random (3, n_features) Gaussian mixing matrix.
    A β-VAE with more than 3 latents should use 3 and switch the rest off.

    Returns
    -------
    X
        (n_obs, n_features) float32 data.
    factors
        (n_obs, 3) the true factors.

    >>> X, z = linear_factors(100, n_features=8)
    >>> X.shape, z.shape
    ((100, 8), (100, 3))
    """
    rng = np.random.default_rng(seed)
    factors = np.stack(
        [rng.uniform(-1.7, 1.7, n_obs), rng.gamma(4.0, 0.5, n_obs) - 2.0, rng.laplace(0.0, 0.7, n_obs)], axis=1
    )
    mixing = rng.normal(size=(3, n_features))
    X = factors @ mixing + noise * rng.normal(size=(n_obs, n_features))
    return X.astype(np.float32), factors


def count_programmes(
    n_obs: int = 600,
    n_genes: int = 40,
    n_programmes: int = 3,
    dispersion: float = 5.0,
    zero_inflation: float = 0.0,
    seed: int = 0,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Negative-binomial counts whose mean mixes a few gene programmes.

    Each cell has programme activities on the simplex (Dirichlet(0.5)), each
    programme is a composition over genes (Dirichlet(0.3)), library sizes are
    log-normal around 800, and counts are NB with inverse dispersion
    ``dispersion``; a fraction ``zero_inflation`` of entries is set to 0.

    Returns
    -------
    counts
        (n_obs, n_genes) CSR float32 integer counts.
    activity
        (n_obs, n_programmes) the true programme activities.

    >>> counts, activity = count_programmes(50, n_genes=10)
    >>> counts.shape, activity.shape
    ((50, 10), (50, 3))
    """
    rng = np.random.default_rng(seed)
    activity = rng.dirichlet(np.full(n_programmes, 0.5), size=n_obs)
    programmes = rng.dirichlet(np.full(n_genes, 0.3), size=n_programmes)
    library = rng.lognormal(np.log(800), 0.3, size=n_obs)
    mu = (activity @ programmes) * library[:, None]
    counts = rng.poisson(rng.gamma(dispersion, mu / dispersion))
    if zero_inflation:
        counts[rng.random(counts.shape) < zero_inflation] = 0
    return sp.csr_matrix(counts.astype(np.float32)), activity
