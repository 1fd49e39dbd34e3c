"""Roles of latent time series (seasonal, trend, other, inactive) and the
"knobs" of a climate model: linear coordinates of the active latent space,
each with one role.

Two ways to get knobs from the latents ``z`` (time x latent):

- ``rotate=False``: every active latent is a knob and gets the role its own
  time series has (:func:`assign_roles`).
- ``rotate=True`` (default): the active latents are whitened and rotated, as
  in low-frequency component analysis (Wills et al. 2018): first the
  directions whose variance the annual + semi-annual harmonics explain best
  (R² ≥ ``role_threshold``: the seasonal knobs, usually a phase circle of
  two), then, orthogonal to them, the directions a smooth curve of time
  explains best; the first is the trend knob when its trend is detectable
  (:func:`.trend_test.trend_test`, at ``TREND_ALPHA`` over the number of
  candidate directions), the rest ``other``. A β-VAE fixes
  its latents only up to such mixing when two modes are weak; the rotation
  reads the knobs off without retraining. Each knob has unit variance over
  time and a direction in latent space, so it still decodes through the
  (nonlinear) decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from .trend_test import trend_test

__all__ = ["decimal_years", "year_fraction", "harmonics", "smooth_basis", "explained", "assign_roles", "Knobs", "find_knobs"]


def decimal_years(time: xr.DataArray) -> np.ndarray:
    """Fractional years of a time coordinate (numpy datetime64 or cftime, any CF calendar).

    Each month is a twelfth of a year and a date inside a month the matching
    fraction of that month's length in its calendar (the 1st at 00:00 of
    month m is exactly ``year + (m - 1) / 12``; days and hours are monotonic).

    >>> import xarray as xr
    >>> time = xr.DataArray(xr.date_range("2000-01-01", periods=3, freq="MS", calendar="360_day", use_cftime=True))
    >>> decimal_years(time).round(4).tolist()
    [2000.0, 2000.0833, 2000.1667]
    """
    part = {name: np.asarray(getattr(time.dt, name).values, dtype=float)
            for name in ("year", "month", "day", "hour", "minute", "second", "days_in_month")}
    day = part["day"] - 1 + (part["hour"] * 3600 + part["minute"] * 60 + part["second"]) / 86400
    return part["year"] + (part["month"] - 1 + day / part["days_in_month"]) / 12


def year_fraction(time: xr.DataArray) -> np.ndarray:
    """Phase of the year in [0, 1): (day of the year - 1 + time of day) / days in that year, in the
    time coordinate's own calendar (365, 366, 360 days...). Works for monthly, daily and sub-daily data.

    >>> import xarray as xr
    >>> time = xr.DataArray(xr.date_range("2001-01-01", periods=3, freq="MS"), dims="time")
    >>> year_fraction(time).round(4).tolist()
    [0.0, 0.0849, 0.1616]
    """
    part = {name: np.asarray(getattr(time.dt, name).values, dtype=float)
            for name in ("dayofyear", "hour", "minute", "second", "days_in_year")}
    day = part["dayofyear"] - 1 + (part["hour"] * 3600 + part["minute"] * 60 + part["second"]) / 86400
    return day / part["days_in_year"]


def harmonics(phase: np.ndarray, n_harmonics: int = 2) -> np.ndarray:
    """cos and sin of the first ``n_harmonics`` harmonics of the phase of the year (0-1,
    :func:`year_fraction`): (n, 2 * n_harmonics), annual pair first. The default is the annual and
    semi-annual pair.

    >>> harmonics(np.array([0.0, 0.25])).round(3).tolist()
    [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, -1.0, 0.0]]
    """
    angle = 2 * np.pi * np.asarray(phase, dtype=float)[:, None] * np.arange(1, n_harmonics + 1)
    return np.stack([np.cos(angle), np.sin(angle)], axis=2).reshape(len(angle), 2 * n_harmonics)


def smooth_basis(years: np.ndarray) -> np.ndarray:
    """Cubic polynomial of time: the smooth low-frequency curve of a trend."""
    t = (years - years.mean()) / max(np.ptp(years), 1e-9)
    return np.stack([t, t**2, t**3], axis=1)


def explained(design: np.ndarray, y: np.ndarray) -> float:
    """R² of the least-squares fit of ``y`` on ``design`` plus an intercept.

    >>> explained(np.arange(5.0)[:, None], 2 * np.arange(5.0))
    1.0
    """
    design = np.c_[design, np.ones(len(y))]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    var = np.var(y)
    return float(1 - np.var(y - design @ coef) / var) if var > 0 else 0.0


#: Significance level of the trend test (:func:`.trend_test.trend_test`).
TREND_ALPHA = 0.05
STATS_COLUMNS = ["seasonal_r2", "trend_r2", "slope_per_decade", "slope_low", "slope_high", "trend_p"]


def _series_stats(series: np.ndarray, phase: np.ndarray, years: np.ndarray) -> dict:
    """R² of the seasonal harmonics and of a smooth curve; the Theil–Sen slope of the annual means per
    decade with its 95% interval and the autocorrelation-corrected Mann–Kendall p-value."""
    test = trend_test(series, years, TREND_ALPHA)
    return {"seasonal_r2": explained(harmonics(phase), series), "trend_r2": explained(smooth_basis(years), series),
            "slope_per_decade": test.slope_per_decade, "slope_low": test.low_per_decade,
            "slope_high": test.high_per_decade, "trend_p": test.p_value}


def _role(stats: dict, threshold: float) -> str:
    """seasonal when the harmonics explain most; trend when a smooth curve does and the trend is
    detectable; else other."""
    if stats["seasonal_r2"] >= threshold and stats["seasonal_r2"] >= stats["trend_r2"]:
        return "seasonal"
    return "trend" if stats["trend_r2"] >= threshold and stats["trend_p"] < TREND_ALPHA else "other"


def _rotated_role(k: int, n_seasonal: int, n_candidates: int, stats: dict, threshold: float) -> str:
    """Role of rotated knob ``k``: the first ``n_seasonal`` are seasonal; each of the ``n_candidates``
    others is tested at ``TREND_ALPHA / n_candidates`` (Bonferroni: all of them are looked at). The
    first of them (the direction a smooth curve explains best) is the trend when its trend is
    detectable; later ones need ``trend_r2 >= threshold`` as well."""
    if k < n_seasonal:
        return "seasonal"
    detectable = stats["trend_p"] < TREND_ALPHA / max(n_candidates, 1)
    return "trend" if detectable and (k == n_seasonal or stats["trend_r2"] >= threshold) else "other"


def assign_roles(latents: np.ndarray, phase: np.ndarray, years: np.ndarray, kl: np.ndarray,
                 kl_threshold: float = 0.1, role_threshold: float = 0.5) -> pd.DataFrame:
    """One row per latent: role, kl, seasonal_r2, trend_r2, slope per decade (latent units).

    >>> t = np.arange(120)
    >>> z = np.c_[np.cos(2 * np.pi * t / 12), t / 120.0, np.zeros(120)]
    >>> assign_roles(z, t % 12 / 12, 2000 + t / 12, np.array([3.0, 2.0, 0.0]))["role"].tolist()
    ['seasonal', 'trend', 'inactive']
    """
    rows = []
    for j, series in enumerate(latents.T):
        stats = _series_stats(series, phase, years)
        role = "inactive" if kl[j] < kl_threshold else _role(stats, role_threshold)
        rows.append({"latent": j, "role": role, "kl": float(kl[j]), **stats})
    return pd.DataFrame(rows).set_index("latent")


@dataclass(frozen=True)
class Knobs:
    """Knob k has scores ``u[:, k] = (z - center) @ weights[:, k]`` and moves the
    latent code along ``directions[k]``: ``z = center + u @ directions``."""

    center: np.ndarray  # (n_latent,)
    weights: np.ndarray  # (n_latent, n_knobs)
    directions: np.ndarray  # (n_knobs, n_latent)
    table: pd.DataFrame  # per knob: role, seasonal_r2, trend_r2, slope_per_decade, main_latent

    def scores(self, z: np.ndarray) -> np.ndarray:
        return (z - self.center) @ self.weights

    def of(self, role: str) -> list[int]:
        return [int(k) for k in self.table.index[self.table["role"] == role]]

    def codes(self, z: np.ndarray, knobs: list[int], values: np.ndarray | None = None) -> np.ndarray:
        """Latent codes with only ``knobs`` taken from ``z`` (or set to ``values``), the rest at the centre."""
        u = self.scores(z)[:, knobs] if values is None else values
        return self.center + u @ self.directions[knobs]


def _orthonormal(basis: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(basis - basis.mean(0))
    return q


def _leading(whitened: np.ndarray, basis: np.ndarray, within: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directions (columns, inside span ``within``) ordered by the R² ``basis`` explains; their R²."""
    projected = (basis.T @ whitened @ within) / np.sqrt(len(whitened))
    r2, vectors = np.linalg.eigh(projected.T @ projected)
    order = np.argsort(r2)[::-1]
    return within @ vectors[:, order], np.clip(r2[order], 0.0, 1.0)


