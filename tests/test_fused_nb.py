"""The fused NB log-likelihood equals the textbook one (values and gradients) and scipy."""

import numpy as np
import pytest
import scipy.stats as st
import torch

from sciencevae import BetaVAE
from sciencevae.data import BatchSource, as_prepared
from sciencevae.fused_nb import TABLE_ROWS, _gene_terms, _large_count_terms, log_factorial_sum, nb_log_likelihood_sum
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


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_gradients_equal_autograd_through_the_distribution(seed, use_weights, compiled):
    logits, log_theta, size, x, weights = _inputs(seed)
    assert (x >= TABLE_ROWS).any() and (x < TABLE_ROWS).any()
    w = weights if use_weights else None
    fused = nb_log_likelihood_sum(logits, size, log_theta, x, w, compiled) - log_factorial_sum(x, w)
    dist = NegativeBinomial(torch.softmax(logits, -1) * size[:, None], log_theta.exp())
    reference = (dist.log_prob(x) * (weights if use_weights else 1.0)).sum(-1)
    torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-8)
    upstream = torch.randn(len(x), dtype=torch.float64)
    got = torch.autograd.grad(fused, (logits, log_theta), upstream)
    want = torch.autograd.grad(reference, (logits, log_theta), upstream)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("compiled", [False, True])
def test_matches_scipy_nbinom(compiled):
    logits, log_theta, size, x, _ = _inputs(2)
    out = (nb_log_likelihood_sum(logits, size, log_theta, x, compiled=compiled) - log_factorial_sum(x)).detach().numpy()
    mu = (torch.softmax(logits, -1) * size[:, None]).detach().numpy()
    theta = log_theta.exp().detach().numpy()
    expected = st.nbinom(theta, theta / (theta + mu)).logpmf(x.numpy()).sum(1)
    np.testing.assert_allclose(out, expected, rtol=1e-9)


def test_tables_and_large_count_series_equal_lgamma_and_digamma_differences():
    log_theta = torch.linspace(-10, 16, 53, dtype=torch.float64)
    theta, lgamma_table, digamma_table, edge = _gene_terms(log_theta)
    counts = torch.arange(TABLE_ROWS, dtype=torch.float64)[:, None]
    # atol: the float64 reference itself cancels two numbers of size theta log theta (1.4e8 here)
    torch.testing.assert_close(lgamma_table, torch.lgamma(counts + theta) - torch.lgamma(theta), rtol=1e-12, atol=1e-7)
    torch.testing.assert_close(digamma_table, torch.digamma(counts + theta) - torch.digamma(theta), rtol=1e-12,
                               atol=1e-12)
    for count in (32.0, 33.0, 57.0, 1e3, 1e6):
        x = torch.full_like(theta, count)
        lgamma_term, digamma_term = _large_count_terms(x, theta, edge)
        torch.testing.assert_close(lgamma_term, torch.lgamma(x + theta) - torch.lgamma(theta), rtol=1e-11, atol=1e-7)
        torch.testing.assert_close(digamma_term, torch.digamma(x + theta) - torch.digamma(theta), rtol=1e-11,
                                   atol=1e-12)


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


def test_selected_and_patched_large_counts_agree_eagerly():
    """Off the CPU the eager kernel selects between both branches (no host sync); on it, it patches by index."""
    from sciencevae.fused_nb import _gamma_terms_patched, _gamma_terms_selected, _gene_terms

    _, log_theta, _, x, _ = _inputs(5, n_cells=40, n_genes=30)
    assert (x >= TABLE_ROWS).any() and (x < TABLE_ROWS).any()
    theta, lgamma_table, digamma_table, edge = _gene_terms(log_theta.detach())
    selected = _gamma_terms_selected(x, theta, lgamma_table, digamma_table, edge)
    patched = _gamma_terms_patched(x, theta, lgamma_table, digamma_table, edge)
    for a, b in zip(selected, patched):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compiled", [False, True])  # eager CUDA ops, then the Triton kernel
def test_cuda_kernel_equals_the_cpu_kernel(compiled):
    logits, log_theta, size, x, weights = _inputs(4, n_cells=64, n_genes=500)
    cpu = nb_log_likelihood_sum(logits, size, log_theta, x, weights)
    cpu_grads = torch.autograd.grad(cpu.sum(), (logits, log_theta))
    cuda_inputs = [t.detach().cuda().requires_grad_(t.requires_grad) for t in (logits, log_theta)]
    gpu = nb_log_likelihood_sum(cuda_inputs[0], size.cuda(), cuda_inputs[1], x.cuda(), weights.cuda(), compiled)
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


def test_float32_stays_accurate_for_large_theta():
    """theta log(theta / (theta + mu)) is written with log1p: no cancellation between two huge terms."""
    logits, _, size, x, _ = _inputs(5, n_cells=16, n_genes=40)
    log_theta = torch.full((40,), 15.0, dtype=torch.float64)  # theta = 3.3e6: nearly Poisson
    reference = nb_log_likelihood_sum(logits, size, log_theta, x) - log_factorial_sum(x)
    for compiled in (False, True):
        single = nb_log_likelihood_sum(logits.float(), size.float(), log_theta.float(), x.float(),
                                       compiled=compiled) - log_factorial_sum(x.float())
        torch.testing.assert_close(single.double(), reference, rtol=1e-5, atol=1e-2)


