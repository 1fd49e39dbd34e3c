"""Gene programmes from single-cell counts: programmes = latents of a count β-VAE.

Gene weights are the linear decoder's loadings (LDVAE-style), or for an MLP
decoder the mean over cells of ∂ log μ_gene / ∂ z_j; by default the latents
are then varimax-rotated so that each programme loads on few genes. Each programme gets its
top genes (both signs), enrichment against gene sets (hypergeometric test of
the top genes with BH q-values, and a Mann–Whitney rank test of the whole
loading vector), per-cell activity (the posterior means) and its association
with categorical obs columns (mean per group and Cohen's d against the rest).

>>> import anndata as ad, numpy as np
>>> from sciencevae.datasets import count_programmes
>>> counts, _ = count_programmes(200, n_genes=30)
>>> res = run(ad.AnnData(counts), n_latent=3, epochs=2, progress=False)
>>> res.adata.obsm["X_sciencevae"].shape, res.adata.varm["sciencevae_loadings"].shape
((200, 3), (30, 3))
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.stats import false_discovery_control, hypergeom, mannwhitneyu

from sciencevae import BetaVAE, Prepared, __version__
from sciencevae.adapters.cells import (OBSM_KEY, CellsAdapter, missing_labels, modelled_var, read_cells,
                                       write_cells_h5ad)
from sciencevae.consensus import Consensus, consensus
from sciencevae.io import atomic_path, atomic_write_text
from sciencevae.label_matching import label_matching
from sciencevae.model import posterior_kl
from sciencevae.objectives import Objective
from sciencevae.streaming import Streamed, row_blocks
from sciencevae.train import resolve_device

from .differential import cohens_d, comparison, differential
from .guided import (DENOVO_PENALTY, GUIDE_PENALTY, N_DENOVO, PENALTY_START, GeneSetPrior, count_scale,
                     gene_set_prior, guided_consensus, guided_notes, guided_rotation, guided_table, guided_warmup,
                     set_members)
from .model_checks import PredictiveCheck, posterior_predictive
from .programme_selection import BETA_GRID, N_LATENT_GRID, sweep

__all__ = ["run", "check_inputs", "Inputs", "ProgrammeResult", "read_gmt", "gene_names", "gene_weights", "varimax",
           "top_genes", "expression_correlation", "gene_scores", "enrichment", "association", "cohens_d", "batch_hints",
           "DESCRIPTIONS", "Fit", "fit_one", "stability_table", "stability_notes", "twin_notes", "STABLE",
           "default_epochs", "train_fits", "describe", "differential", "check_guided"]


#: What each array written into the AnnData holds (stored as ``uns["sciencevae"]["descriptions"]``).
DESCRIPTIONS = {
    "obsm": {"X_sciencevae": "programme activity per cell: posterior means of the latents, rotated "
                             "(uns/sciencevae/rotation); cells x programmes, unit prior variance"},
    "varm": {"sciencevae_loadings": "programme loadings: change of log expression per unit of activity; "
                                    "genes x programmes, 0 for genes the model did not read"},
    "var": {"sciencevae_used": "True for the genes the model read (highly variable genes with counts)"},
    "uns": {"kl_per_latent": "KL divergence of each latent's posterior from the prior (nats), before rotation",
            "consensus": "with several fits: their seeds, per fit and programme the member component (-1: none), "
                         "its sign, each fit's best correlation with the consensus loadings, the share of fits "
                         "that found the programme and its stability (mean correlation of its members over pairs of "
                         "fits); the varimax rotation of each fit"},
}

#: uns description of a guided run.
GUIDED_UNS = ("gene-set-guided programmes: the set guiding each of the first programmes (in order), the number of "
              "de-novo programmes after them, and each programme's status (active / refined / corrected / replaced / "
              "inactive); the per-programme table with added and dropped genes is guided.csv")

#: obsm description when the programmes are a consensus of several fits.
CONSENSUS_ACTIVITY = ("programme activity per cell: mean over the fits that found the programme of their rotated "
                      "posterior means, sign-aligned (uns/sciencevae/consensus); cells x programmes")


#: obs column names that usually hold a technical grouping.
TECHNICAL_COLUMNS = r"batch|sample|plate|donor|dataset|library|lane|run|platform|source|chemistry|protocol"


def batch_hints(association: pd.DataFrame, batch_key: str | None, min_effect: float = 1.0) -> list[str]:
    """Plain-words hints when a programme separates an obs column that looks technical (a batch,
    sample, plate, donor, dataset...) and no ``batch_key`` was given.

    >>> table = pd.DataFrame({"programme": [3], "obs_key": ["batch"], "group": ["p1"], "effect_size": [1.2]})
    >>> batch_hints(table, None)
    ["programme 3 separates obs column 'batch' (group 'p1', Cohen's d 1.2): if it is technical, pass --batch-key batch (batch_key='batch')"]
    """
    if batch_key is not None or association.empty:
        return []
    technical = association[association["obs_key"].str.contains(TECHNICAL_COLUMNS, case=False, regex=True)]
    technical = technical.dropna(subset=["effect_size"])
    hints = []
    for key, rows in technical.groupby("obs_key"):
        best = rows.loc[rows["effect_size"].abs().idxmax()]
        if abs(best["effect_size"]) >= min_effect:
            hints.append(f"programme {best['programme']} separates obs column {key!r} (group {best['group']!r}, "
                         f"Cohen's d {best['effect_size']:.2g}): if it is technical, pass --batch-key {key} "
                         f"(batch_key={key!r})")
    return hints



def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Gene sets from a .gmt file: name, description, genes... per line."""
    sets = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 3:
            sets[parts[0]] = [g for g in parts[2:] if g]
    if not sets:
        raise ValueError(f"{path} holds no gene sets (expected tab-separated name, description, genes)")
    return sets


def gene_weights(model: BetaVAE, prepared, batch_size: int = 512) -> np.ndarray:
    """(genes, latents): linear loadings, or the mean ∂ log μ / ∂ z over cells for an MLP decoder."""
    if model.config.decoder == "linear":
        return model.loadings
    z = torch.as_tensor(model.encode(prepared), device=model.device)
    cov = None if prepared.covariates is None else torch.as_tensor(prepared.covariates, device=model.device)
    total = torch.zeros(model.config.n_features, model.config.n_latent, device=model.device)
    module = model.module.eval()
    for start in range(0, len(z), batch_size):
        chunk = z[start:start + batch_size]
        c = None if cov is None else cov[start:start + batch_size]

        def log_mean(codes):
            raw = module.decoder(codes, c)
            head = module.likelihood.heads(raw)[0]
            return torch.log_softmax(head, -1) if module.likelihood.is_count else head

        for j in range(model.config.n_latent):
            tangent = torch.zeros_like(chunk)
            tangent[:, j] = 1.0
            _, derivative = torch.func.jvp(log_mean, (chunk,), (tangent,))
            total[:, j] += derivative.sum(0).detach()
    return (total / len(z)).cpu().numpy()