def _rotation(z: np.ndarray, active: np.ndarray, phase, years, threshold: float):
    codes = z[:, active]
    center = codes.mean(0)
    values, vectors = np.linalg.eigh(np.cov(codes - center, rowvar=False, bias=True).reshape(active.sum(), -1))
    values = np.clip(values, 1e-12, None)
    inv_sqrt = vectors @ np.diag(values**-0.5) @ vectors.T
    sqrt = vectors @ np.diag(values**0.5) @ vectors.T
    whitened = (codes - center) @ inv_sqrt
    seasonal, r2_s = _leading(whitened, _orthonormal(harmonics(phase)), np.eye(active.sum()))
    n_seasonal = int(np.sum(r2_s >= threshold))
    rest, _ = _leading(whitened, _orthonormal(smooth_basis(years)), seasonal[:, n_seasonal:])
    rotation = np.c_[seasonal[:, :n_seasonal], rest]
    return inv_sqrt @ rotation, rotation.T @ sqrt, n_seasonal


def _orient(z, center, weights, directions, years) -> None:
    """Fix each knob's sign in place: rising over time when it correlates with time,
    otherwise with its largest latent weight positive."""
    scores = (z - center) @ weights
    for k in range(weights.shape[1]):
        drift = np.corrcoef(scores[:, k], years)[0, 1] if np.ptp(scores[:, k]) > 0 else 0.0
        sign = np.sign(drift) if abs(drift) > 0.1 else np.sign(directions[k, np.argmax(np.abs(directions[k]))])
        if sign < 0:
            weights[:, k] *= -1
            directions[k] *= -1


