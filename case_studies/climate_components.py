"""Components and maps of the climate case study, from a fitted β-VAE whose decoder sees the phase of
the year (:func:`seasonal_basis`): annual means and seasonal cycles of latent codes, the seasonal /
trend decomposition, knob, season and trend maps, and the harmonic climatology on the grid.

Arrays are standardised (n_time or n_codes, n_features) until :meth:`ClimateAdapter.to_field` puts them
on the grid in the data's units.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import xarray as xr

from sciencevae import BetaVAE, __version__
from sciencevae.adapters.climate import ClimateAdapter
from sciencevae.data import Prepared

from . import cell_regression as cr
from .climate_knobs import Knobs, decimal_years, harmonics, year_fraction
from .climatology import HarmonicClimatology
from .trend_test import low_pass, slopes_per_column

#: The trend component keeps the trend knob's variability slower than this (years; LFCA's 10-year
#: low-pass, Wills et al. 2018); what is faster stays in the residual.
TREND_CUTOFF_YEARS = 10.0
#: Points per year at which the decoder's seasonal cycle is evaluated (annual means, amplitude, peak).
PHASE_POINTS = 24
#: At most this many principal series of the seasonal cycle's change are offered to the data.
MAX_CHANGE_SERIES = 8


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


def model_input(prepared: Prepared, climatology: HarmonicClimatology, time: xr.DataArray) -> Prepared:
    """What the β-VAE reads: the standardised field minus the harmonic climatology, with the phase of the
    year as covariates (:func:`seasonal_basis`)."""
    return dataclasses.replace(prepared, X=prepared.X - climatology.cycle(year_fraction(time)),
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
    """Standardised parts: ``seasonal`` and ``trend`` (n_time, n_features), ``mean_cycle``, the cycle
    added to the decoder's, and ``seasonal_changes``, how many series of the decoder's change of the
    seasonal cycle the data supported (0: the seasonal component is the climatology; see :func:`decompose`)."""

    seasonal: np.ndarray
    trend: np.ndarray
    mean_cycle: HarmonicClimatology
    seasonal_changes: int


def decompose(model: BetaVAE, climatology: HarmonicClimatology, z: np.ndarray, knobs: Knobs,
              time: xr.DataArray, anomalies: np.ndarray, scale: np.ndarray) -> Decomposition:
    """Seasonal and trend components (standardised, (n_time, n_features)) of the model input ``anomalies``
    (the standardised field minus the harmonic ``climatology``, NaN where unobserved); ``scale``
    (n_features,): :func:`trend_weights`.

    The decoder gives time courses; their amplitude in each cell is fitted to the data
    (:mod:`.cell_regression`). Trend: the decoder's annual mean with only the trend knobs moving — their
    scores low-passed at ``TREND_CUTOFF_YEARS`` (:func:`.trend_test.low_pass`), so the trend is the slow
    part — minus that at the mean code; its leading principal series (one per trend knob) are regressors.
    Seasonal: the record's mean cycle (the fitted harmonic ``climatology``) plus the change of the cycle as
    the knobs move — decode(z_TS(t), phase(t)) minus the trend's annual mean and minus its own mean cycle;
    its leading principal series are regressors as far as they predict years they were not fitted on
    (even years from odd and back, :func:`.cell_regression.supported_series`), else the seasonal component
    is the climatology. So the residual keeps no mean seasonal cycle, and in a short noisy record the
    decoder's noise does not enter the seasons. ``mean_cycle`` is the climatology minus the decoder's own
    mean cycle (what :meth:`ClimateResult.seasonal_cycle` adds to the decoder's).
    """
    trend_knobs, seasonal_knobs = knobs.of("trend"), knobs.of("seasonal")
    phase = year_fraction(time)
    years = decimal_years(time)
    scores = knobs.scores(z)
    smooth = low_pass(scores[:, trend_knobs], years, TREND_CUTOFF_YEARS)
    still = annual_means(model, knobs.center[None])
    trend_codes = knobs.codes(z, trend_knobs, smooth)
    moving = annual_means(model, trend_codes) if trend_knobs else np.repeat(still, len(z), 0)
    both = knobs.codes(z, trend_knobs + seasonal_knobs, np.c_[smooth, scores[:, seasonal_knobs]])
    departure = model.decode(both, seasonal_basis(time)) - moving
    own = HarmonicClimatology.fit(departure, phase, climatology.n_harmonics)
    trend_series = cr.principal_series(moving - still, scale, len(trend_knobs))
    n_changes = min(MAX_CHANGE_SERIES, 2 * climatology.n_harmonics * len(trend_knobs + seasonal_knobs))
    change_series = cr.principal_series(departure - own.cycle(phase), scale, n_changes)
    folds = np.floor(years).astype(int) % 2
    change_series = change_series[:, :cr.supported_series(trend_series, change_series, anomalies, folds)]
    coef = cr.fit_cells(np.c_[trend_series, change_series], anomalies)
    n_trend = trend_series.shape[1]
    seasonal = climatology.cycle(phase) + change_series @ coef[:, n_trend:].T
    trend = trend_series @ coef[:, :n_trend].T
    return Decomposition(seasonal=seasonal.astype(np.float32), trend=trend.astype(np.float32),
                         mean_cycle=HarmonicClimatology(coef=climatology.coef - own.coef),
                         seasonal_changes=change_series.shape[1])


def trend_weights(adapter: ClimateAdapter) -> np.ndarray:
    """Per feature (n_features,): its standard deviation relative to its variable's rms standard deviation,
    times the square root of its area weight — so that the principal time series of a standardised field
    weigh cells by their amplitude in the data's units and by their area, and each variable alike."""
    blocks = [state.std / np.sqrt(np.mean(state.std**2)) * np.sqrt(state.weight) for state in adapter.states]
    return np.concatenate(blocks)


def components(adapter: ClimateAdapter, data: xr.Dataset, parts: Decomposition, time: xr.DataArray) -> xr.Dataset:
    """mean state, seasonal and trend components on the grid, and the residual (module docstring)."""
    raw = {"seasonal": parts.seasonal, "trend": parts.trend}
    parts = {role: adapter.to_field(part - part.mean(0), time, units="anomaly") for role, part in raw.items()}
    mean_state = data[adapter.variables].mean(adapter.sample_dim)  # so the residual has zero time mean
    out = {}
    single = len(adapter.variables) == 1
    for var in adapter.variables:
        residual = data[var] - mean_state[var] - parts["seasonal"][var] - parts["trend"][var]
        named = {"mean_state": mean_state[var], "seasonal": parts["seasonal"][var],
                 "trend": parts["trend"][var], "residual": residual}
        for name, da in named.items():
            dims = [d for d in data[var].dims if d in da.dims]
            da = da.transpose(*dims).copy(deep=False)
            da.attrs = component_attrs(name, var, data[var].attrs)  # replaced: none of the input's ranges
            out[name if single else f"{var}_{name}"] = da
    return xr.Dataset(out, attrs={"source": "sciencevae climate_trend", "sciencevae_version": __version__})


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
        values = slopes_per_column(comp.transpose(dim, *grid.dims).values, years).reshape(grid.shape)
        slope = grid.copy(data=values)
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
    peak = (phases[cycle[0].argmax(0)] - stamp_offset(time)) % 1.0 * 12 + 1
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
