"""A cells matrix read a chunk of cells at a time, in memory or backed on disk (``read_h5ad(..., backed="r")``).

One pass gathers what the adapter checks and chooses genes from (the count check, counts per cell, cells per
gene, per-batch sums and sums of squares); a second pass gives the clipped sums of scanpy's ``seurat_v3``
highly variable genes (Stuart et al. 2019, Cell 177:1888; the same genes as
``scanpy.pp.highly_variable_genes(flavor="seurat_v3")``); a third gathers the modelled genes' counts (or they
are streamed, :func:`held_bytes` saying what gathering them would take). No
pass holds more than one chunk of the whole matrix, so the statistics of a file larger than memory cost a
chunk's memory plus (batches x genes) arrays.

>>> import numpy as np, scipy.sparse as sp
>>> X = sp.csr_matrix(np.array([[0, 1, 2], [3, 0, 0], [1, 1, 0]], dtype=np.float32))
>>> stats = gene_stats(X, np.zeros(3, dtype=np.int64), 1, chunk_rows=2)
>>> stats.cells_per_gene.tolist(), stats.totals.tolist(), stats.sums.tolist()
([2, 2, 1], [3.0, 3.0, 2.0], [[4.0, 2.0, 2.0]])
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sciencevae.data import round_counts
from sciencevae.streaming import row_blocks

#: Entries (cells x genes) read at once: 16M, 64 MB of float32 when dense.
CHUNK_ENTRIES = 1 << 24

#: scanpy's seurat_v3 loess span (the fraction of genes in each local fit).
LOESS_SPAN = 0.3


def default_chunk_rows(n_genes: int) -> int:
    """Cells per chunk for a matrix of ``n_genes`` columns: :data:`CHUNK_ENTRIES` entries, at least 256 cells."""
    return max(256, CHUNK_ENTRIES // max(n_genes, 1))


def row_chunks(X, chunk_rows: int | None = None) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
    """``(start, rows)`` over consecutive chunks of a matrix: numpy, scipy sparse, or an anndata backed
    dataset (only the chunk is read). A chunk comes as CSR or a dense ndarray."""
    for start, part in row_blocks(X, chunk_rows or default_chunk_rows(X.shape[1])):
        yield start, (part.tocsr() if sp.issparse(part) else np.asarray(part))


@dataclass
class GeneStats:
    """Per-gene statistics of a cells x genes matrix, by batch.

    Attributes
    ----------
    n_cells
        (n_batches,) cells in each batch.
    sums, squares
        (n_batches, n_genes) float64 sums of the values and of their squares.
    cells_per_gene
        (n_genes,) cells in which the gene is non-zero.
    totals
        (n_cells,) float64 sum over genes of each cell.
    rounded
        The first value found with rounding error (counts stored as floats), or None; set by ``check``.
    """

    n_cells: np.ndarray
    sums: np.ndarray
    squares: np.ndarray
    cells_per_gene: np.ndarray
    totals: np.ndarray
    rounded: float | None = None


def gene_stats(X, batch_codes: np.ndarray, n_batches: int, check: Callable | None = None,
               chunk_rows: int | None = None) -> GeneStats:
    """One pass over ``X`` (cells x genes): :class:`GeneStats` with cells grouped by ``batch_codes``
    ((n_cells,) integers in ``[0, n_batches)``).

    ``check(rows)`` is called on every chunk (e.g. the count check); it raises to refuse the matrix and may
    return an example value with rounding error (kept in ``rounded``; the chunk is then counted rounded).
    """
    n_obs, n_genes = X.shape
    sums = np.zeros((n_batches, n_genes))
    squares = np.zeros((n_batches, n_genes))
    cells_per_gene = np.zeros(n_genes, dtype=np.int64)
    totals = np.zeros(n_obs)
    rounded = None
    for start, part in row_chunks(X, chunk_rows):
        if check is not None:
            example = check(part)
            rounded = example if rounded is None else rounded
            part = part if example is None else round_counts(part)
        values = _as_float64(part)
        members = _membership(batch_codes[start:start + part.shape[0]], n_batches)
        sums += _dense(members @ values)
        squares += _dense(members @ (values.multiply(values) if sp.issparse(values) else values * values))
        cells_per_gene += _nonzero_per_column(values)
        totals[start:start + part.shape[0]] = np.asarray(values.sum(axis=1)).ravel()
    n_cells = np.bincount(batch_codes, minlength=n_batches)
    return GeneStats(n_cells=n_cells, sums=sums, squares=squares, cells_per_gene=cells_per_gene, totals=totals,
                     rounded=rounded)


def seurat_v3(X, stats: GeneStats, batch_codes: np.ndarray, columns: np.ndarray, n_top_genes: int,
              chunk_rows: int | None = None) -> np.ndarray:
    """Positions in ``columns`` of the ``n_top_genes`` highly variable genes of ``X[:, columns]`` (counts),
    by seurat_v3 (Stuart et al. 2019): per batch, a loess fit (degree 2, span :data:`LOESS_SPAN`, from
    scikit-misc) of log10 variance on log10 mean gives each gene's expected standard deviation; its values
    clipped at mean + sd * sqrt(cells) give a standardised variance; genes are ranked per batch and ordered
    by their median rank among the batches where they are in the top ``n_top_genes``, then by that number of
    batches — as ``scanpy.pp.highly_variable_genes(flavor="seurat_v3", batch_key=...)``.

    One more pass over ``X`` (the clipped sums). Raises ``ValueError`` from the loess fit when it cannot
    be made (too few genes or cells).
    """
    n = stats.n_cells.astype(np.float64)[:, None]
    mean = stats.sums[:, columns] / n
    variance = (stats.squares[:, columns] / n - mean ** 2) * n / (n - 1)
    reg_std = np.vstack([_expected_sd(m, v) for m, v in zip(mean, variance)])
    clip = np.full(stats.sums.shape, np.inf)
    clip[:, columns] = reg_std * np.sqrt(n) + mean
    clipped_sums, clipped_squares = _clipped_sums(X, batch_codes, clip, chunk_rows)
    s, q = clipped_sums[:, columns], clipped_squares[:, columns]
    normalised = (n * mean ** 2 + q - 2 * s * mean) / ((n - 1) * reg_std ** 2)
    return _seurat_v3_order(normalised, n_top_genes)


def _expected_sd(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """sqrt(10 ** loess(log10 variance ~ log10 mean)) over the genes whose variance is not 0 (1 for those)."""
    from skmisc.loess import loess

    varying = variance > 0
    fitted = np.zeros(len(mean))
    model = loess(np.log10(mean[varying]), np.log10(variance[varying]), span=LOESS_SPAN, degree=2)
    model.fit()
    fitted[varying] = model.outputs.fitted_values
    return np.sqrt(10 ** fitted)


def _clipped_sums(X, batch_codes: np.ndarray, clip: np.ndarray, chunk_rows: int | None) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """Per batch and gene, the sums of min(value, clip[batch, gene]) and of its square."""
    n_batches, n_genes = clip.shape
    sums, squares = np.zeros((n_batches, n_genes)), np.zeros((n_batches, n_genes))
    for start, part in row_chunks(X, chunk_rows):
        codes = batch_codes[start:start + part.shape[0]]
        if sp.issparse(part):
            rows = np.repeat(codes, np.diff(part.indptr))
            values = np.minimum(part.data.astype(np.float64), clip[rows, part.indices])
            cell = rows * n_genes + part.indices
            sums += np.bincount(cell, values, minlength=clip.size).reshape(clip.shape)
            squares += np.bincount(cell, values * values, minlength=clip.size).reshape(clip.shape)
            continue
        for b in np.unique(codes):
            values = np.minimum(part[codes == b].astype(np.float64), clip[b])
            sums[b] += values.sum(axis=0)
            squares[b] += (values * values).sum(axis=0)
    return sums, squares


def _seurat_v3_order(normalised: np.ndarray, n_top_genes: int) -> np.ndarray:
    """The first ``n_top_genes`` genes (columns of the (n_batches, n_genes) standardised variances) by median
    rank among the batches where a gene is in the top ``n_top_genes`` (ties: in more batches first, then
    gene order)."""
    ranks = np.argsort(np.argsort(-normalised, axis=1), axis=1).astype(np.float32)
    n_batches_high = (ranks < n_top_genes).sum(axis=0)
    ranks[ranks >= n_top_genes] = np.nan
    median = np.ma.median(np.ma.masked_invalid(ranks), axis=0).filled(np.nan)
    order = np.lexsort((-n_batches_high, np.where(np.isnan(median), np.inf, median)))
    return np.sort(order[:n_top_genes])


def gather_columns(X, modelled: Callable, chunk_rows: int | None = None):
    """``modelled(rows)`` of every chunk of a backed matrix, stacked (CSR stays CSR): e.g. the modelled genes'
    counts without the whole matrix in memory."""
    parts = [modelled(part) for _, part in row_chunks(X, chunk_rows)]
    gathered = stack_rows(parts) if sp.issparse(parts[0]) else np.concatenate(parts)
    del parts
    give_back_freed_memory()
    return gathered


def held_bytes(X, index: np.ndarray, n_samples: int = 4) -> int:
    """Bytes that columns ``index`` of ``X`` (cells x genes) take in memory as float32 — CSR (data, int32
    indices, row pointer) when ``X`` is sparse — estimated from ``n_samples`` chunks spread over the cells
    (all of them when there are no more).

    >>> X = sp.csr_matrix(np.eye(4, dtype=np.float32))
    >>> held_bytes(X, np.array([0, 1]))  # 2 non-zeros x 8 bytes + 5 row pointers x 8 bytes
    56
    """
    n_obs, n_genes = X.shape
    if not (sp.issparse(X) or getattr(X, "format", None) in ("csr", "csc")):
        return 4 * n_obs * len(index)
    step = default_chunk_rows(n_genes)
    starts = np.unique(np.linspace(0, max(n_obs - 1, 0) // step, min(n_samples, -(-n_obs // step))).astype(int))
    seen = non_zeros = 0
    columns = np.isin(np.arange(n_genes), index[index >= 0])
    for chunk in starts:
        part = X[chunk * step:min((chunk + 1) * step, n_obs)]
        part = part.tocsr() if sp.issparse(part) else sp.csr_matrix(part)
        seen += part.shape[0]
        non_zeros += int(columns[part.indices].sum())
    return int(round(non_zeros * n_obs / max(seen, 1))) * 8 + 8 * (n_obs + 1)


def available_memory() -> float:
    """Bytes of memory available to new allocations (``MemAvailable`` of /proc/meminfo; infinite where the
    system does not say)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024  # kB
    return float("inf")


