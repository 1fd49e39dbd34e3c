"""Disentanglement against labels, for real data without ground-truth factors.

The latent-matching family of scores that DRVI (Moinfar & Theis 2024, bioRxiv 10.1101/2024.11.06.622266)
uses on single-cell data: every category of a categorical label (a cell type, a condition), taken as
"this category or not", is compared with every latent by a similarity in [0, 1]; the (latents, categories)
similarity matrix is then summarised by how well each category is captured by *one* latent.

Similarities (:func:`similarity`):

- ``"smi"``, scaled mutual information: the mutual information between a latent and the category's
  indicator (scikit-learn's nearest-neighbour estimator, Ross 2014, PLoS ONE 9:e87357) divided by the
  indicator's entropy, so 1 = the latent determines the category;
- ``"nn"``, nearest-neighbour alignment: cells sorted along the latent; the share of a category's cells
  whose successor is of the same category, above the share expected by chance (the category's frequency),
  rescaled so 1 = the category's cells form one run;
- ``"spearman"``: the absolute Spearman correlation of the latent with the indicator.

Summaries (:func:`matching_scores`), each a mean over categories:

- ``best``: the best latent's similarity (DRVI's "most similar averaging score");
- ``gap``: the best latent's minus the second best's (its "most similar gap score"): high only when one
  latent, not several, carries the category;
- ``matching``: one latent per category, one category per latent, matched to maximise the total
  (Hungarian algorithm; its "latent matching score").

>>> rng = np.random.default_rng(0)
>>> labels = np.repeat(["a", "b", "c"], 200)
>>> z = np.c_[[(labels == c) + rng.normal(0, .2, 600) for c in "abc"]].T   # one latent per category
>>> scores = matching_scores(similarity(z, labels, "nn"))
>>> round(scores["best"], 2), round(scores["gap"], 2)
(0.98, 0.69)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import linear_sum_assignment
from sklearn.feature_selection import mutual_info_classif

__all__ = ["similarity", "matching_scores", "label_matching", "SIMILARITIES", "MAX_CELLS"]

SIMILARITIES = ("smi", "nn", "spearman")
MAX_CELLS = 5000  # cells scored (a seeded sample of larger data): the mutual information is O(n log n) per pair


def _indicators(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    categories, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return categories, np.eye(len(categories), dtype=bool)[codes]


def similarity(latents: np.ndarray, labels: np.ndarray, kind: str = "smi", seed: int = 0) -> np.ndarray:
    """(n_latents, n_categories) similarity in [0, 1] of each latent with each category's indicator.

    Parameters
    ----------
    latents : (n_cells, n_latents) e.g. posterior means or programme activities.
    labels : (n_cells,) categories (at least 2).
    kind : one of :data:`SIMILARITIES`.
    seed : the nearest-neighbour mutual information estimator's jitter (``"smi"``).

    Raises
    ------
    ValueError : an unknown kind, fewer than 2 categories, or a length mismatch.
    """
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim != 2 or len(z) != len(labels):
        raise ValueError(f"latents must be (cells, latents) with one row per label: got {z.shape} for "
                         f"{len(labels)} labels")
    if kind not in SIMILARITIES:
        raise ValueError(f"kind must be one of {', '.join(SIMILARITIES)}, got {kind!r}")
    categories, onehot = _indicators(labels)
    if len(categories) < 2:
        raise ValueError("the labels have fewer than 2 categories: there is nothing to match latents to")
    if kind == "smi":
        out = np.empty((z.shape[1], len(categories)))
        for j in range(len(categories)):
            share = onehot[:, j].mean()
            entropy = stats.entropy([share, 1 - share])
            out[:, j] = mutual_info_classif(z, onehot[:, j], random_state=seed) / entropy
        return np.clip(out, 0.0, 1.0)
    if kind == "spearman":
        ranks = stats.rankdata(z, axis=0)
        rho = np.corrcoef(np.c_[ranks, onehot.astype(float)], rowvar=False)[:z.shape[1], z.shape[1]:]
        return np.abs(np.nan_to_num(rho))
    frequency = onehot.mean(0)
    out = np.empty((z.shape[1], len(categories)))
    for i in range(z.shape[1]):
        ordered = onehot[np.argsort(z[:, i], kind="stable")]
        together = (ordered[:-1] & ordered[1:]).sum(0) / np.maximum(onehot.sum(0) - 1, 1)
        out[i] = np.clip(together - frequency, 0.0, None) / (1 - frequency)
    return out


def matching_scores(matrix: np.ndarray) -> dict[str, float]:
    """``best``, ``gap`` and ``matching`` (see the module) of a (n_latents, n_categories) similarity matrix.

    >>> matching_scores(np.array([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]]))
    {'best': 0.8, 'gap': 0.3, 'matching': 0.8}
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    ordered = np.sort(matrix, axis=0)[::-1]
    second = ordered[1] if len(ordered) > 1 else np.zeros(matrix.shape[1])
    rows, columns = linear_sum_assignment(matrix, maximize=True)
    return {"best": round(float(ordered[0].mean()), 12), "gap": round(float((ordered[0] - second).mean()), 12),
            "matching": round(float(matrix[rows, columns].sum() / matrix.shape[1]), 12)}


def label_matching(latents: np.ndarray, obs: pd.DataFrame, keys: list[str], max_cells: int = MAX_CELLS,
                   seed: int = 0) -> pd.DataFrame:
    """Per obs column in ``keys`` and similarity: its ``best``, ``gap`` and ``matching`` scores, and per
    category the best latent (``best_latent``, "category: latent" pairs). Cells without a label are left
    out; above ``max_cells`` labelled cells a seeded random sample is scored (``n_cells`` says how many).
    Latents with a missing value (NaN) are left out (their numbers are kept in ``best_latent``).
    """
    latents = np.asarray(latents, dtype=np.float64)
    kept = np.flatnonzero(np.isfinite(latents).all(0))
    latents = latents[:, kept]
    rows = []
    rng = np.random.default_rng(seed)
    for key in keys:
        column = obs[key]
        labelled = np.flatnonzero(column.notna().to_numpy() & (column.astype(str).str.strip() != "").to_numpy())
        if len(labelled) > max_cells:
            labelled = np.sort(rng.choice(labelled, max_cells, replace=False))
        labels = column.astype(str).to_numpy()[labelled]
        if len(np.unique(labels)) < 2:
            continue
        categories = np.unique(labels)
        for kind in SIMILARITIES:
            matrix = similarity(latents[labelled], labels, kind, seed)
            best = ", ".join(f"{c}: {kept[i]}" for c, i in zip(categories, matrix.argmax(0)))
            rows.append({"obs_key": key, "similarity": kind, "n_cells": len(labelled),
                         "n_categories": len(categories), **matching_scores(matrix), "best_latent": best})
    return pd.DataFrame(rows, columns=["obs_key", "similarity", "n_cells", "n_categories", "best", "gap", "matching",
                                       "best_latent"])
