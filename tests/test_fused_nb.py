"""The fused NB log-likelihood equals the textbook one (values and gradients) and scipy."""

import numpy as np
import pytest
import scipy.stats as st
import torch

from sciencevae import BetaVAE
from sciencevae.data import BatchSource, as_prepared
from sciencevae.fused_nb import (TABLE_ROWS, _gene_terms, _stirling_digamma, _stirling_lgamma, log_factorial_sum,
                                 nb_log_likelihood_sum)
from sciencevae.likelihoods import NegativeBinomial, NegativeBinomialLikelihood


def _inputs(seed: int, n_cells: int = 9, n_genes: int = 13):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_cells, n_genes, generator=gen, dtype=torch.float64).requires_grad_()
    log_theta = (3 * torch.randn(n_genes, generator=gen, dtype=torch.float64)).requires_grad_()
    size = torch.rand(n_cells, generator=gen, dtype=torch.float64) * 1000 + 1
    # counts from 0 to a few hundred: both sides of the lookup table's edge
    x = torch.poisson(torch.rand(n_cells, n_genes, generator=gen, dtype=torch.float64) * 80, generator=gen)
    weights = torch.rand(n_genes, generator=gen, dtype=torch.float64)
    return logits, log_theta, size, x, weights


@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_gradients_equal_autograd_through_the_distribution(seed, use_weights):
    logits, log_theta, size, x, weights = _inputs(seed)
    assert (x >= TABLE_ROWS).any() and (x < TABLE_ROWS).any()
    w = weights if use_weights else None
    fused = nb_log_likelihood_sum(logits, size, log_theta, x, w) - log_factorial_sum(x, w)
    dist = NegativeBinomial(torch.softmax(logits, -1) * size[:, None], log_theta.exp())
    reference = (dist.log_prob(x) * (weights if use_weights else 1.0)).sum(-1)
    torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-8)
    upstream = torch.randn(len(x), dtype=torch.float64)
    got = torch.autograd.grad(fused, (logits, log_theta), upstream)
    want = torch.autograd.grad(reference, (logits, log_theta), upstream)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-8)


def test_matches_scipy_nbinom():
    logits, log_theta, size, x, _ = _inputs(2)
    out = (nb_log_likelihood_sum(logits, size, log_theta, x) - log_factorial_sum(x)).detach().numpy()
    mu = (torch.softmax(logits, -1) * size[:, None]).detach().numpy()
    theta = log_theta.exp().detach().numpy()
    expected = st.nbinom(theta, theta / (theta + mu)).logpmf(x.numpy()).sum(1)
    np.testing.assert_allclose(out, expected, rtol=1e-9)


