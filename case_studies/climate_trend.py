"""Climate case study: separate the seasonal cycle, the long-term trend and
other modes of a raw monthly or daily field with a Gaussian β-VAE.

The seasons come from the calendar. Per grid cell a harmonic climatology
(:mod:`.climatology`) is fitted and subtracted, and the β-VAE sees the annual
and semi-annual harmonics of the day of the year (:func:`seasonal_basis`, in
the data's calendar) as covariates of its encoder and decoder. Its latents
hold what the calendar cannot (the trend, ENSO-like modes); as the decoder
sees the phase and the latents together, the seasonal cycle may change with
them (:meth:`ClimateResult.seasonal_cycle`, the ``*_seasonal_amplitude_change``
map).

Every latent gets a role from its time series (``latent_roles``):

- ``seasonal``: annual + semi-annual harmonics of the phase of the year explain
  most of it (R² ≥ ``role_threshold``) — rare, since the phase is given;
- ``trend``: a smooth curve of time (cubic polynomial) explains most of it
  and its trend is detectable (:mod:`.trend_test`: Theil–Sen slope per decade
  with an autocorrelation-corrected interval and Mann–Kendall p-value);
- ``other``: active but neither (e.g. an ENSO-like mode);
- ``inactive``: KL below ``kl_threshold`` nats.

The knobs a user turns (``roles``, ``knobs``) are the active latents
themselves with ``rotate=False``, or by default their rotation into seasonal,
trend and other directions (:mod:`.climate_knobs`), which separates weak modes
that the β-VAE left mixed.

Components on the grid, in the data's units (:mod:`.climate_components`;
``annual(z)``: the decoded field of code z averaged over ``PHASE_POINTS``
phases of the year): ``trend`` = the time course of annual(z with only the
trend knobs moving, their scores low-passed at ``TREND_CUTOFF_YEARS``) −
annual(mean code), with each cell's amplitude regressed on the deseasonalised
data (:mod:`.cell_regression`) and shrunk toward the area mean by the share of
the amplitudes' spread that is noise (``settings["trend_shrinkage"]``, 1 =
unchanged; ~1 in a long record); ``seasonal`` = the harmonic climatology plus
the decoder's change of the cycle as those knobs move, as far as it predicts
held-out years (``settings["seasonal_change_series"]``); both centred to zero
time mean; ``mean_state`` =
the input's time mean; ``residual`` = input − mean state − seasonal −
trend (other modes and noise, no mean seasonal cycle: :func:`residual_seasonality`).
:meth:`ClimateResult.counterfactual` holds the trend at another period's
level.

A field larger than memory takes the same path: it is opened lazily and read in chunks of time
(:func:`.climate_components.time_chunks`) for its statistics, climatology, training, encoding and
regressions; ``components`` (and ``counterfactual``) are dask-backed and computed chunk by chunk when read
or saved, so memory is bounded by the chunks and the model, not by the record's length.

>>> import xarray as xr
>>> from sciencevae.datasets import monthly_field
>>> field = synthetic_dataset(monthly_field(n_years=4, n_lat=6, n_lon=8))
>>> res = run(field, var="sst", n_latent=3, epochs=2, progress=False)
>>> sorted(res.components.data_vars)
['mean_state', 'residual', 'seasonal', 'trend']
"""

from __future__ import annotations

import json
import time as clock
from dataclasses import dataclass, field
from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import xarray as xr

from sciencevae import BetaVAE, __version__
from sciencevae.adapters.climate import ADAPTER_NAME, ClimateAdapter, _carried_attrs, open_field
from sciencevae.io import atomic_path, atomic_write_text

from .climatology import HarmonicClimatology
from . import climate_components as cc
from .climate_components import PHASE_POINTS, TREND_CUTOFF_YEARS, seasonal_basis
from .climate_knobs import Knobs, assign_roles, decimal_years, find_knobs, year_fraction
from .trend_test import describe, trend_test

