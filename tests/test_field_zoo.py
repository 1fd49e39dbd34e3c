"""Input zoo for the climate case study (issue 16): fields as scientists bring them.

Every variant is a tiny generated file (3 years monthly on a 4 x 6 grid unless
it is about something else) run in process through ``sciencevae climate`` and
``sciencevae export`` in every format. Each either completes — no INCOMPLETE,
every documented file, the decoded dates, grid and the area-mean trend equal
to what was written — or is refused with exit 2 and one stderr line naming the
problem and the fix, before anything is written. Input files stay
byte-identical either way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sciencevae.case_studies import climate_trend as ct
from sciencevae.case_studies.trend_test import trend_test
from sciencevae.cli import main

LAT = np.array([45.0, 15.0, -15.0, -45.0])
LON = np.arange(6) * 60.0
CALENDARS = ["standard", "proleptic_gregorian", "noleap", "all_leap", "360_day", "julian"]
DATETIME64_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")
RUN_FLAGS = ["--var", "sst", "--epochs", "20", "--beta", "1", "--n-latent", "4", "--checkpoint-every", "0", "--quiet"]
ALWAYS_FIGURES = {"latent_series.png", "knob_series.png", "decomposition_points.png", "season_and_trend_maps.png"}


@dataclass
class Truth:
    """What was written: the dates, the values (NaN on land), the grid and its latitude."""

    dates: list
    values: np.ndarray  # (time, *grid) as stored (float32, or unpacked int16)
    lat: np.ndarray  # latitude of every grid point (grid shape)
    grid: dict  # grid coordinates as written: name -> (dims, values)
    calendar: str
    figures: set = field(default_factory=lambda: set(ALWAYS_FIGURES))


def monthly(calendar: str, n: int = 36, day: int = 1) -> list:
    return [cftime.datetime(2000 + k // 12, k % 12 + 1, day, calendar=calendar) for k in range(n)]


def year_fraction(date) -> float:
    """Decimal year as documented: months are twelfths, days a fraction of their month."""
    day = date.day - 1 + (date.hour * 3600 + date.minute * 60 + date.second) / 86400
    return date.year + (date.month - 1 + day / date.daysinmonth) / 12


def truth(dates: list, calendar: str, lat=LAT, lon=LON, curvilinear: bool = False, land: bool = False) -> Truth:
    """A seasonal cycle whose phase turns with longitude plus a trend stronger in the east, on a small grid."""
    if curvilinear:  # a rotated 4 x 6 grid, lat/lon 2-D over (y, x)
        y, x = np.meshgrid(np.arange(4.0), np.arange(6.0), indexing="ij")
        la, lo = 50.0 - 25.0 * y + 3.0 * x, (20.0 + 60.0 * x + 5.0 * y) % 360.0
        grid = {"lat": (("y", "x"), la), "lon": (("y", "x"), lo)}
    else:
        la, lo = np.meshgrid(lat, lon, indexing="ij")
        grid = {"lat": (("lat",), np.asarray(lat, float)), "lon": (("lon",), np.asarray(lon, float))}
    t = np.array([year_fraction(d) for d in dates]) - year_fraction(dates[0])
    amplitude, phase = 2 + 6 * np.sin(np.deg2rad(la)), np.deg2rad(lo)
    noise = 0.2 * np.random.default_rng(0).normal(size=(len(dates), *la.shape))
    values = 15 + amplitude * np.cos(2 * np.pi * t[:, None, None] - phase) + (1 + np.cos(phase)) * t[:, None, None]
    values = (values + noise).astype(np.float32).astype(np.float64)
    if land:
        values[:, 0, 1:3] = np.nan  # a continent
        values[5, 2, 4] = values[17, 3, 0] = np.nan  # scattered gaps
    return Truth(dates, values, la, grid, calendar)


def dataset(tr: Truth, time_values, time_attrs: dict) -> xr.Dataset:
    """The field with its time stored exactly as given (numbers + attributes; xarray encodes nothing)."""
    grid_dims = tr.grid["lat"][0] if tr.grid["lat"][0] == ("y", "x") else ("lat", "lon")
    coords = {name: (dims, values, {"units": "degrees_north" if name == "lat" else "degrees_east"})
              for name, (dims, values) in tr.grid.items()}
    coords["time"] = ("time", np.asarray(time_values), time_attrs)
    sst = xr.DataArray(tr.values.astype(np.float32), dims=("time", *grid_dims),
                       attrs={"units": "degC", "long_name": "sea surface temperature"})
    return xr.Dataset({"sst": sst}, coords=coords)


def days_since(tr: Truth, units: str = "days since 2000-01-01"):
    return cftime.date2num(tr.dates, units, calendar=tr.calendar), {"units": units, "calendar": tr.calendar}


def write(folder: Path, ds: xr.Dataset, name: str = "field.nc", encoding: dict | None = None) -> Path:
    path = folder / name
    ds.to_netcdf(path, encoding=encoding)
    return path


def calendar_variant(calendar: str):
    def make(folder: Path):
        tr = truth(monthly(calendar), calendar)
        tr.figures |= {"knob_maps.png", "trend_vs_area_mean.png"}
        return [write(folder, dataset(tr, *days_since(tr)))], tr
    return make


def hours_since(folder):
    tr = truth(monthly("standard"), "standard")
    return [write(folder, dataset(tr, *days_since(tr, "hours since 1999-12-31 12:00:00")))], tr


def months_since(folder):
    tr = truth(monthly("noleap"), "noleap")
    return [write(folder, dataset(tr, np.arange(36), {"units": "months since 2000-01-01", "calendar": "noleap"}))], tr


def months_since_mid_month(folder):
    """IRI style: ``months since 1960-01-01`` at 0.5, 1.5, ... in a 360_day calendar (mid-month dates)."""
    tr = truth(monthly("360_day", day=16), "360_day")
    values = 12 * 40 + np.arange(36) + 0.5
    return [write(folder, dataset(tr, values, {"units": "months since 1960-01-01", "calendar": "360_day"}))], tr


def years_since(folder):
    tr = truth(monthly("standard"), "standard")
    years = (np.arange(36) / 12).astype(np.float32)  # as files often store them
    return [write(folder, dataset(tr, years, {"units": "years since 2000-01-01"}))], tr


def cdo_absolute(folder):
    """CDO's ``-a`` time axis: ``day as %Y%m%d.%f``, here mid-month at 12:00."""
    tr = truth([d.replace(day=15, hour=12) for d in monthly("proleptic_gregorian")], "proleptic_gregorian")
    values = [d.year * 10000 + d.month * 100 + d.day + 0.5 for d in tr.dates]
    attrs = {"units": "day as %Y%m%d.%f", "calendar": "proleptic_gregorian"}
    return [write(folder, dataset(tr, np.array(values), attrs))], tr


