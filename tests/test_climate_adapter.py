"""Climate adapter: round trips that keep coordinates, weights, NaNs, calendars, files."""

import hashlib

import cftime
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sciencevae.adapters.climate import ClimateAdapter, open_field


def make_field(n_time=36, lats=(60.0, 20.0, -20.0, -60.0), lons=(0.0, 90.0, 180.0, 270.0), seed=0, time=None):
    rng = np.random.default_rng(seed)
    time = pd.date_range("2000-01-01", periods=n_time, freq="MS") if time is None else time
    values = 15 + 5 * rng.normal(size=(n_time, len(lats), len(lons)))
    values[:, 0, 1] = np.nan  # land: NaN at every time
    values[3, 2, 2] = np.nan  # one missing value
    return xr.DataArray(
        values.astype(np.float32), dims=("time", "lat", "lon"),
        coords={"time": time, "lat": ("lat", list(lats), {"units": "degrees_north"}),
                "lon": ("lon", list(lons), {"units": "degrees_east"})},
        name="sst", attrs={"units": "degC", "long_name": "sea surface temperature"},
    )


def roundtrip(adapter, data, var="sst"):
    prepared = adapter.prepare(data)
    return adapter.to_field(prepared.X, adapter.sample_coord(data))[var], prepared


def test_roundtrip_keeps_values_coords_attrs_and_nan():
    field = make_field()
    adapter = ClimateAdapter.from_data(field)
    back, prepared = roundtrip(adapter, field)
    assert prepared.X.shape == (36, 15)  # 16 grid points, one all-NaN dropped
    assert prepared.mask is not None and prepared.mask.sum() == 36 * 15 - 1
    xr.testing.assert_allclose(back, field, rtol=1e-5)
    xr.testing.assert_identical(back.coords.to_dataset(), field.coords.to_dataset())
    assert back.attrs == field.attrs
    assert np.isnan(back.isel(lat=0, lon=1)).all() and np.isnan(back.isel(time=3, lat=2, lon=2))


def test_standardised_and_area_weighted():
    field = make_field()
    prepared = ClimateAdapter.from_data(field).prepare(field)
    np.testing.assert_allclose(np.nanmean(prepared.X, 0), 0, atol=1e-5)
    np.testing.assert_allclose(np.nanstd(prepared.X, 0), 1, atol=1e-4)
    weights = prepared.feature_weights
    assert weights.mean() == pytest.approx(1.0)
    # 60 degrees weighs cos(60)/cos(20) of 20 degrees
    assert weights[-1] / weights[6] == pytest.approx(np.cos(np.deg2rad(60)) / np.cos(np.deg2rad(20)), rel=1e-6)


@pytest.mark.parametrize("order", [("lon", "time", "lat"), ("time", "lon", "lat"), ("lat", "lon", "time")])
def test_any_dimension_order_and_descending_latitude(order):
    field = make_field().transpose(*order)
    adapter = ClimateAdapter.from_data(field)
    back, _ = roundtrip(adapter, field)
    xr.testing.assert_allclose(back.transpose(*order), field, rtol=1e-5)
    assert back["lat"].values[0] == 60.0  # descending latitude kept


def test_cftime_noleap_calendar_roundtrip():
    time = xr.date_range("0001-01-01", periods=24, freq="MS", calendar="noleap", use_cftime=True)
    field = make_field(n_time=24, time=time)
    adapter = ClimateAdapter.from_data(field)
    back, _ = roundtrip(adapter, field)
    assert isinstance(back["time"].values[0], cftime.DatetimeNoLeap)
    xr.testing.assert_allclose(back, field, rtol=1e-5)


def test_stations_and_levels_without_latitude():
    rng = np.random.default_rng(1)
    da = xr.DataArray(rng.normal(size=(20, 3, 5)), dims=("time", "level", "station"),
                      coords={"time": pd.date_range("2001-01-01", periods=20, freq="D"),
                              "level": [1000, 850, 500], "station": [f"st{i}" for i in range(5)]}, name="t")
    adapter = ClimateAdapter.from_data(da)
    prepared = adapter.prepare(da)
    assert np.all(prepared.feature_weights == 1.0)  # no latitude: no area weights
    back, _ = roundtrip(adapter, da, "t")
    xr.testing.assert_allclose(back, da.astype(np.float32), rtol=1e-5)
    assert list(back["station"].values) == [f"st{i}" for i in range(5)]


