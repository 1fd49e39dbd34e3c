"""The input zoo for `sciencevae cells`: AnnData files as scientists bring them.

Each variant runs through the CLI to every output (cells.h5ad, programmes,
association, figures, report.html, and `export` as zarr, parquet and csv) and
either completes with the right values or exits 2 with one line naming the
problem and the fix. Never a traceback, an INCOMPLETE run left behind, or a
changed input.
"""

import hashlib
import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import xarray as xr

from sciencevae.adapters.cells import CellsAdapter, read_cells
from sciencevae.case_studies import gene_programmes
from sciencevae.cli import INCOMPLETE, main
from sciencevae.datasets import count_programmes

N_CELLS, N_GENES = 90, 40
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "scrna"
MOUSE_10K = SHARED / "mouse_10x_10kcells_first1000genes_counts.h5ad"
RUN = ["--epochs", "2", "--n-latent", "3", "--quiet"]


def digest(folder: Path) -> dict:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def counts() -> np.ndarray:
    return count_programmes(N_CELLS, n_genes=N_GENES, seed=1)[0].toarray().astype(np.float32)


def base(X=None) -> ad.AnnData:
    X = counts() if X is None else X
    obs = pd.DataFrame({"batch": np.repeat(["p1", "p2", "p3"], N_CELLS // 3),
                        "cell_type": np.tile(["T", "B", "NK"], N_CELLS // 3)},
                       index=[f"cell{i}" for i in range(N_CELLS)])
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])]))


def log_normalised(X: np.ndarray) -> np.ndarray:
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4).astype(np.float32)


