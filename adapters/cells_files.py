"""Cells files read and written without loading their matrices.

:func:`read_cells` opens an .h5ad or .zarr AnnData with every matrix left on disk (``X``, each layer and
``raw.X``, CSR or dense, as anndata's backed datasets; the annotations are read) and a 10x Genomics .h5 file
with its counts on disk too; the adapter reads them a chunk of cells at a time (:mod:`.cells_chunks`).
:func:`write_cells_h5ad` writes an AnnData whose matrices may be on disk: HDF5 to HDF5 by HDF5's own copy,
anything else (zarr, a 10x file) a chunk of cells at a time, so memory holds the annotations and one chunk.

>>> import anndata as ad, numpy as np, scipy.sparse as sp, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "a.h5ad")
>>> adata = ad.AnnData(sp.csr_matrix(np.eye(3, dtype=np.float32)))
>>> adata.layers["counts"] = adata.X.copy()
>>> adata.write_h5ad(path)
>>> on_disk = read_cells(path, backed=True)
>>> type(on_disk.layers["counts"]).__name__, on_disk.layers["counts"][1:3].toarray().tolist()
('_CSRDataset', [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sciencevae.streaming import open_store

from .cells_chunks import is_backed, row_chunks

__all__ = ["read_cells", "write_cells_h5ad", "open_on_disk", "read_10x_h5", "read_10x_mtx", "kept_on_disk",
           "has_matrices_on_disk"]

#: Entries of a 10x mtx file parsed at once by :func:`read_10x_mtx`: 1M (at 2^23 pandas' parser peaked at 0.8 GB
#: more on a 200,000-cell file; at 2^20 0.19 GB more than the imports, and no slower).
MTX_BLOCK = 1 << 20

#: The annotations of an AnnData store, read into memory by :func:`open_on_disk`.
ANNOTATIONS = ("obs", "var", "obsm", "varm", "obsp", "varp", "uns")


def read_cells(path: str | Path, backed: bool = False) -> ad.AnnData:
    """Read .h5ad, .zarr, a 10x mtx folder or a 10x .h5 file.

    ``backed=True``: the matrices of an .h5ad or .zarr (``X``, every layer, ``raw.X``) and the counts of a
    10x .h5 stay on disk (:func:`open_on_disk`, :func:`read_10x_h5`) and are read a chunk of cells at a time
    by :class:`~sciencevae.adapters.cells.CellsAdapter`; a 10x mtx folder (text) is read a block of entries at a
    time into a temporary .h5ad and left there (:func:`read_10x_mtx`). Repeated gene
    names of a 10x file (symbols shared by two Ensembl ids) are made unique as scanpy's tutorials do
    (``var_names_make_unique``: ``-1``, ``-2`` appended), with a warning.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` (one line) for a file that cannot be
    read as its suffix says.
    """
    import scanpy as sc

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    try:
        if path.suffix in (".h5ad", ".zarr"):
            if backed:
                return open_on_disk(path)
            return ad.read_h5ad(path) if path.suffix == ".h5ad" else ad.read_zarr(path)
        with warnings.catch_warnings():  # repeated symbols: made unique below, with a warning of ours
            warnings.filterwarnings("ignore", "Variable names are not unique")
            if path.suffix == ".h5":
                return _unique_genes(read_10x_h5(path) if backed else sc.read_10x_h5(path), path)
            if path.is_dir():
                adata = read_10x_mtx(path) if backed else sc.read_10x_mtx(path, make_unique=False)
                adata.X = adata.X if backed else adata.X.tocsr()  # cells are rows: read a chunk at a time
                return _unique_genes(adata, path)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"could not read {path} as {path.suffix or '10x folder'}: {err}") from None
    if path.name.startswith(("matrix.mtx", "barcodes.tsv", "features.tsv", "genes.tsv")):
        raise ValueError(f"input {path} is a file of a 10x mtx folder: give the folder ({path.parent})")
    raise ValueError(f"input {path} is not .h5ad, .zarr, a 10x .h5 or a 10x mtx folder")


def open_on_disk(path: str | Path) -> ad.AnnData:
    """An .h5ad or .zarr AnnData whose matrices stay on disk: ``X``, every layer and ``raw.X`` as anndata's
    backed datasets (CSR / CSC: ``anndata.io.sparse_dataset``; dense: the HDF5 / zarr array), the
    annotations (obs, var, obsm, varm, obsp, varp, uns, raw.var / raw.varm) read into memory.

    Unlike ``read_h5ad(path, backed="r")``, which reads every layer and works for .h5ad only, nothing of
    size cells x genes is read here. A file written by an old anndata that ``anndata.io.read_elem`` cannot
    read falls back to ``read_h5ad(backed="r")`` (.h5ad) or ``read_zarr`` (.zarr).
    """
    path = Path(path)
    root = open_store(path)
    try:
        parts = {key: ad.io.read_elem(root[key]) for key in ANNOTATIONS if _stored(root, key)}
        X = _on_disk(root["X"]) if _stored(root, "X") else None
        layers = {key: _on_disk(root["layers"][key]) for key in root["layers"]} if _stored(root, "layers") else {}
        raw = None
        if _stored(root, "raw"):
            group = root["raw"]
            raw = ad.AnnData(X=_on_disk(group["X"]), var=ad.io.read_elem(group["var"]),
                             varm=ad.io.read_elem(group["varm"]) if _stored(group, "varm") else None)
        return ad.AnnData(X=X, layers=layers, raw=raw, **parts)
    except (KeyError, TypeError, NotImplementedError):  # not anndata's current encoding: let anndata read it
        return ad.read_h5ad(path, backed="r") if path.suffix == ".h5ad" else ad.read_zarr(path)


def _stored(group, key: str) -> bool:
    """Whether ``group`` holds ``key`` (anndata writes an absent element, e.g. no raw, as encoding "null")."""
    return key in group and _encoding(group[key]) != "null"


def _encoding(element) -> str:
    value = element.attrs.get("encoding-type", "array")
    return value.decode() if isinstance(value, bytes) else str(value)


def _on_disk(element):
    """A stored matrix left on disk: a sparse group as anndata's backed dataset, a dense array as it is."""
    encoding = _encoding(element)
    if encoding in ("csr_matrix", "csc_matrix"):
        return ad.io.sparse_dataset(element)
    if encoding == "array":
        return element
    return ad.io.read_elem(element)


def read_10x_h5(path: str | Path) -> ad.AnnData:
    """A 10x Genomics feature-barcode matrix (.h5, Cell Ranger v3+ ``matrix`` group or v2 ``<genome>``
    group) as an AnnData whose counts stay in the file: cells x features CSR, read a chunk of cells at a
    time. obs: barcodes; var: feature names (gene symbols, as ``scanpy.read_10x_h5``) with ``gene_ids``
    and, for v3, ``feature_types`` and ``genome``.

    Cell Ranger stores features x barcodes in compressed-column form, which is barcodes x features in
    compressed-row form: the file's own ``data`` / ``indices`` / ``indptr`` are the CSR arrays, reached
    through HDF5 external links from a small file (in a temporary folder, removed at once) that carries
    anndata's encoding. Features other than "Gene Expression" (antibody capture, CRISPR guides) are left
    out, as scanpy's ``gex_only=True`` does, with a warning: the gene expression is then written a chunk of
    cells at a time to a temporary .h5ad and read from there.
    """
    import h5py

    path = Path(path).resolve()
    with h5py.File(path, "r") as source:
        name = "matrix" if "matrix" in source else next(iter(source.keys()), None)
        if name is None or not isinstance(source[name], h5py.Group) or "indptr" not in source[name]:
            raise ValueError("no 10x matrix group (matrix/ or <genome>/ with data, indices, indptr) in the file")
        group = source[name]
        var = _10x_var(group, group["features"] if "features" in group else None)
        obs = pd.DataFrame(index=pd.Index(_text(group["barcodes"][:])))
        n_features, n_cells = (int(v) for v in group["shape"][:])
    folder = tempfile.mkdtemp(prefix="sciencevae-10x-")
    links = Path(folder) / "links.h5"  # a few bytes; opened read-only, so the linked file is opened read-only
    with h5py.File(links, "w") as small:
        X = small.create_group("X")
        X.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": (n_cells, n_features)})
        for key in ("data", "indices", "indptr"):
            X[key] = h5py.ExternalLink(str(path), f"/{name}/{key}")
    X = h5py.File(links, "r")["X"]
    shutil.rmtree(folder, ignore_errors=True)  # the open file outlives its name (POSIX); elsewhere it stays
    adata = ad.AnnData(X=ad.io.sparse_dataset(X), obs=obs, var=var)  # the small file stays open with X
    expression = _gene_expression(var, path)
    return adata if expression.all() else _columns_on_disk(adata, np.flatnonzero(expression))


def _gene_expression(var: pd.DataFrame, path: Path) -> np.ndarray:
    """Which features are gene expression (all when the file gives no types); the others (antibody capture,
    CRISPR guides) are named in a warning: they are left out, as scanpy's ``gex_only=True`` does."""
    types = var.get("feature_types")
    if types is None:
        return np.ones(len(var), bool)
    expression = (types == "Gene Expression").to_numpy()
    if not expression.all():
        kinds = ", ".join(sorted(set(types[~expression])))
        warnings.warn(f"{path.name} holds {int((~expression).sum())} features that are not gene expression "
                      f"({kinds}): they are left out, as scanpy's gex_only does", UserWarning, stacklevel=4)
    return expression


def _columns_on_disk(adata: ad.AnnData, columns: np.ndarray) -> ad.AnnData:
    """``adata[:, columns]`` (X and var) with X on disk: written a chunk of cells at a time, uncompressed, to a
    temporary .h5ad (removed at once: the open file outlives its name on POSIX) and opened from there."""
    import h5py
    from anndata.io import write_elem

    folder = tempfile.mkdtemp(prefix="sciencevae-10x-")
    path = Path(folder) / "gene_expression.h5ad"
    try:
        with h5py.File(path, "w") as f:
            f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
            _write_matrix(f, "X", adata.X, {}, columns=columns)
            write_elem(f, "obs", adata.obs)
            write_elem(f, "var", adata.var.iloc[columns])
        return open_on_disk(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_10x_mtx(path: str | Path, block: int = MTX_BLOCK) -> ad.AnnData:
    """A 10x Genomics mtx folder (``matrix.mtx[.gz]``: features x barcodes in Matrix Market coordinate form,
    ``barcodes.tsv[.gz]``, ``features.tsv[.gz]`` or Cell Ranger v2's ``genes.tsv``) as an AnnData whose
    counts stay on disk: the text is parsed ``block`` entries at a time and written as cells x features CSR
    (float32) to an uncompressed .h5ad in a temporary folder (removed at once: the open file outlives its
    name on POSIX), opened with :func:`open_on_disk`. Memory: one block and a row pointer (8 bytes a cell);
    disk: the CSR matrix (8 bytes a non-zero). obs, var as ``scanpy.read_10x_mtx`` (symbols as names,
    ``gene_ids``, ``feature_types``).

    Features other than gene expression (antibody capture, CRISPR guides) are left out, as scanpy's
    ``gex_only=True`` does, with a warning. Cell Ranger writes the entries barcode by barcode; a file whose
    entries are not (another writer) is read by scanpy into memory. Raises ``ValueError`` for a folder
    without these files or a matrix that is not coordinate Matrix Market of the features' and barcodes'
    sizes.
    """
    import h5py
    from anndata.io import write_elem

    path = Path(path)
    matrix, barcodes, features = (_mtx_file(path, names) for names in (
        ("matrix.mtx.gz", "matrix.mtx"), ("barcodes.tsv.gz", "barcodes.tsv"),
        ("features.tsv.gz", "genes.tsv", "features.tsv", "genes.tsv.gz")))
    table = pd.read_csv(features, sep="\t", header=None, dtype=str)
    var = pd.DataFrame({"gene_ids": table[0].to_numpy()}, index=pd.Index(table[1].to_numpy(), dtype=object))
    if table.shape[1] > 2:
        var["feature_types"] = table[2].to_numpy()
    obs = pd.DataFrame(index=pd.Index(pd.read_csv(barcodes, sep="\t", header=None, dtype=str)[0].to_numpy(),
                                      dtype=object))
    expression = _gene_expression(var, path)
    folder = tempfile.mkdtemp(prefix="sciencevae-10x-mtx-")
    target = Path(folder) / "counts.h5ad"
    try:
        with h5py.File(target, "w") as f:
            f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
            if not _write_mtx_csr(matrix, f, len(obs), expression, block):
                return _mtx_in_memory(path)
            write_elem(f, "obs", obs)
            write_elem(f, "var", var[expression])
        return open_on_disk(target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _mtx_file(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).exists():
            return folder / name
    raise ValueError(f"{folder} has no {' or '.join(names[:2])}: not a 10x mtx folder")


def _mtx_in_memory(path: Path) -> ad.AnnData:
    import scanpy as sc

    adata = sc.read_10x_mtx(path, make_unique=False)
    adata.X = adata.X.tocsr()
    return adata


def _write_mtx_csr(matrix: Path, f, n_cells: int, kept: np.ndarray, block: int) -> bool:
    """The entries of ``matrix`` (features x barcodes, 1-based) of the ``kept`` features (bool) as cells x
    kept features CSR under ``f["X"]``, a block at a time; False (nothing usable written) when they are not in
    barcode order."""
    import gzip

    opener = gzip.open if matrix.suffix == ".gz" else open
    with opener(matrix, "rt") as text:
        header = text.readline()
        if not header.startswith("%%MatrixMarket matrix coordinate"):
            raise ValueError(f"{matrix.name} is not a coordinate Matrix Market file (its header: {header.strip()!r})")
        line = text.readline()
        while line.startswith("%"):
            line = text.readline()
        shape, n_features = tuple(int(v) for v in line.split()[:2]), len(kept)
        renumbered = np.cumsum(kept) - 1  # a kept feature's column among the kept
        if shape != (n_features, n_cells):
            raise ValueError(f"{matrix.name} is {shape[0]} x {shape[1]} but the folder lists {n_features} features "
                             f"and {n_cells} barcodes")
        group = f.create_group("X")
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                            "shape": (n_cells, int(kept.sum()))})
        data = group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 16,))
        indices = group.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 16,))
        per_cell, last = np.zeros(n_cells, dtype=np.int64), 0
        for entries in pd.read_csv(text, sep=r"\s+", header=None, names=["feature", "cell", "value"],
                                   dtype={"feature": np.int32, "cell": np.int64, "value": np.float32},
                                   chunksize=block, comment="%"):
            cells, features = entries["cell"].to_numpy() - 1, entries["feature"].to_numpy() - 1
            if len(cells) and (cells[0] < last or np.any(np.diff(cells) < 0)):
                return False
            last = cells[-1] if len(cells) else last
            keep = kept[features]
            cells, features, values = cells[keep], renumbered[features[keep]], entries["value"].to_numpy()[keep]
            per_cell += np.bincount(cells, minlength=n_cells)
            at = len(data)
            data.resize((at + len(cells),))
            indices.resize((at + len(cells),))
            data[at:] = values
            indices[at:] = features
        group["indptr"] = np.concatenate([[0], np.cumsum(per_cell)])
    return True


def _10x_var(group, features) -> pd.DataFrame:
    if features is None:  # Cell Ranger v2
        return pd.DataFrame({"gene_ids": _text(group["genes"][:])}, index=pd.Index(_text(group["gene_names"][:])))
    var = pd.DataFrame({"gene_ids": _text(features["id"][:])}, index=pd.Index(_text(features["name"][:])))
    for key in ("feature_type", "genome"):
        if key in features:
            var["feature_types" if key == "feature_type" else key] = _text(features[key][:])
    return var


def _text(values) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _unique_genes(adata: ad.AnnData, path: Path) -> ad.AnnData:
    """``var_names_make_unique`` with a warning naming how many genes were renamed (10x files repeat symbols)."""
    repeated = adata.var_names.duplicated()
    if repeated.any():
        example = str(adata.var_names[repeated][0])
        adata.var_names_make_unique()
        warnings.warn(f"{path.name}: {int(repeated.sum())} gene names repeat (e.g. {example!r}, one symbol for two "
                      "gene ids) and were made unique by appending -1, -2 (var['gene_ids'] keeps the ids)",
                      UserWarning, stacklevel=3)
    return adata


def write_cells_h5ad(adata: ad.AnnData, path: str | Path, rows: np.ndarray | None = None,
                     compression: str | None = "gzip") -> None:
    """``adata.write_h5ad(path, compression="gzip")``, except that a matrix on disk (``X``, a layer or
    ``raw.X`` of :func:`read_cells` with ``backed=True``, shared by
    :meth:`~sciencevae.adapters.cells.CellsAdapter.write_back`) is never loaded: an HDF5 one is copied file
    to file by HDF5 as it is stored, any other (zarr, a 10x .h5) a chunk of cells at a time. The memory stays
    that of the annotations and one chunk. Same layout as anndata's own writer (``anndata.io.write_elem``),
    so ``read_h5ad`` reads it back.

    ``rows``: a boolean mask (n_obs,) of the cells to write (every matrix then a chunk of cells at a time);
    ``compression``: of what is written here (None: none; copied matrices keep theirs)."""
    import h5py
    from anndata.io import write_elem

    raw_X = None if adata.raw is None else adata.raw.X
    if rows is None and not has_matrices_on_disk(adata):
        adata.write_h5ad(path, compression=compression)
        return
    options = {} if compression is None else {"compression": compression}
    annotations = {"obs": adata.obs, "var": adata.var, "obsm": dict(adata.obsm), "varm": dict(adata.varm),
                   "obsp": dict(adata.obsp), "varp": dict(adata.varp)}
    if rows is not None:
        annotations.update(obs=adata.obs[rows], obsm={k: v[rows] for k, v in adata.obsm.items()},
                           obsp={k: v[rows][:, rows] for k, v in adata.obsp.items()})
    with h5py.File(path, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        if adata.X is not None:
            _write_matrix(f, "X", adata.X, options, rows)
        for key, value in annotations.items():
            write_elem(f, key, value, dataset_kwargs=options)
        layers = f.create_group("layers")
        layers.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        for key, value in adata.layers.items():
            _write_matrix(layers, key, value, options, rows)
        write_elem(f, "uns", dict(adata.uns))
        if adata.raw is not None:
            raw = f.create_group("raw")
            raw.attrs.update({"encoding-type": "raw", "encoding-version": "0.1.0"})
            _write_matrix(raw, "X", raw_X, options, rows)
            write_elem(raw, "var", adata.raw.var, dataset_kwargs=options)
            write_elem(raw, "varm", dict(adata.raw.varm), dataset_kwargs=options)


def has_matrices_on_disk(adata: ad.AnnData) -> bool:
    """Whether any of ``X``, the layers and ``raw.X`` is read from disk (backed), not held in memory."""
    matrices = (adata.X, None if adata.raw is None else adata.raw.X, *adata.layers.values())
    return any(is_backed(m) for m in matrices if m is not None)


def kept_on_disk(adata: ad.AnnData, rows: np.ndarray) -> ad.AnnData:
    """The cells ``rows`` (a boolean mask) of an AnnData whose matrices are on disk, with their matrices on
    disk too: written a chunk of cells at a time, uncompressed, to a temporary .h5ad (removed at once: the
    open file outlives its name on POSIX) and opened with :func:`open_on_disk`. Disk: the kept matrices."""
    folder = tempfile.mkdtemp(prefix="sciencevae-kept-cells-")
    path = Path(folder) / "kept.h5ad"
    write_cells_h5ad(adata, path, rows=rows, compression=None)
    kept = open_on_disk(path)
    shutil.rmtree(folder, ignore_errors=True)
    return kept


def _write_matrix(group, key: str, X, dataset_kwargs: dict, rows: np.ndarray | None = None,
                  columns: np.ndarray | None = None) -> None:
    """A matrix written under ``group[key]`` in anndata's encoding: one in memory by anndata, one in an HDF5
    file copied by HDF5 (its group or dataset, as stored), any other on disk, or any with ``rows`` (a boolean
    mask of the cells to write) or ``columns`` (positions of the genes to write), a chunk of cells at a time."""
    import h5py
    from anndata.io import sparse_dataset, write_elem

    whole = rows is None and columns is None
    if whole and not is_backed(X):
        write_elem(group, key, X, dataset_kwargs=dataset_kwargs)
        return
    stored = getattr(X, "group", X)
    if whole and isinstance(stored, (h5py.Group, h5py.Dataset)):  # a 10x file's arrays: external links
        group.copy(stored, key, expand_external=True)
        return
    sparse = sp.issparse(X) or getattr(X, "format", None) in ("csr", "csc")
    n_rows = X.shape[0] if rows is None else int(np.sum(rows))
    target, written = None, 0
    for start, part in row_chunks(X):
        part = part if rows is None else part[rows[start:start + part.shape[0]]]
        part = part if columns is None else part[:, columns]
        if part.shape[0] == 0:
            continue
        if sparse and target is None:
            write_elem(group, key, sp.csr_matrix(part), dataset_kwargs=dataset_kwargs)
            target = sparse_dataset(group[key])
        elif sparse:
            target.append(sp.csr_matrix(part))
        else:
            if target is None:
                target = group.create_dataset(key, shape=(n_rows, part.shape[1]), dtype=part.dtype, chunks=True,
                                              **dataset_kwargs)
                target.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
            target[written:written + part.shape[0]] = part
        written += part.shape[0]
