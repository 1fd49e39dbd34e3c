"""Out-of-core training from backed AnnData files: reading, shuffling by chunk, bounded memory."""

import hashlib
import textwrap

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import thinned
from memory_probe import assert_growth_does_not_follow_the_input

from sciencevae import BetaVAE
from sciencevae.data import BatchSource, DeviceCSR, as_prepared
from sciencevae.datasets import cell_programmes
from sciencevae.streaming import AnnDataRows, Streamed, StreamingSource, open_counts


def _write(adata: ad.AnnData, path) -> None:
    if str(path).endswith(".zarr"):
        adata.write_zarr(path)
    else:
        adata.write_h5ad(path)


@pytest.fixture(scope="module")
def counts():
    return cell_programmes(1500, n_genes=300, seed=4)["counts"]


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
@pytest.mark.parametrize("dense", [False, True])
def test_rows_read_from_disk_equal_the_matrix(tmp_path, counts, suffix, dense):
    adata = ad.AnnData(counts.toarray() if dense else counts)
    adata.obs_names = [f"cell{i}" for i in range(counts.shape[0])]
    adata.var_names = [f"g{j}" for j in range(counts.shape[1])]
    path = tmp_path / f"cells{suffix}"
    _write(adata, path)
    rows = AnnDataRows(path)
    assert (rows.n_obs, rows.n_features) == counts.shape
    part = rows.read(100, 357)
    got = part.toarray() if sp.issparse(part) else part
    np.testing.assert_array_equal(got, counts[100:357].toarray())
    assert rows.obs_names[5] == "cell5" and rows.feature_names[-1] == "g299"


def test_layer_csc_and_missing_inputs_get_clear_errors(tmp_path, counts):
    adata = ad.AnnData(counts.tocsc(), layers={"raw_counts": counts})
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(ValueError, match="CSC .* cannot be streamed.*tocsr"):
        AnnDataRows(path)
    assert AnnDataRows(path, layer="raw_counts").read(0, 2).shape == (2, counts.shape[1])
    with pytest.raises(ValueError, match="no layer 'nope'"):
        AnnDataRows(path, layer="nope")
    with pytest.raises(FileNotFoundError):
        AnnDataRows(tmp_path / "absent.h5ad")