def varimax(weights: np.ndarray, max_iter: int = 200, tol: float = 1e-9) -> np.ndarray:
    """Orthogonal rotation R (latents x latents) maximising the varimax criterion of ``weights @ R``.

    Rotating the latents of an isotropic Gaussian prior leaves the model the
    same (z -> z R, loadings -> W R) and turns mixed programmes into sparse ones
    (Kaiser 1958).

    >>> rng = np.random.default_rng(0)
    >>> sparse = np.kron(np.eye(3), np.ones((10, 1)))          # 3 disjoint gene sets
    >>> mixed = sparse @ np.linalg.qr(rng.normal(size=(3, 3)))[0]
    >>> recovered = mixed @ varimax(mixed)
    >>> bool(np.allclose(np.sort(np.abs(recovered), axis=1)[:, :2], 0, atol=1e-4))
    True
    """
    n_genes, k = weights.shape
    rotation = np.eye(k)
    criterion = 0.0
    for _ in range(max_iter):
        rotated = weights @ rotation
        target = rotated**3 - rotated @ np.diag(np.sum(rotated**2, axis=0)) / n_genes
        u, s, vt = np.linalg.svd(weights.T @ target)
        rotation = u @ vt
        previous, criterion = criterion, s.sum()
        if previous and criterion / previous < 1 + tol:
            break
    return rotation


def expression_correlation(data: Prepared | Streamed, activity: np.ndarray) -> np.ndarray:
    """(genes, programmes) Pearson correlation over cells between each gene's log-normalised expression
    (``log1p`` of its counts per 10,000 of the cell's modelled counts) and each programme's activity (cells x
    programmes); 0 where either does not vary. One pass over the counts, a block of cells at a time (a
    streamed one read from its file).

    A loading is the change of log expression per unit of activity, which a gene seen in a few cells can take
    at any size: on the mouse 1,000-gene file genes detected in 1 of 10,000 cells led most programmes by
    loading. A correlation is bounded by how much of the gene's variation the programme explains, so it
    needs many cells — cNMF ranks programme genes the same way (its z-scored regression, Kotliar et al. 2019).

    >>> counts = np.array([[1.0, 9.0], [5.0, 5.0], [9.0, 1.0]])
    >>> expression_correlation(counts, np.array([[0.0], [1.0], [2.0]])).round(3).ravel().tolist()
    [0.966, -0.966]
    """
    activity = np.asarray(activity, dtype=np.float64)
    spread = activity.std(axis=0)
    standard = (activity - activity.mean(axis=0)) / np.where(spread > 0, spread, np.inf)
    sums = squares = cross = None
    for start, part in row_blocks(data):
        part = sp.csr_matrix(part, dtype=np.float64)
        library = np.asarray(part.sum(axis=1)).ravel()
        logged = sp.diags(np.where(library > 0, 1e4 / np.maximum(library, 1e-12), 0.0)) @ part
        logged.data = np.log1p(logged.data)
        terms = (np.asarray(logged.sum(axis=0)).ravel(), np.asarray(logged.multiply(logged).sum(axis=0)).ravel(),
                 np.asarray(logged.T @ standard[start:start + part.shape[0]]))
        sums, squares, cross = terms if sums is None else (sums + terms[0], squares + terms[1], cross + terms[2])
    n_cells = len(activity)
    sd = np.sqrt(np.maximum(squares / n_cells - (sums / n_cells) ** 2, 0.0))
    return cross / n_cells / np.where(sd > 1e-12, sd, np.inf)[:, None]


def gene_scores(weights: np.ndarray, correlation: np.ndarray) -> np.ndarray:
    """(genes, programmes) what ranks a programme's genes: ``|weight| x r x |r|``, the size of the loading times
    the share of the gene's variance the activity explains (r², ``r`` from :func:`expression_correlation`),
    signed by the correlation. A large loading on a gene seen in a few cells explains little of it (r ≈ 0),
    and a gene that follows the activity through other programmes has a loading near 0 here; both fall. On
    the real mouse 1,000-gene file, of the top-5 genes by loading 16% were seen in < 20 of 10,000 cells; by
    correlation alone 0%, but 9% had a loading under a tenth of their end's largest and genes led up to 6
    lists; by this score 0%, 2%, and few repeats (PBMC, CellBench: 0 and 0).

    >>> gene_scores(np.array([[2.0], [0.1]]), np.array([[0.1], [0.9]])).round(3).ravel().tolist()
    [0.02, 0.081]
    """
    return np.abs(weights) * correlation * np.abs(correlation)


def _top(weights: np.ndarray, scores: np.ndarray | None, sign: int, n_top: int) -> np.ndarray:
    """Positions of one end of a programme: the genes whose weight has ``sign`` (+1 / -1), by ``sign`` x score
    (the weight itself when no scores), at most ``n_top``; a zero weight is at neither end."""
    candidates = np.flatnonzero(sign * weights > 0)
    key = sign * (weights if scores is None else scores)[candidates]
    return candidates[np.argsort(-key, kind="stable")[:n_top]]


def top_genes(weights: np.ndarray, genes, n_top: int = 20, correlation: np.ndarray | None = None) -> pd.DataFrame:
    """Top genes per programme and direction: programme, rank, gene, weight, direction (and, with
    ``correlation`` — genes x programmes, :func:`expression_correlation` — correlation and score). ``+`` holds
    the genes with a positive weight, ``-`` those with a negative one, each ranked by :func:`gene_scores` (its
    most positive first for ``+``, most negative for ``-``) or, without ``correlation``, by the weight itself;
    a gene with a zero weight (a sparse, gene-set-guided programme) is in neither direction."""
    scores = None if correlation is None else gene_scores(weights, correlation)
    rows = []
    for j in range(weights.shape[1]):
        column = None if scores is None else scores[:, j]
        for direction, sign in (("+", 1), ("-", -1)):
            for rank, g in enumerate(_top(weights[:, j], column, sign, n_top), start=1):
                row = {"programme": j, "rank": rank, "gene": str(genes[g]), "weight": float(weights[g, j]),
                       "direction": direction}
                if column is not None:
                    row.update(correlation=float(correlation[g, j]), score=float(column[g]))
                rows.append(row)
    return pd.DataFrame(rows)


