"""Figures of the climate case study (PNG, matplotlib ``Figure`` without pyplot state)."""

from __future__ import annotations

import warnings

from pathlib import Path
from typing import TYPE_CHECKING

import dask
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sciencevae.diagnostics import panel_grid, robust_limit, save_figure

from .climate_knobs import decimal_years
from .trend_test import complete_years

if TYPE_CHECKING:  # pragma: no cover
    from .climate_trend import ClimateResult

__all__ = ["save_figures", "time_axis", "robust_limit", "representative_points"]
ROLE_COLOURS = {"seasonal": "tab:blue", "trend": "tab:red", "other": "tab:green", "inactive": "0.6"}


def time_axis(time: xr.DataArray) -> tuple[np.ndarray, str]:
    """Decimal years to plot against (any CF calendar; matplotlib never sees cftime) and the axis label.

    >>> import xarray as xr
    >>> time = xr.DataArray(xr.date_range("2000-01-01", periods=2, freq="MS", calendar="noleap", use_cftime=True),
    ...                     dims="time", name="time")
    >>> time_axis(time)[1]
    'time (decimal years, noleap calendar)'
    """
    first = np.asarray(time.values).ravel()[0]
    calendar = getattr(first, "calendar", None) or time.encoding.get("calendar") or "standard"
    return decimal_years(time), f"{time.name} (decimal years, {calendar} calendar)"


