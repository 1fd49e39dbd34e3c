"""The adapter/core contract: validation and batching."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import thinned
from sciencevae.data import BatchSource, Prepared, as_prepared, one_hot


def test_accepts_numpy_torch_and_sparse(rng):
    dense = rng.normal(size=(10, 4))
    assert isinstance(as_prepared(dense).X, np.ndarray)
    assert isinstance(as_prepared(torch.as_tensor(dense)).X, np.ndarray)
    for sparse in (sp.csc_matrix(dense), sp.coo_matrix(dense), torch.as_tensor(dense).to_sparse()):
        p = as_prepared(sparse)
        assert sp.isspmatrix_csr(p.X)
        np.testing.assert_allclose(p.X.toarray(), dense, rtol=1e-6)


def test_nan_becomes_a_mask_and_is_zero_in_batches(rng):
    X = rng.normal(size=(6, 3))
    X[1, 2] = np.nan
    p = as_prepared(X)
    assert p.mask.sum() == 17 and not p.mask[1, 2]
    batch = BatchSource(p, torch.device("cpu")).batch(torch.tensor([1]))
    assert batch.x[0, 2].item() == 0.0 and not batch.mask[0, 2]
    assert np.isnan(X[1, 2])  # the caller's array is untouched


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(X=np.zeros((0, 3))), "empty"),
        (dict(X=np.zeros(3)), "2-D"),
        (dict(X=np.array([[1.0, np.inf]])), "infinite"),
        (dict(X=np.array([["a", "b"]])), "numbers"),
        (dict(X=np.ones((3, 2)), size_factors=[1, 2]), "size_factors"),
        (dict(X=np.ones((3, 2)), feature_weights=[1, -1]), "feature_weights"),
        (dict(X=np.ones((3, 2)), covariates=np.ones((2, 1))), "covariates"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        as_prepared(**kwargs)


def test_prepared_is_revalidated_and_extended():
    p = as_prepared(Prepared(X=np.ones((3, 2))), covariates=np.arange(3.0))
    assert p.covariates.shape == (3, 1)


def test_count_sources_default_to_library_size():
    X = sp.csr_matrix(np.array([[1.0, 2.0], [0.0, 5.0]]))
    source = BatchSource(as_prepared(X), torch.device("cpu"), count_data=True)
    assert source.size_factors.tolist() == [3.0, 5.0]


def test_one_hot():
    matrix, categories = one_hot(["b", "a", "b"])
    assert categories == ["a", "b"]
    assert matrix.tolist() == [[0, 1], [1, 0], [0, 1]]


def test_device_csr_densifies_rows_like_scipy(rng):
    from sciencevae.data import DeviceCSR, densify_rows

    X = sp.random(300, 40, density=0.2, format="csr", random_state=1, dtype=np.float32)
    X[7] = 0  # an empty row
    X[8] = np.arange(1, 41)  # the longest row: every column
    X = sp.csr_matrix(X)
    rows = torch.as_tensor(rng.permutation(300)[:64].tolist() + [7, 8])
    on_device = DeviceCSR(X, torch.device("cpu"))
    np.testing.assert_array_equal(on_device.dense_rows(rows).numpy(), densify_rows(X, rows.numpy()))
    host = BatchSource(as_prepared(X), torch.device("cpu"), count_data=False)
    device = BatchSource(as_prepared(X), torch.device("cpu"), csr_on_device=True)
    assert host.device_csr is None and device.device_csr is not None
    for a, b in zip(host.batches(rows, 16), device.batches(rows, 16)):
        torch.testing.assert_close(a.x, b.x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_csr_counts_stay_on_the_gpu_and_train():
    from sciencevae import BetaVAE
    from sciencevae.datasets import cell_programmes

    # thinned to 2% of the reads (~15% of entries non-zero), as in a shallow run: too sparse to be served dense
    counts = thinned(cell_programmes(2000, n_genes=300, seed=2)["counts"], 0.02)
    source = BatchSource(as_prepared(counts), torch.device("cuda"), count_data=True)
    assert source.device_csr is not None and source.device_csr.values.is_cuda
    vae = BetaVAE(300, n_latent=6, likelihood="nb", decoder="linear", hidden=(64,))
    history = vae.fit(sp.csr_matrix(counts), epochs=20, device="cuda", progress=False)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert vae.encode(counts).shape == (2000, 6)


def test_a_full_csr_matrix_is_served_dense_and_a_sparse_one_stays_csr(rng):
    full = sp.csr_matrix(rng.poisson(1.0, size=(200, 30)).astype(np.float32))  # ~63% non-zero
    sparse = sp.csr_matrix(rng.poisson(0.05, size=(200, 30)).astype(np.float32))  # ~5% non-zero
    rows = torch.as_tensor(rng.permutation(200)[:50])
    for X, served_sparse in ((full, False), (sparse, True)):
        source = BatchSource(as_prepared(X), torch.device("cpu"), count_data=True)
        assert source.sparse is served_sparse
        np.testing.assert_array_equal(source.batch(rows).x.numpy(), X[rows.numpy()].toarray())
