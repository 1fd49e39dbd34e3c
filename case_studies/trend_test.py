"""Is there a trend, and how large? A test that respects the noise of a climate record.

A fixed R² cut on a smooth curve throws a real trend away when interannual
variability is large against it (a short regional record) and finds one in
slow noise. Instead, per series (monthly, daily, any calendar):

1. annual means of complete years when the record holds at least
   :data:`MIN_YEARS` of them (the seasonal cycle and month-to-month
   persistence drop out; year-to-year persistence, the noise that matters,
   remains); for shorter records the series minus its mean seasonal cycle
   (harmonics of the time of year, from the decimal years), block-averaged to
   at most :data:`MAX_POINTS` points;
2. the Theil–Sen slope of the anomalies (Sen 1968), robust to outliers;
3. the Mann–Kendall test of a monotonic trend (Kendall 1975) with its variance
   inflated for the lag-1 autocorrelation of the points' departures from a
   quadratic in time (a monotonic trend may accelerate: its curvature is trend,
   not persistence), the effective-sample-size correction of Yue & Wang (2004),
   ``n / n* = 1 + 2 Σ_{k=1}^{n-1} (1 - k/n) ρ₁^k``, ρ₁ bias-corrected for
   short series (Kendall 1954);
4. a ``1 - alpha`` interval for the slope from the same inflated variance (the
   ranks of the pairwise slopes; Sen 1968, Gilbert 1987 ch. 16).

A trend is *detectable* when the Mann–Kendall p-value is below ``alpha``.
Measured on 30-year monthly series (seasonal cycle, AR(1) month-to-month noise,
AR(1) year-to-year noise; 300 draws each): false detections 3.3% / 6.7% / 15%
and interval coverage 97% / 93% / 85% for year-to-year persistence 0 / 0.5 /
0.8 — strong persistence in a short record is still under-corrected, as for
every lag-1 correction. An accelerating trend (cubic in time) in weak noise is
detected in 100 of 100 draws (76 when the persistence came from a straight-line fit).

>>> years = 1970 + np.arange(360) / 12
>>> noise = np.random.default_rng(0).normal(0, 0.3, 360)
>>> test = trend_test(0.02 * (years - 1970) + np.cos(2 * np.pi * years) + noise, years)
>>> bool(test.low_per_decade < 0.2 < test.high_per_decade), test.detectable
(True, True)
>>> trend_test(noise, years).detectable
False
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import butter, sosfiltfilt
from scipy.stats import norm

__all__ = ["TrendTest", "trend_test", "complete_years", "annual_means", "anomalies", "describe", "low_pass",
           "slopes_per_column", "slope_points", "theil_sen_columns", "MAX_POINTS", "MIN_YEARS"]


@dataclass(frozen=True)
class TrendTest:
    """A series' trend per decade with its 95% (``1 - alpha``) interval and the test behind it."""

    slope_per_decade: float
    low_per_decade: float
    high_per_decade: float
    p_value: float
    n_points: int
    effective_n: float
    detectable: bool

    def as_dict(self) -> dict:
        return asdict(self)


#: Long series (daily data) are averaged in consecutive blocks to at most this many points.
MAX_POINTS = 1200
#: From this many complete years on, the test runs on annual means.
MIN_YEARS = 10


def complete_years(years: np.ndarray, min_share: float = 0.9) -> np.ndarray:
    """The calendar years holding at least ``min_share`` of the samples of the fullest year (a partial
    first or last year would bias an annual mean by its season).

    >>> complete_years(np.r_[np.repeat(2019.0, 12), np.repeat(2020.0, 8)]).tolist()
    [2019.0]
    """
    values, counts = np.unique(np.floor(np.asarray(years, dtype=float) + 1e-9), return_counts=True)
    return values[counts >= min_share * counts.max()]


