"""AnnData <-> the core's ``Prepared`` (samples = cells, features = genes).

Counts come from ``X``, a layer or ``raw`` and are validated for the
likelihood (non-negative integers for count models); a CSR matrix stays CSR.
Optional highly-variable-gene selection (``seurat_v3`` on counts, the genes scanpy chooses),
a batch key and other categorical / continuous obs columns as covariates.
New data (a query) is mapped onto the fitted genes by name. Results are
written back in scanpy style on a copy: ``obsm["X_sciencevae"]``,
``varm["sciencevae_loadings"]``, ``uns["sciencevae"]``; counts are never
altered. The matrix is read a chunk of cells at a time (:mod:`.cells_chunks`), so an AnnData opened with
``read_cells(path, backed=True)`` (:mod:`.cells_files`: X, layers and raw.X on disk) or
``read_h5ad(path, backed="r")`` is checked and prepared without loading it whole: only the modelled genes'
counts are held in memory (:meth:`CellsAdapter.prepare`), or not even those: :meth:`CellsAdapter.stream`
reads them from the file a chunk of cells at a time whenever they are used.

>>> import anndata as ad, numpy as np
>>> adata = ad.AnnData(np.random.default_rng(0).poisson(2.0, size=(30, 8)).astype(np.float32))
>>> adapter = CellsAdapter.from_adata(adata, likelihood="nb")
>>> adapter.prepare(adata).X.shape
(30, 8)
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sciencevae.data import (INTEGER_TOLERANCE, Prepared, as_prepared, check_counts, integer_distance,
                             round_counts, rounding_message)
from sciencevae.io import atomic_write_text
from sciencevae.streaming import Streamed

from .cells_chunks import (available_memory, gather_columns, gene_stats, held_bytes, is_backed, row_chunks,
                           seurat_v3)
from .cells_files import has_matrices_on_disk, kept_on_disk, read_cells, write_cells_h5ad

__all__ = ["CellsAdapter", "read_cells", "drop_empty_cells", "modelled_var", "missing_labels", "write_cells_h5ad",
           "COUNT_LIKELIHOODS"]

COUNT_LIKELIHOODS = ("nb", "zinb", "poisson")
#: Modelled counts of a matrix on disk are streamed (``CellsAdapter.prepare_or_stream``) when holding them would
#: take more than this share of the memory available.
MEMORY_SHARE = 0.25
OBSM_KEY, VARM_KEY, UNS_KEY = "X_sciencevae", "sciencevae_loadings", "sciencevae"


def _matrix(adata: ad.AnnData, layer: str | None) -> tuple[np.ndarray | sp.csr_matrix, pd.Index]:
    """The chosen matrix (CSR kept; a backed CSR matrix stays on disk) and its gene names (unique, else an
    error)."""
    if layer == "raw":
        if adata.raw is None:
            raise ValueError("layer='raw' was asked for but the AnnData has no .raw")
        X, genes = adata.raw.X, adata.raw.var_names
    elif layer in (None, "X"):
        X, genes = adata.X, adata.var_names
    else:
        if layer not in adata.layers:
            other = "X / raw" if adata.raw is not None else "X"
            raise ValueError(f"layer {layer!r} does not exist; the AnnData has layers {sorted(adata.layers)} "
                             f"(or use {other})")
        X, genes = adata.layers[layer], adata.var_names
    _check_unique(genes, "raw.var_names" if layer == "raw" else "var_names")
    if getattr(X, "format", None) == "csc" and hasattr(X, "to_memory"):  # by gene on disk: rows cannot be read
        X = X.to_memory()
    if not is_backed(X):
        X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    return X, genes


def modelled_var(adata: ad.AnnData, layer: str | None) -> pd.DataFrame:
    """The gene annotations of the matrix a layer names: ``raw.var`` for ``"raw"``, else ``var``."""
    return adata.raw.var if layer == "raw" and adata.raw is not None else adata.var


_MAKE_UNIQUE = {"obs_names": "adata.obs_names_make_unique()", "var_names": "adata.var_names_make_unique()",
                "raw.var_names": "adata.raw.var_names_make_unique()"}


def _check_unique(names: pd.Index, what: str) -> None:
    """Refuse repeated cell or gene names (``what``: a key of ``_MAKE_UNIQUE``): outputs are keyed by them."""
    if names.has_duplicates:
        repeated = pd.unique(names[names.duplicated()].astype(str))
        shown = ", ".join(map(repr, repeated[:5])) + (" ..." if len(repeated) > 5 else "")
        raise ValueError(f"{what} are not unique ({len(repeated)} repeated: {shown}); make them unique first: "
                         f"{_MAKE_UNIQUE[what]}, then save the file")


def _values(X) -> np.ndarray:
    return X.data if sp.issparse(X) else X


def _check_counts(X, where: str, hint: str = "") -> float | None:
    """Refuse what cannot be counts; the first value with rounding error (e.g. 7.0000005), or None."""
    values = _values(X)
    fix = "pass --likelihood gaussian (likelihood='gaussian') or give raw counts"
    fix = f"{hint}, or {fix}" if hint else fix
    if values.size and not np.all(np.isfinite(values)):
        raise ValueError(f"{where} holds NaN or infinite values; counts must be finite ({fix})")
    return check_counts(values, f"{where} holds", fix=fix)


def _counts_hint(adata: ad.AnnData, layer: str | None, n_rows: int = 1000) -> str:
    """Where else the AnnData holds counts (judged on its first ``n_rows`` cells), as a fix for a
    refused matrix; '' when nowhere."""
    candidates = [("raw", adata.raw.X if adata.raw is not None else None)]
    candidates += [(name, adata.layers[name]) for name in adata.layers]
    for name, matrix in candidates:
        if matrix is None or name == layer:
            continue
        part = matrix[:n_rows]  # in memory or backed: only these rows are read
        values = np.asarray(part.data if sp.issparse(part) else part, dtype=np.float64).ravel()
        if values.size and np.all(np.isfinite(values)) and values.min() >= 0 and np.all(
                integer_distance(values) <= INTEGER_TOLERANCE):
            where = ".raw" if name == "raw" else f"layer {name!r}"
            return f"{where} holds counts: pass --layer {name} (layer={name!r})"
    return ""


def _where(layer: str | None) -> str:
    return "X" if layer in (None, "X") else ("raw.X" if layer == "raw" else f"layer {layer!r}")


@dataclass
class CellsAdapter:
    """What the model was fitted on: genes (in order), source layer, covariates."""

    genes: list[str]
    layer: str | None = None
    likelihood: str = "nb"
    binarize: bool = False
    categorical: dict[str, list[str]] = field(default_factory=dict)
    continuous: dict[str, list[float]] = field(default_factory=dict)  # key -> [mean, std]

    @property
    def n_covariates(self) -> int:
        return sum(len(c) for c in self.categorical.values()) + len(self.continuous)

    @classmethod
    def from_adata(cls, adata: ad.AnnData, layer: str | None = None, likelihood: str = "nb",
                   n_top_genes: int | None = None, batch_key: str | None = None,
                   categorical_covariate_keys: list[str] | None = None,
                   continuous_covariate_keys: list[str] | None = None, binarize: bool = False) -> "CellsAdapter":
        """Choose genes and covariates from a reference AnnData.

        Raises ``ValueError`` (one line: the problem and the fix) for an empty
        AnnData, repeated cell or gene names, values that are not counts
        (pointing to ``raw`` or a layer that holds counts), cells without
        counts, and degenerate covariate columns (missing values, a single
        value, a value per cell).
        """
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise ValueError(f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
        _check_unique(adata.obs_names, "obs_names")
        X, genes = _matrix(adata, layer)
        counting = likelihood in COUNT_LIKELIHOODS
        by_batch = batch_key if n_top_genes is not None else None
        codes, names = _batch_codes(adata, by_batch) if by_batch else (np.zeros(adata.n_obs, np.int64), ["all"])
        watch = _IntegerWatch()  # a gaussian model of raw counts is refused by nothing else: say so
        stats = gene_stats(X, codes, len(names), check=_count_check(adata, layer) if counting else watch)
        if likelihood == "gaussian" and watch.integer and watch.largest > 1:
            warnings.warn(f"{_where(layer)} holds integer counts (up to {watch.largest:g}) but likelihood 'gaussian' "
                          "models log-normalised values: use --likelihood nb (the default) for counts, or "
                          "normalise and log-transform them first", UserWarning, stacklevel=2)
        if counting and np.any(stats.totals == 0):
            raise ValueError(
                f"{int(np.sum(stats.totals == 0))} cells have no counts at all; drop them: --drop-empty-cells on "
                "the command line, drop_empty_cells(adata) in Python (or sc.pp.filter_cells(adata, min_counts=1))"
            )
        keys = ([batch_key] if batch_key else []) + list(categorical_covariate_keys or [])
        categorical = {k: _categories(adata, k) for k in keys}
        continuous = {k: _moments(adata, k) for k in continuous_covariate_keys or []}
        keep = stats.cells_per_gene > 0
        if not keep.all():
            warnings.warn(f"{int((~keep).sum())} genes have no counts in any cell and are left out", UserWarning,
                          stacklevel=2)
        chosen = np.flatnonzero(keep)
        if n_top_genes is not None and n_top_genes < len(chosen):
            chosen = chosen[_highly_variable(X, stats, codes, names, chosen, by_batch, n_top_genes)]
        _warn_spike_ins(genes[chosen])
        return cls(genes=[str(g) for g in genes[chosen]], layer=layer, likelihood=likelihood, binarize=binarize,
                   categorical=categorical, continuous=continuous)

    def prepare(self, adata: ad.AnnData, missing_genes: str = "error", unseen_categories: str = "error") -> Prepared:
        """Counts of the fitted genes (reordered by name) with covariates.

        ``missing_genes``: ``"error"`` (default) lists the fitted genes the
        data lack; ``"zero"`` fills them with zeros and warns. Counts stored
        as floats with rounding error are rounded (on a copy), with a warning.
        ``unseen_categories``: ``"error"`` (default) refuses a categorical
        covariate's value (or column) the model has not seen; ``"zero"`` gives
        those cells an all-zero one-hot row (no batch: reference mapping).
        """
        if adata.n_obs == 0:
            raise ValueError("the AnnData has no cells")
        _check_unique(adata.obs_names, "obs_names")
        X, genes = _matrix(adata, self.layer)
        index = pd.Index(genes).get_indexer(self.genes)
        missing = [g for g, i in zip(self.genes, index) if i < 0]
        if missing and missing_genes != "zero":
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ValueError(
                f"{len(missing)} of the model's {len(self.genes)} genes are missing from the data: {shown}; "
                "pass missing_genes='zero' to fill them with zeros"
            )
        if missing:
            warnings.warn(f"{len(missing)} fitted genes are missing and were filled with zeros", UserWarning,
                          stacklevel=2)
        rows = ModelledRows(self, adata, X, index)
        X = gather_columns(X, rows.modelled) if is_backed(X) else rows.modelled(X)
        prepared = Prepared(X=X, obs_names=np.asarray(adata.obs_names), feature_names=np.asarray(self.genes),
                            covariates=self._covariates(adata, unseen_categories))
        return as_prepared(prepared)

    def stream(self, adata: ad.AnnData, chunk_rows: int = 8192, buffer_chunks: int = 4) -> Streamed:
        """The counts :meth:`prepare` gives, read from ``adata``'s matrix ``chunk_rows`` cells at a time
        whenever they are used (each epoch, each encoding) instead of held in memory: a
        :class:`~sciencevae.streaming.Streamed` for ``BetaVAE.fit`` / ``encode`` / ``evaluate``. The model's
        genes must all be in the data; covariates are held in memory (cells x covariates)."""
        if adata.n_obs == 0:
            raise ValueError("the AnnData has no cells")
        X, genes = _matrix(adata, self.layer)
        index = pd.Index(genes).get_indexer(self.genes)
        if (index < 0).any():
            raise ValueError(f"{int((index < 0).sum())} of the model's {len(self.genes)} genes are missing from "
                             "the data; prepare() fills them with zeros (missing_genes='zero')")
        return Streamed(ModelledRows(self, adata, X, index), chunk_rows=chunk_rows, buffer_chunks=buffer_chunks,
                        covariates=self._covariates(adata))

    def prepare_or_stream(self, adata: ad.AnnData, stream: bool | None = None) -> Prepared | Streamed:
        """:meth:`stream` when ``stream`` is True, or when None and the modelled counts of a matrix on disk
        would take more than :data:`MEMORY_SHARE` of the memory available (:func:`.cells_chunks.held_bytes`,
        :func:`.cells_chunks.available_memory`); otherwise :meth:`prepare` (held in memory: faster to train on).
        A matrix held in memory is never streamed (a warning when ``stream`` is True)."""
        X, genes = _matrix(adata, self.layer)
        if stream and not is_backed(X):
            warnings.warn(f"{_where(self.layer)} is held in memory, not read from a file: its modelled counts are "
                          "held too (streaming needs the file opened with read_cells(path, backed=True))",
                          UserWarning, stacklevel=2)
            stream = False
        if stream is None:
            needed = held_bytes(X, pd.Index(genes).get_indexer(self.genes))
            stream = is_backed(X) and needed > MEMORY_SHARE * available_memory()
        return self.stream(adata) if stream else self.prepare(adata)

    def _covariates(self, adata: ad.AnnData, unseen_categories: str = "error") -> np.ndarray | None:
        blocks = []
        for key, categories in self.categorical.items():
            if unseen_categories == "zero" and key not in adata.obs:
                blocks.append(np.zeros((adata.n_obs, len(categories)), np.float32))
                continue
            column = _obs(adata, key)
            _refuse_missing(column, key)
            values = column.astype(str).to_numpy()
            unseen = sorted(set(values) - set(categories))
            if unseen and unseen_categories != "zero":
                raise ValueError(f"obs column {key!r} has categories the model has not seen: {unseen[:5]}")
            blocks.append((values[:, None] == np.asarray(categories)[None, :]).astype(np.float32))
        for key, (mean, std) in self.continuous.items():
            values = _numeric(_obs(adata, key), key)
            blocks.append(((values - mean) / std)[:, None].astype(np.float32))
        return np.concatenate(blocks, axis=1) if blocks else None

    def write_back(self, adata: ad.AnnData, latents: np.ndarray, loadings: np.ndarray | None, uns: dict) -> ad.AnnData:
        """A new AnnData: ``adata``'s matrices (X, layers, raw) shared, not copied (a backed matrix stays on
        disk: :func:`write_cells_h5ad` copies it file to file), with its own obs / var / obsm / varm / uns to
        which the results are added; ``adata`` itself is not changed.

        Loadings go to ``varm["sciencevae_loadings"]`` (0 for genes not
        modelled); when the model read ``raw``, every modelled gene's loading
        is also in ``raw.varm`` (raw may hold genes that ``var`` lacks).
        """
        out = _sharing_matrices(adata)
        out.obsm[OBSM_KEY] = np.asarray(latents, dtype=np.float32)
        if loadings is not None:
            _put_loadings(out, self.genes, loadings)
            if self.layer == "raw" and out.raw is not None:
                raw = ad.AnnData(X=out.raw.X, var=out.raw.var.copy(), varm=dict(out.raw.varm))  # X shared
                _put_loadings(raw, self.genes, loadings)
                out.raw = raw
        out.uns[UNS_KEY] = {**uns, "adapter": json.dumps(asdict(self))}
        return out

    def save(self, path: str | Path) -> Path:
        atomic_write_text(json.dumps(asdict(self), indent=1), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "CellsAdapter":
        try:
            return cls(**json.loads(Path(path).read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path} is not a sciencevae cells adapter: {err}") from None


def _sharing_matrices(adata: ad.AnnData) -> ad.AnnData:
    """An AnnData holding ``adata``'s matrices themselves (an atlas's counts are not copied) and shallow
    copies of its annotations, so that adding obsm / varm / uns / var columns leaves ``adata`` as it was."""
    raw = adata.raw
    if raw is not None:  # a Raw whose matrix is on disk cannot be handed on as it is; its matrix can
        raw = ad.AnnData(X=raw.X, var=raw.var.copy(), varm=dict(raw.varm))
    return ad.AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var.copy(), uns=dict(adata.uns),
                      obsm=dict(adata.obsm), varm=dict(adata.varm), layers=dict(adata.layers),
                      obsp=dict(adata.obsp), varp=dict(adata.varp), raw=raw)


def _warn_spike_ins(genes: pd.Index) -> None:
    """Say so when ERCC spike-ins (technical RNA, not genes of the cells) are among the modelled genes."""
    spikes = [str(g) for g in genes if str(g).upper().startswith("ERCC-")]
    if spikes:
        warnings.warn(f"{len(spikes)} ERCC spike-ins (e.g. {spikes[0]}) are modelled as genes; drop them first if "
                      "they should not be: adata[:, ~adata.var_names.str.startswith('ERCC-')]", UserWarning,
                      stacklevel=3)


def drop_empty_cells(adata: ad.AnnData, layer: str | None = None) -> ad.AnnData:
    """The cells with at least one count in the matrix ``layer`` names, with a warning saying how many
    were dropped (``adata`` itself when none is empty). Matrices on disk (:func:`read_cells` with
    ``backed=True``) are read a chunk of cells at a time and the kept cells' stay on disk
    (:func:`.cells_files.kept_on_disk`); others are copied in memory.

    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.array([[0.0, 0.0], [1.0, 2.0]], dtype=np.float32))
    >>> drop_empty_cells(adata).n_obs
    1
    """
    X, _ = _matrix(adata, layer)
    keep = np.concatenate([np.asarray(part.sum(axis=1)).ravel() > 0 for _, part in row_chunks(X)])
    if keep.all():
        return adata
    warnings.warn(f"{int((~keep).sum())} of {adata.n_obs} cells have no counts in {_where(layer)} and were dropped",
                  UserWarning, stacklevel=2)
    return kept_on_disk(adata, keep) if has_matrices_on_disk(adata) else adata[keep].copy()


def _put_loadings(adata: ad.AnnData, genes: list[str], loadings: np.ndarray) -> None:
    """``varm[VARM_KEY]`` (0 for genes not modelled) and ``var["sciencevae_used"]``, in place."""
    full = np.zeros((adata.n_vars, loadings.shape[1]), dtype=np.float32)
    index = adata.var_names.get_indexer(genes)
    present = index >= 0
    full[index[present]] = loadings[present]
    adata.varm[VARM_KEY] = full
    adata.var["sciencevae_used"] = np.isin(adata.var_names, genes)


class _IntegerWatch:
    """A chunk check (:func:`.cells_chunks.gene_stats`) that refuses nothing: whether every value seen is an
    integer, and the largest."""

    def __init__(self) -> None:
        self.integer, self.largest = True, 0.0

    def __call__(self, part) -> None:
        values = part.data if sp.issparse(part) else np.asarray(part)
        if values.size:
            self.integer = self.integer and bool(np.all(values == np.round(values)))
            self.largest = max(self.largest, float(values.max()))


def _count_check(adata: ad.AnnData, layer: str | None):
    """The count check of one chunk of the matrix ``layer`` names, for :func:`.cells_chunks.gene_stats`
    (refusals point to raw / a layer holding counts)."""
    return lambda part: _validated_counts(adata, part, layer)[1]


def _validated_counts(adata: ad.AnnData, X, layer: str | None):
    """X checked as counts (refusals point to raw / a layer holding counts) and rounded when its
    values are integers up to rounding error. Returns (X, an example value that was rounded or None)."""
    where = _where(layer)
    try:
        example = _check_counts(X, where)
    except ValueError:
        hint = _counts_hint(adata, layer)
        if not hint:
            raise
        _check_counts(X, where, hint)
        raise
    return (X, None) if example is None else (round_counts(X), example)


#: Strings that stand for a missing obs value (compared case-insensitively after stripping).
MISSING_LABELS = frozenset({"", "nan", "na", "n/a", "none", "null", "<na>"})


def missing_labels(column: pd.Series) -> np.ndarray:
    """True where an obs value is missing: NaN / None / pd.NA, or a string that spells one ("nan", "NA", "")."""
    text = column.astype(str).str.strip().str.lower()
    return np.asarray(column.isna()) | text.isin(MISSING_LABELS).to_numpy()


def _refuse_missing(column: pd.Series, key: str) -> None:
    missing = missing_labels(column)
    if missing.any():
        raise ValueError(
            f"obs column {key!r} has no value for {int(missing.sum())} of {len(column)} cells; a covariate needs "
            f"one for every cell: fill them in or drop those cells (adata[adata.obs[{key!r}].notna()])"
        )


def _categories(adata: ad.AnnData, key: str) -> list[str]:
    """The categories of a categorical covariate; refuses missing values, one value, or a value per cell."""
    column = _obs(adata, key)
    _refuse_missing(column, key)
    categories = sorted(map(str, pd.unique(column.astype(str))))
    if len(categories) < 2:
        raise ValueError(f"obs column {key!r} has the same value ({categories[0]!r}) for every cell; there is "
                         "nothing to correct for: leave it out")
    if len(column) > 3 and len(categories) > len(column) // 2:
        raise ValueError(f"obs column {key!r} has {len(categories)} different values for {len(column)} cells; it "
                         "labels single cells, not batches: choose a column that groups cells")
    return categories


def _numeric(column: pd.Series, key: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"obs column {key!r} must be numeric without missing values to be a continuous covariate "
                         f"({int(bad.sum())} of {len(values)} cells are missing or not numbers)")
    return values


def _moments(adata: ad.AnnData, key: str) -> list[float]:
    """[mean, std] of a continuous covariate; refuses missing, non-numeric or constant columns."""
    values = _numeric(_obs(adata, key), key)
    if np.ptp(values) == 0:
        raise ValueError(f"obs column {key!r} has the same value ({values[0]:g}) for every cell; there is nothing "
                         "to correct for: leave it out")
    return [float(values.mean()), float(values.std())]


def _obs(adata: ad.AnnData, key: str) -> pd.Series:
    if key not in adata.obs:
        raise ValueError(f"obs column {key!r} does not exist; the AnnData has {sorted(adata.obs.columns)[:20]}")
    return adata.obs[key]


def _take_columns(X, index: np.ndarray):
    """Columns ``index`` of X (CSR kept); -1 becomes a zero column."""
    if np.array_equal(index, np.arange(X.shape[1])):  # every column in order: no copy
        return X.astype(np.float32, copy=False) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    safe = np.where(index >= 0, index, 0)
    if sp.issparse(X):
        taken = X[:, safe].tocsr()
        if (index < 0).any():
            taken = taken.multiply(np.asarray(index >= 0, dtype=np.float32)[None, :]).tocsr()
        return taken.astype(np.float32, copy=False)
    taken = np.asarray(X[:, safe], dtype=np.float32)
    taken[:, index < 0] = 0.0
    return taken


class ModelledRows:
    """The counts a :class:`CellsAdapter` models, by rows of the chosen matrix (in memory or on disk): its genes
    taken by name (``index``: their columns, -1 for a missing one, a zero column), checked as counts and rounded
    when stored with rounding error (one warning, at the first such value), binarised when the adapter asks.
    A row reader (:class:`sciencevae.streaming.RowReader`) for streaming, and the per-chunk step of
    :meth:`CellsAdapter.prepare`.

    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.array([[1.0, 2.0], [3.0, 0.0]], dtype=np.float32))
    >>> rows = ModelledRows(CellsAdapter(genes=["1"]), adata, adata.X, np.array([1]))
    >>> rows.read(0, 2).tolist()
    [[2.0], [0.0]]
    """

    def __init__(self, adapter: CellsAdapter, adata: ad.AnnData, X, index: np.ndarray):
        self.adapter, self.adata, self.X, self.index = adapter, adata, X, np.asarray(index)
        self.n_obs, self.n_features = X.shape[0], len(self.index)
        self.rounded: float | None = None  # the first value found with rounding error

    def read(self, start: int, stop: int):
        part = self.X[start:stop]
        return self.modelled(part.tocsr() if sp.issparse(part) else np.asarray(part))

    def modelled(self, part):
        """The modelled genes' counts of ``part`` (rows of the matrix, CSR or dense)."""
        part = _take_columns(part, self.index)
        if self.adapter.likelihood in COUNT_LIKELIHOODS:
            part, example = _validated_counts(self.adata, part, self.adapter.layer)
            if example is not None and self.rounded is None:
                self.rounded = example
                warnings.warn(rounding_message(f"{_where(self.adapter.layer)} holds", example), UserWarning,
                              stacklevel=2)
        if self.adapter.binarize:
            part = (part != 0).astype(np.float32) if not sp.issparse(part) else _binarized(part)
        return part


