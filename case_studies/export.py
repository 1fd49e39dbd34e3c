"""``sciencevae export``: a run's latents and loadings for downstream analysis.

Formats: ``zarr`` (one xarray Dataset with coordinates), ``parquet`` or
``csv`` (one tidy-or-wide table per quantity). Every export carries its
provenance: toolkit version, the run's settings and the input's sha256.

Per run type:

- climate run (``latents.nc``): ``latents`` (time x latent: z, z_std),
  ``knobs`` (time x knob scores, with roles) and ``maps`` (knob x grid);
- cells run (``cells.h5ad``): ``latents`` (cell x programme activity) and
  ``loadings`` (gene x programme, the genes the model read: ``raw`` for a run on it); a guided run's
  programme names and statuses are coordinates (zarr) or ``programme_labels`` (parquet, csv);
- fit run (``latents.csv``): ``latents`` (sample x latent).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import xarray as xr

from sciencevae import __version__
from sciencevae.io import atomic_path, atomic_write_text

__all__ = ["export_run", "FORMATS"]

FORMATS = ("zarr", "parquet", "csv")


def _provenance(run: Path, settings: dict) -> dict:
    info = {"sciencevae_version": __version__, "run": str(run.resolve()), "settings": settings}
    for name in ("run.json", "report.json"):
        if (run / name).exists():
            info[name.removesuffix(".json")] = json.loads((run / name).read_text(encoding="utf-8"))
    return info


def _climate(run: Path) -> tuple[xr.Dataset, dict]:
    latents = xr.open_dataset(run / "latents.nc").load()
    maps = xr.open_dataset(run / "maps.nc").load()
    maps = maps.rename({v: f"map_{v}" for v in maps.data_vars}).rename({"knob": "knob_index"})
    maps = maps.drop_vars("role", errors="ignore")
    settings = json.loads((run / "report.json").read_text(encoding="utf-8"))["settings"]
    return xr.merge([latents, maps], combine_attrs="drop_conflicts"), settings


def _cells(run: Path) -> tuple[xr.Dataset, dict]:
    import anndata as ad

    adata = ad.read_h5ad(run / "cells.h5ad")
    programmes = np.arange(adata.obsm["X_sciencevae"].shape[1])
    params = adata.uns["sciencevae"]["params"]
    settings = {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}
    # the matrix the model read: raw may hold genes that var lacks, and then holds their loadings
    raw = adata.raw is not None and "sciencevae_loadings" in adata.raw.varm
    modelled = adata.raw if raw and settings.get("layer") == "raw" else adata
    used = modelled.var["sciencevae_used"].to_numpy(bool)  # loadings of the genes the model read, no others
    coords = {"cell": adata.obs_names.to_numpy(str), "gene": modelled.var_names.to_numpy(str)[used],
              "programme": programmes}
    guided = adata.uns["sciencevae"].get("guided")
    if guided is not None:  # a guided run's programmes carry their set's name (de_novo_<i> after them)
        sets = [str(n) for n in guided["gene_sets"]]
        names = sets + [f"de_novo_{i}" for i in range(len(programmes) - len(sets))]
        coords["programme_name"] = ("programme", np.array(names, dtype=str))
        coords["programme_status"] = ("programme", np.asarray(guided["status"]).astype(str))
        settings["programme_names"] = names
    symbols = settings.get("gene_symbols")
    if symbols and symbols in modelled.var:
        coords["gene_symbol"] = ("gene", modelled.var[symbols].astype(str).to_numpy()[used])
    if "gene_ids" in modelled.var and symbols != "gene_ids":  # a 10x file's Ensembl ids beside its symbols
        coords["gene_id"] = ("gene", modelled.var["gene_ids"].astype(str).to_numpy()[used])
    return xr.Dataset(
        {"activity": (("cell", "programme"), adata.obsm["X_sciencevae"],
                      {"long_name": "programme activity per cell (posterior mean, rotated)", "units": "1"}),
         "loading": (("gene", "programme"), np.asarray(modelled.varm["sciencevae_loadings"])[used],
                     {"long_name": "change of log expression per unit of programme activity", "units": "1"})},
        coords=coords,
    ), settings


def _fit(run: Path) -> tuple[xr.Dataset, dict]:
    frame = pd.read_csv(run / "latents.csv", index_col=0)
    config = json.loads((run / "model" / "config.json").read_text(encoding="utf-8"))
    ds = xr.Dataset({"z": (("sample", "latent"), frame.to_numpy(),
                           {"long_name": "posterior mean of each latent", "units": "1"})},
                    coords={"sample": frame.index.astype(str).to_numpy(), "latent": list(frame.columns)})
    return ds, {"model": config["model"], "objective": config["objective"], "training": config["training"]}


def load_run(run: str | Path) -> xr.Dataset:
    """The run's latents and loadings as one Dataset (with provenance in ``attrs``)."""
    run = Path(run)
    if (run / "INCOMPLETE").exists():
        raise ValueError(f"{run} is an incomplete run (it holds INCOMPLETE); finish it with --resume first")
    for marker, reader in (("latents.nc", _climate), ("cells.h5ad", _cells), ("latents.csv", _fit)):
        if (run / marker).exists():
            ds, settings = reader(run)
            ds.attrs = {"provenance": json.dumps(_provenance(run, settings), default=str)}
            return ds
    raise ValueError(f"{run} is not a sciencevae run folder (no latents.nc, cells.h5ad or latents.csv)")


