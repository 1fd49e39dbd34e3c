"""Climate case study on a synthetic field with a known seasonal cycle, trend and ENSO-like mode."""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy.stats import spearmanr

from sciencevae.case_studies import climate_components as cc
from sciencevae.case_studies import climate_trend as ct
from sciencevae.cli import main
from sciencevae.datasets import daily_field, monthly_field

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


def test_the_latents_hold_the_trend_and_the_calendar_holds_the_seasons(result, truth):
    roles = result.latent_roles["role"]
    trend = list(roles.index[roles == "trend"])
    assert len(trend) == 1 and "seasonal" not in roles.tolist(), roles.tolist()  # the phase of the year is given
    z = result.latents["z"].values  # the decoder is nonlinear: the latent follows the trend monotonically
    assert abs(spearmanr(z[:, trend[0]], truth["trend_index"]).statistic) >= 0.9  # the knob: >= 0.95
    assert (roles == "inactive").sum() >= 4


def test_knobs_find_the_trend_and_the_enso_like_mode(result, truth):
    trend, other = result.knobs_of("trend"), result.knobs_of("other")
    assert len(trend) == 1 and len(other) == 1, result.roles["role"].tolist()
    knobs = result.latents["knob"].values
    assert spearmanr(knobs[:, trend[0]], truth["trend_index"]).statistic >= 0.95  # oriented to rise with time
    assert linear_r2(knobs[:, other], truth["enso_index"]) >= 0.8


def _per_cell_linear_trend(field: np.ndarray, years: np.ndarray) -> np.ndarray:
    """The classic baseline's trend component: each cell's least-squares line through time, centred."""
    t = years - years.mean()
    ok = np.isfinite(field)
    values = np.where(ok, field, 0.0)
    count = np.maximum(ok.sum(0), 1)  # land: never observed, NaN below
    values = np.where(ok, values - values.sum(0) / count, 0.0)
    slope = (values * t[:, None, None]).sum(0) / np.maximum(((t[:, None, None] ** 2) * ok).sum(0), 1e-12)
    return np.where(ok.any(0), slope, np.nan)[None] * t[:, None, None]


def test_components_match_the_truth_and_beat_climatology_plus_a_line(result, truth):
    land = truth["land"]
    assert pooled_r2(result.components["seasonal"].values, truth["seasonal"], land) >= 0.995
    centred_trend = truth["trend"] - truth["trend"].mean(0)
    found = pooled_r2(result.components["trend"].values, centred_trend, land)
    baseline = pooled_r2(_per_cell_linear_trend(truth["field"], np.arange(len(truth["time"])) / 12), centred_trend,
                         land)
    assert found >= 0.95 and found >= baseline + 0.05, (found, baseline)
    parts = result.components
    total = (parts["mean_state"] + parts["seasonal"] + parts["trend"] + parts["residual"]).transpose("time", "lat", "lon")
    xr.testing.assert_allclose(total.where(result.data["sst"].notnull()), result.data["sst"], atol=1e-3)
    assert result.components["seasonal"].dims == ("time", "lat", "lon")
    assert result.components["seasonal"].attrs["units"] == "degC"


def test_the_residual_keeps_almost_no_seasonal_cycle(result):
    left = ct.residual_seasonality(result)["sst"]
    assert left["share"] <= 0.02 and left["input_rms"] > 3.0
    assert left["summary"].startswith("the residual of sst keeps 0.")


@pytest.fixture(scope="module")
def weakening():
    """Seasons that weaken by 24% as the trend rises (seasonal_change=-0.3, trend index 0 to 0.8)."""
    truth = monthly_field(n_years=40, n_lat=18, n_lon=36, seed=2, seasonal_change=-0.3)
    return truth, ct.run(ct.synthetic_dataset(truth), var="sst", epochs=400, seed=0, progress=False)