def lon_180_ascending_lat(folder):
    """Longitudes -180..180 and latitudes south to north (the other variants: 0..360, north to south)."""
    tr = truth(monthly("standard"), "standard", lat=LAT[::-1].copy(), lon=LON - 180.0)
    return [write(folder, dataset(tr, *days_since(tr)))], tr


def curvilinear(folder):
    tr = truth(monthly("noleap"), "noleap", curvilinear=True)
    return [write(folder, dataset(tr, *days_since(tr)))], tr


def packed_int16(folder):
    tr = truth(monthly("standard"), "standard", land=True)
    packing = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 15.0, "_FillValue": np.int16(-32767)}
    tr.values = np.where(np.isnan(tr.values), np.nan, np.round((tr.values - 15.0) / 0.01) * 0.01 + 15.0)
    return [write(folder, dataset(tr, *days_since(tr)), encoding={"sst": packing})], tr


def several_files(folder):
    """Two files whose times count from different dates (combined by coordinates after decoding)."""
    tr = truth(monthly("standard"), "standard")
    ds1 = dataset(tr, *days_since(tr, "days since 2000-01-01"))
    ds2 = dataset(tr, *days_since(tr, "days since 2001-07-01"))
    return [write(folder, ds1.isel(time=slice(0, 18)), "a.nc"),
            write(folder, ds2.isel(time=slice(18, None)), "b.nc")], tr


def daily(folder):
    start = cftime.datetime(2000, 1, 1, calendar="standard")
    tr = truth([start + dt.timedelta(days=k) for k in range(3 * 365 + 1)], "standard")
    return [write(folder, dataset(tr, *days_since(tr)))], tr


def zarr_store(folder):
    tr = truth(monthly("360_day"), "360_day")
    path = folder / "field.zarr"
    dataset(tr, np.arange(36), {"units": "months since 2000-01-01", "calendar": "360_day"}).to_zarr(
        path, zarr_format=2, consolidated=True)
    return [path], tr


def nan_land(folder):
    tr = truth(monthly("standard"), "standard", land=True)
    return [write(folder, dataset(tr, *days_since(tr)))], tr


RUNS = {**{f"calendar {c}": calendar_variant(c) for c in CALENDARS},
        "hours since": hours_since, "months since (noleap)": months_since,
        "months since, mid-month (360_day)": months_since_mid_month, "years since": years_since,
        "CDO absolute time": cdo_absolute, "lon -180..180, lat ascending": lon_180_ascending_lat,
        "curvilinear lat/lon (y, x)": curvilinear, "packed int16": packed_int16, "several files": several_files,
        "daily": daily, "zarr store (months since, 360_day)": zarr_store, "NaN land": nan_land}