__all__ = ["run", "validate", "check_record", "ClimateResult", "synthetic_dataset", "trend_component_slopes",
           "seasonal_basis", "residual_seasonality", "seasonal_change", "training_note", "encode",
           "MIN_RECORD_YEARS",
           "PHASE_POINTS", "TREND_CUTOFF_YEARS", "default_epochs", "MIN_STEPS"]

MIN_RECORD_YEARS = 2.0  # two annual cycles: below this a season cannot be told from a trend
#: Default training length: optimiser steps (:func:`default_epochs`), and at least this many epochs.
MIN_STEPS = 10_000
MIN_EPOCHS = 20


def synthetic_dataset(parts: dict) -> xr.Dataset:
    """Wrap :func:`sciencevae.datasets.monthly_field` output as a CF-style Dataset ``sst``."""
    coords = {
        "time": ("time", parts["time"]),
        "lat": ("lat", parts["lat"], {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", parts["lon"], {"units": "degrees_east", "standard_name": "longitude"}),
    }
    sst = xr.DataArray(parts["field"], dims=("time", "lat", "lon"), coords=coords,
                       attrs={"units": "degC", "long_name": "synthetic sea surface temperature"})
    return xr.Dataset({"sst": sst}, attrs={"title": "sciencevae synthetic monthly field"})


@dataclass
class ClimateResult:
    """Everything a run found; ``save`` writes it as netCDF, JSON and PNG."""

    model: BetaVAE
    adapter: ClimateAdapter
    data: xr.Dataset
    latents: xr.Dataset
    latent_roles: pd.DataFrame
    knobs: Knobs
    components: xr.Dataset
    maps: xr.Dataset
    settings: dict
    climatology: HarmonicClimatology
    mean_cycle: HarmonicClimatology
    seconds: dict = field(default_factory=dict)  # wall seconds of each phase of run()

    @property
    def time(self) -> xr.DataArray:
        return self.latents[self.adapter.sample_dim]

    @property
    def roles(self) -> pd.DataFrame:
        """One row per knob: role, seasonal_r2, trend_r2, slope_per_decade, main latent."""
        return self.knobs.table

    def knobs_of(self, role: str) -> list[int]:
        return self.knobs.of(role)

    def _positions(self, label) -> np.ndarray:
        """Positions on the time axis that ``label`` (a time label or slice for ``.sel``) selects; a label
        that selects none is refused in one line naming the record's span."""
        dim = self.adapter.sample_dim
        index = xr.DataArray(np.arange(len(self.time)), dims=dim, coords={dim: self.time})
        try:
            chosen = np.atleast_1d(index.sel({dim: label}).values)
        except (KeyError, TypeError, ValueError):
            chosen = np.zeros(0, dtype=int)
        if not chosen.size:
            first, last = (_date_text(self.time.values[i]) for i in (0, -1))
            raise ValueError(f"{label!r} selects no time of the record ({first} to {last}); give a date label within "
                             f"it such as '{first[:4]}' or '{first[:7]}', or a slice such as slice('{first[:4]}', "
                             f"'{last[:4]}')") from None
        return chosen

    def _trend_level(self, trend_from) -> np.ndarray:
        """Mean score of the trend knobs over ``trend_from`` (a time label or slice for ``.sel``)."""
        trend = self.knobs_of("trend")
        if not trend:
            raise ValueError("no knob has the role 'trend' (no trend is detectable); there is no warming level "
                             "to set")
        return self.latents["knob"].values[self._positions(trend_from)].mean(0)[trend]

    def counterfactual(self, trend_from, at=None) -> xr.Dataset:
        """The field with the trend held at the level of ``trend_from``.

        ``trend_from``: a time label or slice understood by ``.sel`` on the
        time axis (e.g. ``"1955"`` or ``slice("1950", "1959")``). ``at`` selects
        the output times (default: all). Everything else — the calendar, other
        modes, residual — stays as it was: result = input − trend component +
        its mean over ``trend_from``, plus how the decoder's seasonal cycle
        (about its annual mean) changes when the trend knobs move to their mean
        over ``trend_from`` (only where the data supported a change of the
        seasons: ``settings["seasonal_change_series"]`` > 0). So the
        annual-mean change is the trend component's (the figures and slopes
        agree with it) and, where the model learnt that the seasons depend on
        the trend, the cycle changes with it. E.g.
        ``res.counterfactual("1955", at="2005")`` is 2005 with 1955's trend.
        """
        trend = self.knobs_of("trend")
        level = self._trend_level(trend_from)
        held_at = self._positions(trend_from)
        if at is not None:
            self._positions(at)  # refused in one line when it selects no time
        dim = self.adapter.sample_dim
        z = self.latents["z"].values
        shift = (level - self.latents["knob"].values[:, trend]) @ self.knobs.directions[trend]
        basis = cc.seasonal_basis(self.time)
        changes = bool(self.settings.get("seasonal_change_series", 1))  # the decoder's, where the data supported it

        def cycle_change(start: int, stop: int) -> np.ndarray:
            if not changes:
                return np.zeros((stop - start, self.model.config.n_features), np.float32)
            moved, code, cov = z[start:stop] + shift[start:stop], z[start:stop], basis[start:stop]
            return ((self.model.decode(moved, cov) - cc.annual_means(self.model, moved))
                    - (self.model.decode(code, cov) - cc.annual_means(self.model, code)))

        delta = cc.lazy_field(self.adapter, cycle_change, self.time, "anomaly")
        field = self.data[self.adapter.variables].copy()
        for var in self.adapter.variables:
            trend_part = self.components["trend" if len(self.adapter.variables) == 1 else f"{var}_trend"]
            held = trend_part.isel({dim: held_at}).mean(dim)
            field[var] = self.data[var] + (held - trend_part + delta[var]).transpose(*self.data[var].dims)
            field[var].attrs = _carried_attrs(self.data[var].attrs, "original")  # none of its ranges
        return field if at is None else field.sel({dim: at})

    def seasonal_cycle(self, trend_from=None) -> xr.Dataset:
        """The model's climatological seasonal cycle, (month, grid) in the data's units, at the trend level
        of ``trend_from`` (default: the record's mean level) with every other knob at its mean.

        Each month is the cycle at the phase the record's own values of that month have
        (:func:`.climate_components.month_phases`: the 1st for monthly means stamped on the 1st).
        The cycle of one period at the warming level of another is ``seasonal_cycle(later)``;
        ``seasonal_cycle(later) - seasonal_cycle(earlier)`` is how the model says the seasons change as it
        warms. Raises ``ValueError`` when a level is asked
        for and no trend is detectable.
        """
        code = self.knobs.center
        if trend_from is not None:
            code = self.knobs.codes(self.latents["z"].values[:1], self.knobs_of("trend"),
                                    self._trend_level(trend_from)[None])[0]
        phases = cc.month_phases(self.time)
        cycle = self.mean_cycle.cycle(phases) + cc.cycles(self.model, code[None], phases)[0]
        month = xr.DataArray(np.arange(1, 13), dims="month", name="month", attrs={"long_name": "month of the year"})
        return self.adapter.to_field(cycle, month, dim="month", units="original")

    def save(self, path: str | Path, extra_tables: dict[str, pd.DataFrame] | None = None) -> Path:
        """Write latents.nc, components.nc, maps.nc, report.json, figures/*.png, model/, adapter.nc
        and report.html (with ``extra_tables``, e.g. a comparison with a known truth). The components are
        computed and written chunk by chunk of time (:func:`.climate_components.chunk_by_chunk`)."""
        with cc.chunk_by_chunk():
            return self._write(Path(path), extra_tables)

    def _write(self, out: Path, extra_tables: dict[str, pd.DataFrame] | None) -> Path:
        from .climate_figures import save_figures
        from .report import write_report

        out.mkdir(parents=True, exist_ok=True)
        self.model.save(out / "model")
        self.adapter.save(out / ADAPTER_NAME)
        provenance = _provenance(out, self.settings)
        climatology = cc.climatology_dataset(self.adapter, self.climatology)
        for name, ds in (("latents", self.latents), ("components", self.components), ("maps", self.maps),
                         ("climatology", climatology)):
            with atomic_path(out / f"{name}.nc") as tmp:
                ds.assign_attrs(provenance).to_netcdf(tmp)
        report = {"sciencevae_version": __version__, "settings": self.settings,
                  "latents": self.latent_roles.reset_index().rename(columns={"latent": "index"}).to_dict("records"),
                  "knobs": [{**row, "direction": self.knobs.directions[row["knob"]].tolist()}
                            for row in self.roles.reset_index().to_dict("records")],
                  "trend_component_slope_per_decade": trend_component_slopes(self),
                  "residual_seasonality": residual_seasonality(self), "seasonal_change": seasonal_change(self)}
        atomic_write_text(json.dumps(report, indent=2, default=float), out / "report.json")
        save_figures(self, out / "figures")
        trends = report["trend_component_slope_per_decade"]
        slopes = pd.DataFrame([{"variable": v, "units": f"{self.data[v].attrs.get('units', '')} per decade",
                                **{k: x for k, x in d.items() if k != "summary"}} for v, d in trends.items()])
        knob_units = {"slope_per_decade": "slope (knob s.d. per decade)"}
        tables = {"Knobs and their roles": self.roles.reset_index().rename(columns=knob_units),
                  "Latents (posterior KL in nats, roles of the raw latents)":
                      self.latent_roles.reset_index().rename(columns={"slope_per_decade": "slope (latent units per "
                                                                                           "decade)"}),
                  "Trend: Theil–Sen slopes of annual area-weighted means, 95% intervals": slopes,
                  **(extra_tables or {})}
        write_report(out, "sciencevae climate run", self.settings, tables,
                     notes=[*(f"Trend of {v}: {d['summary']}." for v, d in trends.items()),
                            *(f"Seasonal cycle left in the residual: {d['summary']}."
                              for d in report["residual_seasonality"].values()),
                            f"Seasons and knobs: {report['seasonal_change']['summary']}.",
                            *([f"Training: {training_note(self)}."] if training_note(self) else [])])
        return out


def encode(run_dir: str | Path, data, return_std: bool = False) -> xr.DataArray | tuple[xr.DataArray, xr.DataArray]:
    """Posterior means ``z(time, latent)`` of a field under a saved run (``run_dir`` written by
    :meth:`ClimateResult.save`), with its time coordinate — with ``return_std`` also ``z_std``. Uses the
    run's model, adapter and climatology, with the phase of the year as covariates. ``data`` as for
    :func:`run`; it must have the run's variables and grid (else ``ValueError``, one line)."""
    import sciencevae

    run_dir = Path(run_dir)
    adapter = ClimateAdapter.load(run_dir / ADAPTER_NAME)
    with xr.open_dataset(run_dir / "climatology.nc") as ds:
        climatology = cc.climatology_from(adapter, ds.load())
    model = sciencevae.load(run_dir / "model")
    ds = open_field(data, adapter.variables[0] if len(adapter.variables) == 1 else None)
    _check_dates(ds[adapter.sample_dim])
    ds = adapter.open_checked(ds)
    time = ds[adapter.sample_dim]
    rows = cc.AnomalyRows(adapter, ds, climatology, year_fraction(time))
    mean, std = model.encode(cc.model_input(adapter, rows, time), return_std=True)
    coords = {adapter.sample_dim: time, "latent": np.arange(mean.shape[1])}
    z = xr.DataArray(mean, dims=(adapter.sample_dim, "latent"), coords=coords, name="z",
                     attrs={"long_name": "posterior mean of each latent", "units": "1"})
    if not return_std:
        return z
    return z, xr.DataArray(std, dims=z.dims, coords=coords, name="z_std",
                           attrs={"long_name": "posterior standard deviation of each latent", "units": "1"})


def _provenance(out: Path, settings: dict) -> dict:
    """Global attributes of every written netCDF: what made it, with which settings, from which input
    (``run.json`` in the run folder, when the command line wrote one)."""
    attrs = {"Conventions": "CF-1.8", "source": "sciencevae climate_trend", "sciencevae_version": __version__,
             "settings": json.dumps(settings, default=str)}
    if (out / "run.json").exists():
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        attrs["input"] = json.dumps(run.get("inputs", []))
    return attrs


def _area_mean(ds: xr.Dataset, weights: xr.Dataset) -> xr.Dataset:
    dims = [d for d in weights.dims]
    return xr.Dataset({v: ds[v].weighted(weights[v].fillna(0)).mean(dims) for v in ds.data_vars if v in weights})


def trend_component_slopes(res: ClimateResult) -> dict:
    """Per variable: the trend of the area-weighted mean of the trend component and of the input.

    Slopes are Theil–Sen slopes of annual means per decade (:func:`.trend_test.trend_test`). The
    input's has a 95% interval and an autocorrelation-corrected Mann–Kendall p-value; the trend
    component's interval is the trend knob's, scaled by the component's response to the knob. With
    no detectable trend (no trend knob) the component is 0 and ``trend_detectable`` is False.
    ``summary`` says it in plain words.
    """
    with cc.chunk_by_chunk():
        return _trend_component_slopes(res)


def _trend_component_slopes(res: ClimateResult) -> dict:
    years = decimal_years(res.time)
    weights = res.adapter.grid_weights()
    trend = res.knobs_of("trend")
    knob = trend_test(res.latents["knob"].values[:, trend[0]], years) if trend else None
    out = {}
    for i, var in enumerate(res.adapter.variables):
        comp = res.components["trend" if len(res.adapter.variables) == 1 else f"{var}_trend"]
        component = trend_test(_area_mean(xr.Dataset({var: comp}), weights)[var].values, years).slope_per_decade
        observed = trend_test(_area_mean(res.data[[var]], weights)[var].values, years)
        scale = component / knob.slope_per_decade if knob is not None and knob.slope_per_decade else 0.0
        low, high = sorted(((knob.low_per_decade * scale, knob.high_per_decade * scale) if knob is not None
                            else (component, component)))
        units = res.data[var].attrs.get("units", "")
        found = (f"the trend component of {var} changes by {component:+.3f} {units} per decade (95% interval "
                 f"{low:+.3f} to {high:+.3f})" if knob is not None else
                 f"no trend is detectable in the knobs, so the trend component of {var} is 0")
        found += _shrinkage_words(res, i) if knob is not None else ""
        out[var] = {"trend_component": component, "trend_component_low": low, "trend_component_high": high,
                    "trend_detectable": knob is not None,
                    "observed_area_mean": observed.slope_per_decade, "observed_low": observed.low_per_decade,
                    "observed_high": observed.high_per_decade, "observed_p": observed.p_value,
                    "observed_detectable": observed.detectable,
                    "summary": f"{found}; {describe(observed, 'the area-weighted mean of the input', units)}"}
    return out


def _shrinkage_words(res: ClimateResult, variable: int) -> str:
    """A clause on how far variable ``variable``'s per-cell trend amplitudes were shrunk toward their area
    mean (``settings["trend_shrinkage"]``; :func:`.climate_components.shrunk_trend`), where it is by 5% or more."""
    factors = res.settings.get("trend_shrinkage") or []
    factor = min(factors[variable], default=1.0) if variable < len(factors) else 1.0
    if factor >= 0.95:
        return ""
    return (f" (per-cell amplitudes shrunk {100 * (1 - factor):.0f}% toward the area mean: that share of their spread "
            "differs between even and odd years, so it is noise)")


def residual_seasonality(res: ClimateResult) -> dict:
    """Per variable: how much seasonal cycle the residual still holds.

    The rms over months and grid cells (area-weighted) of the residual's monthly climatology (its
    mean per calendar month, minus the mean over months), next to the same for the input, and their
    ratio ``share`` (0: the seasonal component took the whole cycle). ``summary`` says it in words.
    """
    with cc.chunk_by_chunk():
        return _residual_seasonality(res)


def _residual_seasonality(res: ClimateResult) -> dict:
    weights = res.adapter.grid_weights()
    out = {}
    for var in res.adapter.variables:
        name = "residual" if len(res.adapter.variables) == 1 else f"{var}_residual"
        w = weights[var].fillna(0)
        rms = {}
        for key, da in (("residual", res.components[name]), ("input", res.data[var])):
            climatology = cc.monthly_climatology(da, res.adapter.sample_dim)
            anomaly = climatology - climatology.mean("month")
            rms[key] = float(np.sqrt((anomaly**2).weighted(w).mean([*w.dims, "month"])))
        share = rms["residual"] / rms["input"] if rms["input"] > 0 else 0.0
        units = res.data[var].attrs.get("units", "")
        out[var] = {"residual_rms": rms["residual"], "input_rms": rms["input"], "share": share,
                    "summary": f"the residual of {var} keeps {100 * share:.1f}% of the seasonal cycle (rms of the "
                               f"monthly climatology {rms['residual']:.3g} against the input's {rms['input']:.3g} "
                               f"{units})"}
    return out


def seasonal_change(res: ClimateResult) -> dict:
    """Whether the seasonal component holds the decoder's change of the seasonal cycle as the knobs move:
    ``series``, how many principal series of that change predicted held-out years
    (:func:`.climate_components.decompose`), and ``summary`` in words."""
    n = int(res.settings.get("seasonal_change_series", 0))
    summary = (f"the seasonal cycle changes as the knobs move ({n} series of the decoder's change predict held-out "
               "years), and the seasonal component holds that change" if n else
               "the decoder's change of the seasonal cycle does not predict held-out years, so the seasonal "
               "component is the record's harmonic climatology (seasonal_cycle() and the amplitude-change maps "
               "still show the decoder's)")
    return {"series": n, "summary": summary}


def training_note(res: ClimateResult) -> str | None:
    """A plain-words warning when the model took fewer optimiser steps than the default epochs give
    (:data:`MIN_STEPS`): a short training can miss or damp the trend and leave modes mixed. None otherwise."""
    steps = res.settings.get("optimiser_steps")
    if steps is None or steps >= MIN_STEPS:
        return None
    epochs = res.settings["epochs"]
    return (f"the model took {steps:,} optimiser steps ({epochs} epoch{'' if epochs == 1 else 's'}), fewer than the "
            f"{MIN_STEPS:,} of the default epochs: a trend can be missed or damped and modes left mixed; rerun "
            "without --epochs (epochs=None) for the default")


def _date_text(value) -> str:
    """A date as YYYY-MM-DD, for datetime64 and cftime alike."""
    if isinstance(value, cftime.datetime):
        return value.strftime("%Y-%m-%d")
    return str(np.datetime_as_string(np.datetime64(value, "D")))


def _check_dates(time: xr.DataArray) -> None:
    """Refuse a sample coordinate that does not hold dates (numbers without CF units, strings)."""
    values = np.asarray(time.values).ravel()
    if np.issubdtype(values.dtype, np.datetime64):
        return
    if values.dtype == object and values.size and all(isinstance(v, cftime.datetime) for v in values):
        return
    if np.issubdtype(values.dtype, np.number):
        kind, fix = f"{values.dtype} numbers", (f"give {time.name!r} CF time units such as 'days since 1960-01-01' "
                                                "(attrs['units'], or on a copy of the file)")
    else:
        kind, fix = f"{values.dtype} values", "convert them to dates, e.g. with pd.to_datetime or cftime"
    raise ValueError(f"the sample dimension {time.name!r} holds {kind}, not dates; the climate case study needs "
                     f"dates for its seasonal and trend roles: {fix}")


#: The coarsest sampling that resolves an annual + semi-annual cycle: monthly (with some slack for
#: 31-day months and gaps).
MAX_STEP_YEARS = 35 / 365.25


def check_record(time: xr.DataArray) -> None:
    """Refuse a time coordinate that is not dates, spans less than ``MIN_RECORD_YEARS`` (two annual
    cycles) or is sampled more coarsely than monthly (``MAX_STEP_YEARS``).

    The span counts one step past the last date (24 monthly steps span 2 years).

    >>> import pandas as pd, xarray as xr
    >>> check_record(xr.DataArray(pd.date_range("2000-01-01", periods=10, freq="MS"), dims="time", name="time"))
    Traceback (most recent call last):
    ...
    ValueError: the record spans 10 months (0.83 years, 2000-01-01 to 2000-10-01); telling the seasonal cycle \
from a trend needs at least 2 years (24 monthly steps): give a longer record
    """
    _check_dates(time)
    years = decimal_years(time)
    step = float(np.median(np.diff(years))) if len(years) > 1 else 0.0
    span = float(years[-1] - years[0]) + step if len(years) else 0.0
    if span < MIN_RECORD_YEARS - 0.01:
        values = np.asarray(time.values).ravel()
        where = f", {_date_text(values[0])} to {_date_text(values[-1])}" if len(values) else ""
        raise ValueError(f"the record spans {round(span * 12)} months ({span:.2f} years{where}); telling the "
                         f"seasonal cycle from a trend needs at least {MIN_RECORD_YEARS:g} years "
                         f"({round(MIN_RECORD_YEARS * 12)} monthly steps): give a longer record")
    if step > MAX_STEP_YEARS:
        raise ValueError(f"the time steps are {step * 365.25:.0f} days apart; a seasonal cycle needs at least "
                         "monthly samples (annual or seasonal means hold none): give monthly or daily data")


def validate(data, var=None) -> tuple[xr.Dataset, ClimateAdapter]:
    """Open ``data`` and check everything the case study needs before anything is trained or written.

    Returns the (lazily) opened Dataset and the fitted adapter; raises
    ``ValueError`` with one line naming the problem and the fix (the
    adapter's checks, dates on the sample dimension, a record of at least two years).
    """
    ds = open_field(data, var)
    adapter = ClimateAdapter.from_data(ds, var)
    check_record(ds[adapter.sample_dim])
    return ds, adapter


def default_epochs(n_samples: int, batch_size: int) -> int:
    """Epochs for ``MIN_STEPS`` optimiser steps (at least ``MIN_EPOCHS``): a short record has few steps per
    epoch, and a β-VAE trained for too few steps under-estimates the trend (measured on a 15-year noisy
    field: trend component R² 0.70 after 2,400 steps, 0.89 after 10,000).

    >>> default_epochs(720, 32), default_epochs(180, 32), default_epochs(7305, 32)
    (435, 1667, 44)
    """
    steps = max(1, -(-n_samples // batch_size))
    return max(MIN_EPOCHS, -(-MIN_STEPS // steps))


def run(data, var=None, n_latent: int = 8, beta: float = 8.0, epochs: int | None = None, seed: int = 0,
        batch_size: int = 32, lr: float = 1e-3, hidden: tuple[int, ...] = (256, 128), device: str = "auto",
        kl_threshold: float = 0.1, role_threshold: float = 0.5, rotate: bool = True,
        progress: bool = True, checkpoint_dir: str | Path | None = None, checkpoint_every: int = 1,
        resume: bool = False) -> ClimateResult:
    """Fit a Gaussian β-VAE on a monthly field and decompose it.

    ``data``: a DataArray, a Dataset (+ ``var``), or path(s) to netCDF/zarr;
    numeric times with CF units are decoded in any CF calendar, and a field
    without dates or shorter than two years is refused before training
    (:func:`validate`). Returns a :class:`ClimateResult` with ``latents``, ``latent_roles``,
    ``knobs`` / ``roles``, ``components``, ``maps`` and ``counterfactual``.
    ``rotate=False`` makes every active latent a knob. ``epochs`` defaults to
    :func:`default_epochs` (10,000 optimiser steps). ``checkpoint_dir``,
    ``checkpoint_every`` and ``resume`` are passed to ``BetaVAE.fit``.
    """
    started = clock.perf_counter()
    seconds = {}

    def lap(phase: str) -> None:
        seconds[phase] = clock.perf_counter() - started - sum(seconds.values())

    ds, adapter = validate(data, var)
    ds = ds[adapter.variables]
    time = ds[adapter.sample_dim]
    phase = year_fraction(time)
    lap("check")
    climatology, rows = cc.model_rows(adapter, ds, time)
    streamed = cc.model_input(adapter, rows, time)
    lap("climatology")
    model = BetaVAE(adapter.n_features, n_latent=n_latent, beta=beta, hidden=hidden, seed=seed,
                    n_covariates=streamed.n_covariates)
    epochs = default_epochs(len(time), batch_size) if epochs is None else epochs
    model.fit(streamed, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
              validation=0.0, progress=progress, checkpoint_dir=checkpoint_dir,
              checkpoint_every=checkpoint_every, resume=resume)
    lap("train")
    z, z_std = model.encode(streamed, return_std=True)
    kl = model.kl_per_latent(streamed)
    lap("encode")
    years = decimal_years(time)
    latent_roles = assign_roles(z, phase, years, kl, kl_threshold, role_threshold)
    knobs = find_knobs(z, kl, phase, years, rotate, kl_threshold, role_threshold)
    with cc.chunk_by_chunk():
        parts = cc.decompose(model, climatology, z, knobs, time, rows, cc.cell_scales(adapter))
        components = cc.components(adapter, ds, parts, time)
    lap("decompose")
    sample = adapter.sample_dim
    latents = xr.Dataset(
        {"z": ((sample, "latent"), z, {"long_name": "posterior mean of each latent", "units": "1"}),
         "z_std": ((sample, "latent"), z_std, {"long_name": "posterior standard deviation of each latent",
                                               "units": "1"}),
         "knob": ((sample, "knob_index"), knobs.scores(z), {"long_name": "knob score (unit variance over time)",
                                                            "units": "1"}),
         "direction": (("knob_index", "latent"), knobs.directions,
                       {"long_name": "latent-space direction a knob moves along", "units": "1"})},
        coords={sample: time, "latent": np.arange(n_latent), "knob_index": np.arange(len(knobs.table)),
                "latent_role": ("latent", latent_roles["role"].to_numpy().astype(str), {"long_name": "role of the latent"}),
                "kl": ("latent", kl, {"long_name": "KL divergence of the posterior from the prior", "units": "nats"}),
                "role": ("knob_index", knobs.table["role"].to_numpy().astype(str), {"long_name": "role of the knob"})},
        attrs={"roles": json.dumps(knobs.table["role"].to_dict()),
               "latent_roles": json.dumps(latent_roles["role"].to_dict()), "sciencevae_version": __version__},
    )
    settings = dict(variables=adapter.variables, n_latent=n_latent, beta=beta, epochs=epochs, seed=seed,
                    batch_size=batch_size, lr=lr, hidden=list(hidden), kl_threshold=kl_threshold,
                    role_threshold=role_threshold, rotate=rotate, climatology_harmonics=climatology.n_harmonics,
                    seasonal_covariates="annual and semi-annual harmonics of the day of the year",
                    trend_cutoff_years=cc.TREND_CUTOFF_YEARS, seasonal_change_series=parts.seasonal_changes,
                    trend_shrinkage=parts.trend_shrinkage.round(4).tolist(),
                    optimiser_steps=epochs * -(-len(time) // batch_size))
    with cc.chunk_by_chunk():
        maps = cc.maps(model, adapter, parts.mean_cycle, knobs, time).merge(
            cc.trend_maps(components, adapter, knobs, time))
    lap("maps")
    return ClimateResult(
        model=model, adapter=adapter, data=ds, latents=latents, latent_roles=latent_roles, knobs=knobs,
        components=components, maps=maps, settings=settings, climatology=climatology,
        mean_cycle=parts.mean_cycle, seconds=seconds,
    )
