"""Figures of the gene-programme case study (PNG, matplotlib ``Figure`` without pyplot state)."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter
from scipy.sparse import SparseEfficiencyWarning

from sciencevae.adapters.cells import OBSM_KEY
from sciencevae.diagnostics import panel_grid, robust_limit, save_figure
from sciencevae.threads import keep_torch_threads

if TYPE_CHECKING:  # pragma: no cover
    from .gene_programmes import ProgrammeResult

__all__ = ["save_figures", "group_heatmap", "top_gene_bars", "umap_activity", "selection_plot", "predictive_plot",
           "guided_bars", "shown_programmes", "UMAP_MAX_CELLS"]


def programme_label(res: "ProgrammeResult", j: int) -> str:
    """"programme j", with its gene set (or de-novo name) and status for guided programmes, and its stability
    (and "unstable") for a consensus of several fits."""
    if res.guided is not None:  # the set's name on its own lines: set names run long
        row = res.guided.iloc[j]
        status = "" if row["status"] == "active" else f" ({row['status']})"
        stability = "" if res.stability is None else f", stability {res.stability['stability'].iloc[j]:.2f}"
        return f"programme {j}{status}{stability}\n" + wrapped(str(row["name"]))
    if res.stability is None:
        return f"programme {j}"
    row = res.stability.iloc[j]
    return f"programme {j} (stability {row['stability']:.2f}{'' if row['stable'] else ', unstable'})"


def same_groupings(obs: pd.DataFrame, keys: list[str]) -> dict[str, list[str]]:
    """``keys`` grouped by the partition of the cells they make: the first of each set of columns that group
    the cells alike (whatever their labels, e.g. ``plate`` and ``source_table``) maps to the others.

    >>> obs = pd.DataFrame({"plate": list("aabb"), "table": list("xxyy"), "line": list("abab")})
    >>> same_groupings(obs, ["plate", "table", "line"])
    {'plate': ['table'], 'line': []}
    """
    kept: dict[str, list[str]] = {}
    for key in keys:
        labels = obs[key].astype(str)
        twin = next((k for k in kept if _alike(labels, obs[k].astype(str))), None)
        if twin is None:
            kept[key] = []
        else:
            kept[twin].append(key)
    return kept


def _alike(a: pd.Series, b: pd.Series) -> bool:
    """Whether two label columns split the cells into the same groups: as many label pairs as labels of each."""
    return len(pd.unique(a + "\0" + b)) == a.nunique() == b.nunique()


def group_heatmap(res: "ProgrammeResult", key: str, annotate_max: int = 400, same: list[str] = ()) -> Figure:
    """Effect size (Cohen's d of a group against the other cells) of every programme per group of
    ``obs[key]`` (blank where undefined: a one-cell group), each cell annotated with the group's mean
    activity (when the grid has at most ``annotate_max`` cells), each group with its cell count.
    Magnitudes are kept: no per-programme rescaling. ``same``: other columns that group the cells alike
    (named in the title, not drawn again)."""
    table = res.association[res.association["obs_key"] == key]
    effect = table.pivot(index="group", columns="programme", values="effect_size")
    means = table.pivot(index="group", columns="programme", values="mean").reindex_like(effect)
    values = effect.to_numpy()
    limit = max(0.5, robust_limit(values))  # d = 0.5 is a medium effect: smaller ones stay pale
    figure = Figure(figsize=(1.6 + 0.55 * values.shape[1], 1.4 + 0.35 * values.shape[0]))
    ax = figure.subplots()
    image = ax.imshow(values, cmap="RdBu_r", aspect="auto", vmin=-limit, vmax=limit)
    if values.size <= annotate_max:
        for (i, j), mean in np.ndenumerate(means.to_numpy()):
            ax.text(j, i, f"{mean:.2g}", ha="center", va="center", fontsize=6,
                    color="white" if abs(values[i, j]) > 0.6 * limit else "black")
    unstable = set() if res.stability is None else set(res.stability["programme"][~res.stability["stable"]])
    ax.set_xticks(range(values.shape[1]), [f"P{j}{'*' if j in unstable else ''}" for j in effect.columns])
    sizes = table.groupby("group")["n_cells"].first().reindex(effect.index)
    ax.set_yticks(range(values.shape[0]), [f"{g} (n={n:,})" for g, n in sizes.items()])
    ax.set_xlabel("programme" + (" (* not stable across seeds)" if unstable else "")), ax.set_ylabel(key)
    also = f" (= {', '.join(same)})" if same else ""
    ax.set_title(f"programme activity by {key}{also} (numbers: group mean activity)", fontsize=9)
    figure.colorbar(image, ax=ax, label="Cohen's d, group vs other cells")
    return figure


def wrapped(name: str, width: int = 34) -> str:
    """A long set name on several lines of at most ``width`` characters, broken after underscores (a
    longer piece keeps its own line).

    >>> wrapped("HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION")
    'HALLMARK_EPITHELIAL_MESENCHYMAL_\\nTRANSITION'
    """
    pieces = [token + "_" for token in name.split("_")[:-1]] + [name.split("_")[-1]]
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def shown_programmes(res: "ProgrammeResult") -> list[int]:
    """The programmes to draw: all, or for guided programmes the active ones (an inactive one has no genes)."""
    if res.guided is not None:
        return [int(j) for j in res.guided.loc[res.guided["active"], "programme"]]
    return [int(j) for j in sorted(res.programmes["programme"].unique())]


def guided_bars(table: pd.DataFrame, max_sets: int = 40) -> Figure:
    """Per active gene-set-guided programme (at most ``max_sets``, most changed first), its genes kept from
    the set, added to it and dropped from it; the inactive sets are counted in the title."""
    guided = table[table["kind"] == "guided"].copy()
    guided["kept"] = guided["set_size"] - guided["n_dropped"]
    guided["changed"] = guided["n_added"] + guided["n_dropped"]
    active = guided[guided["active"]]
    shown = active.sort_values("changed", ascending=False).head(max_sets)[::-1]
    figure = Figure(figsize=(9, 1.4 + 0.28 * max(len(shown), 4)))
    ax = figure.subplots()
    y = np.arange(len(shown))
    ax.barh(y, shown["kept"], color="tab:blue", label="set genes kept")
    ax.barh(y, shown["n_added"], left=shown["kept"], color="tab:orange", label="genes added by the data")
    ax.barh(y, -shown["n_dropped"], color="0.65", label="set genes dropped")
    ax.axvline(0, color="0.3", lw=0.6)
    ax.set_yticks(y, [f"{n} ({st})" if st != "active" else str(n) for n, st in zip(shown["name"], shown["status"])],
                  fontsize=7)
    ax.set_xlabel("genes (dropped to the left)")
    if not len(shown):
        ax.text(0.5, 0.5, "no gene set is active in these data", ha="center", va="center", transform=ax.transAxes)
    more = f", {len(active) - len(shown)} more active" if len(active) > len(shown) else ""
    ax.set_title(f"gene-set-guided programmes: {len(active)} of {len(guided)} sets active "
                 f"({len(guided) - len(active)} inactive{more}: guided.csv)", fontsize=9)
    if len(shown):
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return figure


def top_gene_bars(res: "ProgrammeResult", n_genes: int = 8) -> Figure:
    """Both ends of every programme (for guided programmes, every active one): its top ``n_genes`` positive
    and negative genes (ranked by :func:`.gene_programmes.gene_scores`, ``res.programmes``), with their
    loadings."""
    programmes = shown_programmes(res)
    figure, axes = panel_grid(len(programmes), 3.4, 0.3 * 2 * n_genes + 0.9)
    for ax, j in zip(axes, programmes):
        rows = res.programmes[(res.programmes["programme"] == j) & (res.programmes["rank"] <= n_genes)]
        ends = [rows[rows["direction"] == d].sort_values("weight") for d in ("-", "+")]
        shown = pd.concat(ends)
        colours = ["tab:red" if d == "-" else "tab:blue" for d in shown["direction"]]
        ax.barh(np.arange(len(shown)), shown["weight"], color=colours)
        ax.set_yticks(np.arange(len(shown)), shown["gene"])
        ax.axvline(0, color="0.3", lw=0.6)
        ax.set_title(f"{programme_label(res, j)}\n+ blue, − red; ranked by |loading| × r² with it", fontsize=9)
        ax.set_xlabel("loading (Δ log expression per unit activity)", fontsize=7)
        ax.tick_params(labelsize=7)
    figure.tight_layout()
    return figure


#: The UMAP figure draws at most this many cells (a seeded random subsample, said on the figure): at 50,000 the
#: layout took 22-26 s of a 100,000-cell run's 31 s of outputs (1 thread), at 20,000 7.5 s, and 20,000 points a
#: panel still show every population a scatter of this size can.
UMAP_MAX_CELLS = 20_000


def umap_activity(res: "ProgrammeResult", seed: int = 0, max_cells: int = UMAP_MAX_CELLS) -> Figure:
    """A UMAP of the latents, one panel per programme coloured by its activity.

    Neighbours are exact (scikit-learn's, through ``sc.pp.neighbors(transformer="sklearn")``):
    scanpy 1.11's default approximate path fails with scipy >= 1.17 from a few thousand cells.
    Above ``max_cells`` cells a random subsample of that size is drawn.
    """
    import anndata as ad
    import scanpy as sc

    latents = res.adata.obsm[OBSM_KEY]
    n_cells = len(latents)
    rows = np.arange(n_cells)
    if n_cells > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(n_cells, max_cells, replace=False))
    scored = np.isfinite(latents).all(0)  # a mapped query has no activity for a programme its model lacks
    tmp = ad.AnnData(obs=pd.DataFrame(index=rows.astype(str)), obsm={OBSM_KEY: latents[rows][:, scored]})
    with keep_torch_threads(), warnings.catch_warnings():  # numba's OpenMP pool would leave torch at the CPU count
        # scanpy zeroes the distance graph's diagonal in place, which scipy warns about from ~10,000 cells
        warnings.simplefilter("ignore", SparseEfficiencyWarning)
        sc.pp.neighbors(tmp, use_rep=OBSM_KEY, n_neighbors=min(15, max(2, len(rows) - 1)), random_state=seed,
                        transformer="sklearn")
        sc.tl.umap(tmp, random_state=seed)
    xy = tmp.obsm["X_umap"]
    programmes = shown_programmes(res)
    figure, axes = panel_grid(len(programmes), 3, 2.8)
    for j, ax in zip(programmes, axes):
        points = ax.scatter(xy[:, 0], xy[:, 1], c=latents[rows, j], s=3, cmap="viridis")
        ax.set_title(programme_label(res, j), fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel("UMAP 1", fontsize=7), ax.set_ylabel("UMAP 2", fontsize=7)
        figure.colorbar(points, ax=ax, shrink=0.7, label="programme activity")
    if len(rows) < n_cells:
        figure.suptitle(f"UMAP of a random {len(rows):,} of {n_cells:,} cells", fontsize=10)
    figure.tight_layout()
    return figure


def selection_plot(table: pd.DataFrame) -> Figure:
    """cNMF's k-selection plot with β: stable programmes and their mean stability (left) and the
    reconstruction error per cell (right) against the number of latents, one line per β; the chosen
    setting ringed."""
    figure = Figure(figsize=(8.5, 3.4))
    left, right = figure.subplots(1, 2)
    for beta, rows in table.groupby("beta"):
        rows = rows.sort_values("n_latent")
        line = left.plot(rows["n_latent"], rows["n_stable"], "o-", label=f"β = {beta:g}: stable")[0]
        left.plot(rows["n_latent"], rows["n_programmes"], "o:", color=line.get_color(), alpha=0.6,
                  label=f"β = {beta:g}: found in 2+ fits")
        right.plot(rows["n_latent"], rows["reconstruction"], "o-", color=line.get_color(), label=f"β = {beta:g}")
    chosen = table[table["chosen"]]
    left.plot(chosen["n_latent"], chosen["n_stable"], "o", ms=14, mfc="none", mec="k", label="chosen")
    right.plot(chosen["n_latent"], chosen["reconstruction"], "o", ms=14, mfc="none", mec="k")
    left.set_xlabel("latents (n_latent)"), left.set_ylabel("programmes")
    left.set_title("programmes found again across seeds", fontsize=9)
    right.set_xlabel("latents (n_latent)"), right.set_ylabel("reconstruction error (NLL per cell, nats)")
    right.set_title("reconstruction error", fontsize=9)
    left.legend(fontsize=7), right.legend(fontsize=7)
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    return figure


def predictive_plot(table: pd.DataFrame, verdict: str) -> Figure:
    """Posterior predictive checks (:mod:`.model_checks`): per gene the observed against the simulated mean,
    variance, coefficient of variation and zero fraction, flagged genes in red, the verdict as the title."""
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, 4)
    flagged = ((table["zeros"] != "ok") | (table["variance"] != "ok")).to_numpy()
    for ax, (stat, label, log) in zip(axes, (("mean", "mean count", True), ("variance", "variance", True),
                                             ("cv", "coefficient of variation", True),
                                             ("zero_fraction", "zero fraction", False))):
        x, y = table[f"simulated_{stat}"].to_numpy(), table[f"observed_{stat}"].to_numpy()
        ok = np.isfinite(x) & np.isfinite(y) & ((x > 0) & (y > 0) if log else True)
        ax.scatter(x[ok & ~flagged], y[ok & ~flagged], s=4, c="0.45", lw=0, label="within bounds")
        ax.scatter(x[ok & flagged], y[ok & flagged], s=5, c="tab:red", lw=0, label="flagged")
        if ok.any():
            low, high = min(x[ok].min(), y[ok].min()), max(x[ok].max(), y[ok].max())
            ax.plot([low, high], [low, high], c="k", lw=0.8)
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):  # a narrow log range would label its minor ticks on top of each other
                axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"simulated {label}")
        ax.set_ylabel(f"observed {label}")
    axes[-1].legend(loc="upper left", fontsize=7, markerscale=3)
    title = textwrap.fill(f"Posterior predictive checks, one point per gene: {verdict}", 110)  # within the panels
    fig.suptitle(title, fontsize=9)
    return fig


def save_figures(res: "ProgrammeResult", folder: str | Path) -> list[Path]:
    """Write every figure as PNG into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [save_figure(top_gene_bars(res), folder / "top_genes.png"),
               save_figure(umap_activity(res, res.settings.get("seed", 0)), folder / "umap_programmes.png")]
    if res.selection is not None:
        written.append(save_figure(selection_plot(res.selection), folder / "selection.png"))
    if res.guided is not None:
        written.append(save_figure(guided_bars(res.guided), folder / "guided_programmes.png"))
    if res.checks is not None:
        written.append(save_figure(predictive_plot(res.checks.table, res.checks.verdict),
                                   folder / "posterior_predictive.png"))
    groupings = same_groupings(res.adata.obs, list(res.association["obs_key"].unique()))
    for key, same in groupings.items():  # columns that group the cells alike: one heat map
        written.append(save_figure(group_heatmap(res, key, same=same), folder / f"programmes_by_{key}.png"))
    return written
