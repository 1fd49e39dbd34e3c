"""The harmonic seasonal climatology of a field: per grid cell, a least-squares fit of an intercept and
the first K harmonics of the phase of the year (Wilks 2011, *Statistical Methods in the Atmospheric
Sciences*, §9.4). The climate case study subtracts it before the β-VAE sees the field, so that the
mean seasonal cycle is carried exactly, and the β-VAE — given the phase of the year as covariates —
learns how the cycle departs from it (e.g. as the trend moves).

With monthly data K = 5 (11 terms and an intercept: all but the 6th harmonic of a monthly
climatology); with daily or finer data K = 6.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cell_regression import Moments
from .climate_knobs import harmonics

__all__ = ["HarmonicClimatology", "n_harmonics_for", "MAX_HARMONICS"]

#: The most harmonics fitted (6: periods down to two months).
MAX_HARMONICS = 6


def n_harmonics_for(phase: np.ndarray) -> int:
    """Harmonics that the sampling resolves: ``(steps per year - 1) // 2``, at most ``MAX_HARMONICS``
    (5 for monthly data, 6 for daily).

    >>> n_harmonics_for(np.arange(24) / 12), n_harmonics_for(np.arange(730) / 365)
    (5, 6)
    """
    step = float(np.median(np.diff(np.unwrap(2 * np.pi * np.asarray(phase))))) / (2 * np.pi) if len(phase) > 1 else 1
    per_year = int(round(1 / step)) if step > 0 else 1
    return int(max(1, min(MAX_HARMONICS, (per_year - 1) // 2)))


@dataclass(frozen=True)
class HarmonicClimatology:
    """``coef`` (1 + 2K, n_features): intercept, then cos/sin of harmonics 1..K (:func:`.harmonics`)."""

    coef: np.ndarray

    @property
    def n_harmonics(self) -> int:
        return (len(self.coef) - 1) // 2

    @staticmethod
    def design(phase: np.ndarray, n_harmonics: int) -> np.ndarray:
        """The regressors at each phase: 1, then cos/sin of harmonics 1..K, (n, 1 + 2K)."""
        return np.c_[np.ones(len(phase)), harmonics(phase, n_harmonics)]

    @classmethod
    def fit(cls, X: np.ndarray, phase: np.ndarray, n_harmonics: int) -> "HarmonicClimatology":
        """Per column of ``X`` (n_time, n_features; NaN = missing), the least-squares fit on its observed
        rows. ``phase`` (n_time,) is the phase of the year in [0, 1). A field read in chunks is fitted by
        adding each chunk's :class:`~.cell_regression.Moments` of :meth:`design` and calling
        :meth:`from_moments`."""
        design = cls.design(phase, n_harmonics)
        moments = Moments.zeros(X.shape[1], design.shape[1])
        moments.add(design, X)
        return cls.from_moments(moments)

    @classmethod
    def from_moments(cls, moments: Moments, ridge: float = 1e-8) -> "HarmonicClimatology":
        """The fit from accumulated moments; a tiny ``ridge`` keeps columns with too few observations
        solvable (their harmonics shrink to 0)."""
        return cls(coef=moments.solve(ridge=ridge).T.astype(np.float32))

    def cycle(self, phase: np.ndarray) -> np.ndarray:
        """The seasonal cycle (without the intercept) at each phase: (n, n_features), float32; it averages
        to zero over the year."""
        return (harmonics(phase, self.n_harmonics) @ self.coef[1:]).astype(np.float32)
