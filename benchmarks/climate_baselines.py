"""Climate decomposition against two baselines, on the synthetic field with a
known truth (and on COBE-SST2 when ../shared/data is present):

1. monthly climatology + per-cell linear trend (the classic decomposition);
2. area-weighted EOFs of the same standardised field, with the same
   seasonal / trend rotation of the leading PCs as our knobs;
3. sciencevae's climate_trend (β-VAE + knobs).

For the synthetic field: R² of the seasonal and trend components against the
truth (pooled over ocean cells), and seconds. For COBE-SST2: the trend
component's area-weighted global-mean slope next to the observed one.

    python benchmarks/climate_baselines.py --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from sciencevae.adapters.climate import ClimateAdapter, open_field
from sciencevae.case_studies import climate_trend as ct
from sciencevae.case_studies.climate_knobs import decimal_years, find_knobs
from sciencevae.datasets import monthly_field

COBE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "climate" / "cobe_sst2_global_4deg_monthly_1950-2009.nc"


def climatology_and_linear_trend(field: xr.DataArray) -> dict:
    """Per cell: a linear trend in time, then the monthly climatology of what is left."""
    fit = field.polyfit("time", 1, skipna=True)  # datetime coordinates: slope per nanosecond
    trend = xr.polyval(field.time, fit.polyfit_coefficients).where(field.notnull().any("time"))
    trend = trend - trend.mean("time")
    climatology = (field - trend).groupby("time.month").mean()
    seasonal = climatology.sel(month=field.time.dt.month) - climatology.mean("month")
    return {"seasonal": seasonal.drop_vars("month").transpose(*field.dims), "trend": trend.transpose(*field.dims)}


def eof_components(field: xr.DataArray, n_modes: int = 8) -> dict:
    """Area-weighted EOFs of the standardised field; components from the seasonal / trend PCs."""
    adapter = ClimateAdapter.from_data(field)
    prepared = adapter.prepare(field)
    X = np.nan_to_num(prepared.X) * np.sqrt(prepared.feature_weights)
    mean = X.mean(0)
    U, S, Vt = np.linalg.svd(X - mean, full_matrices=False)
    pcs = U[:, :n_modes] * S[:n_modes]
    knobs = find_knobs(pcs, np.ones(n_modes), field.time.dt.month.values, decimal_years(field.time))
    out = {}
    for role in ("seasonal", "trend"):
        chosen = knobs.of(role)
        part = (knobs.codes(pcs, chosen) - knobs.center) @ Vt[:n_modes] / np.sqrt(prepared.feature_weights)
        part = part - part.mean(0)
        out[role] = adapter.to_field(part, field.time, units="anomaly")[field.name]
    return out


def pooled_r2(found: xr.DataArray, expected: np.ndarray, land: np.ndarray) -> float:
    found = found.transpose("time", "lat", "lon").values[:, ~land]
    expected = expected[:, ~land]
    ok = np.isfinite(found)
    return float(1 - np.var(found[ok] - expected[ok]) / np.var(expected[ok]))


def area_slope(component: xr.DataArray) -> float:
    weights = np.cos(np.deg2rad(component.lat)).broadcast_like(component.isel(time=0)).where(
        component.isel(time=0).notnull(), 0)
    series = component.weighted(weights).mean(("lat", "lon"))
    from scipy.stats import theilslopes

    return float(theilslopes(series.values, decimal_years(component.time))[0] * 10)


def methods(epochs: int) -> tuple:
    """(name, field -> components) of the compared methods."""
    return (("climatology + linear trend", climatology_and_linear_trend),
            ("area-weighted EOFs (8) + knob rotation", eof_components),
            ("sciencevae climate_trend", lambda f: ct.run(f, epochs=epochs, progress=False).components))


def synthetic(args) -> None:
    truth = monthly_field(n_years=40, n_lat=18, n_lon=36, seed=0)
    field = ct.synthetic_dataset(truth)["sst"]
    land = truth["land"]
    expected = {"seasonal": truth["seasonal"], "trend": truth["trend"] - truth["trend"].mean(0)}
    print("synthetic field (40 years x 18 x 36), R² of the components against the truth (ocean cells):")
    print("| method | seasonal R² | trend R² | seconds |\n|---|---|---|---|")
    for name, method in methods(args.epochs):
        started = time.perf_counter()
        parts = method(field)
        seconds = time.perf_counter() - started
        r2 = [pooled_r2(parts[c], expected[c], land) for c in ("seasonal", "trend")]
        print(f"| {name} | {r2[0]:.4f} | {r2[1]:.4f} | {seconds:.1f} |")


def cobe(args) -> None:
    if not COBE.exists():
        print(f"\n{COBE} not found: COBE-SST2 comparison skipped")
        return
    field = open_field(COBE)["sst"].load()
    observed = area_slope(field - field.mean("time"))
    print(f"\nCOBE-SST2 1950-2009 (4 deg): area-weighted mean slope of the input {observed:+.4f} degC/decade")
    print("| method | trend component slope (degC/decade) | seconds |\n|---|---|---|")
    for name, method in methods(args.epochs):
        started = time.perf_counter()
        parts = method(field)
        print(f"| {name} | {area_slope(parts['trend']):+.4f} | {time.perf_counter() - started:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    synthetic(args)
    cobe(args)


if __name__ == "__main__":
    main()
