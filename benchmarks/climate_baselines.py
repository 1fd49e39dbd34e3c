"""Climate decompositions compared in one run, on the same data: seasonal, trend, residual.

Every method returns, per variable, a ``seasonal`` and a ``trend`` component
(anomalies on the input's (time, lat, lon) grid, zero time mean) and the
``residual`` = input − its time mean − seasonal − trend:

1. monthly climatology + per-cell linear trend (least squares in time; the
   climatology of what is left);
2. STL per grid cell (``statsmodels.tsa.seasonal.STL``, period 12,
   robust=True; Cleveland et al. 1990): scattered gaps are filled by linear
   interpolation in time first, cells missing at every time stay NaN; one
   Python call per cell, so it is the slow baseline;
3. EOF (``xeofs.single.EOF``, n_modes=8, ``use_coslat=True``) of the
   deseasonalised anomalies (input − monthly climatology): seasonal = the
   monthly climatology, trend = the reconstruction from the mode whose PC has
   the most significant Theil–Sen / Mann–Kendall trend
   (``sciencevae.case_studies.trend_test``), kept only when its p-value is
   below 0.05 / n_modes (Bonferroni), else 0;
4. extended EOF (``xeofs.single.ExtendedEOF``, tau=1, embedding=12, on the 50
   leading PCs) the same way, the mode reconstructed over the full record by
   averaging over the lags (as in M-SSA);
5. LFCA, low-frequency component analysis (Wills et al. 2018, Geophys. Res.
   Lett. 45, 2487–2496; also Wills et al. 2020, J. Climate 33), implemented
   here: 10 area-weighted EOFs of the deseasonalised anomalies, PCs
   low-passed with a 10-year Butterworth filter, the combinations maximising
   the ratio of low-frequency to total variance; seasonal = the monthly
   climatology, trend = the first LFC times its pattern when its trend test
   passes as in 3;
6. sciencevae ``climate_trend`` (β-VAE + knobs; its default epochs, 10,000
   optimiser steps, unless ``--epochs``).

Metrics. Synthetic fields (``sciencevae.datasets.monthly_field``, known
truth): R² of the seasonal and trend components against the truth, pooled over
ocean cells (both truths centred to zero time mean). Real fields (COBE-SST2 4°
1950–2009, ERSSTv5 2° 2010–2020-08, the North Atlantic cut of COBE-SST2 2°):
the Theil–Sen trend per decade of the trend component's area-weighted (cos
latitude) mean, with a 95% interval where the method has one (the trend test's
interval of the source series — PC, LFC or sciencevae's trend knob — scaled by
the component's slope over the series' slope), next to the observed area-mean
trend. Both tables: the residual seasonality share (area-weighted rms over
months and cells of the residual's monthly climatology minus its mean, over the
same for the input; 0 = the seasonal component took the whole cycle), and wall
seconds. sciencevae's row uses its own ``trend_component_slopes`` and
``residual_seasonality`` (same definitions).

Run from the repository root. The full run takes about 7 minutes with one
thread on an idle core (STL about 3 minutes, mostly COBE-SST2 4° and ERSSTv5;
sciencevae about 3 minutes, 90 s of it COBE-SST2 4°); ``--quick`` is a smoke
test on tiny grids and short records (seconds; its numbers mean nothing)::

    OMP_NUM_THREADS=2 python benchmarks/climate_baselines.py --threads 2
    OMP_NUM_THREADS=1 python benchmarks/climate_baselines.py --quick
    python benchmarks/climate_baselines.py --only synthetic

Options: ``--threads`` (torch threads, default 1; BLAS threads follow
``OMP_NUM_THREADS``), ``--epochs`` (sciencevae, default: the case study's, 3 with
``--quick``), ``--only synthetic|real``, ``--quick``, ``--data``.

Needs ``statsmodels`` and ``xeofs`` (``pip install xeofs``); the real fields
are read from ``--data`` (default ``../shared/data/climate`` next to the
repository) and skipped with a note when missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import xarray as xr

from sciencevae.case_studies.climate_knobs import decimal_years
from sciencevae.case_studies.trend_test import TrendTest, trend_test

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "climate"
N_MODES = 8
LFCA_TRUNCATION = 10
LFCA_CUTOFF_MONTHS = 120
EEOF_EMBEDDING = 12
EEOF_PCA_MODES = 50
ALPHA = 0.05


@dataclass
class Decomposition:
    """One method's components of one variable, on the input grid.

    Attributes
    ----------
    seasonal, trend, residual
        (time, lat, lon) anomalies; seasonal and trend have zero time mean.
    interval_ratio
        (low, high) of the trend's source series (PC, LFC) over its slope, to scale the trend
        component's slope into a 95% interval; ``None`` when the method has no interval.
    detail
        What the trend came from, in a few words.
    reported
        The method's own numbers where it has them (sciencevae): ``trend``, ``low``, ``high``, ``share``.
    """

    seasonal: xr.DataArray
    trend: xr.DataArray
    residual: xr.DataArray
    interval_ratio: tuple[float, float] | None = None
    detail: str = ""
    reported: dict[str, float] = dataclass_field(default_factory=dict)


@dataclass(frozen=True)
class RealField:
    """A real field: file, box (lat ascending, lon in -180..180 when ``wrap``) and years."""

    name: str
    file: str
    years: tuple[str, str]
    lat: tuple[float, float] | None = None
    lon: tuple[float, float] | None = None
    wrap: bool = False


@dataclass(frozen=True)
class Sizes:
    """What the run covers: synthetic fields as (label, ``monthly_field`` keywords), real fields, and
    for a smoke test a spatial stride and at most ``max_years`` years (from the start) of the real ones."""

    synthetic: tuple[tuple[str, dict], ...]
    real: tuple[RealField, ...]
    stride: int = 1
    max_years: int | None = None


REAL_FIELDS = (
    RealField("COBE-SST2 4° global", "cobe_sst2_global_4deg_monthly_1950-2009.nc", ("1950", "2009")),
    RealField("ERSSTv5 2° global", "ersstv5_global_2deg_monthly_2010-2020.nc", ("2010", "2020")),
    RealField("COBE-SST2 2° North Atlantic 30–60N 80W–20E", "cobe_sst2_global_2deg_monthly_1950-2009.nc",
              ("1970", "1999"), lat=(30.0, 60.0), lon=(-80.0, 20.0), wrap=True),
)


def full_sizes() -> Sizes:
    """The benchmark's sizes: three synthetic fields and the three real fields at full resolution."""
    return Sizes(synthetic=(
        ("(a) additive, 40 y × 18 × 36", dict(n_years=40, n_lat=18, n_lon=36, seed=0)),
        ("(b) seasons weaken as it warms (−0.3), 40 y × 18 × 36",
         dict(n_years=40, n_lat=18, n_lon=36, seed=2, seasonal_change=-0.3)),
        ("(c) short noisy regional, 15 y × 8 × 12, noise 0.8",
         dict(n_years=15, n_lat=8, n_lon=12, noise=0.8, seed=3)),
    ), real=REAL_FIELDS)


