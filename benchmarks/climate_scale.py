"""The whole ``sciencevae climate`` command on a field larger than it should hold: wall time by phase and
peak host memory, next to xarray + dask doing the simplest decomposition of the same zarr.

Writes a daily 1-degree field (time x 180 x 360, float32, land as NaN) to zarr in time chunks, never whole
in memory: a seasonal cycle whose amplitude grows towards the poles and whose phase follows longitude, a
trend that accelerates and is larger towards the poles, an ENSO-like mode in the tropical Pacific (a
monthly AR(1) index) and noise. Then, each in a fresh process, with its peak resident memory:

- ``sciencevae climate FIELD --out RUN --epochs E --quiet``: its phases from ``run.json`` (``seconds``:
  check — opening and the adapter's statistics —, climatology — the harmonic climatology and the model
  input —, train, encode, decompose, maps, save — components.nc, latents.nc, maps.nc, figures, report);
  and the trend it reports against the field's true area-mean trend;
- the peer, xarray + dask on the same zarr: day-of-year climatology, anomalies, a per-cell linear trend
  (``polyfit``) and the anomalies written to netCDF.

    OMP_NUM_THREADS=2 python benchmarks/climate_scale.py --days 9000 --threads 2       # 2.3 GB field
    OMP_NUM_THREADS=1 python benchmarks/climate_scale.py --days 800 --lat 36 --lon 72  # smoke test, ~1 min

Options: ``--work DIR`` (field and runs; default a temporary folder removed at the end unless ``--keep``),
``--epochs`` (1), ``--no-peer``; further arguments after ``--`` go to ``sciencevae climate``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from cells_scale import CHILD  # the command's entry point in a child, then its peak memory

#: The peer: xarray + dask's day-of-year climatology, anomalies and per-cell linear trend, written out.
CHILD_PEER = """
import json, resource, sys, time
import xarray as xr
t0 = time.perf_counter()
field = xr.open_zarr(sys.argv[1])["sst"]
climatology = field.groupby("time.dayofyear").mean("time")
anomalies = field.groupby("time.dayofyear") - climatology
trend = anomalies.polyfit("time", 1)
anomalies.to_dataset(name="anomaly").to_netcdf(sys.argv[2])
trend.compute()
print(json.dumps({"wall": time.perf_counter() - t0, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
#: True trend of the area-weighted mean, degC per decade at the end of the record (the trend accelerates).
TREND_PER_YEAR = 0.02


def factors(days: np.ndarray, lat: np.ndarray, lon: np.ndarray, rng: np.random.Generator,
            enso: np.ndarray) -> np.ndarray:
    """The field (days, lat, lon) at ``days`` since the start, before land is masked."""
    years = days / 365.25
    sin_lat = np.abs(np.sin(np.deg2rad(lat)))[:, None]
    amplitude = 2 + 8 * sin_lat
    phase = np.deg2rad(lon)[None, :] / 4
    season = amplitude[None] * np.sin(2 * np.pi * years[:, None, None] + phase[None])
    pattern = TREND_PER_YEAR * (0.6 + 0.8 * sin_lat)  # polar amplified
    trend = pattern[None] * (years[:, None, None] + 0.02 * years[:, None, None] ** 2)
    tropics = np.exp(-(lat[:, None] / 12) ** 2) * np.exp(-((lon[None, :] - 220) / 40) ** 2)
    mode = 1.2 * enso[np.minimum((years * 12).astype(int), len(enso) - 1)][:, None, None] * tropics[None]
    noise = rng.normal(scale=0.8, size=season.shape)
    return (20 + season + trend + mode + noise).astype(np.float32)


def land_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """True on 'land': smooth blobs covering about 30% of the grid (fixed seed)."""
    rng = np.random.default_rng(1)
    centres = rng.uniform([-60, 0], [70, 360], size=(12, 2))
    lon2, lat2 = np.meshgrid(lon, lat)
    land = np.zeros(lon2.shape, bool)
    for c_lat, c_lon in centres:
        dlon = np.minimum(np.abs(lon2 - c_lon), 360 - np.abs(lon2 - c_lon))
        land |= (lat2 - c_lat) ** 2 / 18**2 + dlon**2 / 30**2 < 1
    return land


def write_field(path: Path, n_days: int, n_lat: int, n_lon: int, chunk: int = 240) -> tuple[float, float]:
    """Write the zarr field chunk by chunk; returns (seconds, true area-mean trend per decade over the record)."""
    started = time.perf_counter()
    step_lat, step_lon = 180 / n_lat, 360 / n_lon
    lat = np.arange(90 - step_lat / 2, -90, -step_lat)
    lon = np.arange(step_lon / 2, 360, step_lon)
    rng = np.random.default_rng(0)
    months = int(n_days / 365.25 * 12) + 2
    enso = np.zeros(months)
    for m in range(1, months):
        enso[m] = 0.9 * enso[m - 1] + np.sqrt(1 - 0.81) * rng.normal()
    land = land_mask(lat, lon)
    partial = path.with_suffix(".part.zarr")
    for start in range(0, n_days, chunk):
        days = np.arange(start, min(start + chunk, n_days))
        values = factors(days, lat, lon, rng, enso)
        values[:, land] = np.nan
        da = xr.DataArray(values, dims=("time", "lat", "lon"), name="sst",
                          coords={"time": pd.Timestamp("1980-01-01") + pd.to_timedelta(days, "D"),
                                  "lat": ("lat", lat, {"units": "degrees_north"}),
                                  "lon": ("lon", lon, {"units": "degrees_east"})},
                          attrs={"units": "degC", "long_name": "synthetic sea surface temperature"})
        kwargs = {"mode": "w"} if start == 0 else {"append_dim": "time"}
        da.to_dataset().chunk({"time": chunk}).to_zarr(partial, zarr_format=2, **kwargs)
    partial.rename(path)
    weights = np.cos(np.deg2rad(lat))[:, None] * ~land
    years = np.arange(n_days) / 365.25
    sin_lat = np.abs(np.sin(np.deg2rad(lat)))[:, None]
    pattern = float(np.sum(weights * TREND_PER_YEAR * (0.6 + 0.8 * sin_lat)) / np.sum(weights))
    mean_curve = pattern * (years + 0.02 * years**2)
    slope = np.polyfit(years, mean_curve, 1)[0] * 10
    return time.perf_counter() - started, float(slope)


def peak_gb(stderr: str) -> float:
    return int(stderr.rsplit("PEAK_KIB", 1)[1].split()[0]) * 1024 / 1e9


def run_command(path: Path, out: Path, epochs: int, threads: int, extra: list[str]) -> dict:
    """``sciencevae climate`` on ``path`` in a child process: its phases, wall time, peak memory, trend."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, "-c", CHILD, "climate", str(path), "--out", str(out), "--epochs", str(epochs),
               "--quiet", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"sciencevae climate failed ({done.returncode}): {done.stderr.strip()[-3000:]}")
    seconds = json.loads((out / "run.json").read_text())["seconds"]
    trend = json.loads((out / "report.json").read_text())["trend_component_slope_per_decade"]["sst"]
    return {"wall": wall, "peak_gb": peak_gb(done.stderr), **seconds, "trend": trend["trend_component"],
            "observed": trend["observed_area_mean"], "stdout": done.stdout}


def run_peer(path: Path, out: Path, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, "-c", CHILD_PEER, str(path), str(out)], env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"the xarray + dask peer failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": row["wall"], "peak_gb": row["peak_kib"] * 1024 / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=9000)
    parser.add_argument("--lat", type=int, default=180)
    parser.add_argument("--lon", type=int, default=360)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-peer", action="store_true")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    work = args.work or Path(tempfile.mkdtemp(prefix="climate_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    field = work / f"field_{args.days}x{args.lat}x{args.lon}.zarr"
    try:
        truth = None
        if not field.exists():
            seconds, truth = write_field(field, args.days, args.lat, args.lon)
            print(f"wrote {field} in {seconds:.0f} s")
        size_gb = args.days * args.lat * args.lon * 4 / 1e9
        disk_gb = sum(f.stat().st_size for f in field.rglob("*") if f.is_file()) / 1e9
        print(f"field: {args.days:,} days x {args.lat} x {args.lon}, {size_gb:.2f} GB as float32 "
              f"({disk_gb:.2f} GB on disk), torch threads {args.threads}")
        out = work / "run"
        shutil.rmtree(out, ignore_errors=True)
        ours = run_command(field, out, args.epochs, args.threads, extra)
        phases = [k for k in ("check", "climatology", "train", "encode", "decompose", "maps", "save") if k in ours]
        print("| command | " + " | ".join(phases) + " | total s | peak GB | peak / field |")
        print("|---|" + "---|" * (len(phases) + 3))
        print(f"| sciencevae climate (--epochs {args.epochs}) | " + " | ".join(f"{ours[k]:.1f}" for k in phases)
              + f" | {ours['wall']:.1f} | {ours['peak_gb']:.2f} | {ours['peak_gb'] / size_gb:.2f} |")
        if not args.no_peer:
            peer = run_peer(field, work / "peer.nc", args.threads)
            print("| xarray + dask: day-of-year climatology, anomalies written, polyfit | "
                  + " | ".join("" for _ in phases) + f" | {peer['wall']:.1f} | {peer['peak_gb']:.2f} | "
                  f"{peer['peak_gb'] / size_gb:.2f} |")
        truth_text = f"; true {truth:+.3f}" if truth is not None else ""
        print(f"trend of the area mean, per decade: trend component {ours['trend']:+.3f}, input's Theil-Sen "
              f"{ours['observed']:+.3f}{truth_text}")
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
