"""Every row of docs/bad_inputs.md: the CLI exits 2 with one clear line, the
Python API raises the same message, and the input files are byte-identical."""

import hashlib
import json
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sciencevae
from sciencevae.adapters.cells import CellsAdapter, read_cells
from sciencevae.adapters.climate import ClimateAdapter, open_field
from sciencevae.case_studies import climate_trend as ct
from sciencevae.cli import main
from sciencevae.datasets import monthly_field


def digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def counts_file(tmp_path, change):
    rng = np.random.default_rng(0)
    X = change(rng.poisson(3, size=(40, 12)).astype(np.float32))
    adata = ad.AnnData(X, obs=pd.DataFrame(index=[f"c{i}" for i in range(len(X))]),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])]))
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return path


def field_file(tmp_path, change):
    ds = change(ct.synthetic_dataset(monthly_field(n_years=2, n_lat=6, n_lon=8)))
    path = tmp_path / "field.nc"
    ds.to_netcdf(path)
    return path


def set_value(value, row=0):
    def change(X):
        X = X.copy()
        X[row, 0] = value
        return X
    return change


CELL_ROWS = [
    ("negative counts", set_value(-1.0), "negative values"),
    ("NaN counts", set_value(np.nan), "NaN or infinite"),
    ("infinite counts", set_value(np.inf), "NaN or infinite"),
    ("non-integer counts", set_value(0.5), "non-integer values"),
    ("all-zero cell", lambda X: np.vstack([np.zeros((1, X.shape[1]), X.dtype), X[1:]]), "cells have no counts"),
    ("empty AnnData", lambda X: X[:0], "empty"),
]


@pytest.mark.parametrize("name, change, message", CELL_ROWS, ids=[r[0] for r in CELL_ROWS])
def test_bad_counts(tmp_path, capsys, name, change, message):
    path = counts_file(tmp_path, change)
    before = digest(tmp_path)
    assert main(["cells", str(path), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match=message):
        CellsAdapter.from_adata(read_cells(path))
    assert digest(tmp_path) == before


FIELD_ROWS = [
    ("no time dimension", lambda ds: ds.isel(time=0), "no 'time' dimension"),
    ("unsorted time", lambda ds: ds.isel(time=[1, 0] + list(range(2, ds.sizes["time"]))), "not sorted"),
    ("duplicated time", lambda ds: ds.isel(time=[0, 0] + list(range(1, ds.sizes["time"]))), "duplicated"),
    ("all-NaN field", lambda ds: ds * np.nan, "NaN everywhere"),
]


@pytest.mark.parametrize("name, change, message", FIELD_ROWS, ids=[r[0] for r in FIELD_ROWS])
def test_bad_fields(tmp_path, capsys, name, change, message):
    path = field_file(tmp_path, change)
    before = digest(tmp_path)
    assert main(["climate", str(path), "--var", "sst", "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match=message):
        ClimateAdapter.from_data(open_field(path), "sst")
    assert digest(tmp_path) == before


def test_unknown_variable_lists_the_ones_that_exist(tmp_path, capsys):
    path = field_file(tmp_path, lambda ds: ds)
    assert main(["climate", str(path), "--var", "tas", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "'tas' is not in the data; it has ['sst']" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["truncated", "not that format"])
def test_damaged_files(tmp_path, capsys, kind):
    good_nc, good_h5ad = field_file(tmp_path, lambda ds: ds), counts_file(tmp_path, lambda X: X)
    for good, command, message in ((good_nc, "climate", "could not open"), (good_h5ad, "cells", "could not read")):
        bad = tmp_path / f"bad{good.suffix}"
        bad.write_bytes(good.read_bytes()[:400] if kind == "truncated" else b"just some text\n")
        before = digest(tmp_path)
        args = [command, str(bad), "--out", str(tmp_path / f"run_{command}"), "--quiet"]
        assert main(args + (["--var", "sst"] if command == "climate" else [])) == 2
        assert message in capsys.readouterr().err
        assert digest(tmp_path) == before


def test_new_data_that_does_not_match_the_model(tmp_path):
    field = ct.synthetic_dataset(monthly_field(n_years=2, n_lat=6, n_lon=8))
    adapter = ClimateAdapter.from_data(field, "sst")
    with pytest.raises(ValueError, match="differs from the fitted grid"):
        adapter.prepare(field.assign_coords(lat=field.lat + 1))
    adata = read_cells(counts_file(tmp_path, lambda X: X))
    cells = CellsAdapter.from_adata(adata)
    with pytest.raises(ValueError, match="2 of the model's 12 genes are missing from the data: g0, g1"):
        cells.prepare(adata[:, 2:].copy())


def test_out_is_the_input_or_not_empty(tmp_path, capsys):
    path = counts_file(tmp_path, lambda X: X)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep")
    before = digest(tmp_path)
    assert main(["cells", str(path), "--out", str(path), "--quiet"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert main(["cells", str(path), "--out", str(tmp_path / "full"), "--quiet"]) == 2
    assert "not empty; choose a new folder or pass --overwrite" in capsys.readouterr().err
    assert digest(tmp_path) == before


@pytest.fixture
def model_run(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    assert main(["fit", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"]) == 0
    return tmp_path / "run"


def test_malformed_config(model_run, capsys):
    (model_run / "model" / "config.json").write_text("{broken")
    assert main(["diagnose", str(model_run)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(sciencevae.io.ModelFolderError, match="not valid JSON"):
        sciencevae.load(model_run / "model")


def test_weights_that_do_not_match_the_config(model_run, capsys):
    config = json.loads((model_run / "model" / "config.json").read_text())
    config["model"]["n_latent"] += 1
    (model_run / "model" / "config.json").write_text(json.dumps(config))
    assert main(["diagnose", str(model_run)]) == 2
    assert "does not match config.json" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_crafted_pickle_is_refused(model_run, capsys):
    marker = model_run / "executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (model_run / "model" / "weights.pt").write_bytes(pickle.dumps({"w": Exploit()}))
    assert main(["diagnose", str(model_run)]) == 2
    assert "never loads pickled code" in capsys.readouterr().err
    assert not marker.exists()


def test_all_zero_genes_are_left_out_with_a_warning(tmp_path):
    def zero_gene(X):
        X = X.copy()
        X[:, 3] = 0
        return X

    adata = read_cells(counts_file(tmp_path, zero_gene))
    with pytest.warns(UserWarning, match="1 genes have no counts in any cell and are left out"):
        adapter = CellsAdapter.from_adata(adata)
    assert "g3" not in adapter.genes and len(adapter.genes) == 11
