"""Components and maps of the climate case study, from a fitted β-VAE whose decoder sees the phase of
the year (:func:`seasonal_basis`): annual means and seasonal cycles of latent codes, the seasonal /
trend decomposition, knob, season and trend maps, and the harmonic climatology on the grid.

Arrays are standardised (n_time or n_codes, n_features) until :meth:`ClimateAdapter.to_field` puts them
on the grid in the data's units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from uuid import uuid4

import dask.array
import numpy as np
import xarray as xr

from sciencevae import BetaVAE, __version__
from sciencevae.adapters.climate import ClimateAdapter, _carried_attrs
from sciencevae.streaming import ArrayRows, RowReader, Streamed

from . import cell_regression as cr
from .climate_knobs import Knobs, decimal_years, harmonics, year_fraction
from .climatology import HarmonicClimatology, n_harmonics_for
from .trend_test import low_pass, slope_points, theil_sen_columns

#: The trend component keeps the trend knob's variability slower than this (years; LFCA's 10-year
#: low-pass, Wills et al. 2018); what is faster stays in the residual.
TREND_CUTOFF_YEARS = 10.0
#: Points per year at which the decoder's seasonal cycle is evaluated (annual means, amplitude, peak).
PHASE_POINTS = 24
#: At most this many principal series of the seasonal cycle's change are offered to the data.
MAX_CHANGE_SERIES = 8
#: Values (time steps x features) per chunk when a field is read, decoded, regressed or written in chunks
#: of time (4M: 32 MB in float64).
CHUNK_VALUES = 2**22
#: The model input (time steps x observed cells, float32) is held in memory up to this size (512 MiB); a
#: larger field is read from its file chunk by chunk at every pass (every epoch included).
IN_MEMORY_BYTES = 2**29
#: Values (rows x features) from which principal patterns are found: every row of a record that fits,
#: else a seeded random sample of rows.
PATTERN_VALUES = 2**25
#: Values in a group of chunks whose rows are shuffled together when training from the file (128 MB).
GROUP_VALUES = 2**25


def seasonal_basis(time: xr.DataArray) -> np.ndarray:
    """The covariates the model sees at each time: annual and semi-annual harmonics of the day of the
    year in the time coordinate's calendar (:func:`.climate_knobs.year_fraction`), float32 (n_time, 4).

    New data under a saved run are encoded by :func:`encode` (which also subtracts the run's climatology).
    """
    return harmonics(year_fraction(time)).astype(np.float32)


def annual_means(model: BetaVAE, codes: np.ndarray, budget: int = 20_000_000) -> np.ndarray:
    """Per latent code (n, n_latent): the decoded field averaged over ``PHASE_POINTS`` evenly spaced
    phases of the year, (n, n_features) — the code's annual mean, free of any seasonal cycle. Decoded
    in blocks of at most ``budget`` values."""
    phases = np.arange(PHASE_POINTS) / PHASE_POINTS
    step = max(1, budget // (PHASE_POINTS * model.config.n_features))
    out = [cycles(model, codes[start:start + step], phases).mean(1) for start in range(0, len(codes), step)]
    return np.concatenate(out) if out else np.zeros((0, model.config.n_features), np.float32)


def cycles(model: BetaVAE, codes: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """The decoded field of each code (n, n_latent) at each phase: (n, n_phases, n_features)."""
    basis = harmonics(phases).astype(np.float32)
    cycle = model.decode(np.repeat(codes, len(phases), axis=0), np.tile(basis, (len(codes), 1)))
    return cycle.reshape(len(codes), len(phases), -1)


def chunk_by_chunk():
    """A context in which dask computes one chunk at a time (its synchronous scheduler), so that the
    components and their reductions, each several chunk-sized temporaries, hold one chunk's worth at once.
    Local to the ``with`` block; dask's settings outside it are left alone."""
    import dask

    return dask.config.set(scheduler="synchronous")


def time_chunks(n_time: int, n_features: int, values: int | None = None) -> list[tuple[int, int]]:
    """Consecutive (start, stop) ranges of time steps of at most ``values`` values each (default
    ``CHUNK_VALUES``).

    >>> time_chunks(10, 3, values=12)
    [(0, 4), (4, 8), (8, 10)]
    """
    step = max(1, (CHUNK_VALUES if values is None else values) // max(1, n_features))
    return [(start, min(start + step, n_time)) for start in range(0, n_time, step)]


class AnomalyRows:
    """Row reader of the β-VAE's input read from the (lazily opened) field on demand: the standardised
    time steps minus the harmonic climatology, (rows, n_features) float32, NaN where unobserved."""

    def __init__(self, adapter: ClimateAdapter, ds: xr.Dataset, climatology: HarmonicClimatology,
                 phase: np.ndarray):
        self.adapter, self.ds, self.climatology, self.phase = adapter, ds, climatology, phase
        self.n_obs, self.n_features = len(phase), adapter.n_features

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.adapter.standardized_rows(self.ds, start, stop) - self.climatology.cycle(self.phase[start:stop])


def model_rows(adapter: ClimateAdapter, ds: xr.Dataset, time: xr.DataArray) -> tuple[HarmonicClimatology, RowReader]:
    """The harmonic climatology of the field and a reader of what the β-VAE reads (the standardised field
    minus that climatology), from one pass over the field in chunks of time (:func:`time_chunks`).

    Up to ``IN_MEMORY_BYTES`` the input is kept from that pass (an :class:`~sciencevae.streaming.ArrayRows`);
    a larger field is read again from its file whenever it is needed (:class:`AnomalyRows`), so memory is
    bounded by the chunks, not the field.
    """
    phase = year_fraction(time)
    n_time, n_features = len(phase), adapter.n_features
    n_harmonics = n_harmonics_for(phase)
    held = np.empty((n_time, n_features), np.float32) if n_time * n_features * 4 <= IN_MEMORY_BYTES else None
    moments = cr.Moments.zeros(n_features, 1 + 2 * n_harmonics)
    chunks = time_chunks(n_time, n_features)
    for start, stop in chunks:
        rows = adapter.standardized_rows(ds, start, stop)
        moments.add(HarmonicClimatology.design(phase[start:stop], n_harmonics), rows)
        if held is not None:
            held[start:stop] = rows
    climatology = HarmonicClimatology.from_moments(moments)
    if held is None:
        return climatology, AnomalyRows(adapter, ds, climatology, phase)
    for start, stop in chunks:
        held[start:stop] -= climatology.cycle(phase[start:stop])
    return climatology, ArrayRows(held)


def model_input(adapter: ClimateAdapter, rows: RowReader, time: xr.DataArray) -> Streamed:
    """The β-VAE's training and encoding input: ``rows`` (:func:`model_rows`) with the area weights and
    the phase of the year as covariates (:func:`seasonal_basis`). Rows held in memory are one chunk;
    rows read from the file come in chunks of :func:`time_chunks`, ``GROUP_VALUES`` values shuffled
    together."""
    n_features = adapter.n_features
    if isinstance(rows, ArrayRows):
        chunk, buffer = max(1, rows.n_obs), 1
    else:
        chunk = time_chunks(rows.n_obs, n_features)[0][1]
        buffer = max(1, GROUP_VALUES // (chunk * n_features))
    weights = np.concatenate([state.weight for state in adapter.states])
    return Streamed(rows, chunk_rows=chunk, buffer_chunks=buffer, feature_weights=weights,
                    covariates=seasonal_basis(time))


def climatology_dataset(adapter: ClimateAdapter, climatology: HarmonicClimatology) -> xr.Dataset:
    """The harmonic climatology on the grid in the data's units: ``term`` = intercept (departure from the
    time mean), cos1, sin1, ..., cosK, sinK."""
    terms = ["intercept"] + [f"{f}{k}" for k in range(1, climatology.n_harmonics + 1) for f in ("cos", "sin")]
    ds = adapter.to_field(climatology.coef, xr.DataArray(terms, dims="term", name="term"), dim="term",
                          units="anomaly")
    for var in ds.data_vars:
        ds[var].attrs["long_name"] = (f"harmonic seasonal climatology of {var} as departures from its time mean "
                                      "(mean_state in components.nc): coefficients of 1 and cos/sin(2 pi k phase), "
                                      "phase = fraction of the year (Wilks 2011, section 9.4)")
    return ds


def climatology_from(adapter: ClimateAdapter, ds: xr.Dataset) -> HarmonicClimatology:
    """Inverse of :func:`climatology_dataset`: the coefficients back in standardised units."""
    blocks = [ds[state.name].values.reshape(ds.sizes["term"], -1)[:, state.keep] / state.std
              for state in adapter.states]
    return HarmonicClimatology(coef=np.concatenate(blocks, axis=1).astype(np.float32))


@dataclass(frozen=True)
class Decomposition:
    """Standardised seasonal and trend components as time series times per-cell amplitudes (see
    :func:`decompose`), read for any range of time steps by :meth:`seasonal` and :meth:`trend`.

    ``phase`` (n_time,): the phase of the year; ``climatology``: the record's harmonic climatology;
    ``trend_series`` (n_time, n_trend) and ``trend_coef`` (n_features, n_trend); ``change_series``
    (n_time, n_changes) and ``change_coef`` (n_features, n_changes), the change of the seasonal cycle the
    data supported (``seasonal_changes`` = n_changes; 0: the seasonal component is the climatology);
    ``mean_cycle``, the cycle added to the decoder's; ``trend_shrinkage`` (n_variables, n_trend), the factor
    each variable's trend amplitudes were shrunk by (:func:`shrunk_trend`; 1 = unchanged).
    """

    phase: np.ndarray
    climatology: HarmonicClimatology
    trend_series: np.ndarray
    trend_coef: np.ndarray
    change_series: np.ndarray
    change_coef: np.ndarray
    mean_cycle: HarmonicClimatology
    trend_shrinkage: np.ndarray

    @property
    def seasonal_changes(self) -> int:
        return int(self.change_series.shape[1])

    def seasonal(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Seasonal component of time steps ``start:stop`` (rows, n_features) float32, zero mean over the
        record."""
        rows = slice(start, stop)
        mean = (harmonics(self.phase, self.climatology.n_harmonics).mean(0) @ self.climatology.coef[1:]
                + self.change_series.mean(0) @ self.change_coef.T)
        part = self.climatology.cycle(self.phase[rows]) + self.change_series[rows] @ self.change_coef.T
        return (part - mean).astype(np.float32)

    def trend(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Trend component of time steps ``start:stop`` (rows, n_features) float32, zero mean over the record."""
        series = self.trend_series[start:stop] - self.trend_series.mean(0)
        return (series @ self.trend_coef.T).astype(np.float32)


def coarse_rows(years: np.ndarray) -> np.ndarray:
    """Rows at which a slow time course is decoded: every row of monthly or coarser data; the first row of
    each month (and the last row) of finer data, between which it is interpolated (:func:`interpolate`).

    >>> coarse_rows(2000 + np.arange(70) / 24).tolist()[:3], int(coarse_rows(2000 + np.arange(70) / 24)[-1])
    ([0, 2, 4], 69)
    """
    month = np.floor(np.asarray(years) * 12 + 1e-6)
    first = np.flatnonzero(np.r_[True, np.diff(month) > 0])
    return np.unique(np.r_[first, len(years) - 1])


def interpolate(years: np.ndarray, coarse: np.ndarray, rows: np.ndarray, values_at: Callable) -> np.ndarray:
    """Linear interpolation in time to ``rows`` of values known at the ``coarse`` rows: ``values_at(c)``
    gives them at coarse positions ``c`` (an index into ``coarse``) as (len(c), n) arrays; only the
    positions around ``rows`` are asked for. Exact where ``rows`` are coarse rows."""
    right = np.clip(np.searchsorted(coarse, rows, side="right"), 1, len(coarse) - 1)
    left = right - 1
    span = years[coarse[right]] - years[coarse[left]]
    weight = np.clip((years[rows] - years[coarse[left]]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    needed, where = np.unique(np.r_[left, right], return_inverse=True)
    known = values_at(needed)
    lower, upper = known[where[:len(rows)]], known[where[len(rows):]]
    return (lower * (1 - weight)[:, None] + upper * weight[:, None]).astype(np.float32)


def pattern_rows(n_rows: int, n_features: int, seed: int = 0) -> np.ndarray:
    """The rows principal patterns are found from: all, or a seeded random sample of at most
    ``PATTERN_VALUES / n_features`` rows (random, so that no phase of the year is favoured)."""
    most = max(1, PATTERN_VALUES // max(1, n_features))
    if n_rows <= most:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, most, replace=False))


def decompose(model: BetaVAE, climatology: HarmonicClimatology, z: np.ndarray, knobs: Knobs,
              time: xr.DataArray, rows: RowReader, cells: CellScales) -> Decomposition:
    """Seasonal and trend components of the model input read from ``rows`` (the standardised field minus
    the harmonic ``climatology``, NaN where unobserved; :func:`model_rows`); ``cells``: :func:`cell_scales`. The field is read and decoded in chunks of time (:func:`time_chunks`): memory
    is bounded by the chunks, ``PATTERN_VALUES`` and per-cell regression statistics.

    The decoder gives time courses; their amplitude in each cell is fitted to the data
    (:mod:`.cell_regression`). Trend: the decoder's annual mean with only the trend knobs moving — their
    scores low-passed at ``TREND_CUTOFF_YEARS`` (:func:`.trend_test.low_pass`), so the trend is the slow
    part — minus that at the mean code (decoded at :func:`coarse_rows`, monthly, and interpolated between);
    its leading principal series (one per trend knob) are regressors, and each cell's amplitude on them is
    shrunk toward the area-weighted mean by the share of the amplitudes' spread that is noise
    (:func:`.cell_regression.shrink_to_mean`, noise from fits on even and odd years; ``trend_shrinkage``
    holds the factors, 1 = unchanged), so that a short noisy record gives a trend map without speckle.
    Seasonal: the record's mean cycle (the fitted harmonic ``climatology``) plus the change of the cycle as
    the knobs move — decode(z_TS(t), phase(t)) minus the trend's annual mean and minus its own mean cycle;
    its leading principal series are regressors as far as they predict years they were not fitted on
    (even years from odd and back, :func:`.cell_regression.supported_columns`), else the seasonal component
    is the climatology. So the residual keeps no mean seasonal cycle, and in a short noisy record the
    decoder's noise does not enter the seasons. Principal patterns come from :func:`pattern_rows`.
    ``mean_cycle`` is the climatology minus the decoder's own mean cycle (what
    :meth:`ClimateResult.seasonal_cycle` adds to the decoder's).
    """
    trend_knobs, seasonal_knobs = knobs.of("trend"), knobs.of("seasonal")
    phase, years = year_fraction(time), decimal_years(time)
    n_time, n_features = len(z), model.config.n_features
    scale = cells.pattern_weights
    scores = knobs.scores(z)
    smooth = low_pass(scores[:, trend_knobs], years, TREND_CUTOFF_YEARS)
    still = annual_means(model, knobs.center[None])
    trend_codes = knobs.codes(z, trend_knobs, smooth)
    both = knobs.codes(z, trend_knobs + seasonal_knobs, np.c_[smooth, scores[:, seasonal_knobs]])
    basis = seasonal_basis(time)
    coarse = coarse_rows(years)
    chunks = time_chunks(n_time, n_features)

    def moving_at(positions: np.ndarray) -> np.ndarray:  # the trend's annual mean at coarse positions
        if not trend_knobs:
            return np.repeat(still, len(positions), 0)
        return annual_means(model, trend_codes[coarse[positions]])

    def departure(start: int, stop: int) -> np.ndarray:  # the decoded cycle about the trend's annual mean
        moving = interpolate(years, coarse, np.arange(start, stop), moving_at)
        return model.decode(both[start:stop], basis[start:stop]) - moving

    sampled = pattern_rows(len(coarse), n_features)
    centre, patterns = cr.principal_patterns(moving_at(sampled) - still, scale, len(trend_knobs))
    at_coarse = np.concatenate([cr.project(moving_at(np.arange(a, b)) - still, centre, patterns)
                                for a, b in time_chunks(len(coarse), n_features)])
    trend_series = interpolate(years, coarse, np.arange(n_time), lambda p: at_coarse[p]).astype(np.float64)

    n_harmonics = climatology.n_harmonics
    own_moments = cr.Moments.zeros(n_features, 1 + 2 * n_harmonics)
    sampled = pattern_rows(n_time, n_features)
    sample = np.empty((len(sampled), n_features), np.float32)
    for start, stop in chunks:
        part = departure(start, stop)
        own_moments.add(HarmonicClimatology.design(phase[start:stop], n_harmonics), part)
        inside = (sampled >= start) & (sampled < stop)
        sample[inside] = part[sampled[inside] - start]
    own = HarmonicClimatology.from_moments(own_moments)
    n_changes = min(MAX_CHANGE_SERIES, 2 * n_harmonics * len(trend_knobs + seasonal_knobs))
    centre, patterns = cr.principal_patterns(sample - own.cycle(phase[sampled]), scale, n_changes)
    del sample

    folds = np.floor(years).astype(int) % 2
    n_trend, n_candidates = trend_series.shape[1], patterns.shape[1]
    by_fold = {int(f): cr.Moments.zeros(n_features, 1 + n_trend + n_candidates) for f in np.unique(folds)}
    change_series = np.empty((n_time, n_candidates))
    for start, stop in chunks:
        change_series[start:stop] = cr.project(departure(start, stop) - own.cycle(phase[start:stop]), centre,
                                               patterns)
        design = cr.with_intercept(np.c_[trend_series[start:stop], change_series[start:stop]])
        data = rows.read(start, stop)
        for fold, moments in by_fold.items():
            chosen = folds[start:stop] == fold
            if chosen.any():
                moments.add(design[chosen], data[chosen])
    n_supported = cr.supported_columns(by_fold, n_trend, n_candidates)
    total = sum(by_fold.values(), cr.Moments.zeros(n_features, 1 + n_trend + n_candidates))
    coef = total.solve(1 + n_trend + n_supported)[:, 1:]
    trend_coef, shrinkage = shrunk_trend(coef[:, :n_trend], by_fold, 1 + n_trend + n_supported, cells)
    return Decomposition(phase=phase, climatology=climatology, trend_series=trend_series,
                         trend_coef=trend_coef, change_series=change_series[:, :n_supported],
                         change_coef=coef[:, n_trend:], mean_cycle=HarmonicClimatology(coef=climatology.coef - own.coef),
                         trend_shrinkage=shrinkage)


def shrunk_trend(coef: np.ndarray, by_fold: dict[int, cr.Moments], n_columns: int,
                 cells: CellScales) -> tuple[np.ndarray, np.ndarray]:
    """The trend amplitudes ``coef`` (n_features, n_trend) shrunk toward their area-weighted mean per variable
    (:func:`.cell_regression.shrink_to_mean`; noise from the fits on each fold of ``by_fold``, on the first
    ``n_columns`` design columns) and the factors (n_variables, n_trend); unchanged (factors 1) without
    two folds."""
    n_variables = int(cells.variable.max()) + 1 if len(cells.variable) else 0
    if len(by_fold) != 2 or not coef.shape[1]:
        return coef, np.ones((n_variables, coef.shape[1]))
    folds = list(by_fold.values())
    halves = tuple(m.solve(n_columns)[:, 1:1 + coef.shape[1]] for m in folds)
    seen_in_both = np.logical_and(*(m.squares > 0 for m in folds))
    sizes = tuple(cr.fold_sizes(by_fold).values())
    return cr.shrink_to_mean(coef, halves, sizes, cells.relative_std, cells.area * seen_in_both, cells.variable)


@dataclass(frozen=True)
class CellScales:
    """Per feature (n_features,): ``relative_std``, its standard deviation relative to its variable's rms
    standard deviation; ``area``, its area weight; ``variable``, the index of its variable."""

    relative_std: np.ndarray
    area: np.ndarray
    variable: np.ndarray

    @property
    def pattern_weights(self) -> np.ndarray:
        """``relative_std * sqrt(area)``: so that the principal time series of a standardised field weigh
        cells by their amplitude in the data's units and by their area, and each variable alike."""
        return self.relative_std * np.sqrt(self.area)


def cell_scales(adapter: ClimateAdapter) -> CellScales:
    """The :class:`CellScales` of an adapter's features."""
    relative = [state.std / np.sqrt(np.mean(state.std**2)) for state in adapter.states]
    return CellScales(relative_std=np.concatenate(relative),
                      area=np.concatenate([np.broadcast_to(state.weight, state.std.shape) for state in adapter.states]),
                      variable=np.concatenate([np.full(len(state.std), i) for i, state in enumerate(adapter.states)]))


def lazy_field(adapter: ClimateAdapter, rows_of: Callable[[int, int], np.ndarray], time: xr.DataArray,
               units: str) -> xr.Dataset:
    """Fields (time, grid) of every variable whose values are computed chunk by chunk of time
    (:func:`time_chunks`) only when read: ``rows_of(start, stop)`` gives the standardised rows
    (stop - start, n_features); ``units`` as for :meth:`ClimateAdapter.to_field`. Dask-backed: written to
    netCDF/zarr or reduced without holding the whole field."""
    dim = adapter.sample_dim
    sizes = tuple(b - a for a, b in time_chunks(len(time), adapter.n_features))
    index = dask.array.arange(len(time), chunks=(sizes,))
    token = uuid4().hex  # names the graph's keys (dask would otherwise hash the closure's arrays)
    out = {}
    for state in adapter.states:
        def block(steps: np.ndarray, name: str = state.name) -> np.ndarray:
            matrix = rows_of(int(steps[0]), int(steps[-1]) + 1)
            return adapter.to_field(matrix, None, dim=dim, units=units)[name].values

        ndim = state.grid.ndim
        array = dask.array.map_blocks(block, index, chunks=(sizes, *((n,) for n in state.grid.shape)),
                                      new_axis=list(range(1, ndim + 1)), dtype=np.float32,
                                      meta=np.empty((0,) * (ndim + 1), np.float32), name=f"{state.name}-{token}")
        out[state.name] = xr.DataArray(array, dims=(dim, *state.grid.dims), coords=state.grid.coords,
                                       attrs=_carried_attrs(state.grid.attrs, units))
    return xr.Dataset(out).assign_coords({dim: time})


def components(adapter: ClimateAdapter, data: xr.Dataset, parts: Decomposition, time: xr.DataArray) -> xr.Dataset:
    """mean state, seasonal and trend components on the grid, and the residual (module docstring); every
    one but the mean state is computed chunk by chunk of time when read (:func:`lazy_field`). The residual
    reads the input and recomputes the (low-rank) seasonal and trend chunks itself, so that writing all
    four never keeps one component's chunks for another."""

    def residual(start: int, stop: int) -> np.ndarray:
        return adapter.standardized_rows(data, start, stop) - parts.seasonal(start, stop) - parts.trend(start, stop)

    fields = {"seasonal": lazy_field(adapter, parts.seasonal, time, "anomaly"),
              "trend": lazy_field(adapter, parts.trend, time, "anomaly"),
              "residual": lazy_field(adapter, residual, time, "anomaly")}
    means = adapter.grid_means()  # the time mean: the residual has zero time mean
    out = {}
    single = len(adapter.variables) == 1
    for var in adapter.variables:
        dtype = data[var].dtype if np.issubdtype(data[var].dtype, np.floating) else np.float64
        named = {"mean_state": means[var].astype(dtype), **{name: field[var] for name, field in fields.items()}}
        for name, da in named.items():
            dims = [d for d in data[var].dims if d in da.dims]
            da = da.transpose(*dims).copy(deep=False)
            da.attrs = component_attrs(name, var, data[var].attrs)  # replaced: none of the input's ranges
            out[name if single else f"{var}_{name}"] = da
    return xr.Dataset(out, attrs={"source": "sciencevae climate_trend", "sciencevae_version": __version__})


def monthly_climatology(da: xr.DataArray, dim: str) -> xr.DataArray:
    """Mean of ``da`` per calendar month over ``dim`` (month, grid), read chunk by chunk of time (its dask
    chunks, or all at once): bounded memory for a field larger than it."""
    month = da[dim].dt.month.values
    sums = counts = None
    starts = np.cumsum((0, *da.chunksizes[dim])) if da.chunks else np.array([0, da.sizes[dim]])
    for start, stop in zip(starts[:-1], starts[1:]):
        values = np.asarray(da.isel({dim: slice(start, stop)}).transpose(dim, ...).values, dtype=np.float64)
        member = (month[start:stop, None] == np.arange(1, 13)).astype(np.float64)
        flat = values.reshape(len(values), -1)
        seen = np.isfinite(flat)
        part, number = member.T @ np.where(seen, flat, 0.0), member.T @ seen
        sums, counts = (part, number) if sums is None else (sums + part, counts + number)
    grid = da.isel({dim: 0}, drop=True).transpose(*[d for d in da.dims if d != dim])
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (sums / counts).reshape(12, *grid.shape)
    return xr.DataArray(values, dims=("month", *grid.dims), coords={**grid.coords, "month": np.arange(1, 13)})


def on_grid(adapter: ClimateAdapter, values: np.ndarray, units: str) -> xr.Dataset:
    """One (n_features,) vector as a Dataset on the grid, without a sample dimension."""
    return adapter.to_field(values[None], None, dim="_state", units=units).isel(_state=0, drop=True)


COMPONENT_MEANINGS = {
    "mean_state": ("mean state of {}", "time: mean"),
    "seasonal": ("seasonal component of {} (anomaly from the mean state)", None),
    "trend": ("trend component of {} (anomaly from the mean state)", None),
    "residual": ("residual of {}: input minus mean state, seasonal and trend components", None),
}


def component_attrs(name: str, var: str, source: dict) -> dict:
    """CF attributes of a component: what it holds, the input's units, cell_methods where they apply."""
    meaning, cell_methods = COMPONENT_MEANINGS[name]
    attrs = {"long_name": meaning.format(source.get("long_name", var))}
    if "units" in source:
        attrs["units"] = source["units"]
    if cell_methods:
        attrs["cell_methods"] = cell_methods
    return attrs


def stamp_offset(time: xr.DataArray) -> float:
    """How far the record's time stamps sit from the middle of their months, as a fraction of the year:
    about -1/24 for monthly means stamped on the 1st, 0 for mid-month stamps or daily data. The model
    learnt the cycle at the stamps' phases, so a month's value is the cycle at its middle plus this."""
    month = np.asarray(time.dt.month.values, dtype=float)
    return float(np.mean(year_fraction(time) - (month - 0.5) / 12))


def month_phases(time: xr.DataArray) -> np.ndarray:
    """The phase of the year (12,) at which the model's cycle gives each calendar month's value, in the
    record's own time-stamp convention (:func:`stamp_offset`)."""
    return ((np.arange(12) + 0.5) / 12 + stamp_offset(time)) % 1.0


def maps(model: BetaVAE, adapter: ClimateAdapter, mean_cycle: HarmonicClimatology, knobs: Knobs,
         time: xr.DataArray) -> xr.Dataset:
    """Per variable ``v``: ``v`` (knob, grid), each knob's effect on the annual mean per knob standard
    deviation, (annual(c + d_k) - annual(c - d_k)) / 2 at the mean code c; ``v_seasonal_amplitude``
    and ``v_seasonal_peak_month`` of the cycle at c; with a trend knob, ``v_seasonal_amplitude_change``,
    the change of that amplitude per trend knob standard deviation."""
    steps = knobs.directions
    response = (annual_means(model, knobs.center + steps) - annual_means(model, knobs.center - steps)) / 2
    maps = adapter.to_field(response, xr.DataArray(np.arange(len(steps)), dims="knob", name="knob"),
                            dim="knob", units="anomaly")
    maps = maps.assign_coords(role=("knob", knobs.table["role"].to_numpy().astype(str)))
    for var in adapter.variables:
        name = adapter.states[adapter.variables.index(var)].grid.attrs.get("long_name", var)
        maps[var].attrs = {"long_name": f"change of the annual mean of {name} per knob standard deviation "
                                        "(decoder response at the mean latent code)",
                           **{k: v for k, v in maps[var].attrs.items() if k == "units"}}
    maps["role"].attrs["long_name"] = "role of the knob"
    return maps.merge(season_maps(model, adapter, mean_cycle, knobs, time))


def trend_maps(components: xr.Dataset, adapter: ClimateAdapter, knobs: Knobs, time: xr.DataArray) -> xr.Dataset:
    """Per variable, when a trend is detectable: ``v_trend_per_decade``, the Theil–Sen slope of each cell's
    trend component on the points the printed area-mean slope uses (:func:`.trend_test.slopes_per_column`),
    and ``v_trend_per_decade_low`` / ``_high``, its 95% interval — the slope times the trend knob's interval
    over its slope (attribute ``interval_ratio``), low below high in cooling cells too."""
    trend = knobs.of("trend")
    if not trend:
        return xr.Dataset()
    row = knobs.table.loc[trend[0]]
    ratio = sorted((row["slope_low"] / row["slope_per_decade"], row["slope_high"] / row["slope_per_decade"]))
    dim = adapter.sample_dim
    years = decimal_years(time)
    out = {}
    for var in adapter.variables:
        comp = components["trend" if len(adapter.variables) == 1 else f"{var}_trend"]
        grid = comp.isel({dim: 0}, drop=True)
        t, weights = slope_points(years)
        points = xr.dot(xr.DataArray(weights, dims=("point", dim)), comp, dim=dim).transpose("point", *grid.dims)
        values = theil_sen_columns(t, np.asarray(points.values).reshape(len(t), -1)).reshape(grid.shape)
        slope = grid.copy(data=values.astype(np.float32))
        units = {"units": f"{comp.attrs['units']} per decade"} if "units" in comp.attrs else {}
        long_name = f"trend of {adapter.states[adapter.variables.index(var)].grid.attrs.get('long_name', var)}"
        out[f"{var}_trend_per_decade"] = slope.assign_attrs(
            long_name=f"{long_name}: Theil-Sen slope of the trend component", interval_ratio=ratio, **units)
        ends = (slope * ratio[0], slope * ratio[1])
        for bound, value in (("low", np.fmin(*ends)), ("high", np.fmax(*ends))):
            out[f"{var}_trend_per_decade_{bound}"] = value.assign_attrs(
                long_name=f"{long_name}: {'lower' if bound == 'low' else 'upper'} end of the 95% interval", **units)
    return xr.Dataset(out)


def amplitude(cycles: np.ndarray) -> np.ndarray:
    """Half the peak-to-peak range over the phases: (n, n_phases, n_features) -> (n, n_features)."""
    return (cycles.max(1) - cycles.min(1)) / 2


def season_maps(model: BetaVAE, adapter: ClimateAdapter, mean_cycle: HarmonicClimatology,
                knobs: Knobs, time: xr.DataArray) -> xr.Dataset:
    """Amplitude and month of maximum of the seasonal cycle at the mean code, and the amplitude's
    change per standard deviation of the (first) trend knob. The month is in the calendar of the record's
    values: a peak of monthly means stamped on the 1st of August reads 8.5, the middle of August
    (:func:`stamp_offset`)."""
    phases = np.arange(PHASE_POINTS) / PHASE_POINTS
    base = mean_cycle.cycle(phases)[None]
    cycle = base + cycles(model, knobs.center[None], phases)
    peak = np.round(((phases[cycle[0].argmax(0)] - stamp_offset(time)) % 1.0 * 12 + 1) * 2) / 2  # half months
    peak = np.where(peak >= 13, peak - 12, peak)  # 13.0 is the 1st of January
    fields = {"seasonal_amplitude": (amplitude(cycle)[0], "anomaly",
                                     "half the peak-to-peak range of the seasonal cycle of {} at the mean code"),
              "seasonal_peak_month": (peak, "standardized",
                                      "month of the maximum of the seasonal cycle of {} (1.0 = 1 January, "
                                      "1.5 = mid-January, 12.5 = mid-December; half-month steps)")}
    trend = knobs.of("trend")
    if trend:
        step = knobs.directions[trend[0]]
        change = amplitude(base + cycles(model, np.stack([knobs.center + step, knobs.center - step]), phases))
        fields["seasonal_amplitude_change"] = ((change[0] - change[1]) / 2, "anomaly",
                                               "change of the seasonal amplitude of {} per trend knob standard "
                                               "deviation")
    out = {}
    for key, (values, units, meaning) in fields.items():
        grid = on_grid(adapter, values, units)
        for var in adapter.variables:
            da = grid[var].copy(deep=False)
            long_name = adapter.states[adapter.variables.index(var)].grid.attrs.get("long_name", var)
            da.attrs = {"long_name": meaning.format(long_name),
                        **({"units": "month"} if key == "seasonal_peak_month"
                           else {k: v for k, v in grid[var].attrs.items() if k == "units"})}
            out[f"{var}_{key}"] = da
    return xr.Dataset(out)