def in_raw_with_ids() -> ad.AnnData:
    """Counts in .raw over all genes, Ensembl ids as var_names, symbols in a column; X holds a
    log-normalised subset of the genes (as after scanpy's HVG subsetting)."""
    X = counts()
    ids = [f"ENSG{j:011d}" for j in range(N_GENES)]
    var = pd.DataFrame({"gene_symbol": [f"SYM{j}" for j in range(N_GENES)]}, index=ids)
    full = base(X)
    full.var = var
    adata = ad.AnnData(log_normalised(X)[:, :N_GENES // 2], obs=full.obs.copy(), var=var.iloc[:N_GENES // 2].copy())
    adata.raw = full
    return adata


def with_(change):
    def build():
        adata = base()
        change(adata)
        return adata
    return build


def set_obs(key, values):
    return with_(lambda a: a.obs.__setitem__(key, values))


def nan_batch(adata):
    adata.obs["batch"] = adata.obs["batch"].astype(object)
    adata.obs.iloc[[4, 9], adata.obs.columns.get_loc("batch")] = np.nan


def duplicated_genes(adata):
    adata.var_names = ["g0", "g0"] + list(adata.var_names[2:])


def duplicated_cells(adata):
    adata.obs_names = ["cell0"] + list(adata.obs_names[:-1])


def near_integer(adata):
    adata.X = (adata.X / np.float32(3.0) * np.float32(3.0)) + np.float32(4e-7) * (adata.X > 0)


def layer_counts(adata):
    adata.layers["counts"] = adata.X.copy()
    adata.X = log_normalised(adata.X)


def raw_counts(adata):
    adata.raw = adata.copy()
    adata.X = log_normalised(adata.X)


def nan_in_descriptive_column(adata):
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(object)
    adata.obs.iloc[:5, adata.obs.columns.get_loc("cell_type")] = np.nan


# name -> (AnnData builder, extra CLI arguments)
COMPLETE = {
    "dense float32": (base, []),
    "dense int16": (with_(lambda a: setattr(a, "X", a.X.astype(np.int16))), []),
    "dense uint32": (with_(lambda a: setattr(a, "X", a.X.astype(np.uint32))), []),
    "CSR": (with_(lambda a: setattr(a, "X", sp.csr_matrix(a.X))), []),
    "CSC": (with_(lambda a: setattr(a, "X", sp.csc_matrix(a.X))), []),
    "near-integer float counts": (with_(near_integer), []),
    "counts in a layer": (with_(layer_counts), ["--layer", "counts"]),
    "counts in raw, ids and symbols": (in_raw_with_ids, ["--layer", "raw", "--gene-symbols", "gene_symbol"]),
    "batch key with HVG": (base, ["--batch-key", "batch", "--n-top-genes", "30"]),
    "numeric batch key": (set_obs("batch", np.repeat([1, 2, 3], N_CELLS // 3)), ["--batch-key", "batch"]),
    "NaN in a descriptive column": (with_(nan_in_descriptive_column), []),
    "empty cells dropped": (with_(lambda a: a.X.__setitem__(slice(0, 3), 0)), ["--drop-empty-cells"]),
}

REFUSED = {
    "duplicated gene names": (with_(duplicated_genes), [], "var_names are not unique (1 repeated: 'g0')",
                              "var_names_make_unique()"),
    "duplicated cell names": (with_(duplicated_cells), [], "obs_names are not unique", "obs_names_make_unique()"),
    "NaN in the batch key": (with_(nan_batch), ["--batch-key", "batch"], "'batch' has no value for 2 of 90 cells",
                             "drop those cells"),
    "NaN in the batch key with HVG": (with_(nan_batch), ["--batch-key", "batch", "--n-top-genes", "20"],
                                      "'batch' has no value for 2 of 90 cells", "drop those cells"),
    "'nan' strings in the batch key": (set_obs("batch", ["nan"] * 3 + ["p1", "p2", "p3"] * 29), ["--batch-key", "batch"],
                                       "'batch' has no value for 3 of 90 cells", "fill them in"),
    "one batch": (set_obs("batch", "p1"), ["--batch-key", "batch"], "same value ('p1') for every cell", "leave it out"),
    "a batch per cell": (set_obs("batch", [f"b{i}" for i in range(N_CELLS)]), ["--batch-key", "batch"],
                         "90 different values for 90 cells", "choose a column"),
    "one-cell batch with HVG": (set_obs("batch", ["p1"] * 89 + ["p2"]), ["--batch-key", "batch", "--n-top-genes", "20"],
                                "batch 'p2' of obs column 'batch' has 1 cell", "--n-top-genes 0"),
    "missing batch column": (base, ["--batch-key", "plate"], "obs column 'plate' does not exist", "batch"),
    "log-normalised X, counts in raw": (with_(raw_counts), [], "X holds non-integer values (e.g. ",
                                        "pass --layer raw"),
    "log-normalised X, counts in a layer": (with_(layer_counts), [], "X holds non-integer values",
                                            "pass --layer counts"),
    "missing symbol column": (in_raw_with_ids, ["--layer", "raw", "--gene-symbols", "symbol"],
                              "has no column 'symbol' for --gene-symbols", "gene_symbol"),
}


@pytest.fixture
def write(tmp_path):
    def write(adata: ad.AnnData, name: str = "cells.h5ad") -> Path:
        folder = tmp_path / "input"
        folder.mkdir(exist_ok=True)
        path = folder / name
        adata.write_zarr(path) if name.endswith(".zarr") else adata.write_h5ad(path)
        return path
    return write


def run_cli(args, capsys):
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured


def check_complete_run(run: Path, adata: ad.AnnData, args: list[str], capsys) -> ad.AnnData:
    """Every documented output exists, and every export format holds what cells.h5ad holds."""
    assert not (run / INCOMPLETE).exists()
    for name in ("cells.h5ad", "programmes.csv", "association.csv", "report.html", "run.json", "adapter.json",
                 "figures/top_genes.png", "figures/umap_programmes.png", "model/config.json"):
        assert (run / name).is_file(), name
    if "--drop-empty-cells" in args:
        adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0]
        report = (run / "report.html").read_text(encoding="utf-8")  # what was printed is in the report too
        assert "Warnings during the run" in report and "have no counts in X and were dropped" in report
    out = ad.read_h5ad(run / "cells.h5ad")
    assert out.obsm["X_sciencevae"].shape == (adata.n_obs, 3)
    assert list(out.obs_names) == list(adata.obs_names) and list(out.var_names) == list(adata.var_names)
    association = pd.read_csv(run / "association.csv")
    assert not association["group"].astype(str).str.lower().isin(["nan", ""]).any()
    modelled = out.raw if "raw" in args else out
    loadings = np.asarray(modelled.varm["sciencevae_loadings"])
    used = modelled.var["sciencevae_used"].to_numpy()
    assert np.all(np.abs(loadings[used]).sum(1) > 0) and np.all(loadings[~used] == 0)
    code, captured = run_cli(["diagnose", str(run)], capsys)  # on the recorded input, through the run's adapter
    assert code == 0 and "active" in captured.out, captured.err
    for fmt in ("zarr", "parquet", "csv"):
        code, captured = run_cli(["export", str(run), "--format", fmt, "--out", str(run.parent / f"export_{fmt}")],
                                 capsys)
        assert code == 0, captured.err
    exported = xr.open_zarr(run.parent / "export_zarr" / "export.zarr")
    assert "per unit of programme activity" in exported["loading"].attrs["long_name"]
    assert "activity per cell" in exported["activity"].attrs["long_name"]
    np.testing.assert_array_equal(exported["loading"].values, loadings[used])  # every modelled gene, no others
    assert list(exported["gene"].values) == list(modelled.var_names[used])
    table = pd.read_parquet(run.parent / "export_parquet" / "loading.parquet")
    np.testing.assert_allclose(table.filter(like="loading_").to_numpy(), loadings[used], rtol=1e-6)
    if "--gene-symbols" in args:
        symbol = args[args.index("--gene-symbols") + 1]
        assert table["gene_symbol"].tolist() == modelled.var[symbol].astype(str)[used].tolist()
    activity = pd.read_csv(run.parent / "export_csv" / "activity.csv", index_col=0)
    np.testing.assert_allclose(activity.to_numpy(), out.obsm["X_sciencevae"], rtol=1e-5, atol=1e-6)
    return out


@pytest.mark.parametrize("name", list(COMPLETE))
def test_a_file_that_should_run_completes_with_every_output(name, write, tmp_path, capsys):
    build, extra = COMPLETE[name]
    adata = build()
    path = write(adata)
    before = digest(path.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, captured = run_cli(["cells", str(path), "--out", str(tmp_path / "run"), *RUN, *extra], capsys)
    assert code == 0, captured.err
    check_complete_run(tmp_path / "run", adata, extra, capsys)
    assert digest(path.parent) == before


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_file_that_cannot_run_is_refused_in_one_line(name, write, tmp_path, capsys):
    build, extra, problem, fix = REFUSED[name]
    path = write(build())
    before = digest(path.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, captured = run_cli(["cells", str(path), "--out", str(tmp_path / "run"), *RUN, *extra], capsys)
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert problem in err and fix in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(ValueError, match=re.escape(problem)):  # the API refuses it with the same message
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gene_programmes.check_inputs(read_cells(path), **api_arguments(extra))
    assert digest(path.parent) == before


def api_arguments(flags: list[str]) -> dict:
    """The keyword arguments of `gene_programmes.check_inputs` that CLI flags stand for."""
    names = {"--layer": "layer", "--batch-key": "batch_key", "--gene-symbols": "gene_symbols",
             "--n-top-genes": "n_top_genes"}
    given = dict(zip(flags[::2], flags[1::2]))
    kwargs = {names[k]: (int(v) or None if k == "--n-top-genes" else v) for k, v in given.items()}
    return {"n_top_genes": 2000, **kwargs}


def test_near_integer_counts_are_rounded_once_with_the_value_at_full_precision():
    exact = base()
    noisy = with_(near_integer)()
    before = noisy.X.copy()
    with pytest.warns(UserWarning, match=r"rounding error \(e\.g\. \d+\.\d{6,}\)") as caught:
        inputs = gene_programmes.check_inputs(noisy, n_top_genes=None)
    assert len([w for w in caught if "rounding error" in str(w.message)]) == 1
    np.testing.assert_array_equal(np.asarray(inputs.prepared.X), exact.X)
    np.testing.assert_array_equal(noisy.X, before)  # the input is never changed
    with pytest.raises(ValueError, match=r"non-integer values \(e\.g\. \d+\.5\)"):
        CellsAdapter.from_adata(base(counts() + 0.5))


def test_raw_counts_are_reported_and_enriched_by_symbol_with_every_gene(tmp_path):
    adata = in_raw_with_ids()
    members = [f"SYM{j}" for j in range(N_GENES // 2 - 5, N_GENES)]  # 25 genes, 20 of them only in raw
    res = gene_programmes.run(adata, layer="raw", gene_symbols="gene_symbol", gene_sets={"SET": members},
                              n_latent=3, epochs=2, n_top_genes=None, progress=False)
    assert set(res.programmes["gene"]) <= set(adata.raw.var["gene_symbol"])
    assert set(res.enrichment["set_size"]) == {len(members)}  # no member lost to var's subset
    assert res.adata.raw.varm["sciencevae_loadings"].shape == (N_GENES, 3)
    assert res.adata.varm["sciencevae_loadings"].shape == (N_GENES // 2, 3)
    np.testing.assert_array_equal(res.adata.raw.varm["sciencevae_loadings"], res.weights.astype(np.float32))


def test_a_backed_or_zarr_anndata_runs(write, tmp_path, capsys):
    adata = base()
    backed = ad.read_h5ad(write(adata), backed="r")
    res = gene_programmes.run(backed, n_latent=3, epochs=2, n_top_genes=None, progress=False)
    assert res.adata.obsm["X_sciencevae"].shape == (N_CELLS, 3)
    backed.file.close()
    path = write(adata, "cells.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, captured = run_cli(["cells", str(path), "--out", str(tmp_path / "run"), *RUN], capsys)
    assert code == 0, captured.err
    check_complete_run(tmp_path / "run", adata, [], capsys)


@pytest.mark.slow
@pytest.mark.skipif(not MOUSE_10K.exists(), reason=f"real data not found: {MOUSE_10K}")
def test_ten_thousand_real_cells_run_through_the_umap_figure(tmp_path, capsys):
    import scanpy as sc

    adata = ad.read_h5ad(MOUSE_10K)
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()  # the file holds one empty cell
    assert adata.n_obs >= 9_999
    path = tmp_path / "mouse.h5ad"
    adata.write_h5ad(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, captured = run_cli(["cells", str(path), "--out", str(tmp_path / "run"), "--epochs", "1",
                                  "--n-latent", "6", "--quiet"], capsys)
    assert code == 0, captured.err
    out = ad.read_h5ad(tmp_path / "run" / "cells.h5ad")
    assert (tmp_path / "run" / "figures" / "umap_programmes.png").stat().st_size > 10_000
    # what users do next with the output, as the README says (exact neighbours avoid scanpy 1.11 + scipy 1.17)
    sc.pp.neighbors(out, use_rep="X_sciencevae", transformer="sklearn")
    assert out.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)


@pytest.mark.parametrize("suffix", [".h5ad", ".npy"])
def test_fit_rounds_near_integer_counts_to_the_result_of_exact_ones(suffix, tmp_path, capsys):
    exact, noisy = base(), with_(near_integer)()
    latents = {}
    for name, adata in (("exact", exact), ("noisy", noisy)):
        path = tmp_path / f"{name}{suffix}"
        adata.write_h5ad(path) if suffix == ".h5ad" else np.save(path, adata.X)
        code, captured = run_cli(["fit", str(path), "--out", str(tmp_path / name), "--likelihood", "nb",
                                  "--epochs", "2", "--quiet"], capsys)
        assert code == 0, captured.err
        said = [line for line in captured.err.splitlines() if "rounding error" in line]
        assert len(said) == (name == "noisy")  # said once, in one line
        latents[name] = pd.read_csv(tmp_path / name / "latents.csv", index_col=0)
    assert said[0].startswith("sciencevae: warning: ")
    assert re.search(r"\(e\.g\. \d+\.\d{6,}\)", said[0])  # the example at full precision, never "7"
    pd.testing.assert_frame_equal(latents["noisy"], latents["exact"])


@pytest.mark.parametrize("values, message", [
    (["x"] * 3 + list(range(N_CELLS - 3)), "3 of 90 cells are missing or not numbers"),
    ([np.nan] + list(range(N_CELLS - 1)), "1 of 90 cells are missing or not numbers"),
    ([1.0] * N_CELLS, "has the same value (1) for every cell"),
])
def test_degenerate_continuous_covariates_are_refused(values, message):
    adata = base()
    adata.obs["depth"] = pd.Series(values, index=adata.obs_names, dtype=object if "x" in values else float)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CellsAdapter.from_adata(adata, continuous_covariate_keys=["depth"])


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32])
def test_integer_counts_choose_the_genes_of_their_float_copy(dtype):
    X = counts() * 40  # counts above 181: their squares overflow int16
    assert X.max() > 1000
    exact = CellsAdapter.from_adata(base(X.astype(np.float64)), n_top_genes=15, batch_key="batch").genes
    assert CellsAdapter.from_adata(base(X.astype(dtype)), n_top_genes=15, batch_key="batch").genes == exact


def test_ercc_spike_ins_are_named_once():
    adata = base()
    adata.var_names = ["ERCC-00002", "ERCC-00003"] + list(adata.var_names[2:])
    with pytest.warns(UserWarning, match=r"2 ERCC spike-ins \(e\.g\. ERCC-00002\) are modelled as genes") as caught:
        CellsAdapter.from_adata(adata)
    assert len([w for w in caught if "ERCC" in str(w.message)]) == 1