def _series(time: xr.DataArray, values: np.ndarray, table, label: str) -> Figure:
    """One panel per row of ``table``: the column of ``values`` against decimal years."""
    years, xlabel = time_axis(time)
    n = len(table)
    figure = Figure(figsize=(9, 1.3 * max(n, 1) + 1.0))  # + title, axis labels: one panel stays readable
    axes = figure.subplots(max(n, 1), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (j, row) in zip(axes, table.iterrows()):
        ax.plot(years, values[:, j], color=ROLE_COLOURS[row.role], lw=0.8)
        ax.set_ylabel(f"{label}{j}", rotation=0, ha="right")
        kl = f"KL {row.kl:.2f} nats, " if "kl" in row else ""
        ax.set_title(f"{label}{j}: {row.role}  ({kl}seasonal R² {row.seasonal_r2:.2f}, trend R² {row.trend_r2:.2f})",
                     fontsize=8, loc="left")
    axes[-1].set_xlabel(xlabel)
    figure.supylabel(f"{label.strip()} value (posterior mean{', unit variance' if label.startswith('knob') else ''})",
                     fontsize=8)
    figure.tight_layout()
    return figure


def latent_series(res: "ClimateResult") -> Figure:
    """Each latent's time series, coloured and titled by its own role."""
    return _series(res.time, res.latents["z"].values, res.latent_roles, "z")


def knob_series(res: "ClimateResult") -> Figure:
    """Each knob's time series (unit variance), coloured and titled by its role."""
    return _series(res.time, res.latents["knob"].values, res.roles, "knob ")


def _geo_coord(da: xr.DataArray, axis: str) -> str | None:
    """The name of ``da``'s latitude (``axis="lat"``) or longitude coordinate over its own dims, if any."""
    units = ("degrees_north", "degree_north", "degrees_n") if axis == "lat" else ("degrees_east", "degree_east",
                                                                                   "degrees_e")
    names = ("lat", "latitude", "nav_lat") if axis == "lat" else ("lon", "longitude", "nav_lon")
    for name, coord in da.coords.items():
        if coord.ndim and set(coord.dims) <= set(da.dims) and (
                name in names or str(coord.attrs.get("units", "")).lower() in units):
            return str(name)
    return None


def _mesh(da: xr.DataArray) -> tuple[xr.DataArray, np.ndarray, np.ndarray, str, str]:
    """A 2-D grid ready for pcolormesh: latitude up and longitude across when they are known
    (1-D in either dim order, or 2-D curvilinear), else the dims as they are."""
    lat, lon = _geo_coord(da, "lat"), _geo_coord(da, "lon")
    if lat is not None and da[lat].ndim == 1 and da[lat].dims[0] == da.dims[1]:
        da = da.transpose()  # (lon, lat) order: put latitude on the y axis
    if lat is not None and lon is not None:
        x = da[lon].broadcast_like(da).transpose(*da.dims).values
        y = da[lat].broadcast_like(da).transpose(*da.dims).values
        return da, x, y, lon, lat
    y, x = da.dims
    return da, da[x].values, da[y].values, str(x), str(y)


_GEO_LABELS = {"lat": "latitude (°N)", "lon": "longitude (°E)"}


def _plot_grid(ax, da: xr.DataArray, title: str, units: str, cmap: str = "RdBu_r",
               limits: tuple[float, float] | None = None) -> None:
    """A map (or a strip for a 1-D grid) with labelled axes and units; colour limits ``limits``, by
    default robust and symmetric about 0."""
    values = da.values
    if limits is None:
        limit = robust_limit(values)
        limits = (-limit, limit)
    extend = "both" if limits[0] < 0 else "max"
    if da.ndim == 2:
        da, x, y, xlabel, ylabel = _mesh(da)
        image = ax.pcolormesh(x, y, da.values, cmap=cmap, vmin=limits[0], vmax=limits[1], shading="auto")
        lat, lon = _geo_coord(da, "lat"), _geo_coord(da, "lon")
        ax.set_xlabel(_GEO_LABELS["lon"] if xlabel == lon else xlabel)
        ax.set_ylabel(_GEO_LABELS["lat"] if ylabel == lat else ylabel)
    else:
        image = ax.scatter(np.arange(values.size), values.ravel(), c=values.ravel(), cmap=cmap,
                           vmin=limits[0], vmax=limits[1], s=4)
        ax.set_xlabel("grid point")
    ax.figure.colorbar(image, ax=ax, shrink=0.8, extend="neither" if cmap == "twilight" else extend, label=units)
    ax.set_title(title, fontsize=9)


def knob_maps(res: "ClimateResult", var: str) -> Figure | None:
    """Decoder sensitivity map of every knob (None when no latent is active); colour limits at the
    98th percentile of |change| (cells beyond it saturate)."""
    active = [int(j) for j in res.roles.index]
    if not active:
        return None
    units = res.data[var].attrs.get("units", "data units")
    figure, axes = panel_grid(len(active), 5, 3.2, max_columns=3)
    for ax, j in zip(axes, active):
        _plot_grid(ax, res.maps[var].sel(knob=j), f"knob {j} ({res.roles.loc[j, 'role']}): change of {var}",
                   f"{units} per knob s.d.")
    figure.tight_layout()
    return figure


def season_and_trend_maps(res: "ClimateResult", var: str) -> Figure:
    """The seasonal cycle at the mean state (amplitude, month of maximum), how its amplitude changes per
    standard deviation of the trend knob, and the trend per decade with its interval (when detectable)."""
    units = res.data[var].attrs.get("units", "data units")
    maps = res.maps
    panels = [(f"{var}_seasonal_amplitude", "seasonal amplitude (half the peak-to-peak range)", units, "viridis",
               (0.0, robust_limit(maps[f"{var}_seasonal_amplitude"].values))),
              (f"{var}_seasonal_peak_month", "month of the seasonal maximum", "month", "twilight", (1.0, 13.0))]
    if f"{var}_seasonal_amplitude_change" in maps:
        panels.append((f"{var}_seasonal_amplitude_change", "change of the seasonal amplitude per trend knob s.d.",
                       units, "RdBu_r", None))
    if f"{var}_trend_per_decade" in maps:
        ratio = maps[f"{var}_trend_per_decade"].attrs["interval_ratio"]
        panels.append((f"{var}_trend_per_decade", f"trend per decade (95% interval x{ratio[0]:.2f} to "
                                                  f"x{ratio[1]:.2f})", f"{units} per decade", "RdBu_r", None))
    figure, axes = panel_grid(len(panels), 5, 3.2, max_columns=2)
    for ax, (name, title, label, cmap, limits) in zip(axes, panels):
        _plot_grid(ax, maps[name], title, label, cmap, limits)
    figure.tight_layout()
    return figure


def trend_vs_mean(res: "ClimateResult", var: str) -> Figure | None:
    """Trend knob(s) next to the area-weighted annual mean of the input."""
    trend = res.knobs_of("trend")
    if not trend:
        return None
    weights = res.adapter.grid_weights()[var].fillna(0)
    dims = list(weights.dims)
    observed = res.data[var].weighted(weights).mean(dims)
    year = res.time.dt.year
    complete = complete_years(year.values).astype(int)
    keep = np.isin(year.values, complete)
    figure = Figure(figsize=(8, 3.5))
    ax = figure.subplots()
    ax.plot(complete, observed[keep].groupby(year[keep]).mean().values, color="k",
            label="area-weighted annual mean" + ("" if keep.all() else " (complete years)"))
    ax.set_ylabel(f"{var} ({res.data[var].attrs.get('units', '')})")
    twin = ax.twinx()
    for j in trend:
        series = res.latents["knob"].isel(knob_index=j)[keep]
        twin.plot(complete, series.groupby(year[keep]).mean().values, color=ROLE_COLOURS["trend"],
                  label=f"knob {j} (trend)")
    twin.set_ylabel("trend knob (s.d.)")
    ax.set_xlabel(f"{res.time.name} (calendar year)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lines = ax.get_lines() + twin.get_lines()
    twin.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)  # inside, on top: clear of the title
    ax.set_title("trend knob against the area-weighted mean")
    return figure


def representative_points(scores: list[xr.DataArray], sample_mask: xr.DataArray, percentile: float = 95.0) -> list:
    """One grid point per score: the point of the largest connected observed region, one cell away from
    any unobserved cell (the open ocean: a coast, an inland sea or a lake joined by a single cell drops
    out), whose score is nearest the ``percentile`` of the scores there (typical of a strong signal, not
    its most extreme cell). Returns the points as tuples of the grid dims' coordinates."""
    from scipy import ndimage

    valid = np.isfinite(sample_mask.values)
    if valid.ndim == 2 and valid.any():
        inner = ndimage.binary_erosion(valid, structure=np.ones((3, 3)))
        valid = inner if inner.any() else valid
        labels, count = ndimage.label(valid, structure=np.ones((3, 3)))
        sizes = ndimage.sum(valid, labels, index=np.arange(1, count + 1))
        valid = labels == 1 + int(np.argmax(sizes))
    points = []
    for score in scores:
        values = np.where(valid, score.transpose(*sample_mask.dims).values, np.nan)
        target = np.nanpercentile(values, percentile)
        index = np.unravel_index(int(np.nanargmin(np.abs(values - target))), values.shape)
        points.append(tuple(sample_mask[d].values[i] if d in sample_mask.coords else i
                            for d, i in zip(sample_mask.dims, index)))
    return points


def decomposition_points(res: "ClimateResult", var: str, n_points: int = 3) -> Figure:
    """Input, mean + seasonal, trend and residual at representative points of strong seasonal, trend
    and residual signal (:func:`representative_points`)."""
    single = len(res.adapter.variables) == 1
    name = (lambda c: c) if single else (lambda c: f"{var}_{c}")
    seasonal, trend, residual = (res.components[name(c)] for c in ("seasonal", "trend", "residual"))
    mean_state = res.components[name("mean_state")]
    sample = res.adapter.sample_dim
    candidates = [(seasonal.std(sample), "strong seasonal cycle"),
                  (trend.max(sample) - trend.min(sample), "strong trend"), (residual.std(sample), "strong residual")]
    if not res.knobs_of("trend"):  # the trend component is 0 everywhere: no point of strong trend
        del candidates[1]
    candidates = candidates[:n_points]
    with warnings.catch_warnings():  # land: NaN at every time (dask's threads ignore np.errstate)
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = list(dask.compute(*(score for score, _ in candidates)))
    kinds = [kind for _, kind in candidates]
    points = representative_points(scores, mean_state)
    years, xlabel = time_axis(res.time)
    units = res.data[var].attrs.get("units", "")
    where = [dict(zip(mean_state.dims, point)) for point in points]
    index = {d: xr.DataArray([mean_state.indexes[d].get_loc(w[d]) if d in mean_state.indexes else w[d] for w in where],
                             dims="point") for d in mean_state.dims}
    # every point in one read of each field (a dask chunk holds the whole grid)
    series = dask.compute(*(da.isel(index) for da in (res.data[var], seasonal, trend, residual, mean_state)))
    data, seasonal, trend, residual, mean = (np.asarray(da.transpose("point", ...).values) for da in series)
    figure = Figure(figsize=(9, 2.6 * len(points)))
    axes = figure.subplots(len(points), 1, squeeze=False)[:, 0]
    for i, (ax, kind) in enumerate(zip(axes, kinds)):
        ax.plot(years, data[i], color="0.5", lw=0.8, label="input")
        ax.plot(years, mean[i] + seasonal[i], color=ROLE_COLOURS["seasonal"], lw=0.8, label="mean + seasonal")
        ax.plot(years, mean[i] + trend[i], color=ROLE_COLOURS["trend"], label="mean + trend")
        ax.plot(years, residual[i], color=ROLE_COLOURS["other"], lw=0.6, label="residual")
        ax.set_ylabel(f"{var} ({units})" if units else var)
        place = ", ".join(_place(d, v) for d, v in where[i].items())
        ax.set_title(f"{place} ({kind})", fontsize=9, loc="left")
    axes[0].legend(fontsize=7, ncol=4)
    axes[-1].set_xlabel(xlabel)
    figure.tight_layout()
    return figure


def _place(dim: str, value) -> str:
    """A grid coordinate for a title: 46°N, 50°E or 158°W (from 202 or -158) for latitude and longitude,
    else dim=value."""
    if dim in ("lat", "latitude") and isinstance(value, (float, np.floating, int, np.integer)):
        return f"{abs(value):g}°{'N' if value >= 0 else 'S'}"
    if dim in ("lon", "longitude") and isinstance(value, (float, np.floating, int, np.integer)):
        east = (float(value) + 180) % 360 - 180
        return f"{abs(east):g}°{'W' if east < 0 else 'E'}"
    return f"{dim}={value:g}" if isinstance(value, (float, np.floating)) else f"{dim}={value}"


def save_figures(res: "ClimateResult", folder: str | Path) -> list[Path]:
    """Write every figure of a result as PNG into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [save_figure(latent_series(res), folder / "latent_series.png"),
               save_figure(knob_series(res), folder / "knob_series.png")]
    for var in res.adapter.variables:
        suffix = "" if len(res.adapter.variables) == 1 else f"_{var}"
        written.append(save_figure(season_and_trend_maps(res, var), folder / f"season_and_trend_maps{suffix}.png"))
        maps = knob_maps(res, var)
        if maps is not None:
            written.append(save_figure(maps, folder / f"knob_maps{suffix}.png"))
        written.append(save_figure(decomposition_points(res, var), folder / f"decomposition_points{suffix}.png"))
        trend = trend_vs_mean(res, var)
        if trend is not None:
            written.append(save_figure(trend, folder / f"trend_vs_area_mean{suffix}.png"))
    return written
