"""Per-cell regression of a gridded field on a few shared time series, as LFCA turns its low-frequency
components into patterns (Wills et al. 2018, GRL 45, eq. 6): the β-VAE's decoder gives the time courses
(its trend, the change of the seasonal cycle as the knobs move) and each cell's amplitude is fitted to
the data. A decoder answers a knob with a damped amplitude (its latents are noisy and shrunk to the
prior); the regression restores it, and pools over cells only through the shared time courses.

Arrays are (n_time, n_features); NaN in the data marks an unobserved value, left out of that cell's fit.
A field larger than memory is fitted chunk by chunk of time: :class:`Moments` holds each cell's sums of
squares and cross-products, which add over chunks and give the coefficients and held-out errors exactly
as the whole record would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Relative singular value below which a principal series is numerically absent.
RANK_TOLERANCE = 1e-6


@dataclass
class Moments:
    """Per-cell least-squares statistics of data on a design whose first column is the intercept.

    ``gram`` (k, k): the design's cross-products over rows where every cell was observed; ``cell_gram``
    (n_features, k, k) or None: those over the rows where a cell had gaps (only the cell's observed rows);
    ``cross`` (n_features, k): the design times the data; ``squares`` (n_features,): the data's sum of
    squares. All float64; memory (n_features, k²) once a chunk has gaps, (n_features, k) before.
    """

    gram: np.ndarray
    cell_gram: np.ndarray | None
    cross: np.ndarray
    squares: np.ndarray

    @classmethod
    def zeros(cls, n_features: int, n_terms: int) -> "Moments":
        return cls(np.zeros((n_terms, n_terms)), None, np.zeros((n_features, n_terms)), np.zeros(n_features))

    def add(self, design: np.ndarray, data: np.ndarray) -> None:
        """Add rows: ``design`` (rows, k), ``data`` (rows, n_features) with NaN where unobserved."""
        design = np.asarray(design, dtype=np.float64)
        observed = np.isfinite(data)
        values = np.where(observed, data, 0.0).astype(np.float64)
        full = observed.all(1)
        self.gram += design[full].T @ design[full]
        if not full.all():
            part = design[~full]
            outer = (part[:, :, None] * part[:, None, :]).reshape(len(part), -1)
            add = (observed[~full].T.astype(np.float64) @ outer).reshape(-1, *self.gram.shape)
            self.cell_gram = add if self.cell_gram is None else self.cell_gram + add
        self.cross += values.T @ design
        self.squares += np.einsum("tf,tf->f", values, values)

    def __add__(self, other: "Moments") -> "Moments":
        cells = [g for g in (self.cell_gram, other.cell_gram) if g is not None]
        return Moments(self.gram + other.gram, sum(cells) if cells else None, self.cross + other.cross,
                       self.squares + other.squares)

    def grams(self, columns: np.ndarray) -> np.ndarray:
        """Each cell's cross-products of the design columns ``columns``: (n_features, c, c)."""
        shared = self.gram[np.ix_(columns, columns)]
        if self.cell_gram is None:
            return np.broadcast_to(shared, (len(self.cross), len(columns), len(columns)))
        return shared + self.cell_gram[:, columns][:, :, columns]

    def solve(self, n_columns: int | None = None, ridge: float = 1e-9) -> np.ndarray:
        """Coefficients (n_features, c) on the first ``n_columns`` design columns (default all), intercept
        first. A ``ridge`` of that fraction of each cell's mean diagonal keeps cells with few (or no)
        observations solvable: a cell never observed gets coefficients 0."""
        columns = np.arange(self.cross.shape[1] if n_columns is None else n_columns)
        gram = self.grams(columns)
        scale = np.maximum(np.trace(gram, axis1=1, axis2=2), 1.0) / len(columns)
        ridged = gram + ridge * scale[:, None, None] * np.eye(len(columns))
        return np.linalg.solve(ridged, self.cross[:, columns, None])[..., 0]

    def error(self, coef: np.ndarray) -> float:
        """Summed squared error, over observed values, of predictions ``design[:, :c] @ coef[f]`` (``coef``
        (n_features, c)), each cell's error centred on its mean over these rows (so only the time course
        is judged, not the level)."""
        columns = np.arange(coef.shape[1])
        gram, cross = self.grams(columns), self.cross[:, columns]
        count = gram[:, 0, 0]
        squared = self.squares - 2 * np.einsum("fk,fk->f", coef, cross) + np.einsum("fk,fkl,fl->f", coef, gram, coef)
        total = cross[:, 0] - np.einsum("fk,fk->f", gram[:, 0], coef)
        centred = squared - np.divide(total**2, count, out=np.zeros_like(total), where=count > 0)
        return float(np.sum(np.where(count > 0, centred, 0.0)))


def with_intercept(series: np.ndarray) -> np.ndarray:
    """The design ``[1, series]`` (n_time, k + 1), float64."""
    return np.c_[np.ones(len(series)), np.asarray(series, dtype=np.float64)]


def moments(series: np.ndarray, data: np.ndarray) -> Moments:
    """:class:`Moments` of ``data`` (n_time, n_features) on ``series`` (n_time, k) and an intercept."""
    out = Moments.zeros(data.shape[1], series.shape[1] + 1)
    out.add(with_intercept(series), data)
    return out


def principal_patterns(field: np.ndarray, scale: np.ndarray, n_series: int,
                       block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The leading ``n_series`` spatial patterns of ``field`` (n_rows, n_features: the record, or a sample of
    its rows) with features multiplied by ``scale`` (n_features,): ``(centre, patterns)``, the time mean
    (n_features,) and (n_features, k) weights, k <= n_series (fewer where the field has lower rank). The
    principal time series of any rows are ``project(rows, centre, patterns)``; on the rows the patterns
    came from they are the field's orthonormal left singular vectors.

    Found from the smaller of the rows' (n_rows, n_rows) Gram matrix, built ``block`` features at a time
    (memory beyond ``field``: (n_rows, block) and (n_features, k), not a float64 copy of a wide field), and
    the features' (n_features, n_features) cross-products (a long, narrow field).
    """
    n_features = field.shape[1]
    centre = field.mean(0, dtype=np.float64)
    if n_series == 0:
        return centre, np.zeros((n_features, 0))
    if len(field) > n_features:
        centred = (field - centre) * scale
        values, vectors = _leading(centred.T @ centred, n_series)
        return centre, vectors / np.sqrt(values) * scale[:, None]
    blocks = [slice(start, start + block) for start in range(0, n_features, block)]
    gram = np.zeros((len(field), len(field)))
    for cols in blocks:
        part = (field[:, cols] - centre[cols]) * scale[cols]
        gram += part @ part.T
    values, vectors = _leading(gram, n_series)
    patterns = np.empty((n_features, len(values)))
    for cols in blocks:
        part = (field[:, cols] - centre[cols]) * scale[cols]
        patterns[cols] = (part.T @ vectors) / values * scale[cols, None]
    return centre, patterns


def _leading(cross: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` largest eigenvalues of a cross-product matrix and their vectors, without those numerically
    zero (below ``RANK_TOLERANCE``² of the largest); none for a zero matrix."""
    if not np.any(cross):
        return np.zeros(0), np.zeros((len(cross), 0))
    values, vectors = np.linalg.eigh(cross)
    order = np.argsort(values)[::-1][:n]
    values, vectors = values[order], vectors[:, order]
    keep = values > RANK_TOLERANCE**2 * values[0]
    return values[keep], vectors[:, keep]


def project(rows: np.ndarray, centre: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """Principal time series (n_rows, k) of ``rows`` (n_rows, n_features) on :func:`principal_patterns`."""
    return (np.asarray(rows, dtype=np.float64) - centre) @ patterns


def principal_series(field: np.ndarray, scale: np.ndarray, n_series: int) -> np.ndarray:
    """The leading ``n_series`` principal time series of ``field`` (n_time, n_features) with features
    multiplied by ``scale`` (n_features,): (n_time, k) float64, orthonormal, k <= n_series (fewer where
    the field has lower rank; (n_time, 0) for a constant field)."""
    centre, patterns = principal_patterns(field, scale, n_series)
    return project(field, centre, patterns)


def fit_cells(series: np.ndarray, data: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Least-squares coefficients (n_features, k) of each cell of ``data`` (n_time, n_features) on the
    columns of ``series`` (n_time, k) and an intercept, over the cell's observed times among ``rows`` (a
    bool (n_time,) selection; default all). Memory: (n_features, (k + 1)²)."""
    if rows is not None:
        series, data = series[rows], data[rows]
    return moments(series, data).solve()[:, 1:]


def fold_moments(series: np.ndarray, data: np.ndarray, folds: np.ndarray) -> dict[int, Moments]:
    """:func:`moments` of the rows of each fold (``folds``: (n_time,) integer labels)."""
    return {int(fold): moments(series[folds == fold], data[folds == fold]) for fold in np.unique(folds)}


def cross_validated_error(by_fold: dict[int, Moments], n_columns: int) -> float:
    """Squared error of predicting each fold from coefficients fitted on the other folds, on the first
    ``n_columns`` design columns (intercept included), summed over folds (:meth:`Moments.error`)."""
    total = 0.0
    for fold, test in by_fold.items():
        train = sum((m for f, m in by_fold.items() if f != fold), Moments.zeros(*test.cross.shape))
        total += test.error(train.solve(n_columns))
    return total


def held_out_error(series: np.ndarray, data: np.ndarray, folds: np.ndarray) -> float:
    """Squared error of predicting each fold of ``data`` from coefficients fitted on the other folds
    (``folds``: (n_time,) integer labels), summed over observed values; each prediction is centred on its
    fold's mean so that only the time course is judged."""
    return cross_validated_error(fold_moments(series, data, folds), series.shape[1] + 1)


def supported_columns(by_fold: dict[int, Moments], n_fixed: int, n_candidates: int) -> int:
    """How many of the ``n_candidates`` design columns after the intercept and ``n_fixed`` fixed ones (in
    order) the data support: the count with the least :func:`cross_validated_error` (0 when none helps
    out of sample)."""
    errors = [cross_validated_error(by_fold, 1 + n_fixed + k) for k in range(n_candidates + 1)]
    return int(np.argmin(errors))


def supported_series(fixed: np.ndarray, candidates: np.ndarray, data: np.ndarray, folds: np.ndarray) -> int:
    """How many of the ``candidates`` columns (in order) the data support beside the ``fixed`` ones: the
    count with the least :func:`held_out_error` (0 when none helps out of sample)."""
    by_fold = fold_moments(np.c_[fixed, candidates], data, folds)
    return supported_columns(by_fold, fixed.shape[1], candidates.shape[1])


def fold_sizes(by_fold: dict[int, Moments]) -> dict[int, float]:
    """The number of fully observed rows in each fold (the intercept's entry of its Gram matrix)."""
    return {fold: float(moments.gram[0, 0]) for fold, moments in by_fold.items()}


def shrink_to_mean(coef: np.ndarray, halves: tuple[np.ndarray, np.ndarray], sizes: tuple[float, float],
                   amplitude: np.ndarray, weight: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell coefficients shrunk toward their weighted mean by the share of their spread that is signal.

    Empirical Bayes with a common prior per group and column (James & Stein 1961; Efron & Morris 1975,
    JASA 70): a cell's amplitude ``a = coef * amplitude`` is its true amplitude plus estimation noise of
    variance ``s²``; with ``S²`` the weighted spread of ``a`` about its weighted mean ``m``, the shrunk
    amplitude is ``m + λ (a - m)``, ``λ = max(0, 1 - s² / S²)``. ``s²`` comes from the data, not from a model
    of the noise: two fits on disjoint halves of the rows (e.g. even and odd years, so autocorrelation
    within a year is inside each half) differ by noise of variance ``s² (n_a + n_b)² / (n_a n_b)``. In a long
    record ``λ`` is ~1 (nothing changes); in a short noisy one the amplitudes lose the noise that would
    otherwise speckle a trend map. The weighted mean (and so the weighted area mean of the component) is
    kept.

    Parameters
    ----------
    coef : (n_features, k) coefficients fitted on all rows.
    halves : the same (n_features, k) fitted on each of two disjoint sets of rows.
    sizes : the number of rows in each of those sets.
    amplitude : (n_features,) factor making coefficients comparable across cells (e.g. each cell's standard
        deviation relative to its variable's).
    weight : (n_features,) non-negative weight of each cell (e.g. its area); 0 leaves the cell out of the
        statistics (its coefficient is still shrunk toward the mean).
    groups : (n_features,) integer group of each cell (e.g. its variable); each group is shrunk on its own.

    Returns
    -------
    (n_features, k) shrunk coefficients and (n_groups, k) factors λ in [0, 1] (1: unchanged), groups in
    ``np.unique(groups)`` order.
    """
    n_a, n_b = sizes
    noise_share = n_a * n_b / (n_a + n_b) ** 2  # variance of the full fit's noise / variance of the halves' difference
    out = np.array(coef, dtype=np.float64)
    labels = np.unique(groups)
    factors = np.ones((len(labels), coef.shape[1]))
    if min(n_a, n_b) <= 0:
        return out, factors
    for g, label in enumerate(labels):
        cells = groups == label
        scaled, w = coef[cells] * amplitude[cells, None], weight[cells]
        difference = (halves[0][cells] - halves[1][cells]) * amplitude[cells, None]
        if w.sum() <= 0:
            continue
        mean = w @ scaled / w.sum()
        spread = w @ (scaled - mean) ** 2 / w.sum()
        noise = noise_share * (w @ difference**2) / w.sum()
        factors[g] = np.where(spread > 0, np.clip(1 - noise / np.where(spread > 0, spread, 1.0), 0.0, 1.0), 1.0)
        shrunk = mean + factors[g] * (scaled - mean)
        out[cells] = np.divide(shrunk, amplitude[cells, None], out=np.zeros_like(shrunk),
                               where=amplitude[cells, None] > 0)
    return out, factors
