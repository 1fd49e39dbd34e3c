"""Train on data larger than memory: rows are read in chunks and shuffled by chunk.

A :class:`Streamed` wraps a *row reader* (anything with ``n_obs``,
``n_features`` and ``read(start, stop)`` returning those rows as a dense array
or CSR matrix): :class:`AnnDataRows` reads a backed ``.h5ad`` or ``.zarr``
AnnData (CSR or dense X or a layer) and
:class:`sciencevae.adapters.climate.StreamedField` reads a gridded field
through dask. ``BetaVAE.fit``, ``encode`` and ``evaluate`` accept a Streamed
wherever they accept a matrix.

How an epoch reads the data (:class:`StreamingSource`): the epoch's random
permutation of rows decides the order in which chunks of ``chunk_rows``
consecutive rows are visited; ``buffer_chunks`` chunks at a time are read
(the next group in a background thread while the current one trains), and the
group's rows are served in the permutation's order. So each batch mixes rows of
several chunks, every row is seen once per epoch, and memory holds at most
two groups: ``2 * buffer_chunks * chunk_rows`` rows, CSR when the file is CSR
and sparse, dense when it is dense or a CSR group at least 25% full fits in 1
GiB dense; on a GPU the groups are moved there by the reading thread and
batches are drawn on the device. Count data are checked (non-negative
integers) chunk by chunk as they are read.
"""

from __future__ import annotations

import resource
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from .data import (Batch, DeviceCSR, Prepared, as_prepared, check_counts, draw_rows, hold_rows, log_factorial_rows,
                   position_device, round_counts, rounding_message, split_rows, subset_rows)

__all__ = ["RowReader", "ArrayRows", "Streamed", "StreamingSource", "AnnDataRows", "open_counts", "open_store",
           "peak_host_memory_mb", "rows_of", "column_means", "row_blocks"]


