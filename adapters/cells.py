"""AnnData <-> the core's ``Prepared`` (samples = cells, features = genes).

Counts come from ``X``, a layer or ``raw`` and are validated for the
likelihood (non-negative integers for count models); a CSR matrix stays CSR.
Optional highly-variable-gene selection (scanpy's ``seurat_v3`` on counts),
a batch key and other categorical / continuous obs columns as covariates.
New data (a query) is mapped onto the fitted genes by name. Results are
written back in scanpy style on a copy: ``obsm["X_sciencevae"]``,
``varm["sciencevae_loadings"]``, ``uns["sciencevae"]``; counts are never
altered.

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

from sciencevae.data import Prepared, as_prepared
from sciencevae.io import atomic_write_text

__all__ = ["CellsAdapter", "read_cells", "COUNT_LIKELIHOODS"]

COUNT_LIKELIHOODS = ("nb", "zinb", "poisson")
OBSM_KEY, VARM_KEY, UNS_KEY = "X_sciencevae", "sciencevae_loadings", "sciencevae"


def read_cells(path: str | Path, backed: bool = False) -> ad.AnnData:
    """Read .h5ad (optionally backed), .zarr, a 10x mtx folder or a 10x .h5 file."""
    import scanpy as sc

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    try:
        if path.suffix == ".h5ad":
            return ad.read_h5ad(path, backed="r" if backed else None)
        if path.suffix == ".zarr":
            return ad.read_zarr(path)
        if path.suffix == ".h5":
            return sc.read_10x_h5(path)
        if path.is_dir():
            return sc.read_10x_mtx(path)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"could not read {path} as {path.suffix or '10x folder'}: {err}") from None
    raise ValueError(f"input {path} is not .h5ad, .zarr, a 10x .h5 or a 10x mtx folder")


def _matrix(adata: ad.AnnData, layer: str | None) -> tuple[np.ndarray | sp.csr_matrix, pd.Index]:
    """The chosen matrix (in memory, CSR kept) and its gene names."""
    if layer == "raw":
        if adata.raw is None:
            raise ValueError("layer='raw' was asked for but the AnnData has no .raw")
        X, genes = adata.raw.X, adata.raw.var_names
    elif layer in (None, "X"):
        X, genes = adata.X, adata.var_names
    else:
        if layer not in adata.layers:
            raise ValueError(f"layer {layer!r} does not exist; the AnnData has layers {sorted(adata.layers)} (or use X / raw)")
        X, genes = adata.layers[layer], adata.var_names
    if hasattr(X, "to_memory"):  # backed datasets
        X = X.to_memory()
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    return X, genes


def _values(X) -> np.ndarray:
    return X.data if sp.issparse(X) else X


def _check_counts(X, where: str, likelihood: str) -> None:
    values = _values(X)
    fix = "pass --likelihood gaussian (likelihood='gaussian') or give raw counts"
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{where} holds NaN or infinite values; counts must be finite ({fix})")
    if values.min() < 0:
        raise ValueError(f"{where} holds negative values (min {values.min():g}); {fix}")
    fractional = values != np.round(values)
    if fractional.any():
        raise ValueError(f"{where} holds non-integer values (e.g. {values[fractional].flat[0]:g}); {fix}")


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
        """Choose genes and covariates from a reference AnnData."""
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise ValueError(f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
        X, genes = _matrix(adata, layer)
        if likelihood in COUNT_LIKELIHOODS:
            _check_counts(X, _where(layer), likelihood)
        totals = np.asarray(X.sum(axis=1)).ravel()
        if likelihood in COUNT_LIKELIHOODS and np.any(totals == 0):
            raise ValueError(
                f"{int(np.sum(totals == 0))} cells have no counts at all; remove them first, "
                "e.g. sc.pp.filter_cells(adata, min_counts=1)"
            )
        keep = np.asarray((X != 0).sum(axis=0)).ravel() > 0
        if not keep.all():
            warnings.warn(f"{int((~keep).sum())} genes have no counts in any cell and are left out", UserWarning,
                          stacklevel=2)
        chosen = np.flatnonzero(keep)
        if n_top_genes is not None and n_top_genes < len(chosen):
            chosen = chosen[_highly_variable(X[:, chosen], adata.obs, batch_key, n_top_genes)]
        keys = ([batch_key] if batch_key else []) + list(categorical_covariate_keys or [])
        categorical = {k: sorted(map(str, pd.unique(_obs(adata, k).astype(str)))) for k in keys}
        continuous = {}
        for key in continuous_covariate_keys or []:
            values = pd.to_numeric(_obs(adata, key), errors="coerce").to_numpy(dtype=float)
            if not np.all(np.isfinite(values)):
                raise ValueError(f"obs column {key!r} must be numeric without NaN to be a continuous covariate")
            continuous[key] = [float(values.mean()), float(values.std() or 1.0)]
        return cls(genes=[str(g) for g in genes[chosen]], layer=layer, likelihood=likelihood, binarize=binarize,
                   categorical=categorical, continuous=continuous)

    def prepare(self, adata: ad.AnnData, missing_genes: str = "error") -> Prepared:
        """Counts of the fitted genes (reordered by name) with covariates.

        ``missing_genes``: ``"error"`` (default) lists the fitted genes the
        data lack; ``"zero"`` fills them with zeros and warns.
        """
        if adata.n_obs == 0:
            raise ValueError("the AnnData has no cells")
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
        X = _take_columns(X, index)
        if self.likelihood in COUNT_LIKELIHOODS:
            _check_counts(X, _where(self.layer), self.likelihood)
        if self.binarize:
            X = (X != 0).astype(np.float32) if not sp.issparse(X) else _binarized(X)
        covariates = self._covariates(adata)
        prepared = Prepared(X=X, obs_names=np.asarray(adata.obs_names), feature_names=np.asarray(self.genes),
                            covariates=covariates)
        return as_prepared(prepared)

    def _covariates(self, adata: ad.AnnData) -> np.ndarray | None:
        blocks = []
        for key, categories in self.categorical.items():
            values = _obs(adata, key).astype(str).to_numpy()
            unseen = sorted(set(values) - set(categories))
            if unseen:
                raise ValueError(f"obs column {key!r} has categories the model has not seen: {unseen[:5]}")
            blocks.append((values[:, None] == np.asarray(categories)[None, :]).astype(np.float32))
        for key, (mean, std) in self.continuous.items():
            values = pd.to_numeric(_obs(adata, key), errors="coerce").to_numpy(dtype=float)
            blocks.append(((values - mean) / std)[:, None].astype(np.float32))
        return np.concatenate(blocks, axis=1) if blocks else None

    def write_back(self, adata: ad.AnnData, latents: np.ndarray, loadings: np.ndarray | None, uns: dict) -> ad.AnnData:
        """A copy of ``adata`` with obsm/varm/uns added; the counts are untouched."""
        out = adata.to_memory() if adata.isbacked else adata.copy()
        out.obsm[OBSM_KEY] = np.asarray(latents, dtype=np.float32)
        if loadings is not None:
            full = np.zeros((out.n_vars, loadings.shape[1]), dtype=np.float32)
            index = out.var_names.get_indexer(self.genes)
            present = index >= 0
            full[index[present]] = loadings[present]
            out.varm[VARM_KEY] = full
            out.var["sciencevae_used"] = np.isin(out.var_names, self.genes)
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


def _obs(adata: ad.AnnData, key: str) -> pd.Series:
    if key not in adata.obs:
        raise ValueError(f"obs column {key!r} does not exist; the AnnData has {sorted(adata.obs.columns)[:20]}")
    return adata.obs[key]


def _take_columns(X, index: np.ndarray):
    """Columns ``index`` of X (CSR kept); -1 becomes a zero column."""
    safe = np.where(index >= 0, index, 0)
    if sp.issparse(X):
        taken = X[:, safe].tocsr()
        if (index < 0).any():
            taken = taken.multiply(np.asarray(index >= 0, dtype=np.float32)[None, :]).tocsr()
        return taken.astype(np.float32)
    taken = np.asarray(X[:, safe], dtype=np.float32)
    taken[:, index < 0] = 0.0
    return taken


def _binarized(X: sp.csr_matrix) -> sp.csr_matrix:
    out = X.copy().astype(np.float32)
    out.data = (out.data != 0).astype(np.float32)
    out.eliminate_zeros()
    return out


def _highly_variable(X, obs: pd.DataFrame, batch_key: str | None, n_top_genes: int) -> np.ndarray:
    """Indices of the seurat_v3 highly variable genes of a count matrix (input untouched)."""
    import scanpy as sc

    tmp = ad.AnnData(X=X.copy(), obs=obs[[batch_key]].copy() if batch_key else pd.DataFrame(index=obs.index))
    tmp.var_names = [f"g{i}" for i in range(X.shape[1])]
    sc.pp.highly_variable_genes(tmp, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key=batch_key)
    return np.flatnonzero(tmp.var["highly_variable"].to_numpy())
