"""Disentanglement metrics on cases with known answers."""

import numpy as np
import pytest
from scipy.stats import special_ortho_group

from sciencevae import metrics
from sciencevae.datasets import Sprites

N = 8000


@pytest.fixture(scope="module")
def factors():
    rng = np.random.default_rng(0)
    return np.stack([rng.uniform(size=N), rng.uniform(size=N), rng.integers(0, 4, N).astype(float)], 1)


@pytest.fixture(scope="module")
def rotated(factors):
    standard = (factors - factors.mean(0)) / factors.std(0)
    return standard @ special_ortho_group.rvs(3, random_state=1)


def test_identity_latents_score_one(factors):
    assert metrics.mig(factors, factors)["mig"] == pytest.approx(1.0, abs=0.03)
    d = metrics.dci(factors, factors)
    assert d["disentanglement"] > 0.95 and d["completeness"] > 0.95 and d["informativeness"] > 0.95
    assert metrics.sap(factors, factors)["sap"] == pytest.approx(1.0, abs=0.01)
    m = metrics.modularity(factors, factors)
    assert m["modularity"] > 0.97 and m["explicitness"] > 0.9


def test_a_rotation_scores_clearly_lower(factors, rotated):
    assert metrics.mig(rotated, factors)["mig"] < 0.5
    assert metrics.dci(rotated, factors)["disentanglement"] < 0.7
    assert metrics.dci(rotated, factors)["informativeness"] > 0.9  # still all the information
    assert metrics.sap(rotated, factors)["sap"] < 0.6
    assert metrics.modularity(rotated, factors)["modularity"] < 0.9


def test_duplicating_a_factor_lowers_mig_and_completeness(factors):
    duplicated = np.c_[factors, factors[:, 0]]
    assert metrics.mig(duplicated, factors)["per_factor"][0] < 0.05
    assert metrics.mig(duplicated, factors)["mig"] < 0.75
    base, dup = metrics.dci(factors, factors), metrics.dci(duplicated, factors)
    assert dup["completeness"] < base["completeness"] - 0.15
    assert dup["disentanglement"] > 0.9  # each latent still serves one factor


def test_pure_noise_scores_about_zero(factors):
    noise = np.random.default_rng(5).normal(size=(N, 3))
    assert metrics.mig(noise, factors)["mig"] < 0.02
    assert metrics.sap(noise, factors)["sap"] < 0.01
    assert metrics.dci(noise, factors)["informativeness"] < 0.02


def test_constant_latents_are_inactive_not_nan(factors):
    latents = np.c_[factors, np.zeros(N), np.full(N, 3.0)]
    for result in (metrics.mig(latents, factors), metrics.dci(latents, factors),
                   metrics.sap(latents, factors), metrics.modularity(latents, factors)):
        assert result["active_dims"] == 3
        assert all(np.all(np.isfinite(v)) for v in result.values() if isinstance(v, (float, np.ndarray)))
    assert metrics.mig(latents, factors)["mig"] == pytest.approx(metrics.mig(factors, factors)["mig"])
    all_constant = np.zeros((N, 2))
    assert metrics.mig(all_constant, factors) == {"mig": 0.0, "per_factor": pytest.approx(np.zeros(3)), "active_dims": 0}
    assert metrics.dci(all_constant, factors)["disentanglement"] == 0.0
    assert metrics.modularity(all_constant, factors)["active_dims"] == 0


def test_gaussian_total_correlation_known_value():
    rng = np.random.default_rng(0)
    rho = 0.8
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=200_000)
    expected = -0.5 * np.log(1 - rho**2)
    assert metrics.gaussian_total_correlation(z)["total_correlation"] == pytest.approx(expected, rel=0.02)
    assert metrics.gaussian_total_correlation(np.c_[z[:, :1], np.zeros(len(z))])["total_correlation"] == 0.0


def test_bad_input_is_named(factors):
    with pytest.raises(ValueError, match="samples"):
        metrics.mig(factors[:10], factors)
    with pytest.raises(ValueError, match="constant"):
        metrics.mig(factors, np.c_[factors, np.ones(N)])
    with pytest.raises(ValueError, match="finite"):
        metrics.sap(np.full((N, 2), np.nan), factors)
    with pytest.raises(ValueError, match="regressor"):
        metrics.dci(factors, factors, regressor="svm")


class OracleModel:
    """Encodes sprites by reading the factors back (a perfect disentangler)."""

    def __init__(self, sampler, mix=None):
        self.sampler, self.mix = sampler, mix
        self.lookup = {}

    def encode(self, X):
        factors = np.array([self.lookup[row.tobytes()] for row in X.astype(np.uint8)])
        values = self.sampler.values(factors)
        values = (values - values.mean(0)) / (values.std(0) + 1e-9)
        return values if self.mix is None else values @ self.mix


class RecordingSprites(Sprites):
    """Sprites that remember which factors drew each image (for the oracle)."""

    def __init__(self, model_lookup):
        super().__init__()
        self.lookup = model_lookup

    def render(self, factors, chunk=2048):
        images = super().render(factors, chunk)
        for image, f in zip(images.astype(np.uint8), factors):
            self.lookup[image.tobytes()] = f
        return images


def test_interventional_scores_run_on_sprites_and_separate_oracle_from_mixture():
    sampler = Sprites()
    good, mixed = OracleModel(sampler), OracleModel(sampler, special_ortho_group.rvs(5, random_state=0))
    good.lookup = mixed.lookup = {}
    recording = RecordingSprites(good.lookup)
    kwargs = dict(n_train=60, n_eval=40, batch_size=32, seed=0)
    fv_good = metrics.factorvae_score(good, recording, n_variance=500, **kwargs)
    fv_mixed = metrics.factorvae_score(mixed, recording, n_variance=500, **kwargs)
    assert fv_good["factorvae_score"] > 0.9 and fv_good["active_dims"] == 5
    assert fv_mixed["factorvae_score"] < fv_good["factorvae_score"] - 0.2
    bv_good = metrics.betavae_score(good, recording, **kwargs)
    assert bv_good["betavae_score"] > 0.9