def give_back_freed_memory() -> None:
    """Return the heap's free memory to the operating system (glibc's ``malloc_trim``; nothing elsewhere).

    The chunks of a gathered matrix are freed into the heap, which glibc keeps for later allocations of
    their size: at 1M cells x 2,000 genes the process stayed 1.1 GB larger through training without this.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def stack_rows(parts: list[sp.csr_matrix]) -> sp.csr_matrix:
    """The CSR parts stacked by rows, each part released (removed from ``parts``) once it is copied.

    ``scipy.sparse.vstack`` holds the parts and the result at once (twice the matrix); here the result's
    arrays are allocated empty, and the operating system commits their pages only as they are written, so
    memory holds about one matrix throughout.

    >>> a, b = sp.csr_matrix(np.eye(2)), sp.csr_matrix(np.ones((1, 2)))
    >>> stack_rows([a, b]).toarray().tolist()
    [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    """
    nnz, n_rows, n_cols = sum(p.nnz for p in parts), sum(p.shape[0] for p in parts), parts[0].shape[1]
    index_type = np.int32 if max(nnz, n_cols) < np.iinfo(np.int32).max else np.int64
    data, indices = np.empty(nnz, dtype=parts[0].dtype), np.empty(nnz, dtype=index_type)
    indptr = np.zeros(n_rows + 1, dtype=index_type)
    at = row = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        data[at:at + part.nnz], indices[at:at + part.nnz] = part.data, part.indices
        indptr[row + 1:row + 1 + part.shape[0]] = part.indptr[1:] + at
        at, row = at + part.nnz, row + part.shape[0]
        del part
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))


def is_backed(X) -> bool:
    """Whether ``X`` is read from disk (an anndata backed dataset or an h5py / zarr array), not in memory."""
    return not (isinstance(X, np.ndarray) or sp.issparse(X))


def _as_float64(part):
    return part.astype(np.float64) if sp.issparse(part) else np.asarray(part, dtype=np.float64)


def _dense(values) -> np.ndarray:
    return values.toarray() if sp.issparse(values) else np.asarray(values)


def _membership(codes: np.ndarray, n_batches: int) -> sp.csr_matrix:
    """(n_batches, n_rows) 0/1 matrix: which batch each row is in."""
    return sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_batches, len(codes)))


def _nonzero_per_column(part) -> np.ndarray:
    if sp.issparse(part):
        return np.bincount(part.indices[part.data != 0], minlength=part.shape[1])
    return np.count_nonzero(part, axis=0)