def enrichment(weights: np.ndarray, genes, gene_sets: dict[str, list[str]], n_top: int = 50,
               min_size: int = 5, correlation: np.ndarray | None = None) -> pd.DataFrame:
    """Per programme, direction and gene set: overlap of the top genes (at most ``n_top``, as
    :func:`top_genes` picks them, with ``correlation``; hypergeometric p, BH q) and a one-sided Mann–Whitney
    test that the set's loadings are shifted (rank_p, rank_q). Sets with fewer than ``min_size`` modelled
    genes are left out, with a warning naming them."""
    genes = np.asarray([str(g) for g in genes])
    n_top = min(n_top, len(genes))  # a panel smaller than n_top: every gene is "top"
    members, _ = set_members(genes, gene_sets, min_size)
    if not members:
        warnings.warn(f"no gene set has {min_size} or more of its genes among the {len(genes)} modelled genes, so "
                      "enrichment is empty; if the sets use gene symbols and var_names do not, pass --gene-symbols "
                      "COLUMN (gene_symbols=)", UserWarning, stacklevel=2)
    scores, rows = None if correlation is None else gene_scores(weights, correlation), []
    for j in range(weights.shape[1]):
        for direction, sign in (("+", 1), ("-", -1)):
            signed, top = sign * weights[:, j], np.zeros(len(genes), bool)
            top[_top(weights[:, j], None if scores is None else scores[:, j], sign, n_top)] = True
            for name, member in members.items():
                overlap = int(np.sum(top & member))
                p = hypergeom.sf(overlap - 1, len(genes), int(member.sum()), int(top.sum()))
                rank_p = mannwhitneyu(signed[member], signed[~member], alternative="greater").pvalue
                rows.append({"programme": j, "direction": direction, "gene_set": name, "overlap": overlap,
                             "set_size": int(member.sum()), "p": float(p), "rank_p": float(rank_p),
                             "genes": ",".join(genes[top & member])})
    table = pd.DataFrame(rows, columns=["programme", "direction", "gene_set", "overlap", "set_size", "p", "rank_p",
                                        "genes"])
    table["q"] = false_discovery_control(table["p"].to_numpy()) if len(table) else []
    table["rank_q"] = false_discovery_control(table["rank_p"].to_numpy()) if len(table) else []
    return table.sort_values("p").reset_index(drop=True)


def association(latents: np.ndarray, obs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean activity per group and Cohen's d of the group against the rest (NaN for a one-cell group).

    Cells without a value in a column (NaN, "nan", "") belong to no group of it.
    """
    rows = []
    for key in keys:
        groups = obs[key].astype(str).to_numpy()
        labelled = ~missing_labels(obs[key])  # cells without a value belong to no group
        for group in pd.unique(groups[labelled]):
            inside = groups == group
            if inside[labelled].all():
                continue
            for j in range(latents.shape[1]):
                a, b = latents[inside, j], latents[labelled & ~inside, j]
                rows.append({"programme": j, "obs_key": key, "group": group, "n_cells": int(inside.sum()),
                             "mean": float(a.mean()), "effect_size": cohens_d(a, b)})
    return pd.DataFrame(rows, columns=["programme", "obs_key", "group", "n_cells", "mean", "effect_size"])


def _categorical_keys(obs: pd.DataFrame, max_levels: int = 50) -> list[str]:
    keys = []
    for key in obs.columns:
        column = obs[key]
        if isinstance(column.dtype, pd.CategoricalDtype) or column.dtype == object:
            if 1 < column[~missing_labels(column)].astype(str).nunique() <= max_levels:
                keys.append(key)
    return keys


@dataclass
class ProgrammeResult:
    """A fitted model and its programmes; ``save`` writes the documented outputs."""

    model: BetaVAE
    adapter: CellsAdapter
    adata: ad.AnnData
    weights: np.ndarray
    rotation: np.ndarray
    programmes: pd.DataFrame
    enrichment: pd.DataFrame | None
    association: pd.DataFrame
    settings: dict
    stability: pd.DataFrame | None = None
    selection: pd.DataFrame | None = None
    seconds: dict = field(default_factory=dict)
    differential: pd.DataFrame | None = None
    checks: PredictiveCheck | None = None
    label_scores: pd.DataFrame | None = None
    guided: pd.DataFrame | None = None

    def save(self, path: str | Path, extra_tables: dict[str, pd.DataFrame] | None = None) -> Path:
        """Write cells.h5ad, programmes.csv, enrichment.csv, association.csv, figures/, model/, adapter.json
        and report.html (with ``extra_tables``)."""
        from .programme_figures import save_figures
        from .report import write_report

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save(out / "model")
        self.adapter.save(out / "adapter.json")
        with atomic_path(out / "cells.h5ad") as tmp:
            write_cells_h5ad(self.adata, tmp)  # the counts are copied (gzip; a backed input's file to file)
        atomic_write_text(self.programme_table().to_csv(index=False), out / "programmes.csv")
        atomic_write_text(self.association.to_csv(index=False), out / "association.csv")
        if self.enrichment is not None:
            atomic_write_text(self.enrichment.to_csv(index=False), out / "enrichment.csv")
        if self.selection is not None:
            atomic_write_text(self.selection.to_csv(index=False), out / "selection.csv")
        if self.differential is not None:
            atomic_write_text(self.differential.to_csv(index=False), out / "differential.csv")
        if self.checks is not None:
            atomic_write_text(self.checks.table.to_csv(index=False), out / "model_checks.csv")
        if self.label_scores is not None and len(self.label_scores):
            atomic_write_text(self.label_scores.to_csv(index=False), out / "label_matching.csv")
        if self.guided is not None:
            atomic_write_text(self.guided.to_csv(index=False), out / "guided.csv")
        save_figures(self, out / "figures")
        top = self.programmes[self.programmes["rank"] <= 8]
        if self.guided is not None:  # an inactive programme's loadings are noise: no top genes to show
            top = top[top["programme"].isin(self.guided.loc[self.guided["active"], "programme"])]
        genes = top.groupby(["programme", "direction"])["gene"].apply(", ".join).reset_index()
        kl = pd.DataFrame({"latent": range(len(self.adata.uns["sciencevae"]["kl_per_latent"])),
                           "kl_nats": self.adata.uns["sciencevae"]["kl_per_latent"]})
        ranked = "ranked by |loading| × r² with the activity" if "score" in self.programmes else "ranked by loading"
        tables = {f"Programmes: top genes ({ranked}; programmes.csv has the numbers)": genes}
        if self.guided is not None:
            tables["Gene-set-guided programmes (genes added to / dropped from each set)"] = self.guided
        if self.stability is not None:
            tables[f"Programme stability across {self.settings['n_fits']} seeds"] = self.stability
        if self.selection is not None:
            tables[f"Choosing {self.settings['chosen_by_sweep']}: stability against reconstruction"] = self.selection
        tables["Per-latent KL (before rotation, first fit)"] = kl
        if self.enrichment is not None:
            others = other_sets(self.enrichment)
            best_q = others[["q", "rank_q"]].min(axis=1)  # either test: the top genes or their ranks
            strongest_sets = others.assign(by=np.where(others["q"] <= others["rank_q"], "top genes", "ranks")).iloc[
                np.argsort(best_q.to_numpy(), kind="stable")[:20]]
            title = ("Enrichment (20 strongest by either test's q; by: the test giving it, the set's overlap with the "
                     "top genes or the ranks of all its genes' loadings" + (
                         "; a guided programme against its own set left out: enrichment.csv has it)"
                         if "own_set" in self.enrichment else ")"))
            tables[title] = strongest_sets.drop(columns=["genes", "own_set"], errors="ignore")
        strongest = self.association.reindex(self.association["effect_size"].abs().sort_values(ascending=False).index)
        tables["Association with obs groups (20 largest effects)" if len(strongest) else
               "Association with obs groups: no obs column of 2 to 50 groups to compare"] = strongest.head(20)
        if self.differential is not None:
            tables[differential_title(self.differential)] = self.differential.head(20)
        if self.checks is not None:
            tables["Posterior predictive checks (observed against simulated, over genes)"] = self.checks.summary
        if self.label_scores is not None and len(self.label_scores):
            tables["Programmes matched to obs labels (one programme per category; 1 = perfect)"] = self.label_scores
        write_report(out, "sciencevae gene programmes run", self.settings, {**tables, **(extra_tables or {})},
                     notes=batch_hints(self.association, self.settings.get("batch_key")) +
                     stability_notes(self.stability, self.guided) + twin_notes(self.adata.obsm[OBSM_KEY]) +
                     guided_notes(self.guided, of_reference="reference" in self.settings) +
                     ([] if self.checks is None else [self.checks.verdict]))
        return out

    def perturb(self, programme: int | str, value: float | None = None, shift: float | None = None,
                cells: str | np.ndarray | None = None) -> pd.DataFrame:
        """Set (``value``) or shift (``shift``) programme ``programme``'s activity (its number, or in a guided
        run its name: a gene set or ``de_novo_<k>``) in ``cells`` (``"KEY:GROUP"``, a bool array, or all) and
        return every gene's expected expression before and after (:func:`.perturbation.perturb`)."""
        from .perturbation import chosen_cells, perturb_parts, prepared_cells

        names = names_or_ids(self.adata, self.adapter, self.settings.get("gene_symbols"))
        return perturb_parts(self.model, prepared_cells(self.adapter, self.adata), self.adata.uns["sciencevae"],
                             self.weights.shape[1], names, programme, value, shift,
                             chosen_cells(self.adata.obs, cells))

    def programme_table(self) -> pd.DataFrame:
        """``programmes`` with, for a consensus of several fits, each programme's found / stability / stable,
        and for guided programmes each one's name and status."""
        table = self.programmes
        if self.guided is not None:
            table = table.drop(columns=["name", "status"], errors="ignore").merge(  # a mapped run's has them
                self.guided[["programme", "name", "status"]], on="programme")
        if self.stability is None:
            return table
        return table.merge(self.stability[["programme", "found", "stability", "stable"]], on="programme")


