"""`sciencevae cells` streaming the modelled counts from the file (``CellsAdapter.stream``) instead of holding
them: the same results as in memory where the cells fit in one group, the programmes found where a file sorted
by batch is read in many chunks, and streaming chosen only for counts that would not fit."""

import dataclasses
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sciencevae.adapters.cells as cells_module
from sciencevae.adapters.cells import CellsAdapter, read_cells
from sciencevae.adapters.cells_chunks import held_bytes
from sciencevae.case_studies import gene_programmes
from sciencevae.cli import main
from sciencevae.datasets import hard_programmes
from sciencevae.streaming import Streamed

sys.path.insert(0, str(Path(__file__).parent))
from test_gene_programmes import programme_recovery  # noqa: E402

RUN = dict(n_top_genes=60, batch_key="batch", epochs=2, progress=False, n_latent=3)


def _file(tmp_path: Path, n_cells: int = 400, n_genes: int = 120, error: float = 0.0) -> Path:
    """An .h5ad of NB counts (CSR, three batches; ``error`` added to every count) written to ``tmp_path``."""
    rng = np.random.default_rng(2)
    mean = rng.gamma(0.5, 2.0, size=n_genes) * rng.lognormal(0.0, 0.5, size=(n_cells, 1))
    counts = rng.negative_binomial(2, 2 / (2 + mean)).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1
    counts[counts > 0] += error
    obs = pd.DataFrame({"batch": rng.choice(["a", "b", "c"], n_cells)}, index=[f"c{i}" for i in range(n_cells)])
    path = tmp_path / "cells.h5ad"
    ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
               ).write_h5ad(path)
    return path


def test_a_streamed_run_gives_the_in_memory_results(tmp_path):
    path = _file(tmp_path)
    runs = {stream: gene_programmes.run(read_cells(path, backed=True), stream=stream, **RUN)
            for stream in (False, True)}
    held, streamed = runs[False], runs[True]
    assert (held.settings["streamed"], streamed.settings["streamed"]) == (False, True)
    np.testing.assert_array_equal(held.adata.obsm["X_sciencevae"], streamed.adata.obsm["X_sciencevae"])
    pd.testing.assert_frame_equal(held.programmes, streamed.programmes)
    np.testing.assert_array_equal(held.adata.uns["sciencevae"]["kl_per_latent"],
                                  streamed.adata.uns["sciencevae"]["kl_per_latent"])
    pd.testing.assert_frame_equal(held.checks.table, streamed.checks.table)
    pd.testing.assert_frame_equal(held.association, streamed.association)


def test_streaming_a_file_sorted_by_batch_in_many_chunks_finds_the_programmes(tmp_path):
    """The hard simulation with its cells sorted by batch (as atlases are), read 200 cells at a time, two chunks
    mixed per group: the programmes are found as well as in memory (both well above chance: AUROC 0.5)."""
    n_cells, n_genes = 2000, 400
    sim = hard_programmes(n_cells, n_genes=n_genes, seed=3)
    order = np.argsort(sim["batch"], kind="stable")
    obs = pd.DataFrame({"batch": sim["batch"][order].astype(str)}, index=[f"c{i}" for i in range(n_cells)])
    path = tmp_path / "sorted.h5ad"
    ad.AnnData(sp.csr_matrix(sim["counts"][order]), obs=obs,
               var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])).write_h5ad(path)
    sim = {**sim, "usage": sim["usage"][order]}
    found = {}
    for stream in (False, True):
        adata = read_cells(path, backed=True)
        inputs = gene_programmes.check_inputs(adata, batch_key="batch", n_top_genes=None, stream=False)
        if stream:
            inputs = dataclasses.replace(inputs, prepared=inputs.adapter.stream(adata, chunk_rows=200,
                                                                                buffer_chunks=2))
        res = gene_programmes.run(adata, n_latent=10, batch_key="batch", n_top_genes=None, epochs=60,
                                  progress=False, inputs=inputs)
        found[stream] = programme_recovery(res.weights, res.adata.obsm["X_sciencevae"], sim)
    (auroc, rho), (held_auroc, held_rho) = found[True], found[False]
    assert auroc >= 0.9 and rho >= 0.5, found
    assert auroc >= held_auroc - 0.03 and rho >= held_rho - 0.05, found


def test_counts_are_streamed_only_when_they_would_not_fit(tmp_path, monkeypatch):
    path = _file(tmp_path)
    adata = read_cells(path, backed=True)
    adapter = CellsAdapter.from_adata(adata, n_top_genes=60)
    gathered = adapter.prepare(adata).X
    needed = held_bytes(adata.X, adata.var_names.get_indexer(adapter.genes))
    assert abs(needed - (gathered.data.nbytes + gathered.indices.nbytes + 2 * gathered.indptr.nbytes)) < 0.01 * needed
    monkeypatch.setattr(cells_module, "available_memory", lambda: 3.9 * needed)
    assert isinstance(adapter.prepare_or_stream(adata), Streamed)
    assert not isinstance(adapter.prepare_or_stream(adata.to_memory()), Streamed)  # held already
    with pytest.warns(UserWarning, match="X is held in memory, not read from a file"):
        assert not isinstance(adapter.prepare_or_stream(adata.to_memory(), stream=True), Streamed)
    assert not isinstance(adapter.prepare_or_stream(adata, stream=False), Streamed)
    monkeypatch.setattr(cells_module, "available_memory", lambda: 4.1 * needed)
    assert not isinstance(adapter.prepare_or_stream(adata), Streamed)
    assert isinstance(adapter.prepare_or_stream(adata, stream=True), Streamed)


def test_streamed_counts_with_rounding_error_are_rounded_and_said_once(tmp_path):
    path = _file(tmp_path, error=2e-6)
    adata = read_cells(path, backed=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = gene_programmes.run(adata, stream=True, **RUN)
    said = [str(w.message) for w in caught if "rounding error" in str(w.message)]
    assert len(said) == 1, said
    (tmp_path / "exact").mkdir()
    exact = gene_programmes.run(read_cells(_file(tmp_path / "exact"), backed=True), stream=True, **RUN)
    np.testing.assert_array_equal(res.adata.obsm["X_sciencevae"], exact.adata.obsm["X_sciencevae"])


def test_a_stream_missing_genes_of_the_model_is_refused(tmp_path):
    adata = read_cells(_file(tmp_path), backed=True)
    adapter = CellsAdapter(genes=["g0", "nope"])
    with pytest.raises(ValueError, match="1 of the model's 2 genes are missing"):
        adapter.stream(adata)


def test_cli_cells_streams_on_request_and_diagnoses_the_run(tmp_path, capsys):
    path, out = _file(tmp_path), tmp_path / "run"
    assert main(["cells", str(path), "--out", str(out), "--stream", "--epochs", "2", "--n-latent", "3",
                 "--n-top-genes", "60", "--batch-key", "batch", "--quiet"]) == 0
    params = ad.read_h5ad(out / "cells.h5ad").uns["sciencevae"]["params"]
    assert bool(params["streamed"]) is True
    assert main(["diagnose", str(out)]) == 0
    assert "active" in capsys.readouterr().out


def test_cli_stream_flags_with_a_reference_are_refused_in_one_line(tmp_path, capsys):
    path = _file(tmp_path)
    assert main(["cells", str(path), "--reference", str(tmp_path), "--out", str(tmp_path / "m"), "--stream"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--reference maps cells without training: leave them out" in err
