"""Differential programme activity (case_studies.differential) on simulations with known answers."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sciencevae.case_studies.differential import differential
from sciencevae.case_studies.gene_programmes import differential as exported


def _donors(n_donors: int = 8, cells: int = 300, donor_sd: float = 1.0, effect: float = 0.0, seed: int = 0):
    """Activities of cells from donors of two conditions (half each): a donor-level random effect, a
    condition effect ``effect`` on programme 0 and none on programme 1."""
    rng = np.random.default_rng(seed)
    donor = np.repeat([f"d{i}" for i in range(n_donors)], cells)
    condition = np.where(np.repeat(np.arange(n_donors) % 2, cells) == 1, "stim", "ctrl")
    level = np.repeat(rng.normal(0, donor_sd, (n_donors, 2)), cells, axis=0)
    acts = level + rng.normal(0, 1, (len(donor), 2))
    acts[:, 0] += effect * (condition == "stim")
    return acts, pd.DataFrame({"donor": donor, "condition": condition})


def test_cells_are_compared_by_the_wilcoxon_test_and_its_auroc():
    acts, obs = _donors(donor_sd=0.0, effect=0.5)
    table = differential(acts, obs, "condition", "stim", "ctrl")
    row = table[table["programme"] == 0].iloc[0]
    stim, ctrl = acts[obs["condition"] == "stim", 0], acts[obs["condition"] == "ctrl", 0]
    expected = stats.mannwhitneyu(stim, ctrl, alternative="two-sided")
    assert (row["unit"], row["test"], row["n1"], row["n2"]) == ("cells", "wilcoxon", 1200, 1200)
    assert row["p"] == pytest.approx(expected.pvalue) and row["statistic"] == expected.statistic
    assert row["auroc"] == pytest.approx(stats.norm.cdf(0.5 / np.sqrt(2)), abs=0.03)  # two unit normals 0.5 apart
    assert row["difference"] == pytest.approx(stim.mean() - ctrl.mean())
    assert row["q"] < 1e-10 and table.loc[table["programme"] == 1, "q"].iloc[0] > 0.05


def test_donors_as_the_unit_do_not_call_a_donor_effect_a_condition_effect():
    """No condition effect, but donors differ: counting cells finds 'significant' differences (pseudoreplication);
    the pseudobulk of donors does not."""
    acts, obs = _donors(donor_sd=1.0, effect=0.0, seed=3)
    by_cells = differential(acts, obs, "condition", "stim", "ctrl")
    by_donors = differential(acts, obs, "condition", "stim", "ctrl", sample_key="donor")
    assert by_cells["p"].min() < 1e-6
    assert (by_donors["test"] == "welch").all() and (by_donors["n1"] == 4).all()
    assert by_donors["q"].min() > 0.05
    means = pd.Series(acts[:, 0]).groupby(obs["donor"]).mean()
    stim = means[[f"d{i}" for i in range(1, 8, 2)]]
    ctrl = means[[f"d{i}" for i in range(0, 8, 2)]]
    row = by_donors[by_donors["programme"] == 0].iloc[0]
    assert row["p"] == pytest.approx(stats.ttest_ind(stim, ctrl, equal_var=False).pvalue)


def test_donors_as_the_unit_find_a_real_condition_effect():
    acts, obs = _donors(n_donors=12, donor_sd=0.3, effect=2.0, seed=1)
    table = differential(acts, obs, "condition", "stim", "ctrl", sample_key="donor")
    assert table.iloc[0]["programme"] == 0 and table.iloc[0]["q"] < 0.01
    assert table.iloc[0]["difference"] == pytest.approx(2.0, abs=0.5)


def test_groups_within_each_donor_are_paired():
    """Two cell types in every donor: the per-donor differences are tested (paired t-test)."""
    rng = np.random.default_rng(2)
    donors = np.repeat([f"d{i}" for i in range(6)], 200)
    kind = np.tile(np.repeat(["B", "T"], 100), 6)
    acts = np.repeat(rng.normal(0, 3, (6, 1)), 200, axis=0) + rng.normal(0, 1, (1200, 1)) + 0.8 * (kind == "T")[:, None]
    row = differential(acts, pd.DataFrame({"donor": donors, "kind": kind}), "kind", "T", "B",
                       sample_key="donor").iloc[0]
    assert (row["test"], row["n1"], row["n2"]) == ("paired", 6, 6)
    assert row["q"] < 0.01 and row["difference"] == pytest.approx(0.8, abs=0.2)


def test_each_group_against_the_rest_and_unlabelled_cells_left_out():
    acts, obs = _donors(n_donors=4, cells=50, donor_sd=0.0, effect=1.0)
    obs["condition"] = obs["condition"].astype(object)
    obs.loc[:9, "condition"] = np.nan
    table = exported(acts, obs, "condition")
    assert sorted(set(zip(table["group1"], table["group2"]))) == [("ctrl", "rest"), ("stim", "rest")]
    assert len(table) == 4 and set(table["n1"] + table["n2"]) == {190}
    np.testing.assert_allclose(table["q"], stats.false_discovery_control(table["p"].to_numpy()))


@pytest.mark.parametrize("kwargs, message", [
    (dict(groupby="tissue"), "no obs column 'tissue'"),
    (dict(groupby="condition", group1="treated"), "has no group 'treated'"),
    (dict(groupby="condition", group1="stim", group2="stim"), "both 'stim'"),
    (dict(groupby="condition", sample_key="patient"), "no obs column 'patient'"),
    (dict(groupby="count"), "too many to test each against the rest"),
])
def test_bad_requests_are_refused_in_one_line(kwargs, message):
    acts, obs = _donors(n_donors=6, cells=10)
    obs["count"] = np.arange(len(obs))
    with pytest.raises(ValueError, match=message):
        differential(acts, obs, **kwargs)