def gene_names(adata: ad.AnnData, genes: list[str], layer: str | None, gene_symbols: str | None) -> list[str]:
    """Names to report for ``genes``: ``var[gene_symbols]`` of the modelled matrix (``raw.var`` for
    ``layer="raw"``, falling back to ``var`` for a column only it has); a gene without a symbol keeps its id."""
    if gene_symbols is None:
        return list(genes)
    tables = [modelled_var(adata, layer), adata.var]
    found = [t for t in tables if gene_symbols in t.columns]
    if not found:
        where = "raw.var or var" if layer == "raw" else "var"
        raise ValueError(f"{where} has no column {gene_symbols!r} for --gene-symbols; it has "
                         f"{sorted(map(str, tables[0].columns))[:20]}")
    symbols = pd.Series(genes, index=genes, dtype=object)
    for table in reversed(found):  # the modelled matrix's own annotations win
        column = table[gene_symbols]
        named = column[~missing_labels(column)].astype(str)
        named = named[~named.index.duplicated()]
        symbols.update(named.reindex(genes).dropna())
    return [str(s) for s in symbols]


def names_or_ids(adata: ad.AnnData, adapter: CellsAdapter, gene_symbols: str | None) -> list[str]:
    """:func:`gene_names` of the adapter's genes, or the genes' own names where ``adata`` lacks the symbols
    column (a query mapped onto a reference that had it)."""
    try:
        return gene_names(adata, adapter.genes, adapter.layer, gene_symbols or None)
    except ValueError:
        return list(adapter.genes)


@dataclass
class Inputs:
    """What a run needs, checked before anything trains: the genes and covariates, the prepared
    counts (in memory, or streamed from disk: :meth:`CellsAdapter.prepare_or_stream`), the names reported per
    gene, the gene sets and the comparison of groups of cells to test (``compare``: (groupby, group1, group2),
    with ``sample_key``; :func:`.differential.differential`)."""

    adapter: CellsAdapter
    prepared: Prepared | Streamed
    names: list[str]
    gene_sets: dict[str, list[str]] | None
    compare: tuple[str, str | None, str | None] | None = None
    sample_key: str | None = None
    prior: GeneSetPrior | None = None


