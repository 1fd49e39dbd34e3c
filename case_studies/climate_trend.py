"""Climate case study: separate the seasonal cycle, the long-term trend and
other modes of a raw monthly field with a Gaussian β-VAE.

Every latent gets a role from its time series (``latent_roles``):

- ``seasonal``: annual + semi-annual harmonics of the month explain most of it
  (R² ≥ ``role_threshold``); the cycle usually takes two latents, a phase circle;
- ``trend``: a smooth curve of time (cubic polynomial) explains most of it
  and its trend is detectable (:mod:`.trend_test`: Theil–Sen slope per decade
  with an autocorrelation-corrected interval and Mann–Kendall p-value);
- ``other``: active but neither (e.g. an ENSO-like mode);
- ``inactive``: KL below ``kl_threshold`` nats.

The knobs a user turns (``roles``, ``knobs``) are the active latents
themselves with ``rotate=False``, or by default their rotation into seasonal,
trend and other directions (:mod:`.climate_knobs`), which separates weak modes
that the β-VAE left mixed (on COBE-SST2 the trend).

Components on the grid, in the data's units: ``seasonal`` = decode with only
the seasonal latents varying (the rest at their mean) minus the all-mean
decode, centred to zero time mean; ``trend`` likewise; ``mean_state`` = the
all-mean decode plus those two time means; ``residual`` = input − mean state
− seasonal − trend (other modes and noise). :meth:`ClimateResult.counterfactual` sets the trend latents to another
period's level while the seasons keep moving.

>>> import xarray as xr
>>> from sciencevae.datasets import monthly_field
>>> field = synthetic_dataset(monthly_field(n_years=4, n_lat=6, n_lon=8))
>>> res = run(field, var="sst", n_latent=3, epochs=2, progress=False)
>>> sorted(res.components.data_vars)
['mean_state', 'residual', 'seasonal', 'trend']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import xarray as xr

from sciencevae import BetaVAE, __version__
from sciencevae.adapters.climate import ADAPTER_NAME, ClimateAdapter, open_field
from sciencevae.io import atomic_path, atomic_write_text

from .climate_knobs import Knobs, assign_roles, decimal_years, find_knobs
from .trend_test import describe, trend_test

__all__ = ["run", "validate", "check_record", "ClimateResult", "synthetic_dataset", "trend_component_slopes",
           "MIN_RECORD_YEARS"]

MIN_RECORD_YEARS = 2.0  # two annual cycles: below this a season cannot be told from a trend


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

    @property
    def time(self) -> xr.DataArray:
        return self.latents[self.adapter.sample_dim]

    @property
    def roles(self) -> pd.DataFrame:
        """One row per knob: role, seasonal_r2, trend_r2, slope_per_decade, main latent."""
        return self.knobs.table

    def knobs_of(self, role: str) -> list[int]:
        return self.knobs.of(role)

    def counterfactual(self, trend_from, at=None) -> xr.Dataset:
        """The field with the trend latents held at the level of ``trend_from``.

        ``trend_from``: a time label or slice understood by ``.sel`` on the
        time axis (e.g. ``"1955"`` or ``slice("1950", "1959")``); the trend
        latents take their mean over it. ``at`` selects the output times
        (default: all). Everything else — seasons, other modes, residual —
        stays as it was: result = input − trend + trend(level of trend_from).
        E.g. ``res.counterfactual("1955", at="2005")`` is 2005 with 1955's trend.
        """
        trend = self.knobs_of("trend")
        if not trend:
            raise ValueError("no knob has the role 'trend'; nothing to hold fixed")
        knob = self.latents["knob"]
        level = knob.sel({self.adapter.sample_dim: trend_from}).mean(self.adapter.sample_dim).values[trend]
        z = self.latents["z"].values
        shift = (level - knob.values[:, trend]) @ self.knobs.directions[trend]
        original, changed = self.model.decode(z), self.model.decode(z + shift)
        delta = self.adapter.to_field(changed - original, self.time, units="anomaly")
        field = self.data[self.adapter.variables] + delta
        return field if at is None else field.sel({self.adapter.sample_dim: at})

    def save(self, path: str | Path, extra_tables: dict[str, pd.DataFrame] | None = None) -> Path:
        """Write latents.nc, components.nc, maps.nc, report.json, figures/*.png, model/, adapter.nc
        and report.html (with ``extra_tables``, e.g. a comparison with a known truth)."""
        from .climate_figures import save_figures
        from .report import write_report

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save(out / "model")
        self.adapter.save(out / ADAPTER_NAME)
        provenance = _provenance(out, self.settings)
        for name, ds in (("latents", self.latents), ("components", self.components), ("maps", self.maps)):
            with atomic_path(out / f"{name}.nc") as tmp:
                ds.assign_attrs(provenance).to_netcdf(tmp)
        report = {"sciencevae_version": __version__, "settings": self.settings,
                  "latents": self.latent_roles.reset_index().rename(columns={"latent": "index"}).to_dict("records"),
                  "knobs": [{**row, "direction": self.knobs.directions[row["knob"]].tolist()}
                            for row in self.roles.reset_index().to_dict("records")],
                  "trend_component_slope_per_decade": trend_component_slopes(self)}
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
                     notes=[f"Trend of {v}: {d['summary']}." for v, d in trends.items()])
        return out


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
    years = decimal_years(res.time)
    weights = res.adapter.grid_weights()
    trend = res.knobs_of("trend")
    knob = trend_test(res.latents["knob"].values[:, trend[0]], years) if trend else None
    out = {}
    for var in res.adapter.variables:
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
        out[var] = {"trend_component": component, "trend_component_low": low, "trend_component_high": high,
                    "trend_detectable": knob is not None,
                    "observed_area_mean": observed.slope_per_decade, "observed_low": observed.low_per_decade,
                    "observed_high": observed.high_per_decade, "observed_p": observed.p_value,
                    "observed_detectable": observed.detectable,
                    "summary": f"{found}; {describe(observed, 'the area-weighted mean of the input', units)}"}
    return out


def _components(model: BetaVAE, adapter: ClimateAdapter, data: xr.Dataset, z: np.ndarray,
                knobs: Knobs, time: xr.DataArray) -> xr.Dataset:
    base = model.decode(knobs.center[None])
    state = base[0].copy()
    parts = {}
    for role in ("seasonal", "trend"):
        response = model.decode(knobs.codes(z, knobs.of(role))) - base
        state += response.mean(0)  # components have zero time mean; their means join the mean state
        parts[role] = adapter.to_field(response - response.mean(0), time, units="anomaly")
    mean_state = adapter.to_field(state[None], None, dim="_state", units="original").isel(_state=0, drop=True)
    out = {}
    single = len(adapter.variables) == 1
    for var in adapter.variables:
        residual = data[var] - mean_state[var] - parts["seasonal"][var] - parts["trend"][var]
        named = {"mean_state": mean_state[var], "seasonal": parts["seasonal"][var],
                 "trend": parts["trend"][var], "residual": residual}
        for name, da in named.items():
            dims = [d for d in data[var].dims if d in da.dims]
            da = da.transpose(*dims).copy(deep=False)
            da.attrs = _component_attrs(name, var, data[var].attrs)  # replaced: none of the input's ranges
            out[name if single else f"{var}_{name}"] = da
    return xr.Dataset(out, attrs={"source": "sciencevae climate_trend", "sciencevae_version": __version__})


_COMPONENT_MEANINGS = {
    "mean_state": ("mean state of {}", "time: mean"),
    "seasonal": ("seasonal component of {} (anomaly from the mean state)", None),
    "trend": ("trend component of {} (anomaly from the mean state)", None),
    "residual": ("residual of {}: input minus mean state, seasonal and trend components", None),
}


def _component_attrs(name: str, var: str, source: dict) -> dict:
    """CF attributes of a component: what it holds, the input's units, cell_methods where they apply."""
    meaning, cell_methods = _COMPONENT_MEANINGS[name]
    attrs = {"long_name": meaning.format(source.get("long_name", var))}
    if "units" in source:
        attrs["units"] = source["units"]
    if cell_methods:
        attrs["cell_methods"] = cell_methods
    return attrs


def _maps(model: BetaVAE, adapter: ClimateAdapter, knobs: Knobs) -> xr.Dataset:
    """Decoder sensitivity per knob: (decode(c + d_k) - decode(c - d_k)) / 2 at the mean code c."""
    steps = knobs.directions
    response = (model.decode(knobs.center + steps) - model.decode(knobs.center - steps)) / 2
    maps = adapter.to_field(response, xr.DataArray(np.arange(len(steps)), dims="knob", name="knob"),
                            dim="knob", units="anomaly")
    maps = maps.assign_coords(role=("knob", knobs.table["role"].to_numpy().astype(str)))
    for var in maps.data_vars:
        name = adapter.states[adapter.variables.index(var)].grid.attrs.get("long_name", var)
        maps[var].attrs = {"long_name": f"change of {name} per knob standard deviation (decoder response at the "
                                        "mean latent code)", **{k: v for k, v in maps[var].attrs.items() if k == "units"}}
    maps["role"].attrs["long_name"] = "role of the knob"
    return maps


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


def run(data, var=None, n_latent: int = 8, beta: float = 8.0, epochs: int = 400, seed: int = 0,
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
    ``rotate=False`` makes every active latent a knob. ``checkpoint_dir``,
    ``checkpoint_every`` and ``resume`` are passed to ``BetaVAE.fit``.
    """
    ds, adapter = validate(data, var)
    ds = ds[adapter.variables].load()
    prepared = adapter.prepare(ds)
    model = BetaVAE(prepared.n_features, n_latent=n_latent, beta=beta, hidden=hidden, seed=seed)
    model.fit(prepared, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
              validation=0.0, progress=progress, checkpoint_dir=checkpoint_dir,
              checkpoint_every=checkpoint_every, resume=resume)
    z, z_std = model.encode(prepared, return_std=True)
    kl = model.kl_per_latent(prepared)
    time = ds[adapter.sample_dim]
    month, years = time.dt.month.values, decimal_years(time)
    latent_roles = assign_roles(z, month, years, kl, kl_threshold, role_threshold)
    knobs = find_knobs(z, kl, month, years, rotate, kl_threshold, role_threshold)
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
                    role_threshold=role_threshold, rotate=rotate)
    return ClimateResult(
        model=model, adapter=adapter, data=ds, latents=latents, latent_roles=latent_roles, knobs=knobs,
        components=_components(model, adapter, ds, z, knobs, time), maps=_maps(model, adapter, knobs),
        settings=settings,
    )
