"""``sciencevae demo``: both case studies on embedded data, offline, in about a minute.

- gene programmes on scanpy's bundled ``pbmc68k_reduced`` (real PBMC counts,
  recovered as ``expm1(raw.X) * n_counts / 1e4``), with the markers LYZ,
  CD79A, NKG7, CD3D, MS4A1, GNLY located among the programmes' top genes;
- the climate case study on :func:`sciencevae.datasets.monthly_field`, with
  the known truth next to what was found.

Each part writes a run folder with a ``report.html``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sciencevae import __version__
from sciencevae.datasets import monthly_field
from sciencevae.io import atomic_write_text

__all__ = ["run_demo", "pbmc_counts", "MARKERS"]

MARKERS = ("LYZ", "CD79A", "NKG7", "CD3D", "MS4A1", "GNLY")


def pbmc_counts():
    """scanpy's pbmc68k_reduced as integer counts (765 genes) with its cell labels."""
    import anndata as ad
    import scanpy as sc

    pbmc = sc.datasets.pbmc68k_reduced()
    counts = np.rint(np.expm1(pbmc.raw.X.toarray()) * pbmc.obs["n_counts"].to_numpy()[:, None] / 1e4)
    return ad.AnnData(counts.astype(np.float32), obs=pbmc.obs[["bulk_labels", "phase"]].copy(),
                      var=pbmc.raw.var[[]].copy())


def _r2(found: np.ndarray, truth: np.ndarray) -> float:
    ok = np.isfinite(found) & np.isfinite(truth)
    return float(1 - np.var(found[ok] - truth[ok]) / np.var(truth[ok]))


def _linear_r2(latents: np.ndarray, target: np.ndarray) -> float:
    design = np.c_[latents, np.ones(len(latents))]
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    return float(1 - np.var(target - design @ coef) / np.var(target))


def climate_truth_table(res, truth: dict) -> pd.DataFrame:
    """What the climate run found next to the known truth of the synthetic field."""
    knobs = res.latents["knob"].values
    seasonal, trend = res.knobs_of("seasonal"), res.knobs_of("trend")
    angle = 2 * np.pi * (truth["month"] - 1) / 12
    rows = [("seasonal knobs", "2 (a phase circle)", str(len(seasonal))),
            ("trend knobs", "1", str(len(trend)))]
    if seasonal:
        rows.append(("R² of the month's cos / sin from the seasonal knobs", "1",
                     f"{_linear_r2(knobs[:, seasonal], np.cos(angle)):.3f} / "
                     f"{_linear_r2(knobs[:, seasonal], np.sin(angle)):.3f}"))
    if trend:
        rows.append(("R² of the true trend curve from the trend knob", "1",
                     f"{_linear_r2(knobs[:, trend], truth['trend_index']):.3f}"))
    ocean = ~truth["land"]
    rows.append(("R² of the seasonal component (ocean cells)", "1",
                 f"{_r2(res.components['seasonal'].values[:, ocean], truth['seasonal'][:, ocean]):.3f}"))
    centred = truth["trend"] - truth["trend"].mean(0)
    rows.append(("R² of the trend component (ocean cells)", "1",
                 f"{_r2(res.components['trend'].values[:, ocean], centred[:, ocean]):.3f}"))
    return pd.DataFrame(rows, columns=["quantity", "truth", "found"])


def marker_table(res) -> pd.DataFrame:
    """Where each marker ranks among the programmes' top genes."""
    rows = []
    for marker in MARKERS:
        hits = res.programmes[res.programmes["gene"] == marker].sort_values("rank")
        if len(hits):
            best = hits.iloc[0]
            rows.append({"marker": marker, "programme": int(best["programme"]), "direction": best["direction"],
                         "rank": int(best["rank"])})
        else:
            rows.append({"marker": marker, "programme": None, "direction": "", "rank": None})
    return pd.DataFrame(rows)


def _pbmc_file() -> Path:
    """The file of scanpy's bundled pbmc68k_reduced."""
    import scanpy as sc

    return Path(sc.__file__).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"


def _record_input(folder: Path, source: Path | None, description: str) -> None:
    """``run.json`` of a demo run: the input it was made from (the report names it and its sha256)."""
    from sciencevae.cli import file_sha256

    folder.mkdir(parents=True, exist_ok=True)
    record = {"path": f"{description} ({source})" if source else description,
              "sha256": file_sha256(source) if source is not None and source.is_file() else None}
    run = {"command": "demo", "sciencevae_version": __version__, "inputs": [record]}
    atomic_write_text(json.dumps(run, indent=2), folder / "run.json")


def run_demo(out: str | Path, fast: bool = False, progress: bool = True) -> dict[str, Path]:
    """Run both demos into ``out/cells`` and ``out/climate``; returns the report paths."""
    from . import climate_trend, gene_programmes

    out = Path(out)
    cells = gene_programmes.run(pbmc_counts(), n_latent=10, n_top_genes=None, epochs=5 if fast else 100,
                                progress=progress)
    markers = marker_table(cells)
    _record_input(out / "cells", _pbmc_file(), "scanpy's bundled pbmc68k_reduced, counts from raw.X and n_counts")
    cells.save(out / "cells", extra_tables={"Known PBMC markers among the top genes": markers})
    truth = monthly_field(n_years=40, n_lat=18, n_lon=36, seed=0)
    _record_input(out / "climate", None, "sciencevae.datasets.monthly_field(n_years=40, n_lat=18, n_lon=36, "
                                         "seed=0), generated in memory")
    climate = climate_trend.run(climate_trend.synthetic_dataset(truth), var="sst", epochs=20 if fast else 400,
                                progress=progress)
    compared = climate_truth_table(climate, truth)
    climate.save(out / "climate", extra_tables={"Known truth and what was found": compared})
    return {"cells": out / "cells" / "report.html", "climate": out / "climate" / "report.html",
            "markers": markers, "truth": compared}
