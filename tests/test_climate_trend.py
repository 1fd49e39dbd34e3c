"""Climate case study on a synthetic field with a known seasonal cycle, trend and ENSO-like mode."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import sciencevae
from sciencevae.adapters.climate import ClimateAdapter
from sciencevae.case_studies import climate_trend as ct
from sciencevae.cli import main
from sciencevae.datasets import monthly_field

from conftest import linear_r2


@pytest.fixture(scope="module")
def truth():
    return monthly_field(n_years=40, n_lat=18, n_lon=36, seed=0)


@pytest.fixture(scope="module")
def result(truth):
    return ct.run(ct.synthetic_dataset(truth), var="sst", n_latent=8, beta=8.0, epochs=400, seed=0, progress=False)


def pooled_r2(found, expected, land):
    found, expected = found[:, ~land], expected[:, ~land]
    ok = np.isfinite(found)
    return 1 - np.var(found[ok] - expected[ok]) / np.var(expected[ok])


def test_latent_roles_find_the_seasonal_cycle_and_the_trend(result, truth):
    roles = result.latent_roles["role"]
    seasonal, trend = list(roles.index[roles == "seasonal"]), list(roles.index[roles == "trend"])
    assert len(seasonal) == 2 and len(trend) == 1, roles.tolist()
    z = result.latents["z"].values
    angle = 2 * np.pi * (truth["month"] - 1) / 12
    assert linear_r2(z[:, seasonal], np.cos(angle)) >= 0.98
    assert linear_r2(z[:, seasonal], np.sin(angle)) >= 0.98
    assert linear_r2(z[:, trend], truth["trend_index"]) >= 0.95
    assert (roles == "inactive").sum() >= 3


def test_knobs_find_the_seasonal_cycle_and_the_trend(result, truth):
    seasonal, trend = result.knobs_of("seasonal"), result.knobs_of("trend")
    assert len(seasonal) == 2 and len(trend) == 1, result.roles["role"].tolist()
    knobs = result.latents["knob"].values
    angle = 2 * np.pi * (truth["month"] - 1) / 12
    assert linear_r2(knobs[:, seasonal], np.cos(angle)) >= 0.98
    assert linear_r2(knobs[:, seasonal], np.sin(angle)) >= 0.98
    assert linear_r2(knobs[:, trend], truth["trend_index"]) >= 0.95


def test_components_match_the_truth(result, truth):
    land = truth["land"]
    assert pooled_r2(result.components["seasonal"].values, truth["seasonal"], land) >= 0.95
    centred_trend = truth["trend"] - truth["trend"].mean(0)
    assert pooled_r2(result.components["trend"].values, centred_trend, land) >= 0.9
    parts = result.components
    total = (parts["mean_state"] + parts["seasonal"] + parts["trend"] + parts["residual"]).transpose("time", "lat", "lon")
    xr.testing.assert_allclose(total.where(result.data["sst"].notnull()), result.data["sst"], atol=1e-3)
    assert result.components["seasonal"].dims == ("time", "lat", "lon")
    assert result.components["seasonal"].attrs["units"] == "degC"


@pytest.fixture(scope="module")
def detrended(truth):
    """The control: the same field with each grid cell's least-squares linear trend removed."""
    field = ct.synthetic_dataset(truth)
    years = xr.DataArray(ct.decimal_years(field.time), dims="time", coords={"time": field.time})
    t = years - years.mean()
    slope = ((field.sst - field.sst.mean("time")) * t).sum("time") / (t**2).sum()
    field["sst"] = (field.sst - slope * t).assign_attrs(field.sst.attrs)
    return ct.run(field, var="sst", n_latent=8, beta=8.0, epochs=400, seed=0, progress=False)


def test_the_trend_found_matches_the_observed_one_within_its_interval(result):
    slopes = ct.trend_component_slopes(result)["sst"]
    assert slopes["trend_detectable"] and slopes["observed_detectable"]
    observed = slopes["observed_area_mean"]
    assert slopes["trend_component_low"] <= observed <= slopes["trend_component_high"]
    assert abs(slopes["trend_component"] - observed) <= 0.5 * abs(observed)
    assert slopes["observed_low"] < observed < slopes["observed_high"]
    assert slopes["summary"].startswith("the trend component of sst changes by +")


def test_a_detrended_control_reports_that_no_trend_is_detectable(detrended):
    assert "trend" not in detrended.roles["role"].tolist(), detrended.roles
    slopes = ct.trend_component_slopes(detrended)["sst"]
    assert not slopes["trend_detectable"] and not slopes["observed_detectable"]
    assert slopes["trend_component"] == 0.0 and abs(slopes["observed_area_mean"]) < 0.05
    assert slopes["summary"].startswith("no trend is detectable in the knobs")
    assert "no trend is detectable in the area-weighted mean" in slopes["summary"]