def quick_sizes() -> Sizes:
    """Tiny sizes for a smoke test: the same fields, small grids, short records."""
    return Sizes(synthetic=(
        ("(a) additive, 6 y × 6 × 8", dict(n_years=6, n_lat=6, n_lon=8, seed=0)),
        ("(b) seasons weaken, 6 y × 6 × 8", dict(n_years=6, n_lat=6, n_lon=8, seed=2, seasonal_change=-0.3)),
        ("(c) noisy, 4 y × 4 × 6", dict(n_years=4, n_lat=4, n_lon=6, noise=0.8, seed=3)),
    ), real=REAL_FIELDS, stride=8, max_years=6)


# ----------------------------------------------------------------------------------------------- helpers

def _observed(field: xr.DataArray) -> xr.DataArray:
    """Cells observed at least once (ocean)."""
    return field.notnull().any("time")


def finish(field: xr.DataArray, seasonal: xr.DataArray, trend: xr.DataArray, **extra) -> Decomposition:
    """Centre ``seasonal`` and ``trend`` in time on the observed cells and add the residual.

    Parameters
    ----------
    field
        The input (time, lat, lon).
    seasonal, trend
        The method's components on the same grid.
    **extra
        Passed to :class:`Decomposition`.
    """
    observed = _observed(field)
    seasonal = (seasonal - seasonal.mean("time")).where(observed).transpose(*field.dims)
    trend = (trend - trend.mean("time")).where(observed).transpose(*field.dims)
    residual = field - field.mean("time") - seasonal - trend
    return Decomposition(seasonal=seasonal, trend=trend, residual=residual, **extra)