def test_the_seasonal_cycle_changes_with_the_trend_as_in_the_truth(weakening):
    truth, res = weakening
    ocean = ~truth["land"]
    early, late = res.seasonal_cycle(slice("1960", "1964"))["sst"], res.seasonal_cycle(slice("1995", "1999"))["sst"]
    amplitude = lambda cycle: ((cycle.max("month") - cycle.min("month")) / 2).values[ocean]  # noqa: E731
    index = truth["trend_index"]
    expected = (1 - 0.3 * index[-60:].mean()) / (1 - 0.3 * index[:60].mean())  # 0.83
    strong = truth["seasonal_amplitude"][ocean] > 4  # degC: where the change is well above the noise
    ratio = np.median(amplitude(late)[strong] / amplitude(early)[strong])
    assert ratio == pytest.approx(expected, abs=0.04), ratio
    change = res.maps["sst_seasonal_amplitude_change"].values[ocean]
    assert np.corrcoef(change, truth["seasonal_amplitude"][ocean])[0, 1] < -0.8  # weakens most where strongest
    assert res.settings["seasonal_change_series"] >= 1  # held-out years support the change: in the components
    seasonal = res.components["seasonal"].transpose("time", "lat", "lon").values[:, ocean]
    truth_seasonal = (truth["seasonal"] - truth["seasonal"].mean(0))[:, ocean]
    climatology_r2 = 0.994  # a fixed cycle cannot weaken (benchmarks/README.md, field (b)); measured 0.9999
    assert 1 - np.nanvar(seasonal - truth_seasonal) / np.var(truth_seasonal) > climatology_r2 + 0.005
    with pytest.raises(ValueError, match=r"'1960s' selects no time of the record \(1960-01-01 to 1999-12-01\); give"):
        res.seasonal_cycle("1960s")
    with pytest.raises(ValueError, match="no trend is detectable"):
        dataclasses.replace(res, knobs=dataclasses.replace(res.knobs, table=res.knobs.table.assign(role="other"))
                            ).seasonal_cycle("1960")


@pytest.fixture(scope="module")
def detrended(truth):
    """The control: the same field with each grid cell's (known, accelerating) trend removed."""
    field = ct.synthetic_dataset(truth)
    field["sst"] = (field.sst - truth["trend"]).astype("float32").assign_attrs(field.sst.attrs)
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
    trend = result.components["trend"]  # the annual-mean change is the trend component's
    expected = (trend.sel(time=slice("1995", "1999")) - trend.sel(time=slice("1960", "1964")).mean("time")).values
    np.testing.assert_allclose(np.nanmean(change[:, ~land], 0), np.nanmean(expected[:, ~land], 0), atol=0.02)


def test_maps_have_the_grid_and_nan_on_land(result, truth):
    maps = result.maps["sst"]
    assert maps.dims == ("knob", "lat", "lon")
    assert np.isnan(maps.isel(knob=0).values[truth["land"]]).all()
    trend = maps.sel(knob=result.knobs_of("trend")[0]).values[~truth["land"]]
    expected = (truth["trend"][-1] - truth["trend"][0])[~truth["land"]]
    assert np.corrcoef(trend, expected)[0, 1] > 0.9  # the trend knob's map is the trend pattern


def test_the_trend_map_agrees_with_the_printed_area_mean_trend(result):
    """The map's cells use the slope the printed area-mean trend uses (Theil-Sen of annual means), and its
    interval has low below high in cooling cells too."""
    maps = result.maps
    weights = result.adapter.grid_weights()["sst"].fillna(0)
    mapped = float(maps["sst_trend_per_decade"].weighted(weights).mean())
    printed = ct.trend_component_slopes(result)["sst"]["trend_component"]
    assert mapped == pytest.approx(printed, rel=0.1), (mapped, printed)
    low, high = maps["sst_trend_per_decade_low"], maps["sst_trend_per_decade_high"]
    assert bool((low <= high).where(low.notnull(), True).all())
    cooled = result.components["trend"] * -1  # a cooling trend: the same interval, mirrored
    flipped = cc.trend_maps(result.components.assign(trend=cooled), result.adapter, result.knobs, result.time)
    assert bool((flipped["sst_trend_per_decade_low"] <= flipped["sst_trend_per_decade_high"]).where(low.notnull(),
                                                                                                    True).all())


def test_periods_outside_the_record_are_refused_in_one_line_naming_it(result):
    for call in (lambda: result.counterfactual("1930"), lambda: result.counterfactual("1965", at="2005"),
                 lambda: result.seasonal_cycle(slice("1900", "1910"))):
        with pytest.raises(ValueError, match=r"selects no time of the record \(1960-01-01 to 1999-12-01\)"):
            call()


