"""Label-based disentanglement scores (sciencevae.label_matching) on known answers."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.feature_selection import mutual_info_classif

from sciencevae.label_matching import SIMILARITIES, label_matching, matching_scores, similarity
from sciencevae.metrics import label_matching as exported

LABELS = np.repeat(["a", "b", "c"], 300)


def _one_per_category(rng, noise=0.2):
    return np.c_[[(LABELS == c) + rng.normal(0, noise, len(LABELS)) for c in "abc"]].T


@pytest.mark.parametrize("kind", SIMILARITIES)
def test_one_latent_per_category_scores_high_and_random_latents_score_near_zero(kind):
    rng = np.random.default_rng(0)
    good = matching_scores(similarity(_one_per_category(rng), LABELS, kind))
    noise = matching_scores(similarity(rng.normal(size=(900, 3)), LABELS, kind))
    assert good["best"] > 0.8 and good["matching"] == pytest.approx(good["best"]) and good["gap"] > 0.35
    assert max(noise.values()) < 0.1


def test_one_latent_for_every_category_is_not_matched_one_to_one():
    """A single latent orders all three categories (each is a run along it): every category's best latent is
    that one, but a one-to-one matching can give it to one category only."""
    rng = np.random.default_rng(1)
    z = np.c_[np.searchsorted(["a", "b", "c"], LABELS) + rng.normal(0, 0.05, 900), rng.normal(size=(900, 2))]
    scores = matching_scores(similarity(z, LABELS, "nn"))
    assert scores["best"] > 0.95 and scores["matching"] < 0.4


def test_two_latents_sharing_a_category_leave_no_gap_for_it():
    rng = np.random.default_rng(2)
    z = _one_per_category(rng)
    shared = np.c_[z, (LABELS == "a") + rng.normal(0, 0.2, 900)]
    gaps = np.sort(similarity(shared, LABELS, "nn"), axis=0)[::-1]
    assert gaps[0, 0] - gaps[1, 0] < 0.1 and gaps[0, 1] - gaps[1, 1] > 0.6


def test_nearest_neighbour_alignment_on_small_exact_cases():
    labels = np.array(["x", "x", "y", "y", "x", "y"])
    runs = np.array([[0.0], [1.0], [4.0], [5.0], [2.0], [3.0]])  # order x x x y y y: each category one run
    alternating = np.array([[0.0], [2.0], [1.0], [3.0], [4.0], [5.0]])  # order x y x y x y
    np.testing.assert_allclose(similarity(runs, labels, "nn"), [[1.0, 1.0]])
    np.testing.assert_allclose(similarity(alternating, labels, "nn"), [[0.0, 0.0]])


def test_scaled_mutual_information_and_spearman_are_the_textbook_ones():
    rng = np.random.default_rng(3)
    z = _one_per_category(rng, noise=0.6)
    indicator = LABELS == "b"
    mi = mutual_info_classif(z, indicator, random_state=0) / stats.entropy([1 / 3, 2 / 3])
    np.testing.assert_allclose(similarity(z, LABELS, "smi")[:, 1], np.clip(mi, 0, 1))
    rho = [abs(stats.spearmanr(z[:, i], indicator).statistic) for i in range(3)]
    np.testing.assert_allclose(similarity(z, LABELS, "spearman")[:, 1], rho)


def test_obs_columns_are_scored_with_unlabelled_cells_left_out_and_large_data_sampled():
    rng = np.random.default_rng(4)
    z = _one_per_category(rng)
    obs = pd.DataFrame({"kind": pd.Series(LABELS, dtype=object), "one": "same"})
    obs.loc[:9, "kind"] = np.nan
    table = exported(z, obs, ["kind", "one"])
    assert list(table["similarity"]) == list(SIMILARITIES) and set(table["obs_key"]) == {"kind"}
    assert (table["n_cells"] == 890).all() and table["best_latent"].iloc[0] == "a: 0, b: 1, c: 2"
    sampled = label_matching(z, obs, ["kind"], max_cells=300)
    assert (sampled["n_cells"] == 300).all() and (sampled["matching"] > 0.7).all()


@pytest.mark.parametrize("labels, kind, message", [
    (np.repeat("a", 900), "nn", "fewer than 2 categories"),
    (LABELS, "mig", "kind must be one of"),
    (LABELS[:10], "nn", "one row per label"),
])
def test_bad_requests_are_refused_in_one_line(labels, kind, message):
    with pytest.raises(ValueError, match=message):
        similarity(np.zeros((900, 2)), labels, kind)