def _tables(ds: xr.Dataset) -> dict[str, pd.DataFrame]:
    """One table per group of variables sharing dims; 2-D ones stay wide (rows x columns)."""
    groups: dict[tuple, list[str]] = {}
    for name, da in ds.data_vars.items():
        groups.setdefault(da.dims, []).append(name)
    tables = {}
    for dims, names in groups.items():
        part = ds[names]
        if len(dims) == 2 and len(names) == 1:
            da = part[names[0]]
            frame = pd.DataFrame(da.values, index=pd.Index(da[dims[0]].values, name=dims[0]),
                                 columns=[f"{names[0]}_{c}" for c in da[dims[1]].values])
            labels = {str(c): coord.values for c, coord in da.coords.items()  # e.g. a gene's symbol
                      if c != dims[0] and coord.dims == (dims[0],)}
            frame = pd.concat([pd.DataFrame(labels, index=frame.index), frame], axis=1) if labels else frame
        else:  # tidy; multi-dim coordinates (a curvilinear grid's lat(y, x), lon(y, x)) stay as columns
            grid_coords = [str(c) for c, coord in part.coords.items()
                           if coord.ndim >= 2 and set(coord.dims) <= set(dims)]
            frame = part.to_dataframe().reset_index().set_index(list(dims))
            frame = frame[[c for c in frame.columns if c in names or c in grid_coords]]
        tables["_".join(names) if len(names) <= 2 else "_".join(dims)] = frame
    tables.update(_column_labels(ds, groups))
    return tables


def _column_labels(ds: xr.Dataset, groups: dict[tuple, list[str]]) -> dict[str, pd.DataFrame]:
    """``<dim>_labels``: the labels of a dimension that wide tables spread over their columns (e.g. a guided
    run's programme_name and programme_status), one row per column, so that no one has to match them by
    position."""
    spread = {dims[1] for dims, names in groups.items() if len(dims) == 2 and len(names) == 1}
    out = {}
    for dim in sorted(spread):
        labels = {str(c): coord.values for c, coord in ds.coords.items() if coord.dims == (dim,) and c != dim}
        if labels:
            out[f"{dim}_labels"] = pd.DataFrame(labels, index=pd.Index(ds[dim].values, name=dim))
    return out


def _iso_times(ds: xr.Dataset) -> tuple[xr.Dataset, dict[str, str]]:
    """Time coordinates (datetime64 or cftime, any CF calendar) as ISO-8601 strings, and their calendars.

    Tables hold the same text column whatever the calendar (a 360_day
    ``2001-02-30T00:00:00`` has no pandas timestamp); zarr keeps the dates.

    >>> import xarray as xr
    >>> time = xr.date_range("2001-02-29", periods=2, freq="D", calendar="360_day", use_cftime=True)
    >>> ds, calendars = _iso_times(xr.Dataset(coords={"time": time}))
    >>> ds["time"].values.tolist(), calendars
    (['2001-02-29T00:00:00', '2001-02-30T00:00:00'], {'time': '360_day'})
    """
    converted, calendars = {}, {}
    for name, coord in ds.coords.items():
        values = np.asarray(coord.values)
        if np.issubdtype(values.dtype, np.datetime64):
            text = np.datetime_as_string(values, unit="s")
            calendars[str(name)] = str(coord.encoding.get("calendar", "standard"))
        elif values.dtype == object and values.size and all(isinstance(v, cftime.datetime) for v in values.ravel()):
            text = np.array([v.isoformat() for v in values.ravel()]).reshape(values.shape)
            calendars[str(name)] = values.ravel()[0].calendar
        else:
            continue
        converted[name] = (coord.dims, text.astype(str), {**coord.attrs, "calendar": calendars[str(name)]})
    return (ds.assign_coords(converted) if converted else ds), calendars


def export_run(run: str | Path, out: str | Path, fmt: str = "zarr") -> list[Path]:
    """Write the run's latents and loadings to ``out`` as zarr, parquet or csv; returns the paths."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    ds = load_run(run)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "zarr":
        target = out / "export.zarr"
        if target.exists():
            raise ValueError(f"{target} exists; choose another --out")
        tmp = out / f".export.zarr.{uuid.uuid4().hex}.tmp"
        ds.to_zarr(tmp, mode="w-", zarr_format=2)  # v2: readable by every zarr library today
        os.replace(tmp, target)  # the store appears whole or not at all
        return [target]
    written = []
    ds, calendars = _iso_times(ds)
    for name, frame in _tables(ds).items():
        path = out / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            if fmt == "parquet":
                frame.to_parquet(tmp)
            else:
                frame.to_csv(tmp)
        written.append(path)
    provenance = {**json.loads(ds.attrs["provenance"]), **({"time_calendars": calendars} if calendars else {})}
    atomic_write_text(json.dumps(provenance, indent=2), out / "provenance.json")
    return written + [out / "provenance.json"]