def test_an_epoch_serves_every_row_once_mixing_chunks(counts):
    from sciencevae.streaming import ArrayRows

    streamed = Streamed(ArrayRows(counts), chunk_rows=100, buffer_chunks=3)
    source = StreamingSource(streamed, torch.device("cpu"), count_data=True)
    order = torch.randperm(counts.shape[0], generator=torch.Generator().manual_seed(0))
    dense = counts.toarray()
    seen = []
    for batch in source.batches(order, 64):
        rows = [int(np.flatnonzero((dense == row.numpy()).all(1))[0]) for row in batch.x[:4]]
        seen.append(rows)
        assert len({r // 100 for r in rows}) >= 1
    everything = torch.cat([b.x for b in source.batches(order, 64)])
    assert everything.shape == counts.shape
    np.testing.assert_array_equal(np.sort(everything.sum(1).numpy()), np.sort(dense.sum(1)))
    mixed = [len({r // 100 for r in rows}) for rows in seen]
    assert max(mixed) > 1, "batches should mix rows of several chunks"
    assert source.peak_buffer_rows <= 300


@pytest.mark.parametrize("fill, held", [("full", torch.Tensor), ("sparse", sp.csr_matrix),
                                        ("sparse on the device", DeviceCSR)])
def test_streamed_batches_equal_in_memory_batches_however_a_group_is_held(counts, fill, held):
    from sciencevae.streaming import ArrayRows

    # ~50% non-zero: a group is held dense; thinned to ~15%: as CSR, on the host or (as on a GPU) on the device
    X = counts if fill == "full" else thinned(counts, 0.02)
    streamed = StreamingSource(Streamed(ArrayRows(X), chunk_rows=128), torch.device("cpu"), count_data=True,
                               csr_on_device=fill == "sparse on the device")
    assert isinstance(streamed._read_group([0, 3]).X, held)
    memory = BatchSource(as_prepared(X), torch.device("cpu"), count_data=True)
    rows = torch.arange(0, 1500, 7)[torch.randperm(215, generator=torch.Generator().manual_seed(1))]
    whole_epoch = torch.cat([b.x for b in streamed.batches(rows, 50)])
    a, b = streamed.batch(rows), memory.batch(rows)
    torch.testing.assert_close(a.x, b.x)
    torch.testing.assert_close(a.size_factor, b.size_factor)
    torch.testing.assert_close(a.count_constant, b.count_constant)
    np.testing.assert_array_equal(np.sort(whole_epoch.sum(1).numpy()), np.sort(b.x.sum(1).numpy()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("thin", [False, True])
def test_streamed_groups_are_held_on_the_gpu(counts, thin):
    from sciencevae.streaming import ArrayRows

    X = thinned(counts, 0.02) if thin else counts
    streamed = StreamingSource(Streamed(ArrayRows(X), chunk_rows=128), torch.device("cuda"), count_data=True)
    group = streamed._read_group([0, 3])
    assert (group.X.values if thin else group.X).is_cuda and group.size_factors.is_cuda
    rows = torch.arange(0, 1500, 7)
    batch = streamed.batch(rows)
    np.testing.assert_array_equal(batch.x.cpu().numpy(), X[rows.numpy()].toarray())


def test_streamed_dense_rows_with_nan_are_masked():
    from sciencevae.streaming import ArrayRows

    values = np.arange(60.0).reshape(20, 3)
    values[[2, 11], [1, 0]] = np.nan
    source = StreamingSource(Streamed(ArrayRows(values), chunk_rows=8, buffer_chunks=2), torch.device("cpu"))
    batch = source.batch(torch.tensor([11, 2, 5]))
    np.testing.assert_array_equal(batch.mask.numpy(), ~np.isnan(values[[11, 2, 5]]))
    np.testing.assert_array_equal(batch.x.numpy(), np.nan_to_num(values[[11, 2, 5]]))
    assert source.batch(torch.tensor([16, 19])).mask is None  # their chunk has no NaN: no mask


def test_fit_from_a_backed_file_matches_fitting_in_memory(tmp_path):
    sim = cell_programmes(3000, n_genes=400, seed=5)
    path = tmp_path / "cells.h5ad"
    ad.AnnData(sim["counts"]).write_h5ad(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    streamed = open_counts(path, chunk_rows=256, buffer_chunks=4)

    torch.set_num_threads(1)
    on_disk = BetaVAE(400, n_latent=6, likelihood="nb", decoder="linear", hidden=(64,))
    history = on_disk.fit(streamed, epochs=15, batch_size=128, progress=False)
    in_memory = BetaVAE(400, n_latent=6, likelihood="nb", decoder="linear", hidden=(64,))
    in_memory.fit(sim["counts"], epochs=15, batch_size=128, progress=False)

    assert "peak_host_mb" in history and history["val_loss"].notna().all()
    disk_elbo = on_disk.evaluate(streamed)["neg_elbo"]
    memory_elbo = in_memory.evaluate(sim["counts"])["neg_elbo"]
    assert disk_elbo < memory_elbo * 1.02
    np.testing.assert_allclose(on_disk.encode(streamed), on_disk.encode(sim["counts"]), atol=1e-5)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_bad_counts_in_a_later_chunk_are_named(tmp_path):
    X = np.random.default_rng(0).poisson(2.0, size=(600, 20)).astype(np.float32)
    X[450, 3] = 0.5
    path = tmp_path / "bad.h5ad"
    ad.AnnData(X).write_h5ad(path)
    vae = BetaVAE(20, n_latent=2, likelihood="nb", hidden=(8,))
    with pytest.raises(ValueError, match="rows 400-599 hold non-integer values"):
        vae.fit(open_counts(path, chunk_rows=200), epochs=1, progress=False, validation=0.0)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from sciencevae import BetaVAE
    from sciencevae.streaming import open_counts, peak_host_memory_mb
    torch.set_num_threads(1)
    streamed = open_counts(sys.argv[1], chunk_rows=2048, buffer_chunks=2)
    before = peak_host_memory_mb()
    vae = BetaVAE(streamed.n_features, n_latent=4, likelihood="nb", decoder="linear", hidden=(32,))
    vae.fit(streamed, epochs=1, batch_size=1024, progress=False, validation=0.05)
    print(before, peak_host_memory_mb())
    """
)


def _write_poisson_cells(path, n_cells: int, n_genes: int = 1000) -> float:
    rng = np.random.default_rng(1)
    blocks = [sp.csr_matrix(rng.poisson(0.8, size=(10_000, n_genes)).astype(np.float32))
              for _ in range(n_cells // 10_000)]
    ad.AnnData(sp.vstack(blocks, format="csr")).write_h5ad(path)
    return path.stat().st_size / 2**20


def test_host_memory_does_not_grow_with_the_file(tmp_path):
    small = tmp_path / "small.h5ad", _write_poisson_cells(tmp_path / "small.h5ad", 20_000)
    large = tmp_path / "large.h5ad", _write_poisson_cells(tmp_path / "large.h5ad", 80_000)
    assert_growth_does_not_follow_the_input(MEMORY_SCRIPT, tmp_path, small, large)


def test_cli_fit_streams_an_h5ad_and_names_the_cells(tmp_path):
    from sciencevae.cli import main

    sim = cell_programmes(800, n_genes=200, seed=6)
    normalised = sp.csr_matrix(sim["counts"].multiply(1e4 / sim["counts"].sum(1)))  # X is not counts
    adata = ad.AnnData(normalised.astype(np.float32), layers={"counts": sim["counts"]})
    adata.obs_names = [f"c{i}" for i in range(800)]
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "run"
    status = main(["fit", str(path), "--layer", "counts", "--likelihood", "nb", "--decoder", "linear",
                   "--n-latent", "4", "--epochs", "3", "--out", str(out), "--quiet"])
    assert status == 0
    import pandas as pd

    latents = pd.read_csv(out / "latents.csv", index_col=0)
    assert latents.shape == (800, 4) and latents.index[0] == "c0"
    assert main(["diagnose", str(out)]) == 0  # reads the recorded .h5ad and its layer (X would be refused)
    assert main(["diagnose", str(out), "--data", str(path)]) == 2  # X holds non-integer values
    assert main(["fit", str(path), "--layer", "nope", "--out", str(tmp_path / "r2")]) == 2


def test_streamed_validation_takes_whole_chunks():
    from sciencevae.streaming import ArrayRows

    source = StreamingSource(Streamed(ArrayRows(np.zeros((1050, 3))), chunk_rows=50), torch.device("cpu"))
    train, val = source.split(0.1, seed=3)
    assert len(train) + len(val) == 1050 and not set(train.tolist()) & set(val.tolist())
    assert 105 <= len(val) < 105 + 50
    chunks = val // 50
    assert all((val[chunks == c] % 50).tolist() == list(range(min(50, 1050 - int(c) * 50))) for c in chunks.unique())
    small = StreamingSource(Streamed(ArrayRows(np.zeros((100, 3))), chunk_rows=50), torch.device("cpu"))
    assert len(small.split(0.1, seed=3)[1]) == 10  # few chunks: rows split one by one
