"""Posterior predictive checks (case_studies.model_checks) on known answers."""

import numpy as np
import pytest

from sciencevae import BetaVAE
from sciencevae.case_studies.model_checks import compare, posterior_predictive, statistics, verdict

GENES = [f"g{j}" for j in range(200)]


def _nb(rng, mean, theta, shape):
    return rng.poisson(rng.gamma(theta, mean / theta, shape))


def _check(observed, simulated, likelihood):
    table = compare(statistics(observed), [statistics(s) for s in simulated], len(observed), GENES)
    return table, verdict(table, likelihood)


def test_data_from_the_model_itself_pass():
    rng = np.random.default_rng(0)
    mean = rng.lognormal(0, 1, 200)
    table, said = _check(_nb(rng, mean, 2.0, (3000, 200)), [_nb(rng, mean, 2.0, (3000, 200)) for _ in range(5)], "nb")
    assert ((table["zeros"] != "ok") | (table["variance"] != "ok")).mean() < 0.05
    assert said.startswith("data simulated from the nb model match") and "no sign" in said


def test_zero_inflated_data_under_a_plain_nb_say_try_zinb():
    rng = np.random.default_rng(1)
    mean = rng.lognormal(0, 1, 200)
    observed = _nb(rng, mean / 0.7, 2.0, (3000, 200)) * (rng.random((3000, 200)) > 0.3)  # 30% extra zeros
    table, said = _check(observed, [_nb(rng, mean, 1.0, (3000, 200)) for _ in range(5)], "nb")
    assert (table["zeros"] == "under").mean() > 0.3
    assert said.startswith("nb under-predicts zeros for") and said.endswith("try zinb")


def test_overdispersed_data_under_a_poisson_say_try_nb():
    rng = np.random.default_rng(2)
    mean = rng.lognormal(1, 0.5, 200)
    table, said = _check(_nb(rng, mean, 0.5, (3000, 200)), [rng.poisson(mean, (3000, 200)) for _ in range(5)],
                         "poisson")
    assert (table["variance"] == "under").mean() > 0.5
    assert "poisson under-predicts" in said and said.endswith("try nb")


def test_a_fitted_model_s_simulations_match_its_own_kind_of_data():
    """NB counts (dispersion 3) with a few programmes: the NB model trained to convergence passes the checks;
    trained for a fifth as long its dispersion is still too wide (theta ~1.8) and the checks say train longer;
    the same counts with 40% of their entries zeroed make it say try zinb."""
    rng = np.random.default_rng(3)
    usage = rng.dirichlet(np.ones(3), 1500)
    profiles = rng.dirichlet(np.full(60, 0.5), 3)
    counts = _nb(rng, 400 * usage @ profiles, 3.0, (1500, 60)).astype(np.float32)
    zeroed = counts * (rng.random(counts.shape) > 0.4)
    checks = []
    for data, epochs in ((counts, 300), (counts, 60), (zeroed, 300)):
        model = BetaVAE(60, n_latent=3, likelihood="nb", hidden=(32,), seed=0)
        model.fit(data, epochs=epochs, batch_size=128, progress=False, seed=0)
        checks.append(posterior_predictive(model, data, GENES[:60], max_cells=1000, seed=0))
    converged, short, zero_inflated = checks
    assert "no sign of a wrong count model" in converged.verdict, converged.verdict
    assert converged.summary.set_index("statistic").loc["mean", "spearman"] > 0.95
    assert "over-predicts" in short.verdict and "train longer" in short.verdict, short.verdict
    assert zero_inflated.verdict.endswith("try zinb"), zero_inflated.verdict
    assert len(converged.table) == 60 and converged.table["gene"].tolist() == GENES[:60]


def test_a_likelihood_without_counts_is_not_checked():
    model = BetaVAE(5, n_latent=2, hidden=(4,))
    assert posterior_predictive(model, np.zeros((10, 5), np.float32), GENES[:5]) is None


@pytest.mark.parametrize("stat", ["mean", "variance", "cv", "zero_fraction"])
def test_statistics_match_numpy(stat):
    x = np.random.default_rng(4).poisson(2.0, (500, 7)).astype(float)
    expected = {"mean": x.mean(0), "variance": x.var(0), "cv": x.std(0) / x.mean(0), "zero_fraction": (x == 0).mean(0)}
    np.testing.assert_allclose(statistics(x)[stat], expected[stat])


def test_genes_that_never_vary_give_no_numpy_warnings():
    rng = np.random.default_rng(5)
    observed = rng.poisson(2.0, (300, 4)).astype(float)
    observed[:, 0] = 0.0  # never expressed: CV undefined, log variance -inf
    simulated = [rng.poisson(2.0, (300, 4)).astype(float) for _ in range(3)]
    for s in simulated:
        s[:, 0] = 0.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = compare(statistics(observed), [statistics(s) for s in simulated], 300, GENES[:4])
    assert np.isnan(table.loc[0, "simulated_cv"]) and table.loc[0, "variance"] == "ok"
