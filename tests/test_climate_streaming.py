"""Fields streamed from zarr in time chunks: same statistics, rows and model as in memory; bounded memory."""

import textwrap

import numpy as np
import pytest
import torch
from memory_probe import assert_growth_does_not_follow_the_input
import xarray as xr

from sciencevae import BetaVAE
from sciencevae.adapters.climate import ClimateAdapter, open_field
from sciencevae.datasets import monthly_field

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _field(n_years: int = 12) -> xr.DataArray:
    d = monthly_field(n_years=n_years, n_lat=12, n_lon=24, seed=3)
    return xr.DataArray(d["field"], dims=("time", "lat", "lon"), name="sst",
                        coords={"time": d["time"], "lat": d["lat"], "lon": d["lon"]})


@pytest.fixture(scope="module")
def zarr_field(tmp_path_factory):
    path = tmp_path_factory.mktemp("field") / "sst.zarr"
    _field().chunk({"time": 12}).to_dataset().to_zarr(path, zarr_format=2)
    return path


def test_statistics_from_the_lazy_field_equal_the_in_memory_ones(zarr_field):
    lazy = open_field(zarr_field)
    assert lazy["sst"].chunks is not None, "the zarr field should open lazily"
    streamed_adapter = ClimateAdapter.from_data(lazy)
    memory_adapter = ClimateAdapter.from_data(_field())
    for a, b in zip(streamed_adapter.states, memory_adapter.states):
        np.testing.assert_array_equal(a.keep, b.keep)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
        np.testing.assert_allclose(a.std, b.std, rtol=1e-12)
        np.testing.assert_allclose(a.weight, b.weight, rtol=1e-12)