def annual_means(series: np.ndarray, years: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``series`` per calendar year over the :func:`complete_years`; returns (year, mean).

    >>> annual_means(np.arange(30.0), 2000 + np.arange(30) / 12)
    (array([2000., 2001.]), array([ 5.5, 17.5]))
    """
    year = np.floor(np.asarray(years, dtype=float) + 1e-9)
    if not year.size:
        return np.zeros(0), np.zeros(0)
    values, index, counts = np.unique(year, return_inverse=True, return_counts=True)
    sums = np.bincount(index, weights=np.asarray(series, dtype=float))
    complete = np.isin(values, complete_years(years))
    return values[complete], (sums / counts)[complete]


def anomalies(series: np.ndarray, years: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``series`` minus its mean annual and semi-annual cycle (harmonics of the time of year), block-
    averaged to at most :data:`MAX_POINTS` points; returns (years, anomalies).

    >>> years = 2000 + np.arange(48) / 12
    >>> bool(np.allclose(anomalies(np.cos(2 * np.pi * years), years)[1], 0))
    True
    """
    years = np.asarray(years, dtype=float)
    phase = 2 * np.pi * (years - np.floor(years))
    design = np.stack([np.ones_like(phase), np.cos(phase), np.sin(phase), np.cos(2 * phase), np.sin(2 * phase),
                       years - years.mean()], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.asarray(series, dtype=float), rcond=None)
    values = series - design[:, 1:5] @ coef[1:5]  # the cycle goes, the level and the trend stay
    size = int(np.ceil(len(values) / MAX_POINTS))
    if size > 1:
        cut = len(values) // size * size
        years, values = years[:cut].reshape(-1, size).mean(1), values[:cut].reshape(-1, size).mean(1)
    return years, values


def _inflation(residuals: np.ndarray) -> tuple[float, float]:
    """Variance inflation n / n* for AR(1) persistence of ``residuals`` (Yue & Wang 2004) and n*,
    from the lag-1 autocorrelation, bias-corrected for short series (Kendall 1954)."""
    n = len(residuals)
    centred = residuals - residuals.mean()
    denominator = float(np.sum(centred**2))
    rho = float(np.sum(centred[1:] * centred[:-1]) / denominator) if denominator > 0 and n > 2 else 0.0
    if n > 5:  # the lag-1 estimate of a short series is biased low by about (1 + 4 rho) / n
        rho = (n * rho + 1) / (n - 4)
    rho = min(max(rho, 0.0), 0.95)  # negative persistence would only narrow the interval: ignore it
    k = np.arange(1, n)
    factor = 1.0 + 2.0 * float(np.sum((1 - k / n) * rho**k))
    return factor, n / factor


def _departures(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The points minus a least-squares quadratic in time: what persistence is estimated from. A
    monotonic trend may curve (an accelerating warming); the curvature is trend, not persistence, and a
    straight line would leave it in the residuals as spurious autocorrelation."""
    x = (t - t.mean()) / max(np.ptp(t), 1e-12)
    departures = y - np.polyval(np.polyfit(x, y, 2 if len(t) > 5 else 1), x)
    return departures if np.std(departures) > 1e-9 * np.std(y) else np.zeros_like(y)  # rounding, not noise


def _points(series: np.ndarray, years: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the test runs on: annual means of complete years when there are at least
    :data:`MIN_YEARS` of them (year-to-year persistence, the noise that matters, is then what the
    lag-1 correction sees), else the deseasonalised series (:func:`anomalies`)."""
    t, y = annual_means(series, years)
    return (t, y) if len(t) >= MIN_YEARS else anomalies(series, years)


def slopes_per_column(values: np.ndarray, years: np.ndarray, max_points: int = 120, block: int = 512) -> np.ndarray:
    """Theil–Sen slope per decade of each column of ``values`` (n_time, n_columns), e.g. each grid cell of a
    trend component: the slope :func:`trend_test` reports for a series, on the same points — annual means
    of complete years when there are at least :data:`MIN_YEARS`, else consecutive block means (at most
    ``max_points``; meant for series without a seasonal cycle). Returns (n_columns,); NaN where a column
    has a NaN or fewer than 3 points exist. Columns are processed ``block`` at a time.

    >>> years = 2000 + np.arange(240) / 12
    >>> np.round(slopes_per_column(np.c_[0.02 * years, -0.01 * years], years), 3).tolist()
    [0.2, -0.1]
    """
    values = np.asarray(values, dtype=float).reshape(len(years), -1)
    t, weights = slope_points(years, max_points)
    y = weights @ np.nan_to_num(values)
    y[((weights > 0).astype(float) @ np.isnan(values)) > 0] = np.nan
    return theil_sen_columns(t, y, block)


def slope_points(years: np.ndarray, max_points: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """The points :func:`slopes_per_column` fits: their times (n_points,) and the (n_points, n_time)
    weights that average a series onto them (annual means of complete years when there are at least
    :data:`MIN_YEARS`, else consecutive blocks). Linear, so a field read in chunks maps onto the points
    chunk by chunk."""
    years = np.asarray(years, dtype=float)
    t, _ = annual_means(np.zeros(len(years)), years)
    if len(t) >= MIN_YEARS:
        member = (np.floor(years + 1e-9)[None, :] == t[:, None]).astype(float)
        return t, member / member.sum(1, keepdims=True)
    size = int(np.ceil(len(years) / max_points)) if len(years) else 1
    cut = len(years) // size * size
    weights = np.zeros((cut // size, len(years)))
    weights[np.arange(cut) // size, np.arange(cut)] = 1.0 / size
    return years[:cut].reshape(-1, size).mean(1), weights


def theil_sen_columns(t: np.ndarray, y: np.ndarray, block: int = 512) -> np.ndarray:
    """Theil–Sen slope per decade of each column of ``y`` (n_points, n_columns) at times ``t`` (years);
    NaN for columns with a NaN and when fewer than 3 points exist."""
    out = np.full(y.shape[1], np.nan)
    if len(t) < 3:
        return out
    i, j = np.triu_indices(len(t), k=1)
    step = (t[j] - t[i])[:, None]
    for start in range(0, y.shape[1], block):
        part = y[:, start:start + block]
        out[start:start + block] = np.median((part[j] - part[i]) / step, axis=0)
    return 10 * out


def trend_test(series: np.ndarray, years: np.ndarray, alpha: float = 0.05) -> TrendTest:
    """Theil–Sen slope per decade of the deseasonalised ``series`` (at decimal ``years``), its
    ``1 - alpha`` interval and a Mann–Kendall p-value, both corrected for autocorrelation.

    Fewer than 3 points give a NaN slope that is not detectable.
    """
    if np.size(series) == 0:
        return TrendTest(float("nan"), float("nan"), float("nan"), 1.0, 0, 0.0, False)
    t, y = _points(series, years)
    n = len(t)
    if n < 3 or np.ptp(y) == 0:
        slope = 0.0 if n >= 3 else float("nan")
        return TrendTest(slope, slope, slope, 1.0, n, float(n), False)
    i, j = np.triu_indices(n, k=1)
    pairwise = np.sort((y[j] - y[i]) / (t[j] - t[i]))
    slope = float(np.median(pairwise))
    factor, effective_n = _inflation(_departures(t, y))
    s = float(np.sum(np.sign(y[j] - y[i])))
    variance = n * (n - 1) * (2 * n + 5) / 18.0 * factor
    z = (s - np.sign(s)) / np.sqrt(variance)
    p = float(2 * norm.sf(abs(z)))
    spread = norm.ppf(1 - alpha / 2) * np.sqrt(variance)
    lower = int(np.clip(np.floor((len(pairwise) - spread) / 2), 0, len(pairwise) - 1))
    upper = int(np.clip(np.ceil((len(pairwise) + spread) / 2), 0, len(pairwise) - 1))
    return TrendTest(10 * slope, 10 * float(pairwise[lower]), 10 * float(pairwise[upper]), p, n, effective_n,
                     bool(p < alpha))


def low_pass(series: np.ndarray, years: np.ndarray, cutoff_years: float = 10.0) -> np.ndarray:
    """``series`` (n,) or (n, k) without the variability faster than ``cutoff_years``: a 4th-order
    Butterworth filter run forwards and backwards (no phase shift) on the departures from a straight
    line, with the ends mirrored, the line added back — the filter of low-frequency component analysis
    (Wills et al. 2018). A record shorter than the cutoff keeps little more than its line.

    >>> years = 1950 + np.arange(720) / 12
    >>> slow = np.sin(2 * np.pi * years / 40)
    >>> fast = np.random.default_rng(0).normal(0, 1, 720)
    >>> bool(np.corrcoef(low_pass(slow + fast, years), slow)[0, 1] > 0.95)
    True
    """
    values = np.asarray(series, dtype=float)
    flat = values.reshape(len(values), -1)
    n = len(values)
    if n < 4:
        return values.copy()
    t = np.asarray(years, dtype=float)
    line = np.polynomial.polynomial.polyfit(t - t.mean(), flat, 1)
    trend = line[0] + np.outer(t - t.mean(), line[1])
    departures = flat - trend
    steps_per_year = 1.0 / max(float(np.median(np.diff(t))), 1e-12)
    sos = butter(4, min(2.0 / (cutoff_years * steps_per_year), 0.99), output="sos")
    padded = np.concatenate([departures[::-1], departures, departures[::-1]])
    return (sosfiltfilt(sos, padded, axis=0)[n:2 * n] + trend).reshape(values.shape)


def describe(test: TrendTest, what: str, units: str) -> str:
    """The test in plain words, e.g. 'a trend of +0.19 degC per decade (95% interval +0.08 to +0.30)'.

    >>> describe(TrendTest(0.0, -0.1, 0.1, 0.8, 30, 12.0, False), "the area-weighted mean", "degC")
    'no trend is detectable in the area-weighted mean (slope +0.000 degC per decade, 95% interval -0.100 to +0.100, p = 0.8)'
    """
    numbers = (f"{test.low_per_decade:+.3f} to {test.high_per_decade:+.3f}, p = {test.p_value:.3g}")
    if not test.detectable:
        return (f"no trend is detectable in {what} (slope {test.slope_per_decade:+.3f} {units} per decade, "
                f"95% interval {numbers})")
    return f"{what} has a trend of {test.slope_per_decade:+.3f} {units} per decade (95% interval {numbers})"
