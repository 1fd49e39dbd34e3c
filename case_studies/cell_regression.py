"""Per-cell regression of a gridded field on a few shared time series, as LFCA turns its low-frequency
components into patterns (Wills et al. 2018, GRL 45, eq. 6): the β-VAE's decoder gives the time courses
(its trend, the change of the seasonal cycle as the knobs move) and each cell's amplitude is fitted to
the data. A decoder answers a knob with a damped amplitude (its latents are noisy and shrunk to the
prior); the regression restores it, and pools over cells only through the shared time courses.

Arrays are (n_time, n_features); NaN in the data marks an unobserved value, left out of that cell's fit.
"""

from __future__ import annotations

import numpy as np

#: Relative singular value below which a principal series is numerically absent.
RANK_TOLERANCE = 1e-6


def principal_series(field: np.ndarray, scale: np.ndarray, n_series: int) -> np.ndarray:
    """The leading ``n_series`` principal time series of ``field`` (n_time, n_features) with features
    multiplied by ``scale`` (n_features,): (n_time, k) float64, orthonormal, k <= n_series (fewer where
    the field has lower rank; (n_time, 0) for a constant field)."""
    centred = (field - field.mean(0)).astype(np.float64) * scale
    if n_series == 0 or not np.any(centred):
        return np.zeros((len(field), 0))
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :n_series][:, s[:n_series] > RANK_TOLERANCE * s[0]]


def fit_cells(series: np.ndarray, data: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Least-squares coefficients (n_features, k) of each cell of ``data`` (n_time, n_features) on the
    columns of ``series`` (n_time, k) and an intercept, over the cell's observed times among ``rows`` (a
    bool (n_time,) selection; default all). Memory: (n_features, (k + 1)²)."""
    observed = np.isfinite(data)
    if rows is not None:
        observed = observed & rows[:, None]
    design = np.c_[np.ones(len(series)), series]
    k = design.shape[1]
    outer = (design[:, :, None] * design[:, None, :]).reshape(len(series), k * k)
    gram = (observed.T.astype(np.float64) @ outer).reshape(-1, k, k)
    cross = np.where(observed, data, 0.0).T.astype(np.float64) @ design
    ridge = 1e-9 * np.eye(k) * np.maximum(np.trace(gram, axis1=1, axis2=2), 1.0)[:, None, None] / k
    return np.linalg.solve(gram + ridge, cross[..., None])[..., 0][:, 1:]


def held_out_error(series: np.ndarray, data: np.ndarray, folds: np.ndarray) -> float:
    """Squared error of predicting each fold of ``data`` from coefficients fitted on the other folds
    (``folds``: (n_time,) integer labels), summed over observed values; each prediction is centred on its
    fold's mean so that only the time course is judged."""
    total = 0.0
    for fold in np.unique(folds):
        test = folds == fold
        coef = fit_cells(series, data, ~test)
        predicted = series[test] @ coef.T
        observed = np.isfinite(data[test])
        counts = np.maximum(observed.sum(0), 1)
        actual = np.where(observed, data[test], 0.0)
        predicted = np.where(observed, predicted, 0.0)
        error = (actual - actual.sum(0) / counts) - (predicted - predicted.sum(0) / counts)
        total += float(np.sum(np.where(observed, error, 0.0) ** 2))
    return total


def supported_series(fixed: np.ndarray, candidates: np.ndarray, data: np.ndarray, folds: np.ndarray) -> int:
    """How many of the ``candidates`` columns (in order) the data support beside the ``fixed`` ones: the
    count with the least :func:`held_out_error` (0 when none helps out of sample)."""
    errors = [held_out_error(np.c_[fixed, candidates[:, :k]], data, folds) for k in range(candidates.shape[1] + 1)]
    return int(np.argmin(errors))
