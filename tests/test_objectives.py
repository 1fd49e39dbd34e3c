"""Objectives: β-TCVAE decomposition, schedules, free bits, warnings."""

import math

import numpy as np
import pytest
import torch

from sciencevae.objectives import ElboTerms, Objective, gaussian_log_density, tc_decomposition


def posterior(mu: np.ndarray, std: float = 0.2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.as_tensor(mu, dtype=torch.float64)
    logvar = torch.full_like(mu, 2 * math.log(std))
    z = mu + std * torch.randn(mu.shape, generator=g, dtype=torch.float64)
    return z, mu, logvar


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_terms_add_up_to_the_kl_estimate(rng, estimator):
    z, mu, logvar = posterior(rng.normal(size=(256, 4)))
    parts = tc_decomposition(z, mu, logvar, dataset_size=10_000, estimator=estimator)
    total = parts["mi"] + parts["tc"] + parts["dim_kl"]
    torch.testing.assert_close(total, parts["log_qz_x"] - parts["log_pz"])
    # the one-sample estimate averages to the analytic KL
    analytic = (0.5 * (mu.square() + logvar.exp() - 1 - logvar)).sum(-1)
    assert total.mean().item() == pytest.approx(analytic.mean().item(), abs=0.15)


def test_mss_on_the_whole_dataset_is_the_exact_aggregate_posterior(rng):
    z, mu, logvar = posterior(rng.normal(size=(60, 2)))
    parts = tc_decomposition(z, mu, logvar, dataset_size=60, estimator="mss")
    pairwise = gaussian_log_density(z[:, None, :], mu[None], logvar[None]).sum(-1)
    exact_log_qz = torch.logsumexp(pairwise, 1) - math.log(60)
    torch.testing.assert_close(parts["log_qz_x"] - parts["mi"], exact_log_qz)


def test_mws_includes_the_dataset_size_constant(rng):
    z, mu, logvar = posterior(rng.normal(size=(32, 3)))
    small = tc_decomposition(z, mu, logvar, dataset_size=100, estimator="mws")
    large = tc_decomposition(z, mu, logvar, dataset_size=10_000, estimator="mws")
    # log q(z) and each log q(z_l) drop by log(100): MI rises by log(100), TC by (L-1) log(100)
    torch.testing.assert_close(large["mi"] - small["mi"], torch.full((32,), math.log(100), dtype=torch.float64))
    torch.testing.assert_close(large["tc"] - small["tc"], torch.full((32,), 2 * math.log(100), dtype=torch.float64))


def total_correlations(rng, estimator):
    independent = rng.normal(size=(1000, 2))
    shared = rng.normal(size=1000)
    correlated = np.stack([shared, shared + 0.1 * rng.normal(size=1000)], 1)
    tc_ind = tc_decomposition(*posterior(independent), dataset_size=1000, estimator=estimator)["tc"].mean()
    tc_cor = tc_decomposition(*posterior(correlated), dataset_size=1000, estimator=estimator)["tc"].mean()
    return tc_ind.item(), tc_cor.item()


def test_total_correlation_is_zero_for_independent_latents_mss(rng):
    tc_ind, tc_cor = total_correlations(rng, "mss")
    assert abs(tc_ind) < 0.15
    assert tc_cor > 1.0


def test_total_correlation_mws_is_biased_but_ordered(rng):
    # MWS over-weights each sample's own posterior: with tight posteriors its TC
    # is offset by about L log N - log M (= log 1000 here), as Chen et al. note.
    tc_ind, tc_cor = total_correlations(rng, "mws")
    assert tc_ind == pytest.approx(math.log(1000), abs=0.3)
    assert tc_cor - tc_ind > 1.0


def test_tc_decomposition_rejects_bad_arguments():
    z = torch.zeros(8, 2)
    with pytest.raises(ValueError, match="smaller than the batch"):
        tc_decomposition(z, z, z, dataset_size=4)
    with pytest.raises(ValueError, match="estimator"):
        tc_decomposition(z, z, z, dataset_size=10, estimator="xyz")


def terms_with(kl_per_latent, reconstruction=5.0, batch=4):
    kl = torch.tensor(kl_per_latent, dtype=torch.float32).expand(batch, -1)
    mu = torch.zeros(batch, len(kl_per_latent))
    return ElboTerms(torch.full((batch,), reconstruction), kl, mu, mu, mu)


def test_beta_objective_with_beta_one_is_the_negative_elbo():
    out = Objective().loss(terms_with([0.5, 1.5]), step=0, dataset_size=100)
    assert out["loss"].item() == pytest.approx(5.0 + 2.0)
    out = Objective(beta=4.0).loss(terms_with([0.5, 1.5]), step=0, dataset_size=100)
    assert out["loss"].item() == pytest.approx(5.0 + 8.0)
    assert out["kl_per_latent"].tolist() == [0.5, 1.5]


def test_warmup_and_free_bits():
    objective = Objective(beta=2.0, warmup_steps=100, free_bits=1.0)
    assert objective.kl_weight(0) == 0 and objective.kl_weight(50) == 0.5 and objective.kl_weight(500) == 1
    out = objective.loss(terms_with([0.25, 3.0]), step=50, dataset_size=100)
    # free bits floor the first latent at 1 nat: 5 + 2 * 0.5 * (1 + 3)
    assert out["loss"].item() == pytest.approx(9.0)
    assert out["kl"].item() == pytest.approx(3.25)  # the reported KL is the real one


def test_capacity_schedule():
    objective = Objective(kind="capacity", gamma=10.0, capacity_max=20.0, capacity_steps=100)
    assert objective.capacity(0) == 0 and objective.capacity(50) == 10 and objective.capacity(1000) == 20
    out = objective.loss(terms_with([2.0, 2.0]), step=50, dataset_size=100)
    assert out["loss"].item() == pytest.approx(5.0 + 10.0 * abs(4.0 - 10.0))


def test_tcvae_objective_weights_the_parts(rng):
    z, mu, logvar = (t.float() for t in posterior(rng.normal(size=(64, 3))))
    terms = ElboTerms(torch.zeros(64), 0.5 * (mu**2 + logvar.exp() - 1 - logvar), z, mu, logvar)
    plain = Objective(kind="tcvae", beta=1.0).loss(terms, 0, 1000)
    heavy = Objective(kind="tcvae", beta=6.0).loss(terms, 0, 1000)
    assert plain["loss"].item() == pytest.approx((plain["mi"] + plain["tc"] + plain["dim_kl"]).item(), rel=1e-5)
    assert heavy["loss"].item() == pytest.approx((plain["mi"] + 6 * plain["tc"] + plain["dim_kl"]).item(), rel=1e-5)


def test_warns_when_a_schedule_cannot_finish():
    with pytest.warns(UserWarning, match="warm-up"):
        Objective(warmup_steps=1000).warn_if_unfinished(total_steps=10)
    with pytest.warns(UserWarning, match="capacity"):
        Objective(kind="capacity").warn_if_unfinished(total_steps=10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="vae"), "kind"),
        (dict(beta=-1.0), "beta"),
        (dict(beta=float("nan")), "beta"),
        (dict(kind="tcvae", free_bits=0.5), "free_bits"),
        (dict(kind="capacity", warmup_steps=10), "capacity_steps"),
        (dict(warmup_steps=1.5), "warmup_steps"),
    ],
)
def test_objective_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Objective(**kwargs)
