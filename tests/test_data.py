"""The adapter/core contract: validation and batching."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

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