def find_knobs(z: np.ndarray, kl: np.ndarray, phase: np.ndarray, years: np.ndarray, rotate: bool = True,
               kl_threshold: float = 0.1, role_threshold: float = 0.5) -> Knobs:
    """Knobs of the active latents with their roles (see the module docstring).

    >>> t = np.arange(240)
    >>> season, trend = np.cos(2 * np.pi * t / 12), t / 240.0
    >>> z = np.c_[season + trend, season - trend, np.zeros(240)]  # mixed latents
    >>> knobs = find_knobs(z, np.array([2.0, 2.0, 0.0]), t % 12 / 12, 2000 + t / 12)
    >>> knobs.table["role"].tolist()
    ['seasonal', 'trend']
    """
    n_latent = z.shape[1]
    active = kl >= kl_threshold
    center = z.mean(0)
    weights = np.zeros((n_latent, int(active.sum())))
    directions = np.zeros((int(active.sum()), n_latent))
    if rotate and active.sum() > 1:
        w, d, n_seasonal = _rotation(z, active, phase, years, role_threshold)
        weights[active], directions[:, active] = w, d
    else:
        index = np.flatnonzero(active)
        scale = np.maximum(z[:, index].std(0), 1e-12)  # knobs have unit variance over time
        weights[index, np.arange(len(index))] = 1.0 / scale
        directions[np.arange(len(index)), index] = scale
    _orient(z, center, weights, directions, years)
    rows = []
    for k, series in enumerate(((z - center) @ weights).T):
        stats = _series_stats(series, phase, years)
        share = directions[k] ** 2 / max(np.sum(directions[k] ** 2), 1e-12)
        role = _role(stats, role_threshold)
        if rotate and active.sum() > 1:
            role = _rotated_role(k, n_seasonal, int(active.sum()) - n_seasonal, stats, role_threshold)
        rows.append({"knob": k, "role": role, **stats, "main_latent": int(np.argmax(share)),
                     "main_latent_share": float(share.max())})
    table = pd.DataFrame(rows, columns=["knob", "role", *STATS_COLUMNS, "main_latent",
                                        "main_latent_share"]).set_index("knob")
    return Knobs(center=center, weights=weights, directions=directions, table=table)