def check_inputs(adata: ad.AnnData, layer: str | None = None, likelihood: str = "nb", batch_key: str | None = None,
                 n_top_genes: int | None = 2000, gene_sets=None, gene_symbols: str | None = None,
                 compare: str | tuple | None = None, sample_key: str | None = None, guided: bool = False,
                 n_denovo: int = N_DENOVO, stream: bool | None = None) -> Inputs:
    """Validate and prepare everything :func:`run` trains on; raises ``ValueError`` (one line) on bad input.
    ``stream``: read the modelled counts from disk whenever they are used instead of holding them (None: only
    when they would not fit, :meth:`CellsAdapter.prepare_or_stream`).

    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.random.default_rng(0).poisson(2.0, size=(30, 8)).astype(np.float32))
    >>> check_inputs(adata, n_top_genes=None).prepared.X.shape
    (30, 8)
    """
    adapter = CellsAdapter.from_adata(adata, layer=layer, likelihood=likelihood, n_top_genes=n_top_genes,
                                      batch_key=batch_key)
    sets = read_gmt(gene_sets) if isinstance(gene_sets, (str, Path)) else gene_sets
    if guided and not sets:
        raise ValueError("guided programmes need gene sets: pass --gene-sets FILE.gmt (gene_sets=)")
    compare = comparison(adata.obs, compare, sample_key)
    names = gene_names(adata, adapter.genes, layer, gene_symbols)
    return Inputs(adapter=adapter, prepared=adapter.prepare_or_stream(adata, stream), names=names, gene_sets=sets,
                  compare=compare, sample_key=sample_key,
                  prior=gene_set_prior(names, sets, n_denovo) if guided else None)


def default_epochs(n_cells: int) -> int:
    """Training epochs for ``n_cells`` cells: scvi-tools' rule, ``min(round(20000 / n_cells * 400), 400)``
    (at least 1). Small data get many epochs (a 3,000-cell fit at 100 epochs, 2,400 steps, missed a
    weak identity programme that 200 epochs found), large data few.

    >>> default_epochs(1_000), default_epochs(100_000), default_epochs(1_000_000)
    (400, 80, 8)
    """
    return max(1, min(round(20000 / max(n_cells, 1) * 400), 400))


#: The case study's batch size and learning rate on the CPU (chosen on the simulations and CellBench; scvi-tools
#: trains with batches of 128 too).
CPU_BATCH, CPU_LR = 128, 3e-3
#: On a GPU: the largest batch (``fit``'s CUDA default) and the fewest steps an epoch keeps.
GPU_BATCH, MIN_STEPS = 1024, 100


def device_batch_and_lr(n_cells: int, device_type: str, batch_size: int | None = None,
                        lr: float | None = None) -> tuple[int, float]:
    """The case study's batch size and learning rate for ``n_cells`` cells on a ``device_type`` ("cpu" or
    "cuda"); given values are kept.

    CPU: :data:`CPU_BATCH` cells. A GPU is only busy with large batches: there the batch doubles from 128
    while an epoch keeps at least :data:`MIN_STEPS` steps, up to :data:`GPU_BATCH` (128 below 25,600 cells,
    1,024 from 102,400). The learning rate stays :data:`CPU_LR` at every batch size: on the hard simulation
    at 100,000 cells (80 epochs, batch 1,024, trained on the CPU) the square-root rule's 8.5e-3 together
    with the batch-mixing penalty lost the programmes (mean AUROC 0.835, activity Spearman 0.08), while 3e-3
    kept what batch 128 finds (0.997 / 0.72; 128: 0.996 / 0.72).

    >>> device_batch_and_lr(909, "cuda"), device_batch_and_lr(1_000_000, "cpu")
    ((128, 0.003), (128, 0.003))
    >>> device_batch_and_lr(1_000_000, "cuda"), device_batch_and_lr(30_000, "cuda")
    ((1024, 0.003), (256, 0.003))
    """
    if batch_size is None:
        batch_size = CPU_BATCH
        while device_type == "cuda" and batch_size * 2 <= GPU_BATCH and n_cells // (batch_size * 2) >= MIN_STEPS:
            batch_size *= 2
    return batch_size, CPU_LR if lr is None else lr


#: Weight of the batch-mixing penalty with a batch key (``run(batch_mmd=)``, ``--batch-mmd``): on CellBench's
#: plates 30 moved the plate 15-NN accuracy from 0.38 to 0.32 (scVI 0.35) with the cell lines kept; 100 hurt
#: the hard simulation's weakest programmes (their shares differ by batch).
BATCH_MMD = 30.0
#: A programme is stable when it is found again this closely on average over the fits (``Consensus.stability``).
STABLE = 0.8


@dataclass
class Fit:
    """One fitted model with its varimax-rotated loadings (genes x latents) and activities (cells x latents),
    and the mean KL of each (unrotated) latent's posterior from the prior over the cells (nats)."""

    model: BetaVAE
    weights: np.ndarray
    latents: np.ndarray
    rotation: np.ndarray
    kl_per_latent: np.ndarray


def fit_one(prepared: Prepared | Streamed, n_latent: int, seed: int, rotation: str | None, model_options: dict,
            fit_options: dict, prior: GeneSetPrior | None = None) -> Fit:
    """Train one β-VAE (``BetaVAE(**model_options)``, ``fit(**fit_options)``) and rotate its programmes; with a
    gene-set ``prior`` the guided programmes are only oriented (:func:`.guided.guided_rotation`) and the
    de-novo ones rotated."""
    model = BetaVAE(n_latent=n_latent, seed=seed, **model_options)
    model.fit(prepared, seed=seed, **fit_options)
    raw_weights = gene_weights(model, prepared)
    if prior is None:
        turn = varimax(raw_weights) if rotation == "varimax" else np.eye(n_latent)
    else:
        denovo = raw_weights[:, len(prior.names):]
        turn = guided_rotation(raw_weights, prior, varimax(denovo) if rotation == "varimax" and denovo.size else None)
    mean, std = model.encode(prepared, return_std=True)
    return Fit(model=model, weights=raw_weights @ turn, latents=mean @ turn, rotation=turn,
               kl_per_latent=posterior_kl(mean, 2.0 * np.log(std)))


def stability_table(found: Consensus, seeds: list[int]) -> pd.DataFrame:
    """Per programme: share of fits that found it, its stability, whether it is stable and, for each fit that
    found it, the correlation of its best-matching component with the consensus loadings (NaN for the others)."""
    table = pd.DataFrame({"programme": range(found.loadings.shape[1]), "found": found.found,
                          "stability": found.stability, "stable": found.stability >= STABLE})
    for i, seed in enumerate(seeds):  # blank where that fit did not find the programme
        table[f"correlation_seed_{seed}"] = np.where(found.members[i] >= 0, found.correlation[i], np.nan)
    return table


def other_sets(table: pd.DataFrame) -> pd.DataFrame:
    """The enrichment rows but a guided programme's against its own set (enriched by construction)."""
    return table if "own_set" not in table else table[~table["own_set"].astype(bool)]


