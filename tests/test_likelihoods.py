"""Every likelihood's log_prob against scipy.stats, over many random parameters."""

import numpy as np
import pytest
import torch
from scipy import stats

from sciencevae.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    Gaussian,
    NegativeBinomial,
    NegativeBinomialLikelihood,
    PoissonLikelihood,
    ZeroInflatedNegativeBinomial,
    ZINBLikelihood,
    make_likelihood,
)

T = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731


def count_grid(rng, n=4000):
    """Counts with many zeros, small and very large values."""
    return np.concatenate([np.zeros(n // 4), rng.integers(1, 20, n // 4), rng.integers(20, 2000, n // 4),
                           rng.integers(10_000, 200_000, n - 3 * (n // 4))]).astype(float)


def dispersion_grid(rng, n):
    """Inverse dispersions from tiny (1e-4) to huge (1e7)."""
    return 10.0 ** rng.uniform(-4, 7, n)


def test_negative_binomial_matches_scipy(rng):
    x = count_grid(rng)
    mu = 10.0 ** rng.uniform(-3, 5.5, x.size)
    theta = dispersion_grid(rng, x.size)
    ours = NegativeBinomial(T(mu), T(theta)).log_prob(T(x)).detach().numpy()
    ref = stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu))
    np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=1e-6)


def test_negative_binomial_moments():
    d = NegativeBinomial(T([3.0]), T([0.5]))
    assert float(d.variance) == pytest.approx(3.0 + 9.0 / 0.5)
    samples = NegativeBinomial(torch.full((200_000,), 3.0), torch.full((200_000,), 2.0)).sample()
    assert samples.mean().item() == pytest.approx(3.0, rel=0.02)
    assert samples.var().item() == pytest.approx(3.0 + 9.0 / 2.0, rel=0.05)


def test_zinb_matches_scipy_mixture(rng):
    x = count_grid(rng)
    mu = 10.0 ** rng.uniform(-3, 5, x.size)
    theta = dispersion_grid(rng, x.size)
    logits = rng.normal(0, 3, x.size)
    pi = 1 / (1 + np.exp(-logits))
    ours = ZeroInflatedNegativeBinomial(T(mu), T(theta), T(logits)).log_prob(T(x)).detach().numpy()
    nb = stats.nbinom.pmf(x, n=theta, p=theta / (theta + mu))
    log_nb = stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu))
    ref = np.where(x == 0, np.log(pi + (1 - pi) * nb), np.log1p(-pi) + log_nb)
    np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=1e-6)


def test_zinb_mean_and_samples():
    d = ZeroInflatedNegativeBinomial(torch.full((100_000,), 4.0), torch.full((100_000,), 3.0), torch.zeros(100_000))
    assert float(d.mean[0]) == pytest.approx(2.0)
    s = d.sample()
    assert s.mean().item() == pytest.approx(2.0, rel=0.03)
    assert (s == 0).float().mean().item() > 0.5


def test_poisson_likelihood_uses_size_factor_and_softmax(rng):
    raw = rng.normal(0, 2, size=(300, 25))
    size = 10.0 ** rng.uniform(0, 5, 300)
    x = rng.poisson(np.exp(raw) / np.exp(raw).sum(1, keepdims=True) * size[:, None]).astype(float)
    x[:5, :5] = 0
    dist = PoissonLikelihood(25)(T(raw), T(size))
    rate = np.exp(raw) / np.exp(raw).sum(1, keepdims=True) * size[:, None]
    np.testing.assert_allclose(dist.mean.detach().numpy(), rate, rtol=1e-10)
    np.testing.assert_allclose(dist.log_prob(T(x)).detach().numpy(), stats.poisson.logpmf(x, rate), rtol=1e-8, atol=1e-8)


def test_nb_and_zinb_likelihood_parameters(rng):
    raw = rng.normal(0, 1, size=(50, 10))
    size = rng.uniform(100, 1000, 50)
    x = rng.integers(0, 50, size=(50, 10)).astype(float)
    nb = NegativeBinomialLikelihood(10).double()
    with torch.no_grad():
        nb.log_theta.copy_(T(rng.normal(0, 3, 10)))
    theta = np.exp(nb.log_theta.detach().numpy())
    mu = np.exp(raw) / np.exp(raw).sum(1, keepdims=True) * size[:, None]
    got = nb(T(raw), T(size)).log_prob(T(x)).detach().numpy()
    np.testing.assert_allclose(got, stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu)), rtol=1e-8)
    zinb = ZINBLikelihood(10).double()
    logits = rng.normal(0, 1, size=(50, 10))
    dist = zinb(T(np.c_[raw, logits]), T(size))
    np.testing.assert_allclose(dist.mean.detach().numpy(), mu / (1 + np.exp(logits)), rtol=1e-8)


def test_gaussian_learned_and_fixed_variance(rng):
    x, mean = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    learned = Gaussian(6).double()
    with torch.no_grad():
        learned.log_scale.copy_(T(rng.normal(0, 1, 6)))
    scale = np.exp(learned.log_scale.detach().numpy())
    np.testing.assert_allclose(learned(T(mean)).log_prob(T(x)).detach().numpy(), stats.norm.logpdf(x, mean, scale), rtol=1e-10)
    fixed = Gaussian(6, learn_variance=False, variance=0.25).double()
    assert not any(p.requires_grad for p in fixed.parameters())
    np.testing.assert_allclose(fixed(T(mean)).log_prob(T(x)).detach().numpy(), stats.norm.logpdf(x, mean, 0.5), rtol=1e-7)


def test_bernoulli_matches_scipy(rng):
    logits = rng.normal(0, 4, size=(100, 8))
    x = rng.integers(0, 2, size=(100, 8)).astype(float)
    p = 1 / (1 + np.exp(-logits))
    got = BernoulliLikelihood(8)(T(logits)).log_prob(T(x)).detach().numpy()
    np.testing.assert_allclose(got, stats.bernoulli.logpmf(x, p), rtol=1e-8)


def test_float32_counts_stay_finite_at_extremes():
    mu = torch.tensor([1e-8, 1.0, 1e5, 1e5], dtype=torch.float32)
    theta = torch.tensor([1e-4, 1e7, 1e-4, 1e7], dtype=torch.float32)
    x = torch.tensor([0.0, 3.0, 2e5, 1e5])
    assert torch.isfinite(NegativeBinomial(mu, theta).log_prob(x)).all()
    assert torch.isfinite(ZeroInflatedNegativeBinomial(mu, theta, torch.zeros(4)).log_prob(x)).all()


def test_make_likelihood_names_and_errors():
    assert sorted(LIKELIHOODS) == ["bernoulli", "gaussian", "nb", "poisson", "zinb"]
    assert make_likelihood("zinb", 3).n_heads == 2
    with pytest.raises(ValueError, match="choose one of"):
        make_likelihood("negbin", 3)
    with pytest.raises(ValueError, match="positive"):
        Gaussian(3, variance=0.0)