def _binarized(X: sp.csr_matrix) -> sp.csr_matrix:
    out = X.copy().astype(np.float32)
    out.data = (out.data != 0).astype(np.float32)
    out.eliminate_zeros()
    return out


#: Per-batch highly variable genes (seurat_v3) need a variance in every batch (scanpy's crash on a one-cell batch).
MIN_BATCH_CELLS = 2


def _batch_codes(adata: ad.AnnData, batch_key: str) -> tuple[np.ndarray, list[str]]:
    """Each cell's batch as an integer (batches in sorted order) and the batch names."""
    names, codes = np.unique(_obs(adata, batch_key).astype(str).to_numpy(), return_inverse=True)
    return codes.astype(np.int64), [str(n) for n in names]


def _highly_variable(X, stats, codes: np.ndarray, batches: list[str], columns: np.ndarray, batch_key: str | None,
                     n_top_genes: int) -> np.ndarray:
    """Positions in ``columns`` of the seurat_v3 highly variable genes of a count matrix
    (:func:`.cells_chunks.seurat_v3`: the genes scanpy chooses; one more pass over X).

    Raises ``ValueError`` for a batch with fewer than :data:`MIN_BATCH_CELLS`
    cells and when the loess fit fails (few cells or genes).
    """
    fix = "pass --n-top-genes 0 (n_top_genes=None) to model all genes"
    small = np.flatnonzero(stats.n_cells < MIN_BATCH_CELLS)
    if batch_key and len(small):
        raise ValueError(f"batch {batches[small[0]]!r} of obs column {batch_key!r} has {int(stats.n_cells[small[0]])} "
                         f"cell; highly variable genes per batch need at least {MIN_BATCH_CELLS}: merge it into "
                         f"another batch or {fix}")
    try:
        return seurat_v3(X, stats, codes, columns, n_top_genes)
    except ValueError as err:
        reason = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else str(err)
        raise ValueError(f"highly variable genes (seurat_v3) could not be chosen ({reason.strip()}); "
                         f"{fix}{', or merge small batches' if batch_key else ''}") from None
