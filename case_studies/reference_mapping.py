"""Score new cells with a saved ``sciencevae cells`` run, without retraining (reference mapping).

The query's counts are matched to the reference model's genes by name (genes the query lacks are filled
with zeros, reported and left out of the model checks; fewer than half shared is refused), encoded by the reference model, and rotated into the
reference's programmes. The programmes, loadings and enrichment are the reference's; everything computed
from the cells (association, differential activity, model checks, label matching, figures) is the query's.
Query batches the reference did not see are encoded without a batch (no correction for them), with a
warning. For a consensus reference the saved model is its first fit, so the query's activity of a programme
is that fit's member component (oriented as the consensus); a programme the first fit did not find has no
activity (NaN) in the query and is left out of its tests. Compare scArches' query mapping (Lotfollahi et
al. 2022, Nat. Biotechnol. 40:121), which fine-tunes new batch weights; here nothing is trained.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from sciencevae import __version__
from sciencevae.adapters.cells import UNS_KEY, VARM_KEY, CellsAdapter, modelled_var
from sciencevae.io import load
from sciencevae.label_matching import label_matching

from .differential import comparison, differential
from .model_checks import posterior_predictive

__all__ = ["map_to_reference", "check_cells_run", "REFERENCE_FILES"]

#: The share of the reference model's genes a query must have (the others are filled with zeros).
MIN_SHARED = 0.5
#: What a reference run folder must hold.
REFERENCE_FILES = ("model", "adapter.json", "cells.h5ad", "programmes.csv")


def _reference_guided(run: Path) -> pd.DataFrame | None:
    """The guided.csv of a guided reference run (None for another run), as the run's ``res.guided``."""
    path = run / "guided.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path)
    text = {column: table[column].fillna("").astype(str) for column in ("added", "dropped", "moves_with")
            if column in table}  # empty cells read back as NaN
    return table.assign(**text, active=table["active"].astype(str).str.lower().eq("true"))


def check_cells_run(run: str | Path) -> Path:
    """The run folder as a Path; ``ValueError`` (one line) unless it holds :data:`REFERENCE_FILES` (a finished
    ``sciencevae cells`` run: what mapping onto it and perturbing it read)."""
    run = Path(run)
    missing = [name for name in REFERENCE_FILES if not (run / name).exists()]
    if missing:
        raise ValueError(f"{run} is not a sciencevae cells run folder (it lacks {', '.join(missing)}); "
                         "give the --out folder of a `sciencevae cells` run")
    return run


def _reference_loadings(run: Path, adapter: CellsAdapter) -> tuple[np.ndarray, dict]:
    """The reference's (genes, programmes) loadings in the adapter's gene order, and its uns["sciencevae"]."""
    reference = ad.read_h5ad(run / "cells.h5ad", backed="r")
    try:
        holder = reference.raw if adapter.layer == "raw" and reference.raw is not None else reference
        rows = holder.var_names.get_indexer(adapter.genes)
        loadings = np.asarray(holder.varm[VARM_KEY])[rows]
        return loadings, dict(reference.uns[UNS_KEY])
    finally:
        reference.file.close()


def _query_genes(query: ad.AnnData, adapter: CellsAdapter) -> list[str]:
    """The model's genes the query lacks; ``ValueError`` when it has fewer than :data:`MIN_SHARED` of them."""
    present = set(map(str, modelled_var(query, adapter.layer).index))
    missing = [g for g in adapter.genes if g not in present]
    shared = len(adapter.genes) - len(missing)
    if shared < MIN_SHARED * len(adapter.genes):
        some = "none" if not shared else f"only {shared:,} ({shared / len(adapter.genes):.0%})"
        raise ValueError(f"the query has {some} of the reference model's {len(adapter.genes):,} genes (e.g. "
                         f"{', '.join(adapter.genes[:3])}); at least {MIN_SHARED:.0%} are needed: name its genes as "
                         "the reference does (ids or symbols), or give the layer that holds them (--layer)")
    return missing


def _activities(z: np.ndarray, uns: dict) -> np.ndarray:
    """Programme activities of the query from the first fit's latents ``z`` (NaN for a consensus programme
    the first fit did not find)."""
    found = uns.get("consensus")
    if found is None:
        return z @ np.asarray(uns["rotation"])
    turned = z @ np.asarray(found["rotations"])[0]
    members, signs = np.asarray(found["members"])[0], np.asarray(found["signs"])[0]
    out = np.full((len(z), len(members)), np.nan)
    for p, (member, sign) in enumerate(zip(members, signs)):
        if member >= 0:
            out[:, p] = sign * turned[:, member]
    return out


