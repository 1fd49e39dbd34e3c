"""The one contract between adapters and the core.

An adapter hands the core a :class:`Prepared`: a samples x features matrix
(dense numpy or scipy CSR, never densified whole when sparse) with optional
names, feature weights, an observation mask, size factors and covariates. The
core turns it into a :class:`BatchSource` that yields device batches.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln
import torch

__all__ = ["Prepared", "Batch", "BatchSource", "as_prepared", "densify_rows", "one_hot", "subset_rows",
           "log_factorial_rows", "split_rows", "check_counts",
           "integer_distance", "round_counts", "rounding_message", "INTEGER_TOLERANCE"]


@dataclass(frozen=True)
class Prepared:
    """Data ready for the core (samples x features).

    Attributes
    ----------
    X
        Dense float array or scipy CSR matrix, (n_obs, n_features). Dense
        entries that are NaN are unobserved: they are zero in the encoder input
        and drop out of the loss (``mask``).
    obs_names, feature_names
        Optional labels (length n_obs / n_features).
    feature_weights
        Optional (n_features,) non-negative weights on each feature's
        log-likelihood (e.g. cos(latitude) area weights).
    mask
        Optional (n_obs, n_features) bool, True where observed; derived from
        NaNs in a dense X when not given.
    size_factors
        Optional (n_obs,) positive per-sample scale for count likelihoods
        (library size); defaults to the row sums for counts.
    covariates
        Optional (n_obs, n_covariates) float matrix given to encoder and
        decoder (one-hot categories, continuous values).
    """

    X: np.ndarray | sp.csr_matrix
    obs_names: np.ndarray | None = None
    feature_names: np.ndarray | None = None
    feature_weights: np.ndarray | None = None
    mask: np.ndarray | None = None
    size_factors: np.ndarray | None = None
    covariates: np.ndarray | None = None

    @property
    def n_obs(self) -> int:
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        return self.X.shape[1]


def _to_matrix(X) -> np.ndarray | sp.csr_matrix:
    if isinstance(X, torch.Tensor):
        if X.layout != torch.strided:
            coo = X.detach().cpu().to_sparse_coo().coalesce()
            rows, cols = coo.indices().numpy()
            return sp.csr_matrix((coo.values().numpy(), (rows, cols)), shape=tuple(coo.shape))
        X = X.detach().cpu().numpy()
    if sp.issparse(X):
        return sp.csr_matrix(X)
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
    return X


def _check_vector(name: str, value, length: int) -> np.ndarray | None:
    if value is None:
        return None
    value = np.asarray(value, dtype=np.float64)
    if value.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {value.shape}")
    if not np.all(np.isfinite(value)) or np.any(value < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    return value


def as_prepared(X, covariates=None, size_factors=None, feature_weights=None) -> Prepared:
    """Validate any matrix-like input (numpy, torch, scipy sparse, Prepared).

    >>> as_prepared(np.ones((3, 2))).n_features
    2
    """
    if isinstance(X, Prepared):
        extra = dict(covariates=covariates, size_factors=size_factors, feature_weights=feature_weights)
        return _validate(replace(X, **{k: v for k, v in extra.items() if v is not None}))
    prepared = Prepared(
        X=_to_matrix(X), covariates=covariates, size_factors=size_factors, feature_weights=feature_weights
    )
    return _validate(prepared)


def _validate(p: Prepared) -> Prepared:
    X = _to_matrix(p.X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (samples x features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X is empty: shape {X.shape}")
    values = X.data if sp.issparse(X) else X
    if sp.issparse(X) and not np.all(np.isfinite(values)):
        raise ValueError("sparse X holds NaN or infinite values; sparse input cannot be masked")
    if not sp.issparse(X) and np.any(np.isinf(values)):
        raise ValueError("X holds infinite values; replace them (NaN marks a missing value)")
    mask = p.mask
    if mask is None and not sp.issparse(X) and np.isnan(values).any():
        mask = ~np.isnan(values)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != X.shape:
            raise ValueError(f"mask must have the shape of X {X.shape}, got {mask.shape}")
    covariates = p.covariates
    if covariates is not None:
        covariates = np.asarray(covariates, dtype=np.float32)
        if covariates.ndim == 1:
            covariates = covariates[:, None]
        if covariates.shape[0] != X.shape[0] or not np.all(np.isfinite(covariates)):
            raise ValueError(f"covariates must be a finite ({X.shape[0]}, n_covariates) matrix")
    return replace(
        p,
        X=X,
        mask=mask,
        covariates=covariates,
        size_factors=_check_vector("size_factors", p.size_factors, X.shape[0]),
        feature_weights=_check_vector("feature_weights", p.feature_weights, X.shape[1]),
    )


def subset_rows(p: Prepared, rows: np.ndarray) -> Prepared:
    """The Prepared restricted to ``rows`` (in that order); per-feature parts are kept.

    >>> subset_rows(as_prepared(np.arange(6.0).reshape(3, 2)), np.array([2, 0])).X.tolist()
    [[4.0, 5.0], [0.0, 1.0]]
    """

    def take(value):
        return None if value is None else value[rows]

    return replace(p, X=p.X[rows], obs_names=take(p.obs_names), mask=take(p.mask),
                   size_factors=take(p.size_factors), covariates=take(p.covariates))


def split_rows(n_obs: int, validation: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random train / validation row indices (CPU int64), fixed by ``seed``.

    >>> [len(part) for part in split_rows(10, 0.2, seed=0)]
    [8, 2]
    """
    order = torch.randperm(n_obs, generator=torch.Generator().manual_seed(seed))
    n_val = int(n_obs * validation)
    if n_obs - n_val < 2:
        raise ValueError(f"{n_obs} samples leave fewer than 2 for training with validation={validation}")
    return order[n_val:], order[:n_val]