def test_trend_slope_is_reported_next_to_the_observed_one(result):
    slopes = ct.trend_component_slopes(result)["sst"]
    assert slopes["trend_component"] == pytest.approx(slopes["observed_area_mean"], rel=0.25)
    assert slopes["trend_component"] > 0


def test_counterfactual_keeps_the_seasons(result, truth):
    late = result.counterfactual(trend_from=slice("1960", "1964"), at=slice("1995", "1999"))["sst"]
    observed = result.data["sst"].sel(time=slice("1995", "1999"))
    change = (observed - late).values  # what the trend added since the early 1960s
    expected = truth["trend"][-60:] - truth["trend"][:60].mean(0)
    land = truth["land"]
    assert np.corrcoef(np.nanmean(change[:, ~land], 0), expected.mean(0)[~land])[0, 1] > 0.8
    monthly = np.array([np.nanmean(change[m::12][:, ~land]) for m in range(12)])
    assert np.ptp(monthly) < 0.05  # degC: no seasonal cycle in the change (the cycle itself spans ~16)
    assert np.nanmean(change) > 0.3


def test_maps_have_the_grid_and_nan_on_land(result, truth):
    maps = result.maps["sst"]
    assert maps.dims == ("knob", "lat", "lon")
    assert np.isnan(maps.isel(knob=0).values[truth["land"]]).all()
    trend = maps.sel(knob=result.knobs_of("trend")[0]).values[~truth["land"]]
    expected = (truth["trend"][-1] - truth["trend"][0])[~truth["land"]]
    assert np.corrcoef(trend, expected)[0, 1] > 0.9  # the trend knob's map is the trend pattern


def test_save_writes_documented_outputs(result, tmp_path):
    out = result.save(tmp_path / "run")
    latents = xr.open_dataset(out / "latents.nc")
    assert latents["z"].dims == ("time", "latent") and "z_std" in latents
    assert json.loads(latents.attrs["roles"])[str(result.knobs_of("trend")[0])] == "trend"
    assert latents["knob"].dims == ("time", "knob_index") and "latent_role" in latents.coords
    components = xr.open_dataset(out / "components.nc")
    assert set(components.data_vars) == {"mean_state", "seasonal", "trend", "residual"}
    xr.testing.assert_allclose(components["seasonal"], result.components["seasonal"])
    assert xr.open_dataset(out / "maps.nc")["sst"].dims == ("knob", "lat", "lon")
    report = json.loads((out / "report.json").read_text())
    assert {"index", "role", "kl", "seasonal_r2", "trend_r2", "slope_per_decade"} <= set(report["latents"][0])
    assert {"knob", "role", "direction"} <= set(report["knobs"][0])
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["decomposition_points.png", "knob_maps.png", "knob_series.png", "latent_series.png",
                       "seasonal_phase_circle.png", "trend_vs_area_mean.png"]
    model = sciencevae.load(out / "model")
    adapter = ClimateAdapter.load(out / "adapter.nc")
    np.testing.assert_array_equal(model.encode(adapter.prepare(result.data)), result.latents["z"].values)


def test_cli_climate_writes_a_run_and_leaves_the_input_alone(tmp_path, capsys):
    field = ct.synthetic_dataset(monthly_field(n_years=3, n_lat=6, n_lon=8))
    path = tmp_path / "field.nc"
    field.to_netcdf(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "run"
    assert main(["climate", str(path), "--var", "sst", "--out", str(out), "--epochs", "3", "--quiet"]) == 0
    assert "per decade" in capsys.readouterr().out
    assert (out / "components.nc").exists() and (out / "run.json").exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert main(["climate", str(path), "--var", "tas", "--out", str(tmp_path / "other"), "--quiet"]) == 2
    assert "'tas' is not in the data" in capsys.readouterr().err


COBE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "climate" / "cobe_sst2_global_4deg_monthly_1950-2009.nc"


@pytest.mark.skipif(not COBE.exists(), reason="needs ../shared/data (COBE-SST2 4 deg)")
def test_cobe_sst2_finds_the_seasonal_circle_and_the_observed_trend():
    res = ct.run(str(COBE), var="sst", progress=False)
    seasonal, trend = res.roles[res.roles["role"] == "seasonal"], res.roles[res.roles["role"] == "trend"]
    assert len(seasonal) == 2 and (seasonal["seasonal_r2"] > 0.85).all()
    assert len(trend) >= 1 and trend["trend_r2"].max() > 0.7
    slopes = ct.trend_component_slopes(res)["sst"]
    assert slopes["observed_area_mean"] == pytest.approx(0.072, abs=0.002)  # the manifest's +0.07 degC/decade
    assert slopes["trend_component"] == pytest.approx(slopes["observed_area_mean"], abs=0.02)
