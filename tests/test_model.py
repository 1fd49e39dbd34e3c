"""BetaVAE construction, encode/decode/reconstruct, covariates, linear decoder."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import sciencevae

from sciencevae import BetaVAE, Objective
from sciencevae.data import Batch

SMALL = dict(hidden=(16,))


def test_shapes_for_every_likelihood(rng):
    X = rng.poisson(3.0, size=(20, 7)).astype(np.float32)
    for likelihood in ("gaussian", "poisson", "nb", "zinb"):
        vae = BetaVAE(7, n_latent=3, likelihood=likelihood, **SMALL)
        assert vae.encode(X).shape == (20, 3)
        mean, std = vae.encode(X, return_std=True)
        assert np.all(std > 0)
        assert vae.decode(mean).shape == (20, 7)
        assert vae.reconstruct(X).shape == (20, 7)
    binary = BetaVAE(7, n_latent=3, likelihood="bernoulli", **SMALL)
    assert np.all((binary.decode(np.zeros((2, 3))) > 0) & (binary.decode(np.zeros((2, 3))) < 1))


def test_count_decode_is_normalised_and_reconstruct_keeps_library_size(rng):
    X = rng.poisson(5.0, size=(10, 6)).astype(np.float32)
    vae = BetaVAE(6, n_latent=2, likelihood="nb", **SMALL)
    np.testing.assert_allclose(vae.decode(np.zeros((3, 2))).sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vae.reconstruct(X).sum(1), X.sum(1), rtol=1e-4)


def test_linear_decoder_loadings_are_its_weights():
    vae = BetaVAE(9, n_latent=4, decoder="linear", likelihood="zinb", **SMALL)
    loadings = vae.loadings
    assert loadings.shape == (9, 4)
    np.testing.assert_array_equal(loadings, vae.module.decoder.linear.weight[:9, :4].detach().numpy())
    with pytest.raises(AttributeError, match="linear"):
        BetaVAE(9, n_latent=4, **SMALL).loadings


def test_covariates_reach_encoder_and_decoder(rng):
    X = rng.normal(size=(8, 5)).astype(np.float32)
    vae = BetaVAE(5, n_latent=2, n_covariates=2, **SMALL)
    a, b = np.tile([1.0, 0.0], (8, 1)), np.tile([0.0, 1.0], (8, 1))
    assert not np.allclose(vae.encode(X, covariates=a), vae.encode(X, covariates=b))
    z = np.zeros((8, 2))
    assert not np.allclose(vae.decode(z, covariates=a), vae.decode(z, covariates=b))
    with pytest.raises(ValueError, match="covariate"):
        vae.encode(X)


def test_decoder_only_covariates_leave_the_encoder_blind_to_them(rng, tmp_path):
    X = rng.normal(size=(8, 5)).astype(np.float32)
    vae = BetaVAE(5, n_latent=2, n_covariates=2, encode_covariates=False, **SMALL)
    a, b = np.tile([1.0, 0.0], (8, 1)), np.tile([0.0, 1.0], (8, 1))
    np.testing.assert_array_equal(vae.encode(X, covariates=a), vae.encode(X, covariates=b))
    z = np.zeros((8, 2))
    assert not np.allclose(vae.decode(z, covariates=a), vae.decode(z, covariates=b))
    vae.fit(X, covariates=a, epochs=1, progress=False)
    loaded = sciencevae.load(vae.save(tmp_path / "m"))
    assert loaded.config.encode_covariates is False
    np.testing.assert_array_equal(loaded.encode(X, covariates=a), vae.encode(X, covariates=a))


def test_masked_features_drop_out_of_the_reconstruction(rng):
    vae = BetaVAE(4, n_latent=2, **SMALL)
    x = torch.as_tensor(rng.normal(size=(3, 4)), dtype=torch.float32)
    mask = torch.tensor([[True, True, False, False]] * 3)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    masked = vae.module.terms(Batch(x, mask, None, None, None), g())
    altered = x.clone()
    altered[:, 2:] = 100.0
    masked_altered = vae.module.terms(Batch(altered, mask, None, None, None), g())
    weights = vae.module.terms(Batch(x, None, None, None, torch.tensor([1.0, 1.0, 0.0, 0.0])), g())
    # the encoder still sees the masked values, the likelihood does not
    assert not torch.allclose(masked.reconstruction, masked_altered.reconstruction)
    torch.testing.assert_close(masked.reconstruction, weights.reconstruction)


def test_kl_per_sample_matches_the_analytic_formula(rng):
    vae = BetaVAE(4, n_latent=3, **SMALL)
    x = torch.as_tensor(rng.normal(size=(5, 4)), dtype=torch.float32)
    terms = vae.module.terms(Batch(x, None, None, None, None))
    q = torch.distributions.Normal(terms.mu, torch.exp(0.5 * terms.logvar))
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(terms.kl, expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_features=0), "n_features"),
        (dict(n_features=3, likelihood="gamma"), "likelihood"),
        (dict(n_features=3, decoder="conv"), "decoder"),
        (dict(n_features=3, hidden=()), "hidden"),
        (dict(n_features=3, objective="vae"), "objective kind"),
        (dict(n_features=3, beta=4.0, objective=Objective(beta=2.0)), "conflicts"),
    ],
)
def test_constructor_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BetaVAE(**kwargs)


@pytest.mark.parametrize(
    "X, likelihood, message",
    [
        (np.array([[1.0, -2.0]] * 4), "nb", "negative"),
        (np.array([[1.5, 2.0]] * 4), "poisson", "non-integer"),
        (np.array([[np.nan, 2.0]] * 4), "zinb", "NaN"),
        (sp.csr_matrix(np.array([[0.5, 2.0]] * 4)), "nb", "non-integer"),
        (np.array([[0.0, 2.0]] * 4), "bernoulli", r"\[0, 1\]"),
    ],
)
def test_fit_rejects_data_the_likelihood_cannot_model(X, likelihood, message):
    vae = BetaVAE(2, n_latent=1, likelihood=likelihood, **SMALL)
    with pytest.raises(ValueError, match=message):
        vae.fit(X, epochs=1, progress=False, validation=0.0)


def test_wrong_feature_count_is_named(rng):
    vae = BetaVAE(5, n_latent=2, **SMALL)
    with pytest.raises(ValueError, match="6 features but the model was built for 5"):
        vae.encode(rng.normal(size=(3, 6)))
    with pytest.raises(ValueError, match="Z must have shape"):
        vae.decode(np.zeros((3, 5)))
