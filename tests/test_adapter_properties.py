"""Property-based round trips of the adapters (hypothesis): random grids with NaN
holes, either latitude direction and calendar; random sparse counts and gene orders."""

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sciencevae.adapters.cells import CellsAdapter
from sciencevae.adapters.climate import ClimateAdapter

CALENDARS = ["standard", "noleap", "360_day"]


@st.composite
def fields(draw):
    n_time, n_lat, n_lon = draw(st.integers(3, 14)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    lat = np.sort(rng.choice(np.arange(-89.0, 90.0), n_lat, replace=False))
    if draw(st.booleans()):
        lat = lat[::-1]  # descending latitude
    lon = np.sort(rng.choice(np.arange(0.0, 360.0), n_lon, replace=False))
    calendar = draw(st.sampled_from(CALENDARS))
    time = xr.date_range("2001-01-01", periods=n_time, freq="MS", calendar=calendar, use_cftime=calendar != "standard")
    values = rng.normal(10, 3, size=(n_time, n_lat, n_lon))
    holes = rng.random(values.shape) < draw(st.floats(0, 0.3))
    values[holes] = np.nan
    values[:, 0, 0] = np.nan if draw(st.booleans()) else values[:, 0, 0]  # sometimes a land point
    if np.all(np.isnan(values)):
        values[0, -1, -1] = 1.0
    order = draw(st.permutations(["time", "lat", "lon"]))
    da = xr.DataArray(values, dims=("time", "lat", "lon"), coords={"time": time, "lat": lat, "lon": lon},
                      name="t", attrs={"units": "K"})
    return da.transpose(*order)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields())
def test_climate_roundtrip_keeps_values_coords_and_nan(field):
    adapter = ClimateAdapter.from_data(field)
    prepared = adapter.prepare(field)
    back = adapter.to_field(prepared.X, adapter.sample_coord(field))["t"].transpose(*field.dims)
    xr.testing.assert_allclose(back, field.astype(np.float32), rtol=1e-5, atol=1e-4)
    xr.testing.assert_identical(back.coords.to_dataset(), field.coords.to_dataset())
    assert back.attrs == field.attrs


@st.composite
def count_matrices(draw):
    n_cells, n_genes = draw(st.integers(2, 30)), draw(st.integers(1, 25))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    counts = rng.poisson(draw(st.floats(0.05, 5.0)), size=(n_cells, n_genes)).astype(np.float32)
    counts[:, 0] += 1  # every cell has a count
    return sp.csr_matrix(counts), rng.permutation(n_genes)


@settings(max_examples=40, deadline=None)
@given(count_matrices())
def test_cells_query_in_any_gene_order_maps_to_the_reference(data):
    counts, order = data
    genes = [f"gene{j}" for j in range(counts.shape[1])]
    reference = ad.AnnData(counts, var=pd.DataFrame(index=genes))
    adapter = CellsAdapter.from_adata(reference)
    expected = adapter.prepare(reference).X
    query = ad.AnnData(counts[:, order], var=pd.DataFrame(index=[genes[j] for j in order]))
    got = adapter.prepare(query).X
    assert sp.isspmatrix_csr(got)
    assert (got != expected).nnz == 0
    out = adapter.write_back(query, np.zeros((counts.shape[0], 2)), np.ones((len(adapter.genes), 2)), {})
    assert (out.X != query.X).nnz == 0