def monthly_climatology(field: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """The seasonal component of a monthly climatology and the deseasonalised anomalies.

    Returns
    -------
    seasonal
        The mean of each calendar month minus the mean over months, on the time axis.
    anomalies
        ``field`` minus the mean of its calendar month.
    """
    by_month = field.groupby("time.month").mean()
    on_time = by_month.sel(month=field.time.dt.month).drop_vars("month")
    return on_time - by_month.mean("month"), field - on_time


def fill_gaps(field: xr.DataArray) -> xr.DataArray:
    """Scattered NaNs filled by linear interpolation in time (ends held); cells NaN at every time stay NaN."""
    values = field.transpose("time", ...).values.astype(np.float64)
    flat = values.reshape(len(values), -1)
    gaps = np.isnan(flat)
    steps = np.arange(len(flat))
    for cell in np.flatnonzero(gaps.any(0) & ~gaps.all(0)):  # only cells with gaps loop
        missing = gaps[:, cell]
        flat[missing, cell] = np.interp(steps[missing], steps[~missing], flat[~missing, cell])
    return field.transpose("time", ...).copy(data=values)


def cos_lat(da: xr.DataArray) -> xr.DataArray:
    """Area weights cos(latitude), clipped at 0."""
    return np.cos(np.deg2rad(da.lat)).clip(0.0, None)


def area_mean(da: xr.DataArray) -> np.ndarray:
    """The cos(latitude)-weighted mean over the observed cells at each time."""
    return da.weighted(cos_lat(da)).mean(("lat", "lon"), skipna=True).values


def seasonal_rms(da: xr.DataArray) -> float:
    """Area-weighted rms over months and cells of the monthly climatology minus its mean over months."""
    climatology = da.groupby("time.month").mean()
    anomaly = climatology - climatology.mean("month")
    return float(np.sqrt((anomaly**2).weighted(cos_lat(da)).mean(("lat", "lon", "month"), skipna=True)))


def residual_share(residual: xr.DataArray, field: xr.DataArray) -> float:
    """Share of the input's seasonal cycle left in the residual (:func:`seasonal_rms` ratio)."""
    total = seasonal_rms(field)
    return seasonal_rms(residual) / total if total > 0 else 0.0


def most_trending(series: np.ndarray, years: np.ndarray, n_tests: int) -> tuple[int | None, TrendTest]:
    """The series (rows, NaN allowed) with the most significant trend, or ``None`` when none passes
    ``ALPHA / n_tests``; ties in the p-value go to the larger slope over its interval width."""
    tests = []
    for row in series:
        ok = np.isfinite(row)
        tests.append(trend_test(row[ok], years[ok]))
    width = [max(t.high_per_decade - t.low_per_decade, 1e-12) for t in tests]
    best = min(range(len(tests)), key=lambda k: (tests[k].p_value, -abs(tests[k].slope_per_decade) / width[k]))
    return (best if tests[best].p_value < ALPHA / n_tests else None), tests[best]


def interval_ratio(test: TrendTest) -> tuple[float, float] | None:
    """(low, high) over the slope of a trend test, sorted; ``None`` for a zero slope."""
    if not test.slope_per_decade:
        return None
    low, high = test.low_per_decade / test.slope_per_decade, test.high_per_decade / test.slope_per_decade
    return (min(low, high), max(low, high))


def _trend_detail(kind: str, index: int | None, test: TrendTest, n_tests: int) -> str:
    """E.g. 'mode 2 (p = 3e-09)' or 'none (best p = 0.2 ≥ 0.05/8)'."""
    if index is None:
        return f"none (best p = {test.p_value:.2g} ≥ {ALPHA:g}/{n_tests})"
    return f"{kind} {index + 1} (p = {test.p_value:.2g})"


# ------------------------------------------------------------------------------------------------ methods

def climatology_and_linear_trend(field: xr.DataArray) -> dict:
    """Per cell: a line through the deseasonalised anomalies (field minus its monthly means), then
    the monthly climatology of the field minus that line. Fitting the line to the raw field would let
    the seasonal cycle leak into the slope on short or partial-year records."""
    anomalies = field.groupby("time.month") - field.groupby("time.month").mean()
    fit = anomalies.drop_vars("month").polyfit("time", 1, skipna=True)  # datetime: slope per nanosecond
    trend = xr.polyval(field.time, fit.polyfit_coefficients).where(field.notnull().any("time"))
    trend = trend - trend.mean("time")
    climatology = (field - trend).groupby("time.month").mean()
    seasonal = climatology.sel(month=field.time.dt.month) - climatology.mean("month")
    return {"seasonal": seasonal.drop_vars("month").transpose(*field.dims), "trend": trend.transpose(*field.dims)}


def linear_method(field: xr.DataArray) -> Decomposition:
    """Method 1: :func:`climatology_and_linear_trend` with the residual."""
    parts = climatology_and_linear_trend(field)
    return finish(field, parts["seasonal"], parts["trend"], detail="per-cell least squares")


def stl_method(field: xr.DataArray, period: int = 12) -> Decomposition:
    """Method 2: STL (period 12, robust) of each observed cell after :func:`fill_gaps`."""
    from statsmodels.tsa.seasonal import STL

    filled = fill_gaps(field)
    values = filled.values.reshape(filled.sizes["time"], -1)
    seasonal, trend = np.full_like(values, np.nan), np.full_like(values, np.nan)
    for cell in np.flatnonzero(np.isfinite(values).all(0)):
        fit = STL(values[:, cell], period=period, robust=True).fit()
        seasonal[:, cell], trend[:, cell] = fit.seasonal, fit.trend
    shape = filled.shape
    return finish(field, filled.copy(data=seasonal.reshape(shape)), filled.copy(data=trend.reshape(shape)),
                  detail=f"STL trend ({int(np.isfinite(values).all(0).sum())} cells)")


def _eof_model(anomalies: xr.DataArray, extended: bool, n_modes: int):
    """A fitted ``xeofs.single.EOF`` or ``ExtendedEOF`` of the gap-filled anomalies."""
    from xeofs.single import EOF, ExtendedEOF

    if not extended:
        return EOF(n_modes=n_modes, use_coslat=True, random_state=0).fit(anomalies, dim="time")
    n_cells = int(anomalies.notnull().all("time").sum())
    n_pca = min(EEOF_PCA_MODES, anomalies.sizes["time"] - 1, n_cells)
    model = ExtendedEOF(n_modes=n_modes, tau=1, embedding=EEOF_EMBEDDING, n_pca_modes=n_pca, use_coslat=True,
                        random_state=0, solver="full")
    # xeofs 3.0 does not pass random_state to the PCA step, whose randomized SVD then draws from
    # numpy's global generator: seed that for the fit and put its state back.
    state = np.random.get_state()
    np.random.seed(0)
    try:
        return model.fit(anomalies, dim="time")
    finally:
        np.random.set_state(state)


def _eeof_reconstruction(model, mode: int, like: xr.DataArray) -> xr.DataArray:
    """One extended-EOF mode on the full record: score(t − j) × pattern at lag j, averaged over the
    lags j that exist at t (the M-SSA reconstruction), un-weighted by sqrt(cos lat)."""
    patterns = model.components().sel(mode=mode).reindex(lat=like.lat, lon=like.lon)  # xeofs may reorder lat
    patterns = patterns.transpose("embedding", "lat", "lon").values
    score = model.scores().sel(mode=mode).reindex(time=like.time).values
    n_time, lags = like.sizes["time"], patterns.shape[0]
    total = np.zeros((n_time, *patterns.shape[1:]))
    count = np.zeros(n_time)
    for lag in range(lags):
        valid = np.isfinite(score[: n_time - lag])
        total[lag:][valid] += score[: n_time - lag][valid, None, None] * patterns[lag]
        count[lag:][valid] += 1
    weight = np.sqrt(cos_lat(like)).values[:, None]
    return like.copy(data=total / np.maximum(count, 1)[:, None, None] / weight)


def eof_method(field: xr.DataArray, extended: bool = False, n_modes: int = N_MODES) -> Decomposition:
    """Methods 3 and 4: (extended) EOFs of the deseasonalised anomalies; the most significantly
    trending mode is the trend (:func:`most_trending`)."""
    seasonal, anomalies = monthly_climatology(field)
    filled = fill_gaps(anomalies)
    model = _eof_model(filled, extended, n_modes)
    scores = model.scores()
    best, test = most_trending(scores.values, decimal_years(scores.time), n_modes)
    trend = xr.zeros_like(filled)
    if best is not None:
        mode = int(scores.mode[best])
        trend = (_eeof_reconstruction(model, mode, filled) if extended
                 else model.inverse_transform(scores.sel(mode=[mode])).reindex_like(filled).transpose(*filled.dims))
    return finish(field, seasonal, trend, interval_ratio=interval_ratio(test) if best is not None else None,
                  detail=_trend_detail("mode", best, test, n_modes))


def lowpass(x: np.ndarray, cutoff: int = LFCA_CUTOFF_MONTHS, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth low-pass along axis 0 (periods longer than ``cutoff`` steps pass).

    As in the authors' code (github.com/rcjwills/lfca): each column's least-squares line is removed,
    the rest is mirrored at both ends, filtered, cut back and the line added again, so a trend passes
    whole and the ends are not pulled towards their last noisy values.
    """
    from scipy.signal import butter, sosfiltfilt

    t = np.arange(len(x), dtype=float)
    design = np.stack([np.ones_like(t), t - t.mean()], axis=1)
    line = design @ np.linalg.lstsq(design, x, rcond=None)[0]
    rest = x - line
    mirrored = np.concatenate([rest[::-1], rest, rest[::-1]], axis=0)
    sos = butter(order, 1.0 / cutoff, fs=1.0, output="sos")
    return sosfiltfilt(sos, mirrored, axis=0)[len(x):2 * len(x)] + line


def lfca(x: np.ndarray, scale: np.ndarray, truncation: int = LFCA_TRUNCATION,
         cutoff: int = LFCA_CUTOFF_MONTHS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low-frequency component analysis (Wills, Schneider, Wallace, Battisti & Hartmann 2018,
    "Disentangling global warming, multidecadal variability, and El Niño in Pacific temperatures",
    Geophys. Res. Lett. 45, 2487–2496; also used in Wills et al. 2020, "Pattern recognition methods to
    separate forced responses from internal variability...", J. Climate 33).

    The leading ``truncation`` EOFs of the area-weighted anomalies, their PCs scaled to unit variance,
    and the rotation of those PCs that diagonalises the covariance of the low-passed PCs: the first
    low-frequency component (LFC) is the combination with the largest ratio of low-frequency to total
    variance, the next the largest uncorrelated with it, and so on.

    Parameters
    ----------
    x
        (n_time, n_cells) anomalies without NaNs.
    scale
        (n_cells,) area weights applied to ``x`` (sqrt(cos lat)).
    truncation
        Number of EOFs kept.
    cutoff
        Low-pass cutoff in time steps.

    Returns
    -------
    lfcs
        (n_time, truncation) low-frequency components, unit variance, by decreasing ratio.
    lfps
        (truncation, n_cells) their patterns in the units of ``x`` (x ≈ lfcs @ lfps in the EOF subspace).
    ratios
        (truncation,) low-frequency over total variance of each LFC.
    """
    n = len(x)
    xs = (x - x.mean(0)) * scale
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    truncation = min(truncation, len(s))
    pcs = u[:, :truncation] * np.sqrt(n - 1)  # unit-variance PCs
    ratios, rotation = np.linalg.eigh(np.cov(lowpass(pcs, cutoff), rowvar=False))
    order = np.argsort(ratios)[::-1]
    ratios, rotation = ratios[order], rotation[:, order]
    lfcs = pcs @ rotation
    lfps = rotation.T @ (s[:truncation, None] / np.sqrt(n - 1) * vt[:truncation]) / scale
    return lfcs, lfps, ratios


def lfca_method(field: xr.DataArray, truncation: int = LFCA_TRUNCATION) -> Decomposition:
    """Method 5: the first LFC of the deseasonalised, area-weighted anomalies is the trend when its
    trend test passes ``ALPHA / truncation``."""
    seasonal, anomalies = monthly_climatology(field)
    filled = fill_gaps(anomalies)
    flat = filled.values.reshape(filled.sizes["time"], -1)
    ocean = np.isfinite(flat).all(0)
    scale = np.sqrt(cos_lat(filled)).broadcast_like(filled.isel(time=0)).values.ravel()[ocean]
    lfcs, lfps, ratios = lfca(flat[:, ocean], np.maximum(scale, 1e-6), truncation)
    years = decimal_years(field.time)
    test = trend_test(lfcs[:, 0], years)
    found = test.p_value < ALPHA / truncation
    trend = np.full_like(flat, np.nan)
    trend[:, ocean] = np.outer(lfcs[:, 0], lfps[0]) if found else 0.0
    detail = (f"LFC 1 (ratio {ratios[0]:.2f}, p = {test.p_value:.2g})" if found
              else f"none (LFC 1 p = {test.p_value:.2g} ≥ {ALPHA:g}/{truncation})")
    return finish(field, seasonal, filled.copy(data=trend.reshape(filled.shape)),
                  interval_ratio=interval_ratio(test) if found else None, detail=detail)


def sciencevae_method(field: xr.DataArray, epochs: int | None) -> Decomposition:
    """Method 6: ``sciencevae.case_studies.climate_trend.run`` with its own trend slopes and residual
    seasonality."""
    from sciencevae.case_studies import climate_trend as ct

    name = str(field.name)
    res = ct.run(field.to_dataset(name=name), var=name, epochs=epochs, progress=False)
    slopes = ct.trend_component_slopes(res)[name]
    share = ct.residual_seasonality(res)[name]["share"]
    roles = res.roles["role"].value_counts().to_dict()
    components = res.components
    return Decomposition(
        seasonal=components["seasonal"].transpose(*field.dims), trend=components["trend"].transpose(*field.dims),
        residual=components["residual"].transpose(*field.dims),
        detail="knobs: " + (", ".join(f"{n} {r}" for r, n in sorted(roles.items())) or "none"),
        reported={"trend": slopes["trend_component"], "low": slopes["trend_component_low"],
                  "high": slopes["trend_component_high"], "detectable": float(slopes["trend_detectable"]),
                  "share": share})


Method = Callable[[xr.DataArray], Decomposition]


def methods(epochs: int | None) -> tuple[tuple[str, Method], ...]:
    """(name, field -> :class:`Decomposition`) of the compared methods."""
    return (("climatology + linear trend", linear_method),
            ("STL per cell (robust)", stl_method),
            (f"EOF ({N_MODES}, xeofs)", eof_method),
            (f"extended EOF ({N_MODES}, lag 12, xeofs)", lambda f: eof_method(f, extended=True)),
            (f"LFCA ({LFCA_TRUNCATION} EOFs, 10-y low-pass)", lfca_method),
            (f"sciencevae climate_trend ({'default' if epochs is None else epochs} epochs)",
             lambda f: sciencevae_method(f, epochs)))


def timed(method: Method, field: xr.DataArray) -> tuple[Decomposition, float]:
    """The method's decomposition and its wall seconds."""
    started = time.perf_counter()
    parts = method(field)
    return parts, time.perf_counter() - started


# ------------------------------------------------------------------------------------------------ metrics

def pooled_r2(found: xr.DataArray, expected: np.ndarray, land: np.ndarray) -> float:
    """R² of ``found`` against ``expected`` (time, lat, lon) over the ocean cells, pooled."""
    found = found.transpose("time", "lat", "lon").values[:, ~land]
    expected = expected[:, ~land]
    ok = np.isfinite(found)
    return float(1 - np.var(found[ok] - expected[ok]) / np.var(expected[ok]))


def trend_summary(parts: Decomposition, field: xr.DataArray) -> tuple[float, tuple[float, float] | None]:
    """Theil–Sen slope per decade of the trend component's area mean and its interval (or ``None``)."""
    if parts.reported:
        interval = (parts.reported["low"], parts.reported["high"]) if parts.reported["detectable"] else None
        return parts.reported["trend"], interval
    slope = trend_test(area_mean(parts.trend), decimal_years(field.time)).slope_per_decade
    if parts.interval_ratio is None:
        return slope, None
    low, high = sorted((slope * parts.interval_ratio[0], slope * parts.interval_ratio[1]))
    return slope, (low, high)


def share_of(parts: Decomposition, field: xr.DataArray) -> float:
    """The residual seasonality share: the method's own or :func:`residual_share`."""
    return parts.reported["share"] if "share" in parts.reported else residual_share(parts.residual, field)


def _slope_text(slope: float, interval: tuple[float, float] | None) -> str:
    return f"{slope:+.3f}" + (f" [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else "")


# ------------------------------------------------------------------------------------------------- tables

def synthetic_table(sizes: Sizes, epochs: int | None) -> None:
    """Print the synthetic-field table (R² against the truth, residual seasonality, seconds)."""
    from sciencevae.case_studies import climate_trend as ct
    from sciencevae.datasets import monthly_field

    print("\n### Synthetic fields with a known truth\n")
    print("R² of the components against the truth, pooled over ocean cells; residual seasonality share "
          "(0 = none left).\n")
    print("| field | method | seasonal R² | trend R² | residual seasonality | seconds | trend from |")
    print("|---|---|---|---|---|---|---|")
    for label, kwargs in sizes.synthetic:
        truth = monthly_field(**kwargs)
        field = ct.synthetic_dataset(truth)["sst"]
        expected = {"seasonal": truth["seasonal"] - truth["seasonal"].mean(0),
                    "trend": truth["trend"] - truth["trend"].mean(0)}
        for name, method in methods(epochs):
            parts, seconds = timed(method, field)
            r2 = [pooled_r2(getattr(parts, c), expected[c], truth["land"]) for c in ("seasonal", "trend")]
            print(f"| {label} | {name} | {r2[0]:.4f} | {r2[1]:.4f} | {share_of(parts, field):.4f} | "
                  f"{seconds:.1f} | {parts.detail} |", flush=True)


def load_real(spec: RealField, data: Path, sizes: Sizes) -> xr.DataArray:
    """The real field of ``spec`` (sst, loaded), cut to its box and years (``sizes`` may thin it)."""
    from sciencevae.adapters.climate import open_field

    da = open_field(data / spec.file)["sst"]
    first, last = spec.years
    if sizes.max_years:
        last = str(min(int(last), int(first) + sizes.max_years - 1))
    da = da.sel(time=slice(first, last)).sortby("lat")
    if spec.lat:
        da = da.sel(lat=slice(*spec.lat))
    if spec.wrap:
        da = da.assign_coords(lon=((da.lon + 180) % 360) - 180).sortby("lon")
    if spec.lon:
        da = da.sel(lon=slice(*spec.lon))
    da = da.isel(lat=slice(None, None, sizes.stride), lon=slice(None, None, sizes.stride))
    return da.load().rename("sst")


def real_table(sizes: Sizes, epochs: int | None, data: Path) -> None:
    """Print the real-field table (trend of the trend component's area mean, residual seasonality)."""
    print("\n### Real fields\n")
    print("Theil–Sen trend per decade (°C) of the area-weighted mean of the trend component [95% interval "
          "where the method has one], and of the input.\n")
    print("| field | method | trend component | observed | residual seasonality | seconds | trend from |")
    print("|---|---|---|---|---|---|---|")
    for spec in sizes.real:
        if not (data / spec.file).exists():
            print(f"| {spec.name} | — | {data / spec.file} not found: skipped | | | | |")
            continue
        field = load_real(spec, data, sizes)
        observed = trend_test(area_mean(field), decimal_years(field.time))
        observed_text = _slope_text(observed.slope_per_decade, (observed.low_per_decade, observed.high_per_decade))
        years = field.time.dt.year.values
        label = (f"{spec.name} {years[0]}–{years[-1]} ({field.sizes['time']} × {field.sizes['lat']} × "
                 f"{field.sizes['lon']})")
        for name, method in methods(epochs):
            parts, seconds = timed(method, field)
            slope, interval = trend_summary(parts, field)
            print(f"| {label} | {name} | {_slope_text(slope, interval)} | {observed_text} | "
                  f"{share_of(parts, field):.4f} | {seconds:.1f} | {parts.detail} |", flush=True)


def machine_info(threads: int, epochs: int | None, quick: bool) -> str:
    """One line on where and how the run ran."""
    import statsmodels
    import xeofs

    return (f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads (--threads {threads}), "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, numpy {np.__version__}, "
            f"xarray {xr.__version__}, statsmodels {statsmodels.__version__}, xeofs {xeofs.__version__}; "
            f"epochs {epochs}{', QUICK smoke-test sizes' if quick else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="sciencevae epochs (default: the case study's; 3 with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (torch.set_num_threads)")
    parser.add_argument("--only", choices=("synthetic", "real"), default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a benchmark")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the real netCDF files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs = args.epochs if args.epochs is not None else (3 if args.quick else None)
    sizes = quick_sizes() if args.quick else full_sizes()
    warnings.filterwarnings("ignore", category=RuntimeWarning, message="(Mean of empty slice|invalid value)")
    warnings.filterwarnings("ignore", category=FutureWarning, module="xeofs")
    print(machine_info(args.threads, epochs, args.quick))
    if args.only in (None, "synthetic"):
        synthetic_table(sizes, epochs)
    if args.only in (None, "real"):
        real_table(sizes, epochs, args.data.resolve())


if __name__ == "__main__":
    main()
