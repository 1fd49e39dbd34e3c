"""Consensus of components across fits: known answers for matching, orientation, stability and activities."""

import numpy as np
import pytest

from sciencevae.consensus import consensus, orient

N_FEATURES = 200


def planted(rng, n_programmes=4, size=25):
    truth = np.zeros((N_FEATURES, n_programmes))
    for p in range(n_programmes):
        truth[rng.choice(N_FEATURES, size, replace=False), p] = rng.uniform(0.5, 1.5, size)
    return truth


def shuffled(truth, rng, noise=0.1):
    """A fit: the programmes in another order, random signs, noise, and the permutation used."""
    order = rng.permutation(truth.shape[1])
    signs = rng.choice([-1.0, 1.0], truth.shape[1])
    return truth[:, order] * signs + rng.normal(0, noise, truth.shape), order, signs


def test_programmes_found_in_every_fit_are_recovered_with_their_members_and_signs():
    rng = np.random.default_rng(0)
    truth = planted(rng)
    fits = [shuffled(truth, rng) for _ in range(5)]
    found = consensus([w for w, _, _ in fits])
    assert found.loadings.shape == (N_FEATURES, 4)
    correlation = np.corrcoef(found.loadings.T, truth.T)[:4, 4:]
    assert np.all(correlation.max(1) > 0.97)  # each consensus programme is one true programme, positive
    assert sorted(correlation.argmax(1)) == [0, 1, 2, 3]
    np.testing.assert_array_equal(found.found, 1.0)
    assert np.all(found.stability > 0.9)  # pairs of noisy copies correlate ~0.92
    for f, (_, order, signs) in enumerate(fits):
        truth_of = order[found.members[f]]  # which true programme each fit's member is
        np.testing.assert_array_equal(truth_of, correlation.argmax(1))
        np.testing.assert_array_equal(found.signs[f], signs[found.members[f]])


def test_a_programme_found_by_few_fits_is_flagged_and_noise_is_dropped():
    rng = np.random.default_rng(1)
    truth = planted(rng, n_programmes=3)
    extra = planted(rng, n_programmes=1)[:, 0]
    fits = []
    for f in range(6):
        weights, _, _ = shuffled(truth, rng)
        fourth = extra + rng.normal(0, 0.1, N_FEATURES) if f < 2 else rng.normal(0, 1, N_FEATURES)  # noise: no match
        fits.append(np.c_[weights, fourth])
    found = consensus(fits)
    assert found.loadings.shape[1] == 4  # three everywhere, one in two fits; the noise columns match nothing
    rare = np.argmax(np.corrcoef(found.loadings.T, extra)[-1, :-1])
    assert rare == 3  # sorted last: least stable
    assert found.found[rare] == pytest.approx(2 / 6)
    assert found.stability[rare] < 0.6 < 0.9 < found.stability[:3].min()
    np.testing.assert_array_equal(found.members[2:, rare], -1)


def test_activities_are_the_sign_aligned_mean_of_the_members():
    rng = np.random.default_rng(2)
    truth = planted(rng, n_programmes=2)
    activity = rng.normal(size=(50, 2))
    fits, latents = [], []
    for _ in range(3):
        weights, order, signs = shuffled(truth, rng, noise=0.05)
        fits.append(weights)
        latents.append(activity[:, order] * signs)  # the same cells' activities in the fit's order and signs
    found = consensus(fits)
    recovered = found.activities(latents)
    truth_of = np.corrcoef(found.loadings.T, truth.T)[:2, 2:].argmax(1)
    np.testing.assert_allclose(recovered, activity[:, truth_of], atol=1e-12)


def test_orientation_makes_the_largest_loadings_positive():
    weights = np.array([[3.0, -3.0], [-1.0, 1.0], [0.5, 0.2]])
    np.testing.assert_array_equal(orient(weights), [1.0, -1.0])


def test_one_fit_keeps_its_components_and_bad_input_is_refused():
    rng = np.random.default_rng(3)
    single = planted(rng, n_programmes=3)
    found = consensus([single])
    assert found.loadings.shape == (N_FEATURES, 3) and np.all(np.isnan(found.stability))
    with pytest.raises(ValueError, match="same features"):
        consensus([single, single[:10]])
    with pytest.raises(ValueError, match="at least one fit"):
        consensus([])
    with pytest.raises(ValueError, match="no component was found again in 2 of the 2 fits"):
        consensus([rng.normal(size=(N_FEATURES, 3)), rng.normal(size=(N_FEATURES, 3))])