def stability_notes(table: pd.DataFrame | None, guided: pd.DataFrame | None = None) -> list[str]:
    """Plain-words notes on the programmes that are not stable (of a guided run, the active ones: an inactive
    set's programme is said to be inactive)."""
    if table is not None and guided is not None:
        table = table[table["programme"].isin(guided.loc[guided["active"], "programme"])]
    if table is None or table["stable"].all():
        return []
    weak = table[~table["stable"]]
    listed = ", ".join(f"{p} ({s:.2f})" for p, s in zip(weak["programme"], weak["stability"]))
    which = f"programmes {listed} are" if len(weak) > 1 else f"programme {listed} is"
    them = "them" if len(weak) > 1 else "it"
    return [f"{which} not stable across seeds (stability below {STABLE}): treat {them} as "
            "tentative; the others are found again closely across seeds"]


#: Two programmes whose activities correlate at least this much over the cells (either sign) are said to be one
#: axis (:func:`twin_notes`).
TWIN_CORRELATION = 0.8


def twin_notes(activity: np.ndarray, threshold: float = TWIN_CORRELATION) -> list[str]:
    """A note per pair of programmes whose activities (cells x programmes; NaN columns skipped) correlate at
    least ``threshold`` in absolute value: they describe one axis (with opposite signs when negative), so read
    them together, or fit fewer latents. On the 400-cell PBMC file a fit of 100 epochs gave two such
    programmes (T cells against monocytes, r = −0.84); the default 400 epochs none above 0.55.

    >>> z = np.random.default_rng(0).normal(size=(200, 3))
    >>> twin_notes(z)
    []
    >>> z[:, 2] = -z[:, 0] + 0.3 * z[:, 1]
    >>> twin_notes(z)[0][:79]
    'programmes 0 and 2 are nearly one axis (their activities correlate -0.96 over t'
    """
    kept = np.flatnonzero(np.isfinite(activity).all(axis=0) & (np.nanstd(activity, axis=0) > 0))
    if len(kept) < 2:
        return []
    correlation = np.corrcoef(activity[:, kept].T)
    notes = []
    for a, b in zip(*np.triu_indices(len(kept), 1)):
        r = correlation[a, b]
        if abs(r) >= threshold:
            signs = ", with opposite signs" if r < 0 else ""
            notes.append(f"programmes {kept[a]} and {kept[b]} are nearly one axis (their activities correlate "
                         f"{r:+.2f} over the cells{signs}): read them together, or fit fewer latents (--n-latent)")
    return notes


def run(adata, layer: str | None = None, n_latent: int | str | list[int] = 10, likelihood: str = "nb",
        decoder: str = "linear", beta: float | str | list[float] = 1.0, batch_key: str | None = None,
        gene_sets=None, gene_symbols: str | None = None,
        n_top_genes: int | None = 2000, epochs: int | None = None, batch_size: int | None = None,
        lr: float | None = None,
        seed: int = 0, device: str = "auto", hidden: tuple[int, ...] = (128,), n_top: int = 50,
        rotation: str | None = "varimax", progress: bool = True, checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 1, resume: bool = False, inputs: Inputs | None = None,
        n_fits: int = 1, compare: str | tuple | None = None, sample_key: str | None = None, guided: bool = False,
        n_denovo: int = N_DENOVO, batch_mmd: float | None = None, stream: bool | None = None) -> ProgrammeResult:
    """Fit a count β-VAE on an AnnData (or a path) and describe its programmes.

    ``rotation="varimax"`` (default) rotates the latents so that each
    programme loads on few genes; programme activities are then ``z @ R``
    (``res.rotation``, also in ``uns["sciencevae"]["rotation"]``). ``None``
    keeps the raw latents. ``checkpoint_dir``, ``checkpoint_every`` and
    ``resume`` are passed to ``BetaVAE.fit``. ``epochs=None``: scvi-tools'
    rule for the number of cells (:func:`default_epochs`). ``batch_size`` / ``lr`` None: 128 / 3e-3 on the
    CPU, batches up to 1,024 on a GPU (:func:`device_batch_and_lr`); recorded in ``settings``.

    ``batch_mmd`` (with ``batch_key``): weight of the penalty that pulls the batches' codes onto one
    distribution (squared MMD between each batch and the minibatch, :func:`sciencevae.objectives.batch_mmd`);
    0 turns it off; None: :data:`BATCH_MMD` with a batch key, 0 without (:func:`batch_weight`, which raises
    ``ValueError`` for a weight above 0 without ``batch_key``). The default mixes CellBench's plates better than
    scVI without losing the cell lines or the simulation's programmes (benchmarks/README.md).

    ``n_fits`` > 1: consensus programmes (:func:`sciencevae.consensus.consensus`)
    of that many fits with seeds ``seed, seed + 1, ...``: loadings are the
    median over the fits that found a programme, activities the mean of their
    latents, and ``res.stability`` says per programme how often and how closely
    the fits found it (``stable`` when at least :data:`STABLE`). The programmes
    are then ordered by stability and may number more or fewer than
    ``n_latent``; ``res.model`` is the first fit.

    ``n_latent="auto"`` / ``beta="auto"`` (or a list of values; needs
    ``n_fits`` >= 2): a sweep over :data:`N_LATENT_GRID` / :data:`BETA_GRID`
    (:func:`~sciencevae.case_studies.programme_selection.sweep`), each point
    with ``n_fits`` fits; the point with the most stable programmes is kept
    (its fits, no retraining) and ``res.selection`` holds the whole sweep.

    ``compare``: groups of cells whose programme activities are tested against each other,
    ``"KEY"`` / ``"KEY:GROUP1"`` / ``"KEY:GROUP1:GROUP2"`` or a tuple (an obs column, optionally two of its
    groups; default each group against the rest), with ``sample_key`` (an obs column of samples or donors)
    as the unit when given: ``res.differential`` (:func:`.differential.differential`), differential.csv.

    ``gene_sets``: a .gmt path or a dict name -> genes, matched against
    ``var[gene_symbols]`` when given (e.g. ``"gene_symbol"`` for Ensembl ids;
    ``raw.var`` when ``layer="raw"``). ``inputs``: the result of
    :func:`check_inputs` on the same arguments (skips checking them again).

    ``guided=True``: the gene sets guide the programmes (:mod:`.guided`): one programme per set with at
    least 5 modelled genes, softly confined to it, then ``n_denovo`` free ones (``n_latent`` is not used);
    ``res.guided`` (guided.csv) says per programme whether it is active and which genes the data added to
    or dropped from its set. One fit, decoder ``"linear"``, fixed β.

    ``stream``: train and encode reading the modelled counts from the file a chunk of cells at a time
    (:meth:`CellsAdapter.stream`; ``adata`` read with ``read_cells(path, backed=True)``) instead of holding
    them in memory; None (default) streams only when they would take more than
    :data:`~sciencevae.adapters.cells.MEMORY_SHARE` of the available memory. Recorded in ``settings``.
    """
    adata = read_cells(adata, backed=True) if isinstance(adata, (str, Path)) else adata
    if inputs is None:
        inputs = check_inputs(adata, layer, likelihood, batch_key, n_top_genes, gene_sets, gene_symbols, compare,
                              sample_key, guided, n_denovo, stream)
    if rotation not in (None, "varimax"):
        raise ValueError(f"rotation must be 'varimax' or None, got {rotation!r}")
    if n_fits < 1:
        raise ValueError(f"n_fits must be at least 1, got {n_fits}")
    if guided:
        check_guided(n_latent, beta, decoder)
    n_cells = inputs.prepared.n_obs
    epochs = default_epochs(n_cells) if epochs is None else epochs
    batch_size, lr = device_batch_and_lr(n_cells, resolve_device(device).type, batch_size, lr)
    seeds = [seed + i for i in range(n_fits)]
    latent_grid, beta_grid = _grid(n_latent, N_LATENT_GRID, "n_latent"), _grid(beta, BETA_GRID, "beta")

    mixing = batch_weight(batch_mmd, batch_key)
    columns = (0, len(inputs.adapter.categorical[batch_key])) if mixing else None

    def train(k: int, b: float, folder: str | Path | None = checkpoint_dir) -> list[Fit]:
        return train_fits(inputs, k, b, seeds, likelihood=likelihood, decoder=decoder, hidden=hidden,
                          rotation=rotation, checkpoint_dir=folder, batch_mmd=mixing, batch_columns=columns,
                          epochs=epochs, batch_size=batch_size, lr=lr, device=device, progress=progress,
                          checkpoint_every=checkpoint_every, resume=resume)

    selection = None
    if inputs.prior is not None:
        n_latent = inputs.prior.n_latent
    started = time.perf_counter()
    if latent_grid is None and beta_grid is None:
        fits = train(n_latent, beta)
    else:
        if n_fits < 2:
            raise ValueError("choosing n_latent or beta needs at least 2 fits per setting (n_fits / --fits >= 2)")
        selection = sweep(lambda k, b: train(k, b, None if checkpoint_dir is None else
                                             Path(checkpoint_dir) / f"n_latent_{k}_beta_{b:g}"),
                          inputs.prepared, latent_grid or [n_latent], beta_grid or [beta], STABLE)
        (n_latent, beta), fits = selection.chosen, selection.fits
    settings = dict(layer=layer or "X", n_latent=n_latent, likelihood=likelihood, decoder=decoder, beta=beta,
                    batch_key=batch_key, n_top_genes=n_top_genes, epochs=epochs, batch_size=batch_size, lr=lr,
                    seed=seed, n_genes=len(inputs.adapter.genes), rotation=rotation, gene_symbols=gene_symbols,
                    n_fits=n_fits, compare=None if inputs.compare is None else ":".join(filter(None, inputs.compare)),
                    sample_key=inputs.sample_key, guided=inputs.prior is not None, batch_mmd=mixing,
                    streamed=isinstance(inputs.prepared, Streamed))
    if inputs.prior is not None:
        settings.update(n_gene_sets=len(inputs.prior.names), n_denovo=inputs.prior.n_denovo,
                        guide_penalty=GUIDE_PENALTY, denovo_penalty=DENOVO_PENALTY, penalty_start=PENALTY_START)
    if selection is not None:
        swept = (("n_latent", latent_grid), ("beta", beta_grid))
        settings["chosen_by_sweep"] = ", ".join(name for name, grid in swept if grid)
    trained = time.perf_counter()
    res = describe(adata, inputs, fits, seeds, settings, n_top)
    res.selection = None if selection is None else selection.table
    res.seconds = {"train": trained - started, "describe": time.perf_counter() - trained}
    return res