def digest(paths: list[Path]) -> dict:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def iso(values) -> list[str]:
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.datetime64):
        return list(np.datetime_as_string(values, unit="s"))
    return [v.isoformat() for v in values]


def check_dates(time: xr.DataArray, tr: Truth) -> None:
    assert iso(time.values) == [d.isoformat() for d in tr.dates]
    if tr.calendar in DATETIME64_CALENDARS:
        assert np.issubdtype(time.dtype, np.datetime64)
    else:
        assert all(v.calendar == tr.calendar for v in time.values)


def expected_slope(tr: Truth) -> float:
    """Trend per decade (the toolkit's Theil–Sen test) of the cos(latitude)-weighted mean over observed
    points, averaged here independently of the toolkit."""
    weights = np.cos(np.deg2rad(tr.lat)).ravel()
    values = tr.values.reshape(len(tr.dates), -1)
    kept = np.isfinite(values).any(0)
    w = np.where(np.isfinite(values), weights, 0.0) * kept
    mean = np.nansum(values * w, 1) / w.sum(1)
    return trend_test(mean, np.array([year_fraction(d) for d in tr.dates])).slope_per_decade


def check_run(run: Path, tr: Truth) -> None:
    assert not (run / "INCOMPLETE").exists()
    for name in ("latents.nc", "components.nc", "maps.nc", "report.json", "report.html", "run.json", "adapter.nc"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    figures = {p.name for p in (run / "figures").glob("*.png")}
    roles = [k["role"] for k in report["knobs"]]
    expected = set(tr.figures) | ({"knob_maps.png"} if roles else set())
    expected |= {"trend_vs_area_mean.png"} if "trend" in roles else set()
    assert figures == expected, (figures, roles)
    assert all((run / "figures" / f).stat().st_size > 5000 for f in figures)
    assert (run / "report.html").read_text().count("data:image/png") == len(figures)
    assert report["trend_component_slope_per_decade"]["sst"]["observed_area_mean"] == pytest.approx(
        expected_slope(tr), rel=1e-3)
    with xr.open_dataset(run / "latents.nc") as latents, xr.open_dataset(run / "maps.nc") as maps:
        check_dates(latents["time"], tr)
        for name, (dims, values) in tr.grid.items():
            assert maps[name].dims == dims and np.allclose(maps[name].values, values)
        if maps.sizes["knob"]:
            assert (np.isnan(maps["sst"].values).all(0) == np.isnan(tr.values).all(0)).all()


def check_exports(run: Path, tr: Truth) -> None:
    with xr.open_dataset(run / "latents.nc") as latents:
        z = latents["z"].values
    for fmt in ("zarr", "parquet", "csv"):
        assert main(["export", str(run), "--format", fmt, "--out", str(run / f"export_{fmt}")]) == 0, fmt
    with xr.open_zarr(run / "export_zarr" / "export.zarr") as exported:
        check_dates(exported["time"], tr)
        np.testing.assert_array_equal(exported["z"].values, z)
    tables = {"parquet": pd.read_parquet(run / "export_parquet" / "z_z_std.parquet"),
              "csv": pd.read_csv(run / "export_csv" / "z_z_std.csv", index_col=[0, 1])}
    for fmt, table in tables.items():
        times = table.index.get_level_values("time")
        assert list(times[:: z.shape[1]]) == [d.isoformat() for d in tr.dates], fmt
        np.testing.assert_allclose(table["z"].to_numpy().reshape(z.shape), z, rtol=1e-6)
    provenance = json.loads((run / "export_parquet" / "provenance.json").read_text())
    assert provenance["time_calendars"] == {"time": tr.calendar}
    check_map_table(pd.read_parquet(run / "export_parquet" / "map_sst.parquet"), run, tr)


def check_map_table(table: pd.DataFrame, run: Path, tr: Truth) -> None:
    """The exported knob maps carry the grid (1-D index levels or curvilinear lat/lon columns) and the values."""
    with xr.open_dataset(run / "maps.nc") as maps:
        values = maps["sst"].values
    assert len(table) == values.size
    if not len(table):
        return
    first = table.xs(0, level="knob_index")
    points = {name: np.broadcast_to(coord if coord.ndim == 2 else (coord[:, None] if name == "lat" else coord[None]),
                                    tr.lat.shape).ravel() for name, (_, coord) in tr.grid.items()}
    for name, expected in points.items():
        got = first[name] if name in first.columns else first.index.get_level_values(name)
        np.testing.assert_allclose(np.asarray(got, float), expected)
    np.testing.assert_array_equal(table["map_sst"].to_numpy(), values.ravel())


@pytest.mark.parametrize("name", list(RUNS))
def test_field_runs_to_every_output(tmp_path, capsys, name):
    inputs, tr = RUNS[name](tmp_path)
    before = digest(inputs)
    run = tmp_path / "run"
    assert main(["climate", *map(str, inputs), "--out", str(run), *RUN_FLAGS]) == 0
    assert "Traceback" not in capsys.readouterr().err
    check_run(run, tr)
    check_exports(run, tr)
    assert digest(inputs) == before


def short_record(folder):
    tr = truth(monthly("standard", n=10), "standard")
    return dataset(tr, *days_since(tr))


def annual_means(folder):
    """36 annual means (1 January of 36 years): a long record without a seasonal cycle to find."""
    tr = truth([cftime.datetime(1970 + k, 1, 1, calendar="standard") for k in range(36)], "standard")
    return dataset(tr, *days_since(tr))


def numeric_time(folder):
    tr = truth(monthly("standard"), "standard")
    return dataset(tr, np.arange(36.0), {})


def with_time(units: str, calendar: str = "standard", values=None):
    def make(folder):
        tr = truth(monthly("standard"), "standard")
        return dataset(tr, np.arange(36.0) if values is None else values, {"units": units, "calendar": calendar})
    return make


def missing_time(folder):
    tr = truth(monthly("standard"), "standard")
    values, attrs = days_since(tr)
    values = np.asarray(values, float)
    values[3] = np.nan
    return dataset(tr, values, attrs)


CDO_NOT_A_DATE = np.array([20000115.0 + 100 * k for k in range(12)] * 3) + np.repeat([0, 10000, 20000], 12)
CDO_NOT_A_DATE[1] = 20000231.0

REFUSED = {
    "short record (10 months)": (short_record, "spans 10 months (0.83 years", "needs at least 2 years"),
    "annual means": (annual_means, "time steps are 365 days apart", "give monthly or daily data"),
    "time without units": (numeric_time, "holds float64 numbers, not dates", "CF time units such as"),
    "unknown time unit": (with_time("fortnights since 2000-01-01"), "unknown time unit 'fortnights'",
                          "use seconds, minutes, hours, days, months or years"),
    "unreadable reference date": (with_time("days since the start"), "reference date 'the start' cannot be read",
                                  "CF units such as 'days since 1960-01-01'"),
    "unknown calendar": (with_time("days since 2000-01-01", "lunar"), "calendar 'lunar', which is not a CF calendar",
                         "set its calendar attribute to one of"),
    "CDO value that is no date": (with_time("day as %Y%m%d.%f", values=CDO_NOT_A_DATE), "holds 20000231.0",
                                  "correct the value"),
    "missing time value": (missing_time, "1 missing value(s)", "drop those steps first"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_field_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, name):
    make, problem, fix = REFUSED[name]
    ds = make(tmp_path)
    path = write(tmp_path, ds)
    before = digest([path])
    run = tmp_path / "run"
    assert main(["climate", str(path), "--out", str(run), *RUN_FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err and fix in err, err
    assert not run.exists()
    assert digest([path]) == before
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        ct.run(ds, var="sst", epochs=1, progress=False)  # the API refuses the same in-memory Dataset


def test_api_decodes_a_dataset_opened_without_decoding_times(tmp_path):
    """The reported crash: decode_times=False data trained, then failed on ``.dt``."""
    inputs, tr = months_since(tmp_path)
    with xr.open_dataset(inputs[0], decode_times=False) as raw:
        assert np.issubdtype(raw["time"].dtype, np.number)
        res = ct.run(raw, var="sst", n_latent=3, epochs=2, progress=False)
        check_dates(res.time, tr)
        check_dates(ct.validate(raw["sst"])[0]["time"], tr)  # a DataArray with numeric CF time too
    assert res.settings["epochs"] == 2


@pytest.mark.parametrize("calendar, expected", [("gregorian", "2000-02-29"), ("365_day", "2000-03-01"),
                                                ("366_day", "2000-02-29"), ("360_day", "2000-02-30")])
def test_calendar_aliases_decode_in_their_own_calendar(calendar, expected):
    ds = xr.Dataset(coords={"time": ("time", [0.0, 59.0], {"units": "days since 2000-01-01", "calendar": calendar})})
    assert iso(ct.open_field(ds)["time"].values)[1] == f"{expected}T00:00:00"


@pytest.mark.parametrize("time, problem", [
    (pd.DatetimeIndex(["2000-01-01", "NaT", "2000-03-01"]), "'time' has 1 missing value(s); drop those steps first"),
    (np.array(["2000-01", "2000-02", "2000-03"]), "holds <U7 values, not dates"),
])
def test_in_memory_times_that_are_not_dates_are_refused(time, problem):
    ds = xr.Dataset({"sst": (("time", "x"), np.ones((3, 2)))}, coords={"time": time})
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        ct.run(ds, var="sst", epochs=1, progress=False)
