"""AnnData adapter: validation, layers, HVG, covariates, query mapping, write-back."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sciencevae.adapters.cells import OBSM_KEY, UNS_KEY, VARM_KEY, CellsAdapter, read_cells
from sciencevae.datasets import cell_programmes


@pytest.fixture
def adata():
    sim = cell_programmes(300, n_genes=200, seed=1)
    obs = pd.DataFrame({"batch": sim["batch"].astype(str), "cell_type": sim["identity"].astype(str),
                        "depth": sim["library"]}, index=[f"cell{i}" for i in range(300)])
    a = ad.AnnData(sim["counts"], obs=obs, var=pd.DataFrame(index=[f"gene{j}" for j in range(200)]))
    a.layers["counts"] = a.X.copy()
    return a


def test_csr_stays_csr_and_counts_are_untouched(adata):
    before = adata.X.copy()
    adapter = CellsAdapter.from_adata(adata)
    prepared = adapter.prepare(adata)
    assert sp.isspmatrix_csr(prepared.X) and prepared.X.shape == (300, 200)
    out = adapter.write_back(adata, np.zeros((300, 3)), np.ones((200, 3)), {"params": {"n_latent": 3}})
    assert (adata.X != before).nnz == 0 and OBSM_KEY not in adata.obsm  # the input is not modified
    assert out.obsm[OBSM_KEY].shape == (300, 3) and out.varm[VARM_KEY].shape == (200, 3)
    assert out.uns[UNS_KEY]["params"]["n_latent"] == 3 and (out.X != before).nnz == 0


def test_an_atlas_s_counts_are_not_copied(adata):
    """Every gene modelled: the training matrix and the written-back AnnData hold the input's counts
    themselves (a 1M-cell matrix is 1.3 GB); the input's annotations stay as they were."""
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adapter = CellsAdapter.from_adata(adata)
    assert np.shares_memory(adapter.prepare(adata).X.data, adata.X.data)
    out = adapter.write_back(adata, np.zeros((300, 3)), np.ones((200, 3)), {})
    assert out.X is adata.X and out.layers["counts"] is adata.layers["counts"]
    assert "sciencevae_used" not in adata.var and VARM_KEY not in adata.varm and UNS_KEY not in adata.uns
    subset = CellsAdapter(genes=adapter.genes[::-1])  # another order: a copy, as before
    assert not np.shares_memory(subset.prepare(adata).X.data, adata.X.data)


def test_stored_zeros_do_not_count_as_expressed(adata):
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.X.data[adata.X.indices == 7] = 0.0  # gene7: entries stored, all zero
    with pytest.warns(UserWarning, match="1 genes have no counts in any cell"):
        adapter = CellsAdapter.from_adata(adata)
    assert "gene7" not in adapter.genes and len(adapter.genes) == 199


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.X.multiply(0.5).tocsr(), "non-integer values"),
        (lambda a: a.X.multiply(-1).tocsr(), "negative values"),
    ],
)
def test_counts_are_validated_with_the_fix(adata, change, message):
    adata.X = change(adata)
    with pytest.raises(ValueError, match=message) as info:
        CellsAdapter.from_adata(adata, likelihood="nb")
    assert "likelihood gaussian" in str(info.value)
    CellsAdapter.from_adata(adata, likelihood="gaussian")  # continuous data are fine for a Gaussian


def test_empty_data_and_all_zero_cells_are_named(adata):
    with pytest.raises(ValueError, match="empty"):
        CellsAdapter.from_adata(adata[:0].copy())
    zeroed = adata.copy()
    matrix = zeroed.X.tolil()
    matrix[0] = 0
    zeroed.X = matrix.tocsr()
    with pytest.raises(ValueError, match="1 cells have no counts"):
        CellsAdapter.from_adata(zeroed)


