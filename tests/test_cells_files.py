"""Cells files opened with their matrices on disk (counts in a layer or .raw of an .h5ad, a .zarr, a 10x .h5)
are checked, prepared, run and written exactly as the same data in memory, and written back unchanged."""

import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sciencevae.adapters.cells import CellsAdapter, read_cells
from sciencevae.adapters.cells_chunks import is_backed
from sciencevae.adapters.cells_files import read_10x_mtx
from sciencevae.case_studies import gene_programmes

RUN = dict(n_top_genes=60, batch_key="batch", epochs=2, progress=False, n_latent=3)


def _cells(n_cells: int = 400, n_genes: int = 120, seed: int = 2) -> ad.AnnData:
    """NB counts (CSR) with three batches; genes named g0, g1, ..."""
    rng = np.random.default_rng(seed)
    mean = rng.gamma(0.5, 2.0, size=n_genes) * rng.lognormal(0.0, 0.5, size=(n_cells, 1))
    counts = rng.negative_binomial(2, 2 / (2 + mean)).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1
    obs = pd.DataFrame({"batch": rng.choice(["a", "b", "c"], n_cells)}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def _log_normalised(counts: sp.csr_matrix) -> sp.csr_matrix:
    return sp.csr_matrix(np.log1p(counts.toarray() / counts.sum(1).A * 1e4))


def _same_results(on_disk: ad.AnnData, in_memory: ad.AnnData, folder: Path, **options) -> tuple[ad.AnnData, ...]:
    """Run both, check the results are equal, save both; the two cells.h5ad read back."""
    a, b = (gene_programmes.run(x, **RUN, **options) for x in (on_disk, in_memory))
    np.testing.assert_array_equal(a.adata.obsm["X_sciencevae"], b.adata.obsm["X_sciencevae"])
    pd.testing.assert_frame_equal(a.programmes, b.programmes)
    a.save(folder / "disk")
    b.save(folder / "memory")
    return tuple(ad.read_h5ad(folder / name / "cells.h5ad") for name in ("disk", "memory"))


def _equal(x, y) -> bool:
    x, y = (m.toarray() if sp.issparse(m) else np.asarray(m) for m in (x, y))
    return x.shape == y.shape and np.array_equal(x, y)


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_counts_in_a_layer_stay_on_disk_and_give_the_in_memory_results(tmp_path, suffix):
    adata = _cells()
    adata.layers["counts"] = adata.X.copy()
    adata.layers["dense"] = adata.X.toarray()  # a dense layer on disk too
    adata.X = _log_normalised(adata.X)
    path = tmp_path / f"cells{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's format note
        adata.write_h5ad(path) if suffix == ".h5ad" else adata.write_zarr(path)
    on_disk = read_cells(path, backed=True)
    assert all(is_backed(m) for m in (on_disk.X, on_disk.layers["counts"], on_disk.layers["dense"]))
    assert list(on_disk.obs["batch"]) == list(adata.obs["batch"])
    a, b = _same_results(on_disk, adata, tmp_path, layer="counts")
    for out in (a, b):  # every matrix written back as it was
        assert _equal(out.X, adata.X) and _equal(out.layers["counts"], adata.layers["counts"])
        assert _equal(out.layers["dense"], adata.layers["dense"])
    np.testing.assert_array_equal(a.varm["sciencevae_loadings"], b.varm["sciencevae_loadings"])
    assert is_backed(on_disk.layers["counts"])  # running did not load it


def test_counts_in_raw_of_a_zarr_are_read_and_written_by_chunks(tmp_path):
    adata = _cells()
    adata.raw = adata.copy()
    adata.X = _log_normalised(adata.X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_zarr(tmp_path / "cells.zarr")
    on_disk = read_cells(tmp_path / "cells.zarr", backed=True)
    assert is_backed(on_disk.raw.X)
    a, b = _same_results(on_disk, adata, tmp_path, layer="raw")
    assert _equal(a.raw.X, adata.raw.X) and _equal(a.X, adata.X)
    np.testing.assert_array_equal(a.raw.varm["sciencevae_loadings"], b.raw.varm["sciencevae_loadings"])


def _write_10x_h5(path: Path, counts: np.ndarray, names: list[str], ids: list[str],
                  types: list[str] | None = None, v2: bool = False) -> None:
    """A Cell Ranger feature-barcode matrix: features x barcodes in compressed-column form."""
    by_cell = sp.csr_matrix(counts.astype(np.int32))  # barcodes x features CSR = features x barcodes CSC
    barcodes = [f"AAAC{i:06d}-1" for i in range(counts.shape[0])]
    with h5py.File(path, "w") as f:
        group = f.create_group("GRCh38" if v2 else "matrix")
        group["data"], group["indices"], group["indptr"] = by_cell.data, by_cell.indices, by_cell.indptr
        group["shape"] = np.array([counts.shape[1], counts.shape[0]], dtype=np.int32)
        group["barcodes"] = np.array(barcodes, dtype="S")
        if v2:
            group["genes"], group["gene_names"] = np.array(ids, dtype="S"), np.array(names, dtype="S")
            return
        features = group.create_group("features")
        features["id"], features["name"] = np.array(ids, dtype="S"), np.array(names, dtype="S")
        features["feature_type"] = np.array(types or ["Gene Expression"] * len(ids), dtype="S")
        features["genome"] = np.array(["GRCh38"] * len(ids), dtype="S")
        features["_all_tag_keys"] = np.array([b"genome"])


@pytest.mark.parametrize("v2", [False, True])
def test_a_10x_h5_stays_on_disk_with_repeated_symbols_made_unique(tmp_path, v2):
    import scanpy as sc

    adata = _cells()
    counts = adata.X.toarray()
    names = [f"G{j}" for j in range(counts.shape[1])]
    names[7] = names[3]  # one symbol for two gene ids, as in Cell Ranger's references
    ids = [f"ENSG{j:011d}" for j in range(counts.shape[1])]
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    _write_10x_h5(path, counts, names, ids, v2=v2)
    with pytest.warns(UserWarning, match="1 gene names repeat .e.g. 'G3'.*made unique"):
        on_disk = read_cells(path, backed=True)
    assert is_backed(on_disk.X) and on_disk.var_names[7] == "G3-1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scanpy_s = sc.read_10x_h5(path)
    scanpy_s.var_names_make_unique()
    assert list(on_disk.var_names) == list(scanpy_s.var_names)
    assert list(on_disk.obs_names) == list(scanpy_s.obs_names)
    assert list(on_disk.var["gene_ids"]) == list(scanpy_s.var["gene_ids"])
    adapter = CellsAdapter.from_adata(on_disk, n_top_genes=50)
    assert adapter.genes == CellsAdapter.from_adata(scanpy_s, n_top_genes=50).genes
    assert _equal(adapter.prepare(on_disk).X, adapter.prepare(scanpy_s).X)
    res = gene_programmes.run(on_disk, n_top_genes=50, epochs=2, progress=False, n_latent=3)
    res.save(tmp_path / "run")
    out = ad.read_h5ad(tmp_path / "run" / "cells.h5ad")
    assert _equal(out.X, counts) and list(out.var_names) == list(on_disk.var_names)
    from sciencevae.case_studies.export import load_run

    exported = load_run(tmp_path / "run")  # the ids travel with the symbols
    assert list(exported["gene_id"].values) == list(on_disk.var.loc[list(exported["gene"].values), "gene_ids"])
    with pytest.raises(ValueError, match=r"'counts' does not exist; the AnnData has layers \[\] \(or use X\)"):
        CellsAdapter.from_adata(on_disk, layer="counts")


def test_a_10x_h5_with_antibody_features_keeps_gene_expression_on_disk(tmp_path):
    """Antibody features among the genes (anywhere, not only last) are left out as scanpy's gex_only does; the
    gene expression stays on disk (a temporary copy) and equals scanpy's read."""
    import scanpy as sc

    adata = _cells(n_genes=40)
    counts = adata.X.toarray()
    antibodies = [3, 17, 39]
    types = ["Antibody Capture" if j in antibodies else "Gene Expression" for j in range(40)]
    path = tmp_path / "citeseq.h5"
    _write_10x_h5(path, counts, [f"G{j}" for j in range(40)], [f"ID{j}" for j in range(40)], types=types)
    with pytest.warns(UserWarning, match=r"3 features that are not gene expression \(Antibody Capture\)"):
        read = read_cells(path, backed=True)
    expected = sc.read_10x_h5(path)
    genes = [j for j in range(40) if j not in antibodies]
    assert is_backed(read.X) and read.n_vars == 37 and _equal(read.X[:], counts[:, genes])
    assert _equal(read.X[:], expected.X) and list(read.var_names) == list(expected.var_names)
    assert list(read.var["gene_ids"]) == list(expected.var["gene_ids"])


def test_a_10x_mtx_folder_gets_unique_gene_names(tmp_path):
    import gzip

    import scipy.io

    adata = _cells(n_genes=30)
    folder = tmp_path / "filtered_feature_bc_matrix"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, sp.coo_matrix(adata.X.T.astype(np.int64)))
    names = [f"G{j}" for j in range(30)]
    names[5] = names[4]
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.writelines(f"ID{j}\t{name}\tGene Expression\n" for j, name in enumerate(names))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.writelines(f"{name}\n" for name in adata.obs_names)
    for backed in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            read = read_cells(folder, backed=backed)
        assert [str(w.message)[:40] for w in caught] == ["filtered_feature_bc_matrix: 1 gene names"]  # one, ours
        X = read.X[:] if backed else read.X
        assert read.var_names.is_unique and _equal(X, adata.X) and sp.isspmatrix_csr(X)
        assert is_backed(read.X) == backed
    with pytest.raises(ValueError, match="a file of a 10x mtx folder: give the folder"):
        read_cells(folder / "matrix.mtx.gz")


def _write_10x_mtx(folder: Path, counts: sp.csr_matrix, features: list[str], barcodes: list[str],
                   v2: bool = False, by_barcode: bool = True) -> Path:
    """A 10x mtx folder of ``counts`` (cells x features): Cell Ranger v3 (gzip, features.tsv with types) or
    v2 (plain text, genes.tsv); entries barcode by barcode as Cell Ranger writes them, or feature by feature."""
    import gzip

    folder.mkdir()
    opener, suffix = (open, "") if v2 else (gzip.open, ".gz")
    coo = counts.tocoo()
    order = np.lexsort((coo.col, coo.row) if by_barcode else (coo.row, coo.col))
    with opener(folder / f"matrix.mtx{suffix}", "wt") as f:
        f.write("%%MatrixMarket matrix coordinate integer general\n%metadata_json: {}\n")
        f.write(f"{counts.shape[1]} {counts.shape[0]} {counts.nnz}\n")
        f.writelines(f"{c + 1} {r + 1} {int(v)}\n" for r, c, v in zip(coo.row[order], coo.col[order], coo.data[order]))
    with opener(folder / ("genes.tsv" if v2 else "features.tsv.gz"), "wt") as f:
        f.writelines(f"ID{j}\t{name}" + ("" if v2 else f"\t{kind}") + "\n"
                     for j, (name, kind) in enumerate(features))
    with opener(folder / f"barcodes.tsv{suffix}", "wt") as f:
        f.writelines(f"{b}\n" for b in barcodes)
    return folder


@pytest.mark.parametrize("v2", [False, True])
def test_a_10x_mtx_folder_is_read_to_disk_as_scanpy_reads_it(tmp_path, v2):
    import scanpy as sc

    adata = _cells(n_genes=40)
    features = [(f"G{j}", "Gene Expression") for j in range(40)]
    folder = _write_10x_mtx(tmp_path / "mtx", adata.X, features, list(adata.obs_names), v2=v2)
    on_disk = read_cells(folder, backed=True)
    expected = sc.read_10x_mtx(folder)
    assert is_backed(on_disk.X) and on_disk.X.shape == expected.shape
    assert _equal(on_disk.X[:], expected.X) and _equal(on_disk.X[:], adata.X)
    assert _equal(read_10x_mtx(folder, block=97).X[:], adata.X)  # parsed 97 entries at a time
    assert list(on_disk.obs_names) == list(expected.obs_names) and list(on_disk.var_names) == list(expected.var_names)
    pd.testing.assert_frame_equal(on_disk.var, expected.var, check_dtype=False, check_index_type=False)
    in_memory = ad.AnnData(sp.csr_matrix(expected.X), obs=adata.obs.set_index(expected.obs_names), var=expected.var)
    on_disk.obs["batch"] = adata.obs["batch"].to_numpy()
    _same_results(on_disk, in_memory, tmp_path)


def test_a_10x_mtx_folder_out_of_barcode_order_is_read_in_memory_and_antibodies_are_left_out(tmp_path):
    import scanpy as sc

    adata = _cells(n_genes=40)
    genes = [(f"G{j}", "Gene Expression") for j in range(40)]
    unordered = read_cells(_write_10x_mtx(tmp_path / "a", adata.X, genes, list(adata.obs_names), by_barcode=False),
                           backed=True)
    assert not is_backed(unordered.X) and _equal(unordered.X, adata.X)
    mixed = [(f"CD{j}", "Antibody Capture") if j in (0, 21) else gene for j, gene in enumerate(genes)]
    folder = _write_10x_mtx(tmp_path / "b", adata.X, mixed, list(adata.obs_names))
    with pytest.warns(UserWarning, match="2 features that are not gene expression"):
        cite = read_cells(folder, backed=True)
    kept = [j for j in range(40) if j not in (0, 21)]
    assert is_backed(cite.X) and cite.shape == (adata.n_obs, 38) and _equal(cite.X[:], adata.X[:, kept])
    expected = sc.read_10x_mtx(folder)
    assert _equal(cite.X[:], expected.X) and list(cite.var_names) == list(expected.var_names)


def test_a_gaussian_model_of_raw_counts_is_warned_about_and_of_log_values_is_not():
    adata = _cells()
    with pytest.warns(UserWarning, match=r"X holds integer counts \(up to \d+\) but likelihood 'gaussian'"):
        CellsAdapter.from_adata(adata, likelihood="gaussian")
    adata.X = _log_normalised(adata.X)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CellsAdapter.from_adata(adata, likelihood="gaussian")
    assert not [w for w in caught if "gaussian" in str(w.message)]


def test_empty_cells_dropped_from_matrices_on_disk_stay_on_disk(tmp_path):
    from sciencevae.adapters.cells import drop_empty_cells

    adata = _cells()
    adata.X[[5, 9]] = 0  # two empty cells
    adata.X.eliminate_zeros()
    adata.raw = adata.copy()
    adata.layers["dense"] = adata.X.toarray()
    adata.obsm["X_pca"] = np.arange(adata.n_obs * 2, dtype=np.float32).reshape(-1, 2)
    adata.obsp["distances"] = sp.random(adata.n_obs, adata.n_obs, density=0.01, format="csr", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_zarr(tmp_path / "cells.zarr")
    with pytest.warns(UserWarning, match="2 of 400 cells have no counts in X and were dropped"):
        kept = drop_empty_cells(read_cells(tmp_path / "cells.zarr", backed=True))
    expected = adata[np.asarray(adata.X.sum(1)).ravel() > 0]
    assert all(is_backed(m) for m in (kept.X, kept.raw.X, kept.layers["dense"]))
    assert _equal(kept.X[:], expected.X) and _equal(kept.raw.X[:], expected.raw.X)
    assert _equal(kept.layers["dense"][:], expected.layers["dense"])
    assert list(kept.obs_names) == list(expected.obs_names) and list(kept.obs["batch"]) == list(expected.obs["batch"])
    assert _equal(kept.obsm["X_pca"], expected.obsm["X_pca"]) and _equal(kept.obsp["distances"],
                                                                         expected.obsp["distances"])
    assert _equal(CellsAdapter.from_adata(kept, n_top_genes=50).prepare(kept).X,
                  CellsAdapter.from_adata(expected, n_top_genes=50).prepare(expected).X)


def test_a_10x_mtx_folder_that_does_not_match_its_lists_is_refused(tmp_path):
    import gzip

    adata = _cells(n_genes=40)
    features = [(f"G{j}", "Gene Expression") for j in range(41)]  # one more than the matrix has
    folder = _write_10x_mtx(tmp_path / "mtx", adata.X, features, list(adata.obs_names))
    with pytest.raises(ValueError, match="is 40 x 400 but the folder lists 41 features and 400 barcodes"):
        read_cells(folder, backed=True)
    with gzip.open(folder / "matrix.mtx.gz", "wt") as f:
        f.write("%%MatrixMarket matrix array integer general\n40 400\n")
    with pytest.raises(ValueError, match="is not a coordinate Matrix Market file"):
        read_cells(folder, backed=True)