def one_hot(values) -> tuple[np.ndarray, list]:
    """One-hot encode a categorical vector; returns the matrix and the categories.

    >>> m, cats = one_hot(["a", "b", "a"])
    >>> m.tolist(), cats
    ([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], ['a', 'b'])
    """
    categories, codes = np.unique(np.asarray(values), return_inverse=True)
    return np.eye(len(categories), dtype=np.float32)[codes], categories.tolist()


def densify_rows(X: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """Dense float32 copy of the selected rows of a CSR matrix (one batch)."""
    return X[rows].toarray().astype(np.float32, copy=False)


#: Values this close to an integer (absolute up to 1000, relative 1e-6 above) are counts stored with
#: rounding error, e.g. 7.0000005 after a normalise / un-normalise round trip in float32.
INTEGER_TOLERANCE = 1e-3


def integer_distance(values: np.ndarray) -> np.ndarray:
    """Distance of each value to the nearest integer, relative to max(1, |value| / 1000).

    >>> integer_distance(np.array([7.0, 7.0000005, 6.5])).round(7).tolist()
    [0.0, 5e-07, 0.5]
    """
    values = np.asarray(values, dtype=np.float64)
    return np.abs(values - np.round(values)) / np.maximum(1.0, np.abs(values) * 1e-3)


def check_counts(values: np.ndarray, where: str = "X holds", likelihood: str | None = None,
                 block: int = 1 << 22, fix: str | None = None) -> float | None:
    """Count likelihoods need complete, non-negative integer data (checked in blocks: small temporaries).

    ``where`` starts the message ("X holds", "rows 0-99 hold"); ``likelihood`` names the model in the fix
    (``fix`` replaces the fix). Values within :data:`INTEGER_TOLERANCE` of an integer are counts stored with rounding error: the
    first such value is returned (round the data with :func:`round_counts`), else None. Examples in
    messages are printed at full precision.

    >>> check_counts(np.array([1.0, 7.000000476837158]))
    7.000000476837158
    >>> check_counts(np.array([1.0, 0.5]), likelihood="nb")
    Traceback (most recent call last):
    ValueError: X holds non-integer values (e.g. 0.5); use the gaussian likelihood for continuous data, or give raw counts to 'nb'
    """
    if fix is None:
        fix = "use the gaussian likelihood for continuous data, or give raw counts"
        fix += f" to {likelihood!r}" if likelihood else ""
    flat = np.asarray(values).reshape(-1)
    example = None
    for start in range(0, len(flat), block):
        part = flat[start:start + block]
        if np.isnan(part).any():
            raise ValueError(f"{where} NaN values; count likelihoods need complete counts ({fix})")
        if part.min() < 0:
            raise ValueError(f"{where} negative values (min {float(part.min())!r}); counts must be >= 0 ({fix})")
        fractional = part[part != np.round(part)]
        if len(fractional):
            far = fractional[integer_distance(fractional) > INTEGER_TOLERANCE]
            if len(far):
                raise ValueError(f"{where} non-integer values (e.g. {float(far[0])!r}); {fix}")
            example = float(fractional[0]) if example is None else example
    return example


def round_counts(X: np.ndarray | sp.csr_matrix) -> np.ndarray | sp.csr_matrix:
    """A float32 copy of a count matrix with every value rounded to the nearest integer (X is not changed)."""
    if sp.issparse(X):
        out = X.astype(np.float32, copy=True)
        out.data = np.round(out.data)
        out.eliminate_zeros()
        return out
    return np.round(np.asarray(X, dtype=np.float32))


def rounding_message(where: str, example: float) -> str:
    """The one warning given when counts with rounding error are rounded."""
    return (f"{where} counts stored with rounding error (e.g. {example!r}); they were rounded to integers for the "
            "model (the input is unchanged)")


_LOG_FACTORIAL = gammaln(np.arange(4096, dtype=np.float64) + 1.0)


def _log_factorials(values: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """lgamma(v + 1) of non-negative integer counts: a table lookup below 4096, gammaln above.

    Works through ``values`` in blocks so that the temporaries stay small.
    """
    values = np.asarray(values).ravel()
    out = np.empty(values.shape, dtype=np.float64)
    top = len(_LOG_FACTORIAL) - 1
    for start in range(0, len(values), block):
        part = values[start:start + block]
        # counts past the table (or past int32) are clipped here and recomputed below
        np.take(_LOG_FACTORIAL, part.astype(np.int32), mode="clip", out=out[start:start + block])
        large = np.flatnonzero(part > top)
        if len(large):
            out[start + large] = gammaln(part[large].astype(np.float64) + 1.0)
    return out


def log_factorial_rows(X: np.ndarray | sp.csr_matrix, weights: np.ndarray | None = None,
                       chunk: int = 4096) -> np.ndarray:
    """``sum_g w_g lgamma(x_g + 1)`` for every row of a count matrix (float64).

    >>> log_factorial_rows(np.array([[0.0, 3.0], [1.0, 2.0]])).round(4).tolist()
    [1.7918, 0.6931]
    """
    sums = np.empty(X.shape[0])
    if sp.issparse(X):  # block by block: temporaries stay small (a 100k-cell matrix has ~100M non-zeros)
        for start in range(0, X.shape[0], chunk):
            bounds = X.indptr[start:start + chunk + 1]
            terms = _log_factorials(X.data[bounds[0]:bounds[-1]])
            if weights is not None:
                terms *= weights[X.indices[bounds[0]:bounds[-1]]]
            # reduceat over the non-empty rows only (it would give an empty row its neighbour's value)
            filled = np.diff(bounds) > 0
            row_sums = np.zeros(len(filled))
            if filled.any():
                row_sums[filled] = np.add.reduceat(terms, (bounds[:-1] - bounds[0])[filled])
            sums[start:start + chunk] = row_sums
        return sums
    for start in range(0, X.shape[0], chunk):
        rows = np.nan_to_num(np.asarray(X[start:start + chunk], dtype=np.float64))
        terms = _log_factorials(rows).reshape(rows.shape)
        sums[start:start + chunk] = terms.sum(1) if weights is None else terms @ weights
    return sums


@dataclass
class Batch:
    """One device batch; optional parts are None when absent.

    ``count_constant`` is ``sum_g w_g lgamma(x_g + 1)`` per row, precomputed
    for count data so that training never recomputes it.
    """

    x: torch.Tensor
    mask: torch.Tensor | None
    size_factor: torch.Tensor | None
    covariates: torch.Tensor | None
    feature_weights: torch.Tensor | None
    count_constant: torch.Tensor | None = None


class DeviceCSR:
    """A CSR matrix held on a device as tensors; batches of rows are densified there.

    Rows are gathered into a fixed (batch, longest row) block and scattered
    into a dense batch, so no step waits for the host (no data-dependent shapes).

    >>> m = DeviceCSR(sp.csr_matrix(np.array([[0.0, 2.0], [3.0, 0.0], [0.0, 0.0]])), torch.device("cpu"))
    >>> m.dense_rows(torch.tensor([1, 2, 0])).tolist()
    [[3.0, 0.0], [0.0, 0.0], [0.0, 2.0]]
    """

    def __init__(self, X: sp.csr_matrix, device: torch.device):
        self.n_features = X.shape[1]
        lengths = np.diff(X.indptr)
        self.longest = max(int(lengths.max()) if len(lengths) else 0, 1)
        self.row_start = torch.as_tensor(X.indptr[:-1], dtype=torch.int64, device=device)
        self.row_length = torch.as_tensor(lengths, dtype=torch.int64, device=device)
        # one padding entry at the end: value 0 in column 0, read wherever a row is shorter than the longest
        self.columns = torch.as_tensor(np.append(X.indices, 0), dtype=torch.int64, device=device)
        self.values = torch.as_tensor(np.append(X.data, 0), dtype=torch.float32, device=device)
        self.offsets = torch.arange(self.longest, device=device)

    def dense_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Dense float32 (len(rows), n_features) copy of ``rows`` (a device int64 tensor)."""
        within = self.offsets[None, :] < self.row_length[rows, None]
        padding = len(self.values) - 1
        position = torch.where(within, self.row_start[rows, None] + self.offsets[None, :], padding)
        dense = torch.zeros(len(rows), self.n_features, device=self.values.device)
        return dense.scatter_add_(1, self.columns[position], self.values[position])


DENSE_BUDGET_BYTES = 1 << 30
MIN_DENSE_DENSITY = 0.25


def dense_is_better(X: sp.csr_matrix) -> bool:
    """A CSR matrix at least 25% full whose dense float32 copy fits in 1 GiB is served dense.

    Gathering a batch from a dense matrix costs ~0.1 ms against ~1.2 ms for
    slicing and densifying 128 CSR rows of 2,000 genes on the CPU, and at this
    fill the dense copy (4 bytes an entry) is at most twice the CSR (8 bytes a
    non-zero).
    """
    n_obs, n_features = X.shape
    return X.nnz >= MIN_DENSE_DENSITY * n_obs * n_features and 4 * n_obs * n_features <= DENSE_BUDGET_BYTES


def hold_rows(X: np.ndarray | sp.csr_matrix, device: torch.device,
              csr_on_device: bool | None = None) -> torch.Tensor | DeviceCSR | sp.csr_matrix:
    """Rows as batches are drawn from them: a dense float32 tensor on ``device`` when X is dense or a CSR
    matrix that :func:`dense_is_better`; otherwise CSR, as a :class:`DeviceCSR` on the device (the default
    on CUDA; ``csr_on_device`` overrides) or as the scipy matrix (densified batch by batch on the host).

    >>> type(hold_rows(np.ones((2, 2)), torch.device("cpu"))).__name__
    'Tensor'
    """
    if sp.issparse(X) and not dense_is_better(X):
        on_device = device.type == "cuda" if csr_on_device is None else csr_on_device
        return DeviceCSR(X, device) if on_device else X
    dense = X.toarray() if sp.issparse(X) else X
    return torch.as_tensor(np.asarray(dense, dtype=np.float32), device=device)


def position_device(rows: torch.Tensor | DeviceCSR | sp.csr_matrix, device: torch.device) -> torch.device:
    """Where the positions of a batch's rows belong: the host for scipy rows, else the device."""
    return torch.device("cpu") if sp.issparse(rows) else device


def draw_rows(rows: torch.Tensor | DeviceCSR | sp.csr_matrix, positions: torch.Tensor,
              device: torch.device) -> torch.Tensor:
    """The dense float32 batch of rows ``positions`` of rows held by :func:`hold_rows`, on ``device``."""
    if isinstance(rows, torch.Tensor):
        return rows.index_select(0, positions)  # 2-3x faster than rows[positions] on the CPU
    if isinstance(rows, DeviceCSR):
        return rows.dense_rows(positions)
    return torch.from_numpy(densify_rows(rows, positions.cpu().numpy())).to(device, non_blocking=True)


class BatchSource:
    """Serve batches of a Prepared on a device.

    Dense X (and CSR X full enough and small enough that a dense copy is the
    better store, see ``dense_is_better``) is copied to the device once (NaNs
    zeroed, mask kept) and batches are drawn by indexing there. Other CSR X is
    kept as CSR: on CUDA on the device
    (:class:`DeviceCSR`, batches densified there), on the CPU as the scipy
    matrix (no second copy; each batch's rows are densified by scipy).
    ``csr_on_device`` overrides that choice.

    >>> src = BatchSource(as_prepared(np.ones((4, 2))), torch.device("cpu"))
    >>> src.batch(torch.tensor([0, 1])).x.shape
    torch.Size([2, 2])
    """

    def __init__(self, prepared: Prepared, device: torch.device, count_data: bool = False,
                 csr_on_device: bool | None = None):
        self.device = device
        self.n_obs, self.n_features = prepared.X.shape
        # the count constant (~1 s at 100k cells) is summed in a second thread while X goes to the device
        with ThreadPoolExecutor(1) as helper:
            constant = helper.submit(log_factorial_rows, prepared.X, prepared.feature_weights) if count_data else None
            X = prepared.X if prepared.mask is None else np.nan_to_num(prepared.X, nan=0.0)  # masked: dense
            self.rows = hold_rows(X, device, csr_on_device)
            self.count_constant = None if constant is None else self._tensor(constant.result())
        self.mask = self._tensor(prepared.mask, torch.bool)
        self.covariates = self._tensor(prepared.covariates)
        self.feature_weights = self._tensor(prepared.feature_weights)
        size_factors = prepared.size_factors
        if size_factors is None and count_data:
            size_factors = np.asarray(prepared.X.sum(axis=1)).ravel()
        self.size_factors = self._tensor(size_factors)

    @property
    def sparse(self) -> bool:
        """Whether the rows are held as CSR (on the host or the device)."""
        return not isinstance(self.rows, torch.Tensor)

    @property
    def device_csr(self) -> DeviceCSR | None:
        """The rows when they are CSR held on the device."""
        return self.rows if isinstance(self.rows, DeviceCSR) else None

    def _tensor(self, value, dtype=torch.float32) -> torch.Tensor | None:
        return None if value is None else torch.as_tensor(np.asarray(value), dtype=dtype, device=self.device)

    @staticmethod
    def _take(value: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
        return None if value is None else value.index_select(0, index)

    def batch(self, index: torch.Tensor) -> Batch:
        """Rows ``index`` (a 1-D int64 tensor, on the CPU or the device) as a device Batch."""
        x = draw_rows(self.rows, index.to(position_device(self.rows, self.device)), self.device)
        device_index = index.to(self.device)
        return Batch(
            x=x,
            mask=self._take(self.mask, device_index),
            size_factor=self._take(self.size_factors, device_index),
            covariates=self._take(self.covariates, device_index),
            feature_weights=self.feature_weights,
            count_constant=self._take(self.count_constant, device_index),
        )

    def split(self, validation: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded random (train, validation) rows."""
        return split_rows(self.n_obs, validation, seed)

    def batches(self, index: torch.Tensor, batch_size: int):
        """Yield consecutive batches over ``index`` in its order.

        The index goes to the device once (not once per batch) unless scipy
        densifies the batches on the host.
        """
        for chunk in self.chunks(index, batch_size):
            yield self.batch(chunk)

    def chunks(self, index: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
        """``index`` in consecutive pieces of ``batch_size`` on the device its rows are drawn on (one copy)."""
        return index.to(position_device(self.rows, self.device)).split(batch_size)
