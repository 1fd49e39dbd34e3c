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


def _write_noise_field(path, n_time: int, n_lat: int = 100, n_lon: int = 200) -> float:
    import dask.array as dsa

    values = dsa.random.default_rng(0).normal(size=(n_time, n_lat, n_lon), chunks=(48, n_lat, n_lon))
    field = xr.DataArray(values.astype("float32"), dims=("time", "lat", "lon"), name="t",
                         coords={"time": np.arange(n_time), "lat": np.linspace(-89, 89, n_lat),
                                 "lon": np.linspace(0, 358, n_lon)})
    field.to_dataset().to_zarr(path, zarr_format=2)
    return n_time * n_lat * n_lon * 4 / 2**20


def test_streaming_memory_does_not_grow_with_the_length_of_the_field(tmp_path):
    short = tmp_path / "short.zarr", _write_noise_field(tmp_path / "short.zarr", 960)
    long = tmp_path / "long.zarr", _write_noise_field(tmp_path / "long.zarr", 4800)
    assert_growth_does_not_follow_the_input(MEMORY_SCRIPT, tmp_path, short, long)