def test_the_seasonal_cycle_s_months_are_the_record_s_months(result):
    """Monthly means stamped on the 1st: the model's cycle of each month is its value at the 1st, so the
    cycle at the mean level matches the record's monthly climatology."""
    assert cc.stamp_offset(result.time) == pytest.approx(-1 / 24, abs=0.003)
    cycle = result.seasonal_cycle()["sst"]
    observed = result.data["sst"].groupby("time.month").mean()
    rms = float(np.sqrt(((cycle - observed.values) ** 2).mean()))
    shifted = float(np.sqrt(((cycle - np.roll(observed.values, -1, axis=0)) ** 2).mean()))
    assert rms < 0.5 * shifted, (rms, shifted)


def truth_land(result):
    return result.data["sst"].isnull().all("time").values


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
    assert report["seasonal_change"]["series"] == result.settings["seasonal_change_series"]
    assert "held-out years" in report["seasonal_change"]["summary"]
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["decomposition_points.png", "knob_maps.png", "knob_series.png", "latent_series.png",
                       "season_and_trend_maps.png", "trend_vs_area_mean.png"]
    climatology = xr.open_dataset(out / "climatology.nc")["sst"]
    assert climatology.dims == ("term", "lat", "lon") and climatology.attrs["units"] == "degC"
    assert list(climatology["term"].values[:3]) == ["intercept", "cos1", "sin1"] and climatology.sizes["term"] == 11
    np.testing.assert_allclose(ct.encode(out, result.data), result.latents["z"].values, atol=1e-5)
    trend = xr.open_dataset(out / "maps.nc")["sst_trend_per_decade"]
    assert trend.attrs["units"] == "degC per decade" and np.isnan(trend.values[truth_land(result)]).all()