def batch_weight(batch_mmd: float | None, batch_key: str | None) -> float:
    """The batch-mixing weight of a run: ``batch_mmd``, or with None :data:`BATCH_MMD` when there is a batch key
    and 0 without; ``ValueError`` for a negative or infinite weight, or a weight above 0 without a batch key.

    >>> batch_weight(None, "batch"), batch_weight(None, None), batch_weight(0, None)
    (30.0, 0.0, 0.0)
    """
    if batch_mmd is None:
        return BATCH_MMD if batch_key else 0.0
    if not (isinstance(batch_mmd, (int, float)) and np.isfinite(batch_mmd) and batch_mmd >= 0):
        raise ValueError(f"batch_mmd must be a finite number >= 0 (0: off), got {batch_mmd!r}")
    if batch_mmd and not batch_key:
        raise ValueError(f"batch_mmd={batch_mmd:g} mixes the batches of batch_key: give batch_key (or leave "
                         "batch_mmd out)")
    return float(batch_mmd)


def check_guided(n_latent, beta, decoder: str) -> None:
    """Refuse settings that guided programmes do not take, ``ValueError`` in one line: an ``n_latent`` other
    than the default 10 (or None: not given), another decoder than ``"linear"``, ``"auto"`` or a list for
    ``beta``."""
    if n_latent is not None and not (isinstance(n_latent, int) and n_latent == 10):
        raise ValueError("n_latent is not used with guided programmes (one per gene set, plus n_denovo free "
                         "ones): leave it out")
    if decoder != "linear":
        raise ValueError(f"guided programmes need the linear decoder (their loadings are confined to the sets), "
                         f"got decoder={decoder!r}")
    if isinstance(beta, (str, list, tuple, np.ndarray)):
        raise ValueError("guided programmes take one beta: drop 'auto' or the list")


