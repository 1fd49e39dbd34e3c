"""Disentanglement metrics: plain functions of (latents, factors) -> dict.

``latents`` is (n_samples, n_latents) — usually posterior means — and
``factors`` is (n_samples, n_factors) ground truth. Continuous columns are
discretised into 20 equal-width histogram bins (Chen 2018; Locatello 2019);
columns with at most 20 distinct values are used as they are. Latents whose
variance is below ``1e-8`` are inactive: they score zero, never NaN, and every
metric reports ``active_dims`` as the *count* of active latents.

The interventional scores (:func:`betavae_score`, :func:`factorvae_score`)
take a model with ``encode(X)`` and a ground-truth sampler with
``factor_sizes``, ``sample_factors(n, rng)`` and ``render(factors)``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LassoCV, LogisticRegression
from sklearn.metrics import mutual_info_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from .label_matching import label_matching, matching_scores, similarity

__all__ = [
    "discretize",
    "mutual_information",
    "active_dimensions",
    "mig",
    "dci",
    "sap",
    "modularity",
    "gaussian_total_correlation",
    "betavae_score",
    "factorvae_score",
    "FactorSampler",
    "similarity",
    "matching_scores",
    "label_matching",
]

N_BINS = 20
INACTIVE_VARIANCE = 1e-8


class FactorSampler(Protocol):
    """What the interventional scores need from a ground-truth dataset."""

    factor_sizes: tuple[int, ...]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def render(self, factors: np.ndarray) -> np.ndarray: ...


def _as_2d(name: str, a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a finite 2-D array (samples x columns), got shape {a.shape}")
    return a


def _pair(latents, factors) -> tuple[np.ndarray, np.ndarray]:
    z, f = _as_2d("latents", latents), _as_2d("factors", factors)
    if len(z) != len(f):
        raise ValueError(f"latents have {len(z)} samples but factors have {len(f)}")
    if np.any(f.var(0) == 0):
        raise ValueError("a factor is constant; drop it before scoring")
    return z, f


def discretize(a, bins: int = N_BINS) -> np.ndarray:
    """Integer codes per column: 20 histogram bins, or the values if there are few.

    >>> discretize(np.array([[0.0], [1.0], [1.0]]))[:, 0].tolist()
    [0, 1, 1]
    """
    a = _as_2d("array", a)
    codes = np.zeros(a.shape, dtype=np.int64)
    for j, column in enumerate(a.T):
        values = np.unique(column)
        if len(values) <= bins:
            codes[:, j] = np.searchsorted(values, column)
        else:
            codes[:, j] = np.digitize(column, np.histogram(column, bins)[1][1:-1])
    return codes


def mutual_information(latents, factors, bins: int = N_BINS) -> np.ndarray:
    """(n_latents, n_factors) discrete mutual information in nats."""
    zc, fc = discretize(latents, bins), discretize(factors, bins)
    return np.array([[mutual_info_score(f, z) for f in fc.T] for z in zc.T])


def active_dimensions(latents, threshold: float = INACTIVE_VARIANCE) -> np.ndarray:
    """Boolean mask of latents whose variance exceeds ``threshold``."""
    return _as_2d("latents", latents).var(0) > threshold


def _entropies(factors, bins: int) -> np.ndarray:
    return np.array([mutual_info_score(f, f) for f in discretize(factors, bins).T])


def mig(latents, factors, bins: int = N_BINS) -> dict:
    """Mutual Information Gap (Chen 2018): mean over factors of the gap between
    the two most informative latents, normalised by the factor's entropy.

    >>> f = np.random.default_rng(0).uniform(size=(10000, 2))
    >>> round(mig(f, f)["mig"], 1)
    1.0
    """
    z, f = _pair(latents, factors)
    active = active_dimensions(z)
    mi = mutual_information(z, f, bins) * active[:, None]
    top = np.sort(mi, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros(f.shape[1])
    gaps = (top[0] - second) / _entropies(f, bins)
    return {"mig": float(gaps.mean()), "per_factor": gaps, "active_dims": int(active.sum())}


def _importance(z: np.ndarray, f: np.ndarray, regressor: str, seed: int):
    """Importance matrix R (latents x factors) and held-out R² per factor."""
    z_train, z_test, f_train, f_test = train_test_split(z, f, test_size=0.3, random_state=seed)
    scaler = StandardScaler().fit(z_train)
    z_train, z_test = scaler.transform(z_train), scaler.transform(z_test)
    importance = np.zeros((z.shape[1], f.shape[1]))
    r2 = np.zeros(f.shape[1])
    for k in range(f.shape[1]):
        if regressor == "random_forest":
            model = RandomForestRegressor(n_estimators=50, max_depth=8, random_state=seed, n_jobs=1)
            model.fit(z_train, f_train[:, k])
            importance[:, k] = model.feature_importances_
        else:
            model = LassoCV(cv=3, random_state=seed).fit(z_train, f_train[:, k])
            importance[:, k] = np.abs(model.coef_)
        r2[k] = model.score(z_test, f_test[:, k])
    return importance, r2


def _one_minus_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """1 - H(p)/log(K) along ``axis`` for non-negative weights (rows of zeros give 0)."""
    total = p.sum(axis=axis, keepdims=True)
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    k = p.shape[axis]
    if k == 1:
        return (total > 0).astype(float).squeeze(axis)
    h = -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0), axis=axis) / np.log(k)
    return np.where(total.squeeze(axis) > 0, 1.0 - h, 0.0)


def dci(latents, factors, regressor: str = "random_forest", seed: int = 0) -> dict:
    """Disentanglement, completeness, informativeness (Eastwood & Williams 2018).

    The importance of latent i for factor k comes from a regressor predicting
    the factor from the standardised latents, fitted on 70% of the samples:
    ``"random_forest"`` (50 trees, depth 8; impurity importances, the default)
    or ``"lasso"`` (|coefficients|, LassoCV). Informativeness is the mean
    held-out R² of those regressors.

    >>> f = np.random.default_rng(0).uniform(size=(1000, 2))
    >>> round(dci(f, f)["disentanglement"], 1)
    1.0
    """
    z, f = _pair(latents, factors)
    if regressor not in ("random_forest", "lasso"):
        raise ValueError(f"regressor must be 'random_forest' or 'lasso', got {regressor!r}")
    active = active_dimensions(z)
    importance, r2 = np.zeros((z.shape[1], f.shape[1])), np.zeros(f.shape[1])
    if active.any():
        importance[active], r2 = _importance(z[:, active], f, regressor, seed)
    per_latent = _one_minus_entropy(importance, axis=1)
    weights = importance.sum(1) / importance.sum() if importance.sum() > 0 else np.zeros(len(importance))
    return {
        "disentanglement": float(np.sum(per_latent * weights)),
        "completeness": float(np.mean(_one_minus_entropy(importance, axis=0))),
        "informativeness": float(np.mean(r2)),
        "importance": importance,
        "regressor": regressor,
        "active_dims": int(active.sum()),
    }


def sap(latents, factors) -> dict:
    """Separated Attribute Predictability (Kumar 2018), continuous variant: the
    score of latent i for factor k is the R² of a linear fit (squared Pearson
    correlation); SAP is the mean over factors of the top-two gap.

    >>> f = np.random.default_rng(0).normal(size=(500, 2))
    >>> round(sap(f, f)["sap"], 1)
    1.0
    """
    z, f = _pair(latents, factors)
    active = active_dimensions(z)
    score = np.zeros((z.shape[1], f.shape[1]))
    zc = (z[:, active] - z[:, active].mean(0)) / z[:, active].std(0)
    fc = (f - f.mean(0)) / f.std(0)
    score[active] = (zc.T @ fc / len(z)) ** 2
    top = np.sort(score, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros(f.shape[1])
    gaps = top[0] - second
    return {"sap": float(gaps.mean()), "per_factor": gaps, "active_dims": int(active.sum())}


def _explicitness(z: np.ndarray, f: np.ndarray, bins: int, seed: int) -> float:
    """Mean one-vs-rest ROC AUC of a logistic regression predicting each discretised factor."""
    codes = discretize(f, bins)
    z = StandardScaler().fit_transform(z)
    aucs = []
    for labels in codes.T:
        classes = np.unique(labels)
        model = LogisticRegression(max_iter=500).fit(z, labels)
        prob = model.predict_proba(z)
        if len(classes) == 2:
            aucs.append(roc_auc_score(labels, prob[:, 1]))
        else:
            aucs.append(roc_auc_score(labels, prob, multi_class="ovr", labels=classes))
    return float(np.mean(aucs))


def modularity(latents, factors, bins: int = N_BINS, seed: int = 0) -> dict:
    """Modularity and explicitness (Ridgeway & Mozer 2018).

    Modularity: for each active latent, 1 minus the normalised squared
    deviation of its MI profile from an ideal one-factor profile, averaged over
    active latents. Explicitness: mean one-vs-rest ROC AUC of a logistic
    regression from all latents to each discretised factor.

    >>> f = np.random.default_rng(0).uniform(size=(1000, 2))
    >>> round(modularity(f, f)["modularity"], 1)
    1.0
    """
    z, f = _pair(latents, factors)
    active = active_dimensions(z)
    if not active.any():
        return {"modularity": 0.0, "explicitness": 0.5, "active_dims": 0}
    mi = mutual_information(z[:, active], f, bins)
    theta = mi.max(1)
    ideal = np.where(mi == theta[:, None], theta[:, None], 0.0)
    n_factors = f.shape[1]
    denom = theta**2 * max(n_factors - 1, 1)
    delta = np.divide(((mi - ideal) ** 2).sum(1), denom, out=np.ones_like(theta), where=denom > 0)
    return {
        "modularity": float(np.mean(1.0 - delta)),
        "explicitness": _explicitness(z[:, active], f, bins, seed),
        "active_dims": int(active.sum()),
    }


def gaussian_total_correlation(latents) -> dict:
    """Total correlation of a Gaussian fitted to the (active) latents, in nats:
    0.5 (sum log var_j - log det Cov). Unsupervised: needs no factors.

    >>> z = np.random.default_rng(0).normal(size=(5000, 3))
    >>> gaussian_total_correlation(z)["total_correlation"] < 0.01
    True
    """
    z = _as_2d("latents", latents)
    active = active_dimensions(z)
    if active.sum() < 2:
        return {"total_correlation": 0.0, "active_dims": int(active.sum())}
    cov = np.cov(z[:, active], rowvar=False)
    _, logdet = np.linalg.slogdet(cov)
    tc = 0.5 * (np.sum(np.log(np.diag(cov))) - logdet)
    return {"total_correlation": float(tc), "active_dims": int(active.sum())}


def _pairs_fixing(sampler: FactorSampler, k: int, n: int, rng: np.random.Generator):
    a, b = sampler.sample_factors(n, rng), sampler.sample_factors(n, rng)
    b[:, k] = a[:, k]
    return a, b


def betavae_score(model, sampler: FactorSampler, n_train: int = 500, n_eval: int = 200,
                  batch_size: int = 64, seed: int = 0) -> dict:
    """β-VAE score (Higgins 2017): accuracy of a linear classifier that names
    the fixed factor from the mean |z(a) - z(b)| over pairs sharing it.

    ``model`` needs ``encode(X) -> (n, n_latent)``; ``sampler`` is e.g.
    :class:`sciencevae.datasets.Sprites`.
    """
    rng = np.random.default_rng(seed)
    n_factors = len(sampler.factor_sizes)

    def points(n):
        features, labels = [], rng.integers(0, n_factors, size=n)
        for k in labels:
            a, b = _pairs_fixing(sampler, int(k), batch_size, rng)
            za, zb = model.encode(sampler.render(a)), model.encode(sampler.render(b))
            features.append(np.abs(za - zb).mean(0))
        return np.array(features), labels

    x_train, y_train = points(n_train)
    x_eval, y_eval = points(n_eval)
    classifier = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return {
        "betavae_score": float(classifier.score(x_eval, y_eval)),
        "train_accuracy": float(classifier.score(x_train, y_train)),
    }


def factorvae_score(model, sampler: FactorSampler, n_train: int = 500, n_eval: int = 300,
                    batch_size: int = 64, n_variance: int = 5000, seed: int = 0) -> dict:
    """FactorVAE score (Kim & Mnih 2018): fix one factor over a batch, divide
    the latents by their global std, vote with the index of the latent of least
    variance; the score is the accuracy of the majority-vote classifier.

    Latents with global variance below 0.05 of the largest are pruned
    (collapsed); ``active_dims`` counts the ones kept.
    """
    rng = np.random.default_rng(seed)
    n_factors = len(sampler.factor_sizes)
    global_std = model.encode(sampler.render(sampler.sample_factors(n_variance, rng))).std(0)
    active = global_std**2 > 0.05 * np.max(global_std**2) if np.max(global_std) > 0 else np.zeros_like(global_std, bool)
    if not active.any():
        return {"factorvae_score": 0.0, "active_dims": 0}

    def votes(n):
        table = np.zeros((len(global_std), n_factors), dtype=np.int64)
        for k in rng.integers(0, n_factors, size=n):
            factors = sampler.sample_factors(batch_size, rng)
            factors[:, k] = factors[0, k]
            z = model.encode(sampler.render(factors)) / np.where(global_std > 0, global_std, 1.0)
            variance = np.where(active, z.var(0), np.inf)
            table[int(np.argmin(variance)), k] += 1
        return table

    train, evaluation = votes(n_train), votes(n_eval)
    classifier = train.argmax(1)  # each latent votes for its most frequent factor
    correct = evaluation[np.arange(len(classifier)), classifier].sum()
    return {
        "factorvae_score": float(correct / evaluation.sum()),
        "train_accuracy": float(train.max(1).sum() / train.sum()),
        "active_dims": int(active.sum()),
    }