def test_layers_raw_and_missing_layer(adata):
    adata.X = np.log1p(adata.X.toarray())
    with pytest.raises(ValueError, match="non-integer"):
        CellsAdapter.from_adata(adata)
    assert CellsAdapter.from_adata(adata, layer="counts").prepare(adata).X.shape == (300, 200)
    adata.raw = ad.AnnData(adata.layers["counts"], var=adata.var)
    assert CellsAdapter.from_adata(adata, layer="raw").prepare(adata).X.nnz == adata.layers["counts"].nnz
    with pytest.raises(ValueError, match=r"layer 'spliced' does not exist; the AnnData has layers \['counts'\]"):
        CellsAdapter.from_adata(adata, layer="spliced")


def test_highly_variable_genes_keep_the_programme_genes(adata):
    sim = cell_programmes(300, n_genes=200, seed=1)
    adapter = CellsAdapter.from_adata(adata, n_top_genes=100, batch_key="batch")
    assert len(adapter.genes) == 100
    programme_genes = {f"gene{j}" for j in np.flatnonzero(sim["membership"].any(1))}  # 180 of 200
    assert len(programme_genes & set(adapter.genes)) >= 98  # the 20 flat genes are (almost) never chosen


def test_covariates_one_hot_and_continuous(adata):
    adapter = CellsAdapter.from_adata(adata, batch_key="batch", categorical_covariate_keys=["cell_type"],
                                      continuous_covariate_keys=["depth"])
    assert adapter.n_covariates == 2 + 4 + 1
    covariates = adapter.prepare(adata).covariates
    assert covariates.shape == (300, 7)
    np.testing.assert_array_equal(covariates[:, :2].sum(1), 1)
    assert abs(covariates[:, -1].mean()) < 1e-5
    query = adata.copy()
    query.obs["batch"] = "new"
    with pytest.raises(ValueError, match="categories the model has not seen"):
        adapter.prepare(query)
    with pytest.raises(ValueError, match="obs column 'donor' does not exist"):
        CellsAdapter.from_adata(adata, batch_key="donor")


def test_query_genes_are_reordered_by_name_and_missing_ones_listed(adata):
    adapter = CellsAdapter.from_adata(adata)
    reference = adapter.prepare(adata).X.toarray()
    shuffled = adata[:, np.random.default_rng(0).permutation(200)].copy()
    np.testing.assert_array_equal(adapter.prepare(shuffled).X.toarray(), reference)
    partial = adata[:, 5:].copy()
    with pytest.raises(ValueError, match="5 of the model's 200 genes are missing from the data: gene0, gene1"):
        adapter.prepare(partial)
    with pytest.warns(UserWarning, match="filled with zeros"):
        filled = adapter.prepare(partial, missing_genes="zero").X.toarray()
    assert np.all(filled[:, :5] == 0) and np.array_equal(filled[:, 5:], reference[:, 5:])


def test_binarize_for_bernoulli(adata):
    adapter = CellsAdapter.from_adata(adata, likelihood="bernoulli", binarize=True)
    X = adapter.prepare(adata).X
    assert set(np.unique(X.data)) == {1.0}


def test_adapter_save_load_and_read_files(adata, tmp_path):
    adapter = CellsAdapter.from_adata(adata, batch_key="batch")
    loaded = CellsAdapter.load(adapter.save(tmp_path / "adapter.json"))
    assert loaded == adapter
    adata.write_h5ad(tmp_path / "cells.h5ad")
    assert read_cells(tmp_path / "cells.h5ad").shape == (300, 200)
    backed = read_cells(tmp_path / "cells.h5ad", backed=True)
    np.testing.assert_array_equal(adapter.prepare(backed).X.toarray(), adapter.prepare(adata).X.toarray())
    (tmp_path / "broken.h5ad").write_bytes((tmp_path / "cells.h5ad").read_bytes()[:300])
    with pytest.raises(ValueError, match="could not read"):
        read_cells(tmp_path / "broken.h5ad")
    with pytest.raises(FileNotFoundError):
        read_cells(tmp_path / "missing.h5ad")