def test_tables_and_stirling_series_equal_lgamma_and_digamma():
    log_theta = torch.linspace(-10, 12, 41, dtype=torch.float64)
    theta, lgamma_table, digamma_table, lgamma_theta, digamma_theta = _gene_terms(log_theta)
    counts = torch.arange(TABLE_ROWS, dtype=torch.float64)[:, None]
    torch.testing.assert_close(lgamma_table, torch.lgamma(counts + theta) - torch.lgamma(theta), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(digamma_table, torch.digamma(counts + theta) - torch.digamma(theta), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(lgamma_theta, torch.lgamma(theta))
    z = torch.cat([TABLE_ROWS + theta, torch.tensor([32.0, 57.5, 1e3, 1e7], dtype=torch.float64)])
    torch.testing.assert_close(_stirling_lgamma(z), torch.lgamma(z), rtol=1e-14, atol=0)
    torch.testing.assert_close(_stirling_digamma(z), torch.digamma(z), rtol=1e-14, atol=0)


def test_batch_source_precomputes_the_count_constant_for_dense_and_sparse(rng):
    import scipy.sparse as sp

    counts = rng.poisson(3.0, size=(20, 7)).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, 7)
    expected = torch.lgamma(torch.tensor(counts, dtype=torch.float64) + 1) @ torch.tensor(weights)
    for X in (counts, sp.csr_matrix(counts)):
        source = BatchSource(as_prepared(X, feature_weights=weights), torch.device("cpu"), count_data=True)
        batch = source.batch(torch.arange(20))
        torch.testing.assert_close(batch.count_constant.double(), expected, rtol=1e-6, atol=1e-4)


def test_nb_model_loss_is_the_exact_negative_log_likelihood(rng):
    counts = rng.poisson(rng.uniform(0.2, 40, size=(1, 30)), size=(64, 30)).astype(np.float32)
    vae = BetaVAE(30, n_latent=3, likelihood="nb", hidden=(16,))
    vae.fit(counts, epochs=3, progress=False, validation=0.0)
    likelihood: NegativeBinomialLikelihood = vae.module.likelihood
    with torch.no_grad():
        z = torch.as_tensor(vae.encode(counts))
        raw = vae.module.decoder(z)
        size = torch.as_tensor(counts.sum(1))
        fast = likelihood.log_likelihood(raw, torch.as_tensor(counts), size)
        slow = likelihood(raw, size).log_prob(torch.as_tensor(counts)).sum(-1)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_direct_path_equals_the_cpu_lookup_path():
    logits, log_theta, size, x, weights = _inputs(4, n_cells=64, n_genes=500)
    cpu = nb_log_likelihood_sum(logits, size, log_theta, x, weights)
    cpu_grads = torch.autograd.grad(cpu.sum(), (logits, log_theta))
    cuda_inputs = [t.detach().cuda().requires_grad_(t.requires_grad) for t in (logits, log_theta)]
    gpu = nb_log_likelihood_sum(cuda_inputs[0], size.cuda(), cuda_inputs[1], x.cuda(), weights.cuda())
    gpu_grads = torch.autograd.grad(gpu.sum(), cuda_inputs)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-7)
    for g, c in zip(gpu_grads, cpu_grads):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-8, atol=1e-8)


def test_log_factorial_rows_handles_empty_rows_and_huge_counts():
    import scipy.sparse as sp
    from scipy.special import gammaln

    from sciencevae.data import log_factorial_rows

    dense = np.array([[0, 0, 0], [2, 0, 5000], [0, 0, 0], [1, 7, 0], [0, 0, 0]], dtype=np.float32)
    expected = gammaln(dense.astype(np.float64) + 1).sum(1)
    np.testing.assert_allclose(log_factorial_rows(sp.csr_matrix(dense)), expected, rtol=1e-12)
    np.testing.assert_allclose(log_factorial_rows(dense), expected, rtol=1e-12)
    weights = np.array([0.5, 2.0, 1.5])
    np.testing.assert_allclose(log_factorial_rows(sp.csr_matrix(dense), weights),
                               gammaln(dense.astype(np.float64) + 1) @ weights, rtol=1e-12)


def test_a_cell_without_counts_has_log_likelihood_zero_and_trains(rng):
    logits = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[0.0] * 5, [1.0, 0.0, 2.0, 0.0, 4.0]], dtype=torch.float64)
    size = x.sum(1)
    fused = nb_log_likelihood_sum(logits, size, torch.zeros(5, dtype=torch.float64), x) - log_factorial_sum(x)
    reference = NegativeBinomial(torch.softmax(logits, -1) * size[:, None], torch.ones(5)).log_prob(x).sum(-1)
    torch.testing.assert_close(fused, reference, atol=1e-9, rtol=1e-9)
    fused.sum().backward()
    assert torch.isfinite(logits.grad).all()
    counts = rng.poisson(2.0, size=(100, 12)).astype(np.float32)
    counts[7] = 0  # e.g. a cell with no counts in the selected genes
    history = BetaVAE(12, n_latent=2, likelihood="nb", hidden=(8,)).fit(counts, epochs=3, progress=False)
    assert np.isfinite(history["loss"]).all()