def peak_host_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux: ``VmHWM`` of /proc/self/status (``ru_maxrss`` would carry over the
    parent's peak into a process started by fork + exec); elsewhere
    ``ru_maxrss``.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class RowReader(Protocol):
    """What a Streamed needs from its data."""

    n_obs: int
    n_features: int

    def read(self, start: int, stop: int) -> np.ndarray | sp.csr_matrix: ...


@dataclass(frozen=True)
class Streamed:
    """Data read from disk in chunks of rows instead of held in memory.

    Attributes
    ----------
    reader
        The row reader.
    chunk_rows
        Rows read at once (consecutive rows of the file).
    buffer_chunks
        Chunks whose rows are mixed into the same batches.
    feature_weights
        Optional (n_features,) weights on each feature's log-likelihood.
    covariates
        Optional (n_obs, n_covariates) covariates of every row, held in memory (e.g. the phase of the year
        of each time step of a field).
    """

    reader: RowReader
    chunk_rows: int = 8192
    buffer_chunks: int = 4
    feature_weights: np.ndarray | None = None
    covariates: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.chunk_rows < 1 or self.buffer_chunks < 1:
            raise ValueError("chunk_rows and buffer_chunks must be positive")
        if self.covariates is not None and (np.ndim(self.covariates) != 2 or len(self.covariates) != self.n_obs):
            raise ValueError(f"covariates must be a ({self.n_obs}, n_covariates) array, got shape "
                             f"{np.shape(self.covariates)}")

    @property
    def n_covariates(self) -> int:
        return 0 if self.covariates is None else int(np.shape(self.covariates)[1])

    @property
    def n_obs(self) -> int:
        return self.reader.n_obs

    @property
    def n_features(self) -> int:
        return self.reader.n_features

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_obs, self.n_features


@dataclass
class _Group:
    """The rows of a few chunks, held where and how batches are drawn from them.

    ``X`` is a dense tensor on the device, a :class:`~sciencevae.data.DeviceCSR` (sparse rows on a GPU) or a
    scipy CSR matrix (sparse rows on the CPU); ``size_factors`` and ``count_constants`` are per-row device
    tensors (count data) in the same row order.
    """

    X: torch.Tensor | DeviceCSR | sp.csr_matrix
    chunks: np.ndarray  # chunk numbers held, sorted
    offsets: np.ndarray  # first row of each of those chunks in X
    has_nan: bool
    size_factors: torch.Tensor | None
    count_constants: torch.Tensor | None
    covariates: torch.Tensor | None


class StreamingSource:
    """Serve batches of a :class:`Streamed` (same interface as :class:`~sciencevae.data.BatchSource`).

    Each group of chunks is read, checked and moved to the device in a background thread: dense (a tensor) when
    the rows are dense or CSR at least 25% full whose dense copy fits in 1 GiB
    (:func:`~sciencevae.data.dense_is_better`), otherwise CSR (on a GPU as a
    :class:`~sciencevae.data.DeviceCSR`; ``csr_on_device`` overrides). Batches are then drawn from the group
    by indexing on the device: no step waits for the host.

    >>> reader = ArrayRows(np.arange(20.0).reshape(10, 2))
    >>> src = StreamingSource(Streamed(reader, chunk_rows=4, buffer_chunks=1), torch.device("cpu"))
    >>> sorted(int(r) for b in src.batches(torch.randperm(10), 3) for r in b.x[:, 0] // 2)
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """

    def __init__(self, streamed: Streamed, device: torch.device, count_data: bool = False,
                 csr_on_device: bool | None = None):
        self.streamed = streamed
        self.device = device
        self.count_data = count_data
        self.csr_on_device = csr_on_device
        self.n_obs, self.n_features = streamed.n_obs, streamed.n_features
        weights = streamed.feature_weights
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.feature_weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32,
                                                                            device=device)
        self.peak_buffer_rows = 0
        # count data: validated, and their per-row size factor and lgamma(x + 1) sum kept (16 bytes a row),
        # on a chunk's first read only
        self.checked_chunks: set[int] = set()
        self.rounded_chunks: set[int] = set()  # chunks holding counts with rounding error (rounded on each read)
        self.size_factors = np.zeros(self.n_obs) if count_data else None
        self.count_constants = np.zeros(self.n_obs) if count_data else None

    def _announce_rounding(self, example: float) -> None:
        if not self.rounded_chunks:  # once per pass over the data
            warnings.warn(rounding_message("the data hold", example), UserWarning, stacklevel=2)

    def _read_group(self, chunks: list[int]) -> _Group:
        size = self.streamed.chunk_rows
        parts, offsets, rows, offset = [], [], [], 0
        for chunk in sorted(chunks):
            start, stop = chunk * size, min((chunk + 1) * size, self.n_obs)
            X = self.streamed.reader.read(start, stop)
            X = X.tocsr().astype(np.float32, copy=False) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
            if self.count_data and chunk not in self.checked_chunks:
                example = check_counts(X.data if sp.issparse(X) else X, f"rows {start}-{stop - 1} hold")
                if example is not None:
                    self._announce_rounding(example)
                    self.rounded_chunks.add(chunk)
            if chunk in self.rounded_chunks:
                X = round_counts(X)
            if self.count_data and chunk not in self.checked_chunks:
                self.size_factors[start:stop] = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
                self.count_constants[start:stop] = log_factorial_rows(X, self.weights)
                self.checked_chunks.add(chunk)
            parts.append(X)
            offsets.append(offset)
            rows.append(np.arange(start, stop))
            offset += stop - start
        if len(parts) == 1:  # one chunk (data held in memory): no copy
            X = parts[0]
        else:
            X = sp.vstack(parts, format="csr") if sp.issparse(parts[0]) else np.concatenate(parts)
        del parts
        self.peak_buffer_rows = max(self.peak_buffer_rows, offset)
        rows = np.concatenate(rows)
        has_nan = not self.count_data and bool(np.isnan(X.data if sp.issparse(X) else X).any())
        return _Group(hold_rows(X, self.device, self.csr_on_device), np.array(sorted(chunks)), np.array(offsets),
                      has_nan, self._per_row(self.size_factors, rows), self._per_row(self.count_constants, rows),
                      self._per_row(self.streamed.covariates, rows))

    def _per_row(self, values: np.ndarray | None, rows: np.ndarray) -> torch.Tensor | None:
        return None if values is None else torch.as_tensor(values[rows], dtype=torch.float32, device=self.device)

    def _positions(self, group: _Group, rows: np.ndarray) -> torch.Tensor:
        """Where the data rows ``rows`` sit in the group, on the device the group's rows are drawn on."""
        size = self.streamed.chunk_rows
        local = group.offsets[np.searchsorted(group.chunks, rows // size)] + rows % size
        return torch.as_tensor(local, device=position_device(group.X, self.device))

    def _batch(self, group: _Group, positions: torch.Tensor) -> Batch:
        x = draw_rows(group.X, positions, self.device)
        positions = positions.to(self.device)
        mask = None
        if group.has_nan:
            mask = ~torch.isnan(x)
            x = torch.nan_to_num(x, nan=0.0)
        return Batch(
            x=x,
            mask=mask,
            size_factor=None if group.size_factors is None else group.size_factors[positions],
            covariates=None if group.covariates is None else group.covariates[positions],
            feature_weights=self.feature_weights,
            count_constant=None if group.count_constants is None else group.count_constants[positions],
        )

    def _groups(self, index: np.ndarray) -> list[tuple[list[int], np.ndarray]]:
        """Chunk groups in the order the permutation first reaches them, with their rows in its order."""
        chunk_of = index // self.streamed.chunk_rows
        _, first = np.unique(chunk_of, return_index=True)
        visit = chunk_of[np.sort(first)]
        groups = []
        for g in range(0, len(visit), self.streamed.buffer_chunks):
            chunks = visit[g:g + self.streamed.buffer_chunks].tolist()
            groups.append((chunks, index[np.isin(chunk_of, chunks)]))
        return groups

    def split(self, validation: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded (train, validation) rows; validation takes whole chunks so that it reads few of them.

        With fewer than 10 chunks the rows are split one by one (as in memory).
        """
        size = self.streamed.chunk_rows
        n_chunks = -(-self.n_obs // size)
        if n_chunks < 10 or validation == 0:
            return split_rows(self.n_obs, validation, seed)
        order = torch.randperm(n_chunks, generator=torch.Generator().manual_seed(seed)).tolist()
        target, held, n_held = int(self.n_obs * validation), [], 0
        for chunk in order:
            if n_held >= target:
                break
            held.append(chunk)
            n_held += min(size, self.n_obs - chunk * size)
        is_val = torch.zeros(self.n_obs, dtype=torch.bool)
        for chunk in held:
            is_val[chunk * size:(chunk + 1) * size] = True
        rows = torch.arange(self.n_obs)
        return rows[~is_val], rows[is_val]

    def batch(self, index: torch.Tensor) -> Batch:
        """Rows ``index`` as one Batch, in that order (reads the chunks they fall in)."""
        rows = index.numpy()
        group = self._read_group(np.unique(rows // self.streamed.chunk_rows).tolist())
        return self._batch(group, self._positions(group, rows))

    def batches(self, index: torch.Tensor, batch_size: int):
        """Yield batches over the rows ``index``, read group by group (the next one in the background)."""
        groups = self._groups(index.numpy())
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._read_group, groups[0][0]) if groups else None
            for g, (_, rows) in enumerate(groups):
                group = pending.result()
                pending = pool.submit(self._read_group, groups[g + 1][0]) if g + 1 < len(groups) else None
                for positions in self._positions(group, rows).split(batch_size):
                    yield self._batch(group, positions)


def rows_of(data: Prepared | Streamed, rows: np.ndarray) -> Prepared:
    """Rows ``rows`` (sorted positions) of in-memory or streamed data as a :class:`~sciencevae.data.Prepared`
    in memory (a streamed one reads only the chunks they fall in), with their covariates and the feature
    weights: e.g. a sample of cells to simulate from.

    >>> streamed = Streamed(ArrayRows(np.arange(12.0).reshape(6, 2)), chunk_rows=4)
    >>> rows_of(streamed, np.array([1, 5])).X.tolist()
    [[2.0, 3.0], [10.0, 11.0]]
    """
    rows = np.asarray(rows, dtype=np.int64)
    if not isinstance(data, Streamed):
        return subset_rows(data, rows)
    size, parts = data.chunk_rows, []
    for chunk in np.unique(rows // size):
        start = chunk * size
        part = data.reader.read(start, min(start + size, data.n_obs))
        local = rows[(rows >= start) & (rows < start + size)] - start
        parts.append(part.tocsr()[local] if sp.issparse(part) else np.asarray(part)[local])
    X = sp.vstack(parts, format="csr") if sp.issparse(parts[0]) else np.concatenate(parts)
    return as_prepared(X, None if data.covariates is None else np.asarray(data.covariates)[rows],
                       feature_weights=data.feature_weights)


def row_blocks(data, chunk_rows: int = 8192):
    """``(start, rows)`` over consecutive blocks of the rows of a matrix, a Prepared or a Streamed (its own
    chunks, read one at a time), CSR or dense as stored.

    >>> [(start, part.shape[0]) for start, part in row_blocks(np.zeros((5, 2)), chunk_rows=2)]
    [(0, 2), (2, 2), (4, 1)]
    """
    if isinstance(data, Streamed):
        n_obs, step, read = data.n_obs, data.chunk_rows, data.reader.read
    else:
        X = data.X if isinstance(data, Prepared) else data
        n_obs, step = X.shape[0], chunk_rows

        def read(start: int, stop: int):
            return X[start:stop]
    for start in range(0, n_obs, step):
        yield start, read(start, min(start + step, n_obs))


def column_means(data) -> np.ndarray:
    """(n_features,) mean of each column over the rows of a matrix, a Prepared or a Streamed (one pass over a
    streamed one, a chunk at a time).

    >>> column_means(Streamed(ArrayRows(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])), chunk_rows=2)).tolist()
    [3.0, 2.0]
    """
    total, n_obs = None, 0
    for _, part in row_blocks(data):
        sums = np.asarray(part.sum(axis=0), dtype=np.float64).ravel()
        total, n_obs = (sums if total is None else total + sums), n_obs + part.shape[0]
    return total / n_obs


class ArrayRows:
    """A row reader over an in-memory array (tests, examples)."""

    def __init__(self, X):
        self.X = X
        self.n_obs, self.n_features = X.shape

    def read(self, start: int, stop: int):
        return self.X[start:stop]


class AnnDataRows:
    """Rows of a backed AnnData file (.h5ad via h5py, .zarr via zarr) without loading it.

    Reads ``X`` or ``layers[layer]`` stored as CSR or dense. The row pointer
    of a CSR matrix (8 bytes per cell) is the only thing held in memory.

    >>> import anndata as ad, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.h5ad")
    >>> ad.AnnData(sp.csr_matrix(np.eye(3, dtype=np.float32))).write_h5ad(path)
    >>> AnnDataRows(path).read(1, 3).toarray().tolist()
    [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """

    def __init__(self, path: str | Path, layer: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"input {self.path} does not exist")
        self.root = self._open(self.path)
        if layer is None:
            element = self.root["X"]
        elif "layers" in self.root and layer in self.root["layers"]:
            element = self.root["layers"][layer]
        else:
            raise ValueError(f"{self.path} has no layer {layer!r}")
        self.where = "X" if layer is None else f"layers/{layer}"
        encoding = _text(element.attrs.get("encoding-type", "array"))
        if encoding == "csc_matrix":
            raise ValueError(f"{self.where} of {self.path} is stored as CSC (by gene): rows cannot be streamed. "
                             "Rewrite it as CSR: adata.X = adata.X.tocsr(); adata.write_h5ad(...)")
        if encoding == "csr_matrix":
            self.n_obs, self.n_features = (int(v) for v in element.attrs["shape"])
            self.indptr = np.asarray(element["indptr"][:], dtype=np.int64)
        else:
            self.n_obs, self.n_features = element.shape
            self.indptr = None
        self.element = element
        self.feature_names = _names(self.root, "var")
        self.obs_names = _names(self.root, "obs")

    @staticmethod
    def _open(path: Path):
        return open_store(path)

    def read(self, start: int, stop: int) -> np.ndarray | sp.csr_matrix:
        if self.indptr is None:
            return np.asarray(self.element[start:stop])
        begin, end = self.indptr[start], self.indptr[stop]
        data = np.asarray(self.element["data"][begin:end])
        indices = np.asarray(self.element["indices"][begin:end])
        return sp.csr_matrix((data, indices, self.indptr[start:stop + 1] - begin), shape=(stop - start,
                                                                                           self.n_features))


def open_store(path: str | Path):
    """The root group of an AnnData store, read-only: a .zarr with zarr, anything else with h5py;
    ``ValueError`` (one line) when it cannot be opened."""
    path = Path(path)
    try:
        if path.suffix == ".zarr":
            import zarr

            return zarr.open_group(str(path), mode="r")
        import h5py

        return h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise ValueError(f"could not open {path} as AnnData ({path.suffix}): {err}") from None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _names(root, axis: str) -> np.ndarray | None:
    group = root[axis] if axis in root else None
    if group is None or "_index" not in group.attrs:
        return None
    values = np.asarray(group[_text(group.attrs["_index"])][:])
    return np.array([_text(v) for v in values], dtype=object)


def open_counts(path: str | Path, layer: str | None = None, chunk_rows: int = 8192,
                buffer_chunks: int = 4) -> Streamed:
    """A backed .h5ad / .zarr AnnData as a :class:`Streamed` for ``BetaVAE.fit`` / ``encode``."""
    return Streamed(AnnDataRows(path, layer), chunk_rows=chunk_rows, buffer_chunks=buffer_chunks)