def test_streamed_rows_equal_the_prepared_matrix(zarr_field):
    adapter = ClimateAdapter.from_data(open_field(zarr_field))
    streamed = adapter.stream(open_field(zarr_field), chunk_rows=10)
    prepared = adapter.prepare(_field())
    assert (streamed.n_obs, streamed.n_features) == prepared.X.shape
    np.testing.assert_allclose(streamed.reader.read(17, 45), prepared.X[17:45], rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(streamed.feature_weights, prepared.feature_weights)


def test_fit_on_the_stream_encodes_like_the_prepared_field(zarr_field):
    adapter = ClimateAdapter.from_data(open_field(zarr_field))
    streamed = adapter.stream(open_field(zarr_field), chunk_rows=12, buffer_chunks=2)
    prepared = adapter.prepare(_field())
    torch.set_num_threads(1)
    vae = BetaVAE(adapter.n_features, n_latent=4, hidden=(32,), beta=2.0)
    history = vae.fit(streamed, epochs=30, batch_size=32, progress=False)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    np.testing.assert_allclose(vae.encode(streamed), vae.encode(prepared), atol=1e-5)
    memory = BetaVAE(adapter.n_features, n_latent=4, hidden=(32,), beta=2.0)
    memory.fit(prepared, epochs=30, batch_size=32, progress=False)
    assert vae.evaluate(streamed)["neg_elbo"] < memory.evaluate(prepared)["neg_elbo"] * 1.05 + 5


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from sciencevae import BetaVAE
    from sciencevae.adapters.climate import ClimateAdapter, open_field
    from sciencevae.streaming import peak_host_memory_mb
    torch.set_num_threads(1)
    import dask
    dask.config.set(scheduler="synchronous")
    before = peak_host_memory_mb()
    adapter = ClimateAdapter.from_data(open_field(sys.argv[1]))
    streamed = adapter.stream(open_field(sys.argv[1]), chunk_rows=48, buffer_chunks=2)
    vae = BetaVAE(adapter.n_features, n_latent=3, hidden=(8,))
    vae.fit(streamed, epochs=1, batch_size=64, progress=False)
    print(before, peak_host_memory_mb())
    """
)


def _write_noise_field(path, n_days: int, n_lat: int = 100, n_lon: int = 200) -> float:
    """A daily zarr field of noise on an annual cycle, written in dask chunks of 48 days; its size in MiB."""
    import dask.array as dsa
    import pandas as pd

    season = xr.DataArray(np.sin(2 * np.pi * np.arange(n_days) / 365.25), dims="time").chunk({"time": 48})
    noise = dsa.random.default_rng(0).normal(size=(n_days, n_lat, n_lon), chunks=(48, n_lat, n_lon))
    field = (xr.DataArray(noise.astype("float32"), dims=("time", "lat", "lon")) + season).rename("t")
    field = field.assign_coords(time=pd.date_range("1990-01-01", periods=n_days, freq="D"),
                                lat=np.linspace(-89, 89, n_lat), lon=np.linspace(0, 358, n_lon))
    field.to_dataset().to_zarr(path, zarr_format=2)
    return n_days * n_lat * n_lon * 4 / 2**20


def test_streaming_memory_does_not_grow_with_the_length_of_the_field(tmp_path):
    short = tmp_path / "short.zarr", _write_noise_field(tmp_path / "short.zarr", 960)
    long = tmp_path / "long.zarr", _write_noise_field(tmp_path / "long.zarr", 4800)
    assert_growth_does_not_follow_the_input(MEMORY_SCRIPT, tmp_path, short, long)


def test_the_case_study_read_chunk_by_chunk_gives_what_it_gives_in_memory(tmp_path, monkeypatch):
    from sciencevae.case_studies import climate_components as cc
    from sciencevae.case_studies import climate_trend as ct
    from sciencevae.streaming import ArrayRows

    d = monthly_field(n_years=20, n_lat=10, n_lon=20, seed=0)
    zarr_field = tmp_path / "trend.zarr"
    xr.DataArray(d["field"], dims=("time", "lat", "lon"), name="sst",
                 coords={"time": d["time"], "lat": d["lat"], "lon": d["lon"]}).chunk({"time": 12}).to_dataset().to_zarr(
        zarr_field, zarr_format=2)
    torch.set_num_threads(1)
    res = ct.run(open_field(zarr_field), n_latent=4, epochs=300, seed=0, hidden=(64,), beta=4.0, progress=False)
    assert res.knobs_of("trend"), "the field has a trend: the chunked trend path needs a trend knob to compare"
    ds, time, z = open_field(zarr_field)[["sst"]], res.time, res.latents["z"].values
    weights = cc.cell_scales(res.adapter)
    climatology, in_memory = cc.model_rows(res.adapter, ds, time)
    assert isinstance(in_memory, ArrayRows)
    whole = cc.decompose(res.model, climatology, z, res.knobs, time, in_memory, weights)
    monkeypatch.setattr(cc, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(cc, "CHUNK_VALUES", 7 * res.adapter.n_features)  # chunks of 7 months
    chunked_climatology, from_file = cc.model_rows(res.adapter, ds, time)
    assert isinstance(from_file, cc.AnomalyRows)
    np.testing.assert_allclose(chunked_climatology.coef, climatology.coef, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_file.read(30, 50), in_memory.read(30, 50), atol=1e-5, equal_nan=True)
    chunked = cc.decompose(res.model, chunked_climatology, z, res.knobs, time, from_file, weights)
    assert chunked.seasonal_changes == whole.seasonal_changes
    np.testing.assert_allclose(chunked.trend(), whole.trend(), atol=1e-4)
    np.testing.assert_allclose(chunked.seasonal(), whole.seasonal(), atol=1e-4)
    parts = cc.components(res.adapter, ds, chunked, time)
    assert parts["residual"].chunks[0][0] == 7, "components are computed chunk by chunk of time"
    np.testing.assert_allclose(parts["residual"].values, res.components["residual"].values, atol=1e-3,
                               equal_nan=True)


CASE_STUDY_SCRIPT = textwrap.dedent(
    """
    import sys, torch, dask
    from sciencevae.case_studies import climate_components as cc, climate_trend as ct
    from sciencevae.streaming import peak_host_memory_mb
    torch.set_num_threads(1)
    dask.config.set(scheduler="synchronous")
    # as for a field larger than memory: read from the file at every pass, in chunks, groups and pattern
    # samples (26 rows: fewer than the short field's 31 months) below the short field's size: both meet every bound
    cc.IN_MEMORY_BYTES, cc.CHUNK_VALUES, cc.GROUP_VALUES, cc.PATTERN_VALUES = 0, 2**20, 2**22, 2**19
    before = peak_host_memory_mb()
    res = ct.run(sys.argv[1], n_latent=3, epochs=1, hidden=(8,), progress=False)
    res.save(sys.argv[1] + ".run")
    print(before, peak_host_memory_mb())
    """
)


def test_the_case_study_s_memory_does_not_grow_with_the_length_of_the_field(tmp_path):
    short = tmp_path / "short.zarr", _write_noise_field(tmp_path / "short.zarr", 960)
    long = tmp_path / "long.zarr", _write_noise_field(tmp_path / "long.zarr", 4800)
    assert_growth_does_not_follow_the_input(CASE_STUDY_SCRIPT, tmp_path, short, long)
