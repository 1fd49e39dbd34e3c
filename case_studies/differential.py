"""Differential programme activity between groups of cells, with samples (donors) as the unit when given.

Cells of one donor are not independent replicates: a test that counts cells calls almost any difference
significant on a large dataset (Squair et al. 2021, Nat. Commun. 12:5692). With ``sample_key`` each sample's
cells in a group are averaged first (a pseudobulk of the activities) and the samples are compared:

- a sample in both groups (e.g. two cell types within each donor): a paired t-test on the per-sample
  differences (``scipy.stats.ttest_rel``);
- otherwise (e.g. donors of two conditions): Welch's t-test on the sample means (``scipy.stats.ttest_ind``).

Without ``sample_key`` the cells are compared by the Wilcoxon rank-sum test (``scipy.stats.mannwhitneyu``),
as scanpy's ``rank_genes_groups(method="wilcoxon")`` does for genes. Effect sizes: the difference of the
units' means, Cohen's d of the cells (pooled standard deviation; the same with samples as the unit, where a few
samples' means would give an inflated d) and, for cells, the AUROC (the probability
that a cell of group 1 is more active than one of group 2). p-values are adjusted over every row of the
table by Benjamini–Hochberg (``scipy.stats.false_discovery_control``).

>>> rng = np.random.default_rng(0)
>>> obs = pd.DataFrame({"condition": np.repeat(["ctrl", "stim"], 100)})
>>> act = np.c_[rng.normal(0, 1, 200), rng.normal(0, 1, 200) + np.repeat([0.0, 1.0], 100)]
>>> table = differential(act, obs, "condition", "stim", "ctrl")
>>> table[["programme", "n1", "n2", "unit"]].values.tolist()
[[1, 100, 100, 'cells'], [0, 100, 100, 'cells']]
>>> bool(table["q"].iloc[0] < 1e-6), bool(table["q"].iloc[1] > 0.05)
(True, True)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from sciencevae.adapters.cells import missing_labels

__all__ = ["differential", "comparison", "check_comparison", "parse_comparison", "cohens_d", "COLUMNS"]

#: Most groups a column may have for each to be tested against the rest.
MAX_GROUPS = 50
#: The columns of a :func:`differential` table.
COLUMNS = ["programme", "obs_key", "group1", "group2", "unit", "test", "n1", "n2", "mean1", "mean2", "difference",
           "effect_size", "auroc", "statistic", "p", "q"]


def differential(activities: np.ndarray, obs: pd.DataFrame, groupby: str, group1: str | None = None,
                 group2: str | None = None, sample_key: str | None = None, min_units: int = 2) -> pd.DataFrame:
    """Test every programme's activity between two groups of cells, or each group against the rest.

    Parameters
    ----------
    activities : (n_cells, n_programmes) per-cell programme activities (e.g. ``obsm["X_sciencevae"]``).
    obs : the cells' annotations (n_cells rows).
    groupby : column of ``obs`` holding the groups (conditions, cell types).
    group1, group2 : compare ``group1`` with ``group2`` (default: every other labelled cell); ``group1=None``
        compares each group with the rest.
    sample_key : column of ``obs`` naming each cell's sample (donor, replicate): samples are the unit.
    min_units : fewer cells (or samples) than this in either group: the row is left out.

    Returns
    -------
    DataFrame with :data:`COLUMNS`, one row per (comparison, programme), sorted by ``p``: ``unit`` "cells" or
    "samples"; ``test`` "wilcoxon", "welch" or "paired"; ``n1``/``n2`` units per group; ``mean1``/``mean2``
    their mean activity and ``difference`` = mean1 - mean2; ``effect_size`` Cohen's d of the cells'
    activities; ``auroc`` (cells only, else NaN); ``statistic`` (U or t), ``p``, and ``q`` (BH over the table).

    Raises
    ------
    ValueError : a missing column, a group not in the column, the two groups the same, or a shape mismatch.
    """
    activities = np.asarray(activities, dtype=np.float64)
    if activities.ndim != 2 or len(activities) != len(obs):
        raise ValueError(f"activities must be (cells, programmes) with one row per obs row: got {activities.shape} "
                         f"for {len(obs)} cells")
    check_comparison(obs, groupby, group1, group2, sample_key)
    labels = obs[groupby].astype(str).to_numpy()
    labelled = ~missing_labels(obs[groupby])
    present = pd.unique(labels[labelled])
    samples = None if sample_key is None else obs[sample_key].astype(str).to_numpy()
    comparisons = [(group1, group2)] if group1 is not None else [(g, None) for g in present]
    rows = []
    for first, second in comparisons:
        inside = labelled & (labels == first)
        other = labelled & (labels == second if second is not None else labels != first)
        rest = second if second is not None else "rest"
        for j in range(activities.shape[1]):
            row = _compare(activities[:, j], inside, other, samples, min_units)
            if row is not None:
                rows.append({"programme": j, "obs_key": groupby, "group1": first, "group2": rest, **row})
    table = pd.DataFrame(rows, columns=COLUMNS)
    if len(table):
        table["q"] = stats.false_discovery_control(table["p"].to_numpy())
    return table.sort_values(["p", "programme"]).reset_index(drop=True)


def check_comparison(obs: pd.DataFrame, groupby: str, group1: str | None = None, group2: str | None = None,
                     sample_key: str | None = None) -> None:
    """Raise ``ValueError`` (one line naming the fix) unless :func:`differential` can make this comparison."""
    for key in (groupby, sample_key):
        if key is not None and key not in obs.columns:
            raise ValueError(f"no obs column {key!r}; the columns are {', '.join(map(str, obs.columns))}")
    present = pd.unique(obs[groupby].astype(str).to_numpy()[~missing_labels(obs[groupby])])
    if group1 is None and len(present) > MAX_GROUPS:
        raise ValueError(f"obs[{groupby!r}] has {len(present):,} different values, too many to test each against the "
                         f"rest (at most {MAX_GROUPS}): compare a categorical column, or name the groups "
                         "(KEY:GROUP1[:GROUP2])")
    for group in (group1, group2):
        if group is not None and group not in present:
            raise ValueError(f"obs[{groupby!r}] has no group {group!r}; its groups are {', '.join(map(str, present))}")
    if group1 is not None and group1 == group2:
        raise ValueError(f"group1 and group2 are both {group1!r}: name two different groups")
    if group1 is None and group2 is not None:
        raise ValueError("group2 needs group1: name the group to compare with it")


def comparison(obs: pd.DataFrame, compare: str | tuple | None,
               sample_key: str | None = None) -> tuple[str, str | None, str | None] | None:
    """``compare`` as (groupby, group1, group2) — from ``"KEY[:GROUP1[:GROUP2]]"`` or a shorter tuple — checked
    against ``obs`` (:func:`check_comparison`); None for none. ``ValueError`` (one line) for a bad request,
    or a ``sample_key`` without a comparison."""
    if compare is None:
        if sample_key is not None:
            raise ValueError("sample_key (--sample-key) is the unit of a comparison: give the groups to compare "
                             "too (compare / --compare KEY[:GROUP1[:GROUP2]])")
        return None
    parts = parse_comparison(compare) if isinstance(compare, str) else tuple(compare) + (None,) * (3 - len(compare))
    check_comparison(obs, *parts, sample_key=sample_key)
    return parts


def parse_comparison(text: str) -> tuple[str, str | None, str | None]:
    """``"KEY"``, ``"KEY:GROUP1"`` or ``"KEY:GROUP1:GROUP2"`` (the CLI's ``--compare``) as (groupby, group1, group2).

    >>> parse_comparison("condition:stim:ctrl"), parse_comparison("cell_type")
    (('condition', 'stim', 'ctrl'), ('cell_type', None, None))
    """
    parts = text.split(":")
    if len(parts) > 3 or not all(parts):
        raise ValueError(f"--compare takes KEY, KEY:GROUP1 or KEY:GROUP1:GROUP2 (an obs column and its groups), "
                         f"got {text!r}")
    return parts[0], *(parts[1:] + [None, None])[:2]


def _compare(values: np.ndarray, inside: np.ndarray, other: np.ndarray, samples: np.ndarray | None,
             min_units: int) -> dict | None:
    """One programme, one comparison: the test and effect sizes (None when a group is too small)."""
    row = _test(values, inside, other, samples, min_units)
    if row is not None:  # the effect size of the cells, whatever the unit: a few donors' means hardly vary
        row["effect_size"] = cohens_d(values[inside], values[other])
    return row


def _test(values: np.ndarray, inside: np.ndarray, other: np.ndarray, samples: np.ndarray | None,
          min_units: int) -> dict | None:
    """The test on cells or on the samples' means (None when a group is too small)."""
    if samples is None:
        a, b = values[inside], values[other]
        if min(len(a), len(b)) < min_units:
            return None
        test = stats.mannwhitneyu(a, b, alternative="two-sided")
        return _row("cells", "wilcoxon", a, b, test.statistic, test.pvalue,
                    auroc=test.statistic / (len(a) * len(b)))
    means_a, means_b = _sample_means(values, inside, samples), _sample_means(values, other, samples)
    both = means_a.index.intersection(means_b.index)
    if len(both) == len(means_a) == len(means_b) and len(both) >= min_units:  # every sample in both groups
        a, b = means_a[both].to_numpy(), means_b[both].to_numpy()
        test = stats.ttest_rel(a, b)
        return _row("samples", "paired", a, b, test.statistic, test.pvalue)
    a, b = means_a.to_numpy(), means_b.to_numpy()
    if min(len(a), len(b)) < min_units:
        return None
    test = stats.ttest_ind(a, b, equal_var=False)
    return _row("samples", "welch", a, b, test.statistic, test.pvalue)


def _sample_means(values: np.ndarray, cells: np.ndarray, samples: np.ndarray) -> pd.Series:
    """Mean activity of each sample's cells among ``cells`` (the pseudobulk of one group)."""
    return pd.Series(values[cells]).groupby(samples[cells]).mean()


def _row(unit: str, test: str, a: np.ndarray, b: np.ndarray, statistic: float, p: float,
         auroc: float = float("nan")) -> dict:
    return {"unit": unit, "test": test, "n1": len(a), "n2": len(b), "mean1": float(a.mean()),
            "mean2": float(b.mean()), "difference": float(a.mean() - b.mean()), "effect_size": cohens_d(a, b),
            "auroc": float(auroc), "statistic": float(statistic), "p": float(p), "q": float("nan")}


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's d of ``a`` against ``b`` with the pooled standard deviation; NaN when it is undefined
    (a group of one cell has no spread of its own), 0 when neither group varies and the means agree.

    >>> cohens_d(np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, 5.0]))
    -2.0
    >>> cohens_d(np.array([1.0]), np.array([3.0, 4.0]))
    nan
    """
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    difference = float(a.mean() - b.mean())
    return difference / float(pooled) if pooled > 0 else (0.0 if difference == 0 else float("nan"))
