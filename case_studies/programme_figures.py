"""Figures of the gene-programme case study (PNG, matplotlib ``Figure`` without pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from sciencevae.adapters.cells import OBSM_KEY
from sciencevae.diagnostics import panel_grid, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from .gene_programmes import ProgrammeResult

__all__ = ["save_figures", "group_heatmap", "top_gene_bars", "umap_activity", "UMAP_MAX_CELLS"]


def group_heatmap(res: "ProgrammeResult", key: str) -> Figure:
    """Mean programme activity per group of ``obs[key]`` (z-scored per programme)."""
    table = res.association[res.association["obs_key"] == key].pivot(index="group", columns="programme", values="mean")
    values = table.to_numpy()
    values = (values - values.mean(0)) / np.where(values.std(0) > 0, values.std(0), 1)
    figure = Figure(figsize=(1.0 + 0.5 * values.shape[1], 1.0 + 0.35 * values.shape[0]))
    ax = figure.subplots()
    image = ax.imshow(values, cmap="RdBu_r", aspect="auto", vmin=-2, vmax=2)
    ax.set_xticks(range(values.shape[1]), [f"P{j}" for j in table.columns])
    ax.set_yticks(range(values.shape[0]), table.index)
    ax.set_title(f"programme activity by {key}", fontsize=9)
    figure.colorbar(image, ax=ax, label="z-score of the group mean")
    return figure


def top_gene_bars(res: "ProgrammeResult", n_genes: int = 10) -> Figure:
    """The top positive genes of every programme."""
    programmes = sorted(res.programmes["programme"].unique())
    figure, axes = panel_grid(len(programmes), 3.2, 2.6)
    for ax, j in zip(axes, programmes):
        top = res.programmes[(res.programmes["programme"] == j) & (res.programmes["direction"] == "+")].head(n_genes)
        ax.barh(top["gene"][::-1], top["weight"][::-1], color="tab:blue")
        ax.set_title(f"programme {j}", fontsize=9)
        ax.tick_params(labelsize=7)
    figure.tight_layout()
    return figure


#: The UMAP figure draws at most this many cells (a seeded random subsample, said on the figure).
UMAP_MAX_CELLS = 50_000


def umap_activity(res: "ProgrammeResult", seed: int = 0, max_cells: int = UMAP_MAX_CELLS) -> Figure:
    """A UMAP of the latents, one panel per programme coloured by its activity.

    Neighbours are exact (scikit-learn's, through ``sc.pp.neighbors(transformer="sklearn")``):
    scanpy 1.11's default approximate path fails with scipy >= 1.17 from a few thousand cells.
    Above ``max_cells`` cells a random subsample of that size is drawn.
    """
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    latents = res.adata.obsm[OBSM_KEY]
    n_cells = len(latents)
    rows = np.arange(n_cells)
    if n_cells > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(n_cells, max_cells, replace=False))
    tmp = ad.AnnData(obs=pd.DataFrame(index=rows.astype(str)), obsm={OBSM_KEY: latents[rows]})
    sc.pp.neighbors(tmp, use_rep=OBSM_KEY, n_neighbors=min(15, max(2, len(rows) - 1)), random_state=seed,
                    transformer="sklearn")
    sc.tl.umap(tmp, random_state=seed)
    xy = tmp.obsm["X_umap"]
    figure, axes = panel_grid(latents.shape[1], 3, 2.8)
    for j, ax in enumerate(axes):
        points = ax.scatter(xy[:, 0], xy[:, 1], c=latents[rows, j], s=3, cmap="viridis")
        ax.set_title(f"programme {j}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
        figure.colorbar(points, ax=ax, shrink=0.7, label="activity")
    if len(rows) < n_cells:
        figure.suptitle(f"UMAP of a random {len(rows):,} of {n_cells:,} cells", fontsize=10)
    figure.tight_layout()
    return figure


def save_figures(res: "ProgrammeResult", folder: str | Path) -> list[Path]:
    """Write every figure as PNG into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [save_figure(top_gene_bars(res), folder / "top_genes.png"),
               save_figure(umap_activity(res, res.settings.get("seed", 0)), folder / "umap_programmes.png")]
    for key in res.association["obs_key"].unique():
        written.append(save_figure(group_heatmap(res, key), folder / f"programmes_by_{key}.png"))
    return written