def test_several_variables_have_their_own_scaling():
    sst = make_field()
    slp = (make_field(seed=2) * 100 + 100_000).rename("slp").assign_attrs(units="Pa")
    ds = xr.Dataset({"sst": sst, "slp": slp})
    adapter = ClimateAdapter.from_data(ds, var=["sst", "slp"])
    prepared = adapter.prepare(ds)
    assert prepared.X.shape == (36, 30)
    np.testing.assert_allclose(np.nanstd(prepared.X, 0), 1, atol=1e-4)
    back = adapter.to_field(prepared.X, adapter.sample_coord(ds))
    xr.testing.assert_allclose(back["slp"], slp, rtol=1e-5)
    assert back["slp"].attrs["units"] == "Pa" and back["sst"].attrs["units"] == "degC"


def test_lazy_dask_input_equals_eager():
    field = make_field()
    lazy = field.chunk({"time": 6})
    adapter = ClimateAdapter.from_data(lazy)
    np.testing.assert_array_equal(adapter.prepare(lazy).X, ClimateAdapter.from_data(field).prepare(field).X)


def test_save_and_load_the_adapter(tmp_path):
    field = make_field()
    adapter = ClimateAdapter.from_data(field)
    loaded = ClimateAdapter.load(adapter.save(tmp_path / "adapter.nc"))
    prepared = adapter.prepare(field)
    np.testing.assert_array_equal(loaded.prepare(field).X, prepared.X)
    np.testing.assert_array_equal(loaded.prepare(field).feature_weights, prepared.feature_weights)
    xr.testing.assert_identical(loaded.to_field(prepared.X, field.time)["sst"], adapter.to_field(prepared.X, field.time)["sst"])


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_several_netcdf_and_zarr(tmp_path):
    field = make_field()
    first, second = tmp_path / "a.nc", tmp_path / "b.nc"
    field.isel(time=slice(0, 18)).to_netcdf(first)
    field.isel(time=slice(18, None)).to_netcdf(second)
    hashes = sha(first), sha(second)
    combined = open_field([first, second])
    assert combined.sizes["time"] == 36
    adapter = ClimateAdapter.from_data(combined, "sst")
    back, _ = roundtrip(adapter, combined)
    xr.testing.assert_allclose(back, field, rtol=1e-5)
    assert open_field(tmp_path / "*.nc").sizes["time"] == 36
    assert (sha(first), sha(second)) == hashes
    store = tmp_path / "f.zarr"
    field.to_dataset().to_zarr(store)
    assert ClimateAdapter.from_data(open_field(store)).n_features == 15


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda f: f.isel(time=0), "no 'time' dimension"),
        (lambda f: f.isel(time=[1, 0, 2, 3]), "not sorted"),
        (lambda f: f.isel(time=[0, 0, 1, 2]), "duplicated"),
        (lambda f: f * np.nan, "NaN everywhere"),
    ],
)
def test_bad_fields_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        ClimateAdapter.from_data(make(make_field()))


def test_wrong_variable_grid_and_files_are_named(tmp_path):
    field = make_field()
    with pytest.raises(ValueError, match=r"'tas' is not in the data; it has \['sst'\]"):
        ClimateAdapter.from_data(field.to_dataset(), var="tas")
    adapter = ClimateAdapter.from_data(field)
    other = field.assign_coords(lat=[61.0, 20.0, -20.0, -60.0])
    with pytest.raises(ValueError, match="differs from the fitted grid"):
        adapter.prepare(other)
    with pytest.raises(ValueError, match="grid dims"):
        adapter.prepare(field.isel(lon=0))
    broken = tmp_path / "broken.nc"
    field.to_netcdf(tmp_path / "good.nc")
    broken.write_bytes((tmp_path / "good.nc").read_bytes()[:500])
    with pytest.raises(ValueError, match="could not open"):
        open_field(broken)
    with pytest.raises(FileNotFoundError):
        open_field(tmp_path / "missing.nc")