def map_to_reference(query: ad.AnnData, reference: str | Path, layer: str | None = None,
                     compare: str | tuple | None = None, sample_key: str | None = None):
    """Score ``query`` with the reference run's model and programmes; a :class:`.gene_programmes.ProgrammeResult`.

    ``layer``: where the query's counts are (default: where the reference's were). ``compare`` /
    ``sample_key``: a differential test of the query's groups (:func:`.differential.differential`).
    ``res.settings`` records the reference folder, the genes the query lacks and the batches it was not
    trained on. Raises ``ValueError`` (one line) for a folder that is not a cells run, a query sharing no
    gene with it, or a comparison the query's obs cannot make.
    """
    from .gene_programmes import ProgrammeResult, _categorical_keys, _renumbered, association, names_or_ids

    run = check_cells_run(reference)
    adapter = CellsAdapter.load(run / "adapter.json")
    if layer is not None and layer != adapter.layer:
        adapter = dataclasses.replace(adapter, layer=None if layer == "X" else layer)
    compare = comparison(query.obs, compare, sample_key)
    missing = _query_genes(query, adapter)
    unseen = {key: sorted(set(query.obs[key].astype(str)) - set(categories)) if key in query.obs else ["(no column)"]
              for key, categories in adapter.categorical.items()}
    unseen = {key: values for key, values in unseen.items() if values}
    for key, values in unseen.items():
        warnings.warn(f"the query's {key} {', '.join(values[:5])} {'is' if len(values) == 1 else 'are'} not among "
                      "the reference's batches: encoded without a batch (no batch correction for those cells)",
                      UserWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fitted genes are missing.*")
        prepared = adapter.prepare(query, missing_genes="zero", unseen_categories="zero")
    if missing:
        warnings.warn(f"{len(missing):,} of the reference model's {len(adapter.genes):,} genes are missing from the "
                      "query and were filled with zeros (left out of the model checks)", UserWarning, stacklevel=2)
    model = load(run / "model")
    loadings, ref_uns = _reference_loadings(run, adapter)
    activities = _activities(model.encode(prepared), ref_uns)
    params = dict(ref_uns.get("params", {}))
    settings = {**params, "reference": str(run.resolve()), "genes_missing_in_query": len(missing),
                "batches_not_in_reference": "; ".join(f"{k}: {', '.join(v)}" for k, v in unseen.items()),
                "compare": "" if compare is None else ":".join(filter(None, compare)), "sample_key": sample_key or ""}
    names = names_or_ids(query, adapter, params.get("gene_symbols"))
    uns = {key: ref_uns[key] for key in ("likelihood", "rotation", "consensus", "guided", "descriptions")
           if key in ref_uns}
    uns.update(params={k: ("" if v is None else v) for k, v in settings.items()}, sciencevae_version=__version__,
               kl_per_latent=np.asarray(ref_uns.get("kl_per_latent", [])))
    checks = posterior_predictive(model, prepared, names, seed=int(params.get("seed", 0) or 0),
                                  genes_checked=~np.isin(adapter.genes, missing))  # zero-filled genes are not data
    if checks is not None and unseen and "no sign" not in checks.verdict:
        checks = dataclasses.replace(checks, verdict=checks.verdict + " — but the query has batches the reference "
                                     "never saw, whose effects the model cannot simulate: look there first")
    keys = _categorical_keys(query.obs)
    guided = _reference_guided(run)
    # the programmes tested: those the saved fit scores, and of a guided reference the active ones only
    shown = np.isfinite(activities).all(0)
    if guided is not None:
        shown &= guided["active"].to_numpy(dtype=bool)
    enrichment = run / "enrichment.csv"
    return ProgrammeResult(
        model=model, adapter=adapter, adata=adapter.write_back(query, activities, loadings, uns), weights=loadings,
        rotation=np.asarray(ref_uns["rotation"]), programmes=pd.read_csv(run / "programmes.csv"),
        enrichment=pd.read_csv(enrichment) if enrichment.exists() else None,
        association=_renumbered(association(activities[:, shown], query.obs, keys), shown), settings=settings,
        differential=None if compare is None else _renumbered(
            differential(activities[:, shown], query.obs, *compare, sample_key=sample_key), shown),
        checks=checks, label_scores=label_matching(np.where(shown, activities, np.nan), query.obs, keys),
        guided=guided,
    )