def _grid(value, default: tuple, name: str) -> list | None:
    """None for a fixed setting; the grid for ``"auto"`` (``default``) or a list of values."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"{name} must be a number, a list of numbers or 'auto', got {value!r}")
        return list(default)
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return None


def train_fits(inputs: Inputs, n_latent: int, beta: float, seeds: list[int], likelihood: str = "nb",
               decoder: str = "linear", hidden: tuple[int, ...] = (128,), rotation: str | None = "varimax",
               checkpoint_dir: str | Path | None = None, batch_mmd: float = 0.0,
               batch_columns: tuple[int, int] | None = None, **fit_options) -> list[Fit]:
    """One :class:`Fit` per seed (``fit_options`` go to ``BetaVAE.fit``); with several seeds each
    checkpoints into ``checkpoint_dir/seed_<seed>``. ``batch_mmd``, ``batch_columns``: the batch-mixing
    penalty of :class:`~sciencevae.objectives.Objective`."""
    warmup = 0
    model_options = dict(n_features=len(inputs.adapter.genes), likelihood=likelihood, decoder=decoder,
                         hidden=hidden, n_covariates=inputs.adapter.n_covariates)
    if inputs.prior is not None:
        scale = count_scale(inputs.prepared)
        model_options["loadings_penalty"] = inputs.prior.penalty(scale=scale)
        model_options["loadings_penalty_start"] = inputs.prior.penalty(scale=scale, start=PENALTY_START)
        n_cells, batch = inputs.prepared.n_obs, fit_options.get("batch_size", CPU_BATCH)
        warmup = guided_warmup(n_cells, fit_options["epochs"], batch)
    model_options["objective"] = Objective(beta=float(beta), warmup_steps=warmup, batch_mmd=batch_mmd,
                                           batch_columns=batch_columns if batch_mmd > 0 else None)
    fits = []
    for i, fit_seed in enumerate(seeds):
        several = checkpoint_dir is not None and len(seeds) > 1
        folder = Path(checkpoint_dir) / f"seed_{fit_seed}" if several else checkpoint_dir
        options = dict(fit_options, checkpoint_dir=folder)
        if len(seeds) > 1 and options.get("progress", True):
            options["progress"] = f"fit {i + 1}/{len(seeds)}, {n_latent} latents, beta {beta:g}"
        fits.append(fit_one(inputs.prepared, n_latent, fit_seed, rotation, model_options, options, inputs.prior))
    return fits


def describe(adata: ad.AnnData, inputs: Inputs, fits: list[Fit], seeds: list[int], settings: dict,
             n_top: int = 50) -> ProgrammeResult:
    """The programmes of one fit, or the consensus of several (:func:`sciencevae.consensus.consensus`),
    with their genes, enrichment, association and (several fits) stability."""
    model = fits[0].model
    uns = {"params": {k: ("" if v is None else v) for k, v in settings.items()}, "likelihood": settings["likelihood"],
           "kl_per_latent": fits[0].kl_per_latent.astype(float), "rotation": fits[0].rotation,
           "sciencevae_version": __version__, "descriptions": DESCRIPTIONS}
    stability = None
    if len(fits) == 1:
        weights, latents = fits[0].weights, fits[0].latents
    else:
        found = (consensus([f.weights for f in fits]) if inputs.prior is None else
                 guided_consensus([f.weights for f in fits], [f.latents for f in fits], len(inputs.prior.names)))
        weights, latents = found.loadings, found.activities([f.latents for f in fits])
        stability = stability_table(found, seeds)
        uns["consensus"] = {"seeds": np.array(seeds), "members": found.members, "signs": found.signs,
                            "found": found.found, "stability": found.stability, "correlation": found.correlation,
                            "rotations": np.stack([f.rotation for f in fits])}
        uns["descriptions"] = {**DESCRIPTIONS, "obsm": {OBSM_KEY: CONSENSUS_ACTIVITY}}
    guided = None
    if inputs.prior is not None:  # a consensus keeps the de-novo programmes two fits share
        prior = dataclasses.replace(inputs.prior, n_denovo=weights.shape[1] - len(inputs.prior.names))
        guided = guided_table(weights, latents, uns["kl_per_latent"], prior, inputs.names)
        uns["guided"] = {"gene_sets": np.array(prior.names, dtype=object), "n_denovo": prior.n_denovo,
                         "status": guided["status"].to_numpy(dtype=object)}
        uns["descriptions"] = {**uns["descriptions"], "uns": {**uns["descriptions"]["uns"], "guided": GUIDED_UNS}}
    sets = inputs.gene_sets
    # guided: the tests, associations and label matching are of the active programmes (an inactive one's
    # activity is noise, and its loadings are noise confined to its set: its own set would look enriched)
    shown = np.ones(weights.shape[1], bool) if guided is None else guided["active"].to_numpy(dtype=bool)
    if inputs.prior is not None and sets is not None:
        sets = {name: sets[name] for name in inputs.prior.names}  # the small ones were named once, left out
    keys = _categorical_keys(adata.obs)
    correlation = expression_correlation(inputs.prepared, latents)
    enriched = None if sets is None else _renumbered(
        enrichment(weights[:, shown], inputs.names, sets, n_top, correlation=correlation[:, shown]), shown)
    if enriched is not None and guided is not None:  # a guided programme against its own set: true by construction
        enriched["own_set"] = enriched["gene_set"].to_numpy() == guided["name"].to_numpy()[enriched["programme"]]
    return ProgrammeResult(
        model=model, adapter=inputs.adapter, adata=inputs.adapter.write_back(adata, latents, weights, uns),
        weights=weights, rotation=fits[0].rotation,
        programmes=top_genes(weights, inputs.names, correlation=correlation), enrichment=enriched,
        association=_renumbered(association(latents[:, shown], adata.obs, keys), shown), settings=settings,
        stability=stability, differential=None if inputs.compare is None else
        _renumbered(differential(latents[:, shown], adata.obs, *inputs.compare, sample_key=inputs.sample_key), shown),
        checks=_short_training_said(posterior_predictive(model, inputs.prepared, inputs.names,
                                                         seed=settings.get("seed", 0)), settings, len(adata)),
        label_scores=label_matching(np.where(shown, latents, np.nan), adata.obs, keys, seed=settings.get("seed", 0)),
        guided=guided,
    )


def _renumbered(table: pd.DataFrame, shown: np.ndarray) -> pd.DataFrame:
    """A per-programme table computed on the ``shown`` columns, with their programme numbers."""
    if shown.all() or not len(table):
        return table
    return table.assign(programme=np.flatnonzero(shown)[table["programme"].to_numpy(dtype=int)])


def _short_training_said(checks: PredictiveCheck | None, settings: dict, n_cells: int) -> PredictiveCheck | None:
    """The checks, with a misfit's verdict pointing first at a training shorter than :func:`default_epochs`."""
    epochs, default = settings.get("epochs"), default_epochs(n_cells)
    if checks is None or "no sign" in checks.verdict or epochs is None or epochs >= default:
        return checks
    return dataclasses.replace(checks, verdict=f"{checks.verdict} — but the model trained for {epochs} of the "
                               f"default {default} epochs: train fully before changing the likelihood")


def differential_title(table: pd.DataFrame) -> str:
    """The report's heading of a :func:`.differential.differential` table."""
    if not len(table):
        return "Differential programme activity: no group had enough cells or samples"
    unit = "samples (pseudobulk)" if table["unit"].iloc[0] == "samples" else "cells"
    return f"Differential programme activity by {table['obs_key'].iloc[0]}, {unit} as the unit (20 smallest p)"