def test_a_compiler_failure_falls_back_to_the_same_values_eagerly(monkeypatch):
    from sciencevae import fused_nb

    def broken_compile(fn, **options):
        def fails(*args):
            raise RuntimeError("no C++ compiler found")
        return fails

    monkeypatch.setattr(fused_nb.torch, "compile", broken_compile)
    kernels = fused_nb.CompiledFunction(fused_nb._kernel, fused_nb._eager, "the NB likelihood")
    logits, log_theta, size, x, weights = _inputs(6)
    log_size = size.log()[:, None]
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found.*runs eagerly"):
        total, d_logits, d_theta = kernels(logits, log_size, log_theta, x, weights)
    expected = fused_nb._eager(logits, log_size, log_theta, x, weights)
    for got, want in zip((total, d_logits, d_theta), expected):
        torch.testing.assert_close(got, want)
    assert kernels.function is None and not kernels.attempts  # later calls go straight to the eager kernels
    assert kernels(logits, log_size, log_theta, x, weights)[0].shape == total.shape


def test_a_failed_compile_without_the_isa_probe_is_retried_with_it(monkeypatch):
    import warnings

    from sciencevae import fused_nb

    def compile_failing_without_probe(fn, dynamic, options):
        def run(*args):
            if options.get("cpp.vec_isa_ok"):
                raise RuntimeError("-mamx-tile: unrecognized command-line option")
            return fn(*args)
        return run

    monkeypatch.setattr(fused_nb.torch, "compile", compile_failing_without_probe)
    kernels = fused_nb.CompiledFunction(fused_nb._kernel, fused_nb._eager, "the NB likelihood")
    logits, log_theta, size, x, weights = _inputs(8)
    log_size = size.log()[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fall-back warning: the second options compile
        total = kernels(logits, log_size, log_theta, x, weights)[0]
    assert kernels.function is kernels.attempts[0] and len(kernels.attempts) == 1
    torch.testing.assert_close(total, fused_nb._eager(logits, log_size, log_theta, x, weights)[0])


@pytest.mark.parametrize("use_weights", [False, True])
def test_eager_and_compiled_kernels_agree(use_weights):
    logits, log_theta, size, x, weights = _inputs(7, n_cells=30, n_genes=50)
    assert (x >= TABLE_ROWS).any()
    w = weights if use_weights else None
    outputs = []
    for compiled in (False, True):
        value = nb_log_likelihood_sum(logits, size, log_theta, x, w, compiled=compiled)
        outputs.append((value, *torch.autograd.grad(value.sum(), (logits, log_theta))))
    for eager, compiled in zip(*outputs):
        torch.testing.assert_close(eager, compiled, rtol=1e-10, atol=1e-10)


def test_compile_pays_only_for_long_runs():
    from sciencevae.fused_nb import COMPILE_MIN_ENTRIES, COMPILE_MIN_ENTRIES_CUDA, compile_pays

    assert compile_pays(100_000, 2_000, 5)  # the 100k-cell benchmark
    assert not compile_pays(500, 30, 20)  # a test-sized fit
    assert compile_pays(COMPILE_MIN_ENTRIES, 1, 1) and not compile_pays(COMPILE_MIN_ENTRIES - 1, 1, 1)
    # on a GPU the ~13 s compile is repaid only over long runs: the 100k benchmark's 4 epochs do not
    assert not compile_pays(100_000, 2_000, 4, "cuda") and compile_pays(1_000_000, 2_000, 50, "cuda")
    assert compile_pays(COMPILE_MIN_ENTRIES_CUDA, 1, 1, "cuda")
    assert not compile_pays(COMPILE_MIN_ENTRIES_CUDA - 1, 1, 1, "cuda")
    assert not compile_pays(10**12, 1, 1, "mps")  # not measured elsewhere: eager


def test_fit_compiles_only_runs_that_repay_it(rng, monkeypatch):
    from sciencevae import fused_nb

    counts = rng.poisson(3.0, size=(60, 8)).astype(np.float32)
    vae = BetaVAE(8, n_latent=2, likelihood="nb", hidden=(8,))
    vae.fit(counts, epochs=2, progress=False)
    assert vae.module.likelihood.compiled is False  # 60 x 8 x 2 entries: far below the threshold
    monkeypatch.setattr(fused_nb, "COMPILE_MIN_ENTRIES", 60 * 8 * 2)
    history = vae.fit(counts, epochs=2, progress=False)
    assert vae.module.likelihood.compiled is True and np.isfinite(history["loss"]).all()
    vae.fit(counts, epochs=2, progress=False, compile=False)
    assert vae.module.likelihood.compiled is False


def test_a_cpu_training_step_compiled_whole_has_the_eager_values_and_gradients(rng, monkeypatch):
    from sciencevae import model as model_module
    from sciencevae.objectives import Objective

    counts = rng.negative_binomial(2, 0.3, size=(96, 30)).astype(np.float32)
    counts[0, 0] = 40.0  # one count past the tables
    vae = BetaVAE(30, n_latent=3, likelihood="nb", decoder="linear", hidden=(16,))
    batch = BatchSource(as_prepared(counts), torch.device("cpu"), count_data=True).batch(torch.arange(96))
    whole_calls = []
    real = model_module._compiled_terms
    monkeypatch.setattr(model_module, "_compiled_terms", lambda: whole_calls.append(1) or real())

    def step(compiled: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        vae.module.likelihood.compiled = compiled
        vae.module.zero_grad(set_to_none=True)
        loss = Objective(beta=2.0).loss(vae.module(batch, torch.Generator().manual_seed(5)), 0, 96)["loss"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in vae.module.parameters()]

    eager_loss, eager_grads = step(False)
    assert not whole_calls
    compiled_loss, compiled_grads = step(True)
    assert whole_calls  # the whole step went through the compiled region
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-3)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # forward-only calls (validation, evaluate) use the compiled kernel alone
        vae.module(batch, torch.Generator().manual_seed(5))
    assert len(whole_calls) == 1