def test_cli_climate_writes_a_run_and_leaves_the_input_alone(tmp_path, capsys):
    field = ct.synthetic_dataset(monthly_field(n_years=3, n_lat=6, n_lon=8))
    path = tmp_path / "field.nc"
    field.to_netcdf(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "run"
    assert main(["climate", str(path), "--var", "sst", "--out", str(out), "--epochs", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "per decade" in printed and "held-out years" in printed
    assert (out / "components.nc").exists() and (out / "run.json").exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert main(["climate", str(path), "--var", "tas", "--out", str(tmp_path / "other"), "--quiet"]) == 2
    assert "'tas' is not in the data" in capsys.readouterr().err


def test_cli_climate_takes_several_variables_and_says_how(tmp_path, capsys):
    field = ct.synthetic_dataset(monthly_field(n_years=3, n_lat=6, n_lon=8))
    field["sst2"] = (field["sst"] * 0.5).assign_attrs(units="K", long_name="half the field")
    path = tmp_path / "two.nc"
    field.to_netcdf(path)
    assert main(["climate", str(path), "--out", str(tmp_path / "none"), "--quiet"]) == 2
    assert "choose one or more with --var NAME" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["climate", str(path), "--var", "sst", "sst2", "--out", str(out), "--epochs", "3", "--quiet"]) == 0
    with xr.open_dataset(out / "components.nc") as components:
        assert {"sst_trend", "sst2_trend"} <= set(components.data_vars)


def test_encode_and_counterfactual_keep_the_field_s_coordinates_and_names(result, tmp_path):
    out = result.save(tmp_path / "run")
    z = ct.encode(out, result.data.isel(time=slice(-24, None)))
    assert z.dims == ("time", "latent") and (z["time"].values == result.data["time"].values[-24:]).all()
    np.testing.assert_allclose(z.values, result.latents["z"].values[-24:], atol=1e-5)
    data = result.data.copy()
    data["sst"].attrs["actual_range"] = [-2.0, 35.0]
    changed = dataclasses.replace(result, data=data).counterfactual("1965", at="1999")["sst"]
    assert changed.attrs["units"] == "degC" and "actual_range" not in changed.attrs


COBE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "climate" / "cobe_sst2_global_4deg_monthly_1950-2009.nc"


@pytest.mark.skipif(not COBE.exists(), reason="needs ../shared/data (COBE-SST2 4 deg)")
def test_cobe_sst2_finds_the_observed_trend_and_leaves_no_seasons_in_the_residual():
    res = ct.run(str(COBE), var="sst", progress=False)
    trend = res.roles[res.roles["role"] == "trend"]
    assert len(trend) == 1 and trend["trend_r2"].max() > 0.7
    slopes = ct.trend_component_slopes(res)["sst"]
    assert slopes["observed_area_mean"] == pytest.approx(0.072, abs=0.002)  # the manifest's +0.07 degC/decade
    assert slopes["trend_component"] == pytest.approx(slopes["observed_area_mean"], abs=0.02)
    assert slopes["trend_component_low"] <= slopes["observed_area_mean"] <= slopes["trend_component_high"]
    assert ct.residual_seasonality(res)["sst"]["share"] <= 0.02  # measured 0.9%


COBE_2DEG = COBE.with_name("cobe_sst2_global_2deg_monthly_1950-2009.nc")


def _north_atlantic() -> xr.Dataset:
    """The issue's regional cut: COBE-SST2 2 deg, 30-60N, 80W-20E, 1970-1999."""
    ds = xr.open_dataset(COBE_2DEG).sortby("lat").sel(lat=slice(30, 60), time=slice("1970", "1999"))
    ds = ds.assign_coords(lon=((ds.lon + 180) % 360) - 180).sortby("lon").sel(lon=slice(-80, 20))
    return ds.load()


def _detrended(ds: xr.Dataset) -> xr.Dataset:
    """Each grid cell minus its own least-squares line through time."""
    years = xr.DataArray(ct.decimal_years(ds.time), dims="time", coords={"time": ds.time})
    t = years - years.mean()
    slope = ((ds.sst - ds.sst.mean("time")) * t).sum("time") / (t**2).sum()
    return ds.assign(sst=(ds.sst - slope * t).transpose(*ds.sst.dims).assign_attrs(ds.sst.attrs))


@pytest.mark.skipif(not COBE_2DEG.exists(), reason="needs ../shared/data (COBE-SST2 2 deg)")
def test_a_real_regional_trend_is_found_and_its_detrended_control_has_none():
    region = _north_atlantic()
    slopes = ct.trend_component_slopes(ct.run(region, var="sst", progress=False))["sst"]
    observed = slopes["observed_area_mean"]
    assert observed == pytest.approx(0.163, abs=0.005) and slopes["observed_detectable"]
    assert abs(slopes["trend_component"] - observed) <= 0.5 * observed  # measured +0.162
    assert slopes["trend_component_low"] <= observed <= slopes["trend_component_high"]
    control = ct.trend_component_slopes(ct.run(_detrended(region), var="sst", progress=False))["sst"]
    assert not control["trend_detectable"] and control["trend_component"] == 0.0
    assert not control["observed_detectable"]


def test_a_daily_field_gives_the_roles_and_components_of_its_monthly_means():
    field = ct.synthetic_dataset(daily_field(n_years=20, n_lat=6, n_lon=8, seed=1, noise=0.3))
    daily = ct.run(field, var="sst", epochs=40, progress=False)
    monthly = ct.run(field.resample(time="MS").mean(), var="sst", epochs=400, progress=False)
    assert daily.roles["role"].tolist() == monthly.roles["role"].tolist() == ["trend"]
    for name in ("seasonal", "trend"):
        found = daily.components[name].resample(time="MS").mean().values
        expected = monthly.components[name].values
        ok = np.isfinite(found) & np.isfinite(expected)
        assert np.corrcoef(found[ok], expected[ok])[0, 1] > 0.99, name  # measured 0.99998 and 0.996
    assert ct.residual_seasonality(daily)["sst"]["share"] < 0.01
    basis = ct.seasonal_basis(field.time[:31])  # the day of the year moves within January
    assert np.unique(basis[:, 0].round(6)).size == 31


def test_the_seasonal_basis_follows_each_calendar():
    for calendar, length in (("noleap", 365), ("360_day", 360), ("all_leap", 366)):
        time = xr.DataArray(xr.date_range("2001-01-01", periods=2 * length, freq="D", calendar=calendar,
                                          use_cftime=True), dims="time")
        phase = ct.year_fraction(time)
        assert phase[length] == 0.0 and phase[length - 1] == pytest.approx(1 - 1 / length)


def test_a_short_training_is_said_in_plain_words(result):
    steps = result.settings["optimiser_steps"]
    assert steps == 400 * -(-480 // 32)
    assert f"{steps:,} optimiser steps" in ct.training_note(result)
    enough = dataclasses.replace(result, settings={**result.settings, "optimiser_steps": ct.MIN_STEPS})
    assert ct.training_note(enough) is None


def test_the_peak_month_map_is_on_half_months(result):
    peak = result.maps["sst_seasonal_peak_month"].values
    peak = peak[np.isfinite(peak)]
    np.testing.assert_array_equal(peak * 2, np.round(peak * 2))
    assert peak.min() >= 1.0 and peak.max() < 13.0
