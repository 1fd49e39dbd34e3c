"""A cells matrix read a chunk at a time: seurat_v3 genes as scanpy's, a backed input checked, prepared, run and
written exactly as the same input in memory."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sciencevae.adapters.cells import CellsAdapter, drop_empty_cells, read_cells
from sciencevae.adapters.cells_chunks import gene_stats, is_backed, seurat_v3
from sciencevae.case_studies import gene_programmes

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scrna"
CELLBENCH = DATA / "cellbench_celseq2_5cl_3plates_counts.h5ad"


def _counts(n_cells: int = 1500, n_genes: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """NB counts with gene means spread over three orders of magnitude and a cell size factor; 3 batches."""
    rng = np.random.default_rng(seed)
    mean = rng.gamma(0.5, 2.0, size=n_genes) * rng.lognormal(0.0, 0.5, size=(n_cells, 1))
    counts = rng.negative_binomial(2, 2 / (2 + mean)).astype(np.float32)
    counts[:, :5] = 0  # genes never expressed are left out before choosing
    return counts, rng.choice(["b", "a", "c"], n_cells)


def _scanpy_genes(adata: ad.AnnData, n_top: int, batch_key: str | None) -> list[str]:
    import scanpy as sc

    expressed = adata[:, np.asarray((adata.X != 0).sum(0)).ravel() > 0].copy()
    expressed.X = expressed.X.astype(np.float32)
    sc.pp.highly_variable_genes(expressed, flavor="seurat_v3", n_top_genes=n_top, batch_key=batch_key)
    return list(expressed.var_names[expressed.var["highly_variable"].to_numpy()])


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("batch_key", [None, "batch"])
def test_seurat_v3_by_chunks_chooses_scanpy_s_genes(dense, batch_key):
    counts, batch = _counts()
    X = counts if dense else sp.csr_matrix(counts)
    adata = ad.AnnData(X, obs=pd.DataFrame({"batch": batch}, index=[f"c{i}" for i in range(len(counts))]))
    adata.var_names = [f"g{i}" for i in range(counts.shape[1])]
    codes = pd.Categorical(batch).codes.astype(np.int64) if batch_key else np.zeros(len(counts), np.int64)
    stats = gene_stats(X, codes, 3 if batch_key else 1, chunk_rows=256)  # 6 chunks, the last one short
    expressed = np.flatnonzero(stats.cells_per_gene > 0)
    chosen = expressed[seurat_v3(X, stats, codes, expressed, 150, chunk_rows=256)]
    assert list(adata.var_names[chosen]) == _scanpy_genes(adata, 150, batch_key)
    assert np.allclose(stats.sums.sum(0), counts.sum(0)) and np.allclose(stats.totals, counts.sum(1))


@pytest.mark.skipif(not CELLBENCH.exists(), reason="real data not in ../shared/data")
def test_seurat_v3_on_real_cells_with_plates_as_batches():
    adata = ad.read_h5ad(CELLBENCH)
    adapter = CellsAdapter.from_adata(adata, n_top_genes=2000, batch_key="batch")
    assert adapter.genes == _scanpy_genes(adata, 2000, "batch")


def _write(tmp_path: Path, with_raw: bool = False) -> tuple[Path, ad.AnnData]:
    counts, batch = _counts(n_cells=600, n_genes=300, seed=1)
    adata = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame({"batch": batch},
                                                               index=[f"c{i}" for i in range(len(counts))]))
    adata.var_names = [f"g{i}" for i in range(counts.shape[1])]
    if with_raw:  # counts in .raw, log values in X: what many published files hold
        adata.raw = adata.copy()
        adata.X = sp.csr_matrix(np.log1p(counts))
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return path, adata


def test_a_backed_input_is_prepared_as_the_same_input_in_memory(tmp_path):
    path, adata = _write(tmp_path)
    backed = read_cells(path, backed=True)
    options = dict(n_top_genes=100, batch_key="batch")
    adapter = CellsAdapter.from_adata(backed, **options)
    assert adapter.genes == CellsAdapter.from_adata(adata, **options).genes
    assert is_backed(backed.X)  # nothing above loaded it
    on_disk, in_memory = adapter.prepare(backed), adapter.prepare(adata)
    assert (on_disk.X != in_memory.X).nnz == 0
    assert np.array_equal(on_disk.covariates, in_memory.covariates)


def test_a_backed_input_runs_and_writes_what_the_same_input_in_memory_does(tmp_path):
    path, adata = _write(tmp_path, with_raw=True)
    options = dict(layer="raw", n_top_genes=100, batch_key="batch", epochs=3, progress=False, n_latent=4)
    from_disk = gene_programmes.run(read_cells(path, backed=True), **options)
    in_memory = gene_programmes.run(adata, **options)
    assert np.array_equal(from_disk.adata.obsm["X_sciencevae"], in_memory.adata.obsm["X_sciencevae"])
    pd.testing.assert_frame_equal(from_disk.programmes, in_memory.programmes)
    from_disk.save(tmp_path / "disk")
    in_memory.save(tmp_path / "memory")
    a, b = (ad.read_h5ad(tmp_path / name / "cells.h5ad") for name in ("disk", "memory"))
    assert (a.X != adata.X).nnz == 0 and (a.raw.X != adata.raw.X).nnz == 0  # the input's matrices, unchanged
    np.testing.assert_array_equal(a.raw.varm["sciencevae_loadings"], b.raw.varm["sciencevae_loadings"])
    np.testing.assert_array_equal(a.obsm["X_sciencevae"], b.obsm["X_sciencevae"])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.raw.var, b.raw.var)
    assert a.uns["sciencevae"]["params"] == b.uns["sciencevae"]["params"]
    assert ad.read_h5ad(path).X.nnz == adata.X.nnz  # the input is not touched


def test_empty_cells_are_dropped_from_a_backed_input(tmp_path):
    counts, _ = _counts(n_cells=50, n_genes=20)
    counts[[3, 7]] = 0
    ad.AnnData(sp.csr_matrix(counts)).write_h5ad(tmp_path / "a.h5ad")
    with pytest.warns(UserWarning, match="2 of 50 cells have no counts"):
        kept = drop_empty_cells(read_cells(tmp_path / "a.h5ad", backed=True))
    assert kept.n_obs == 48 and is_backed(kept.X)  # the kept cells stay on disk
    assert (kept.X[:] != sp.csr_matrix(np.delete(counts, [3, 7], axis=0))).nnz == 0
