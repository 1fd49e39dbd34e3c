"""In-silico perturbation of a gene programme: set or shift its activity and read every gene's change.

The cells counterpart of the climate case study's ``counterfactual``. Each chosen cell is encoded (posterior
mean z), its programme activities are ``a = z @ R`` (R: the run's orthogonal varimax rotation), programme p's
activity is set to a value or shifted, ``z' = a' @ R.T``, and the decoder gives the expected expression
before and after, with the cell's own covariates (batch), as normalised expression per 10,000 counts of the
modelled genes (the decoder's mean at library size 10,000). Through the decoder, linear or not: an MLP
decoder's answer may depend on the cell's other programmes. For a consensus of several fits the first fit's
model is perturbed, through its member of the programme (``uns["sciencevae"]["consensus"]``).

Compare scvi-tools' ``get_normalized_expression`` with modified latents, and the perturbation of
interpretable latents in DRVI (Moinfar & Theis 2024, bioRxiv 10.1101/2024.11.06.622266).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sciencevae import BetaVAE, Prepared
from sciencevae.data import subset_rows

from .differential import check_comparison

__all__ = ["Target", "target", "perturb", "perturb_run", "prepared_cells", "chosen_cells", "PER_COUNTS"]

#: Library size the expected expression is given at (counts per 10,000).
PER_COUNTS = 10_000.0
#: A perturbation that moves a programme further than this many times its observed range beyond it is flagged.
EXTRAPOLATION = 1.0


@dataclass(frozen=True)
class Target:
    """Where programme ``programme`` lives in the perturbed model: its ``component`` of the rotated latents,
    with ``sign`` (+1 / -1) the orientation the run reports it in."""

    programme: int
    component: int
    sign: float


def target(uns: dict, programme: int, n_programmes: int) -> Target:
    """The :class:`Target` of ``programme`` in a run's first fit, from ``uns["sciencevae"]``.

    Raises ``ValueError`` (one line) for a programme the run does not have, or one the first fit of a
    consensus did not find.
    """
    if not 0 <= programme < n_programmes:
        raise ValueError(f"programme {programme} is not in this run: it has programmes 0 to {n_programmes - 1}")
    found = uns.get("consensus")
    if found is None:
        return Target(programme, programme, 1.0)
    component = int(np.asarray(found["members"])[0, programme])
    if component < 0:
        raise ValueError(f"programme {programme} was not found by the run's first fit (the one whose model is "
                         "saved), so it cannot be perturbed; choose a programme that fit found (programmes.csv: found)")
    return Target(programme, component, float(np.asarray(found["signs"])[0, programme]))


def programme_number(uns: dict, programme: int | str) -> int:
    """The number of ``programme``: a number (programmes.csv numbering) as it is, or in a guided run the
    name of a gene set or of a de-novo programme (``de_novo_<k>``; guided.csv ``name``).

    Raises ``ValueError`` (one line) for a name the run does not have.

    >>> programme_number({"guided": {"gene_sets": ["IFN", "G2M"], "n_denovo": 2}}, "de_novo_1")
    3
    """
    if isinstance(programme, (int, np.integer)) or str(programme).strip().lstrip("-").isdigit():
        return int(programme)
    guided = uns.get("guided")
    if guided is None:
        raise ValueError(f"programme {programme!r} is not a number, and only a guided run (--guided) names its "
                         "programmes: give the programme's number (programmes.csv)")
    names = [str(n) for n in np.asarray(guided["gene_sets"], dtype=object)]
    names += [f"de_novo_{k}" for k in range(int(guided["n_denovo"]))]
    if programme not in names:
        close = [n for n in names if str(programme).lower() in n.lower()][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else " (guided.csv lists them)"
        raise ValueError(f"this run has no programme named {programme!r}{hint}")
    return names.index(programme)


def perturb(model: BetaVAE, prepared: Prepared, rotation: np.ndarray, where: Target, genes: list[str],
            value: float | None = None, shift: float | None = None, cells: np.ndarray | None = None,
            batch_size: int = 4096) -> pd.DataFrame:
    """Set (``value``) or shift (``shift``) one programme's activity in the chosen cells; per gene the change.

    Parameters
    ----------
    model : the fitted model (the run's first fit).
    prepared : the cells' counts and covariates (``CellsAdapter.prepare``), n_cells rows.
    rotation : (n_latent, n_latent) orthogonal rotation from latents to programme activities.
    where : the programme's component and sign (:func:`target`).
    genes : names of the model's genes (n_genes), for the table.
    value, shift : exactly one: the activity the programme is set to, or added to it (activity units: the
        run's ``obsm["X_sciencevae"]``, ~ standard deviations of the posterior means).
    cells : (n_cells,) bool selection of the cells to perturb (default all).

    Returns
    -------
    DataFrame, one row per gene sorted by decreasing |log2_fold_change|: ``gene``, ``before`` and ``after``
    (mean expected expression over the chosen cells, per 10,000 counts), ``difference`` (after - before)
    and ``log2_fold_change`` (log2 of after / before, of the means).

    Raises
    ------
    ValueError : neither or both of value and shift, no chosen cell, or a rotation of the wrong shape.
    """
    if (value is None) == (shift is None):
        raise ValueError("give exactly one of value (set the activity) and shift (add to it)")
    if not np.isfinite(value if value is not None else shift):
        raise ValueError(f"the {'value' if value is not None else 'shift'} must be a finite number, got "
                         f"{value if value is not None else shift}")
    n_latent = model.config.n_latent
    rotation = np.asarray(rotation, dtype=np.float64)
    if rotation.shape != (n_latent, n_latent):
        raise ValueError(f"the rotation must be ({n_latent}, {n_latent}) for this model, got {rotation.shape}")
    chosen = np.flatnonzero(np.ones(prepared.n_obs, bool) if cells is None else np.asarray(cells, bool))
    if not len(chosen):
        raise ValueError("no cell is chosen to perturb: the selection is empty")
    before, after = np.zeros(len(genes)), np.zeros(len(genes))
    seen, reached = [np.inf, -np.inf], [np.inf, -np.inf]  # the programme's activity before and after
    for start in range(0, len(chosen), batch_size):
        rows = chosen[start:start + batch_size]
        part = subset_rows(prepared, rows)
        activity = model.encode(part) @ rotation
        moved = activity.copy()
        column = activity[:, where.component]
        moved[:, where.component] = where.sign * value if value is not None else column + where.sign * shift
        for bounds, values in ((seen, where.sign * column), (reached, where.sign * moved[:, where.component])):
            bounds[:] = [min(bounds[0], values.min()), max(bounds[1], values.max())]
        size = np.full(len(rows), PER_COUNTS)
        before += model.decode(activity @ rotation.T, part.covariates, size).sum(0)
        after += model.decode(moved @ rotation.T, part.covariates, size).sum(0)
    before, after = before / len(chosen), after / len(chosen)
    margin = EXTRAPOLATION * max(seen[1] - seen[0], 1.0)
    if reached[0] < seen[0] - margin or reached[1] > seen[1] + margin:
        warnings.warn(f"the perturbation takes programme {where.programme} to {reached[0]:.3g} .. {reached[1]:.3g}, far "
                      f"beyond its activities in these cells ({seen[0]:.3g} .. {seen[1]:.3g}): the decoder "
                      "extrapolates there, so read the changes as directions, not sizes", UserWarning, stacklevel=2)
    table = pd.DataFrame({"gene": list(genes), "before": before, "after": after, "difference": after - before,
                          "log2_fold_change": np.log2(np.maximum(after, 1e-30) / np.maximum(before, 1e-30))})
    order = np.argsort(-np.abs(table["log2_fold_change"].to_numpy()), kind="stable")
    return table.iloc[order].reset_index(drop=True)


def chosen_cells(obs: pd.DataFrame, spec: str | np.ndarray | None) -> np.ndarray | None:
    """A bool selection of cells from ``"KEY:GROUP"`` (the cells whose obs column KEY is GROUP), a bool array,
    or None (all). Raises ``ValueError`` (one line) for a missing column or group.

    >>> chosen_cells(pd.DataFrame({"kind": ["B", "T", "B"]}), "kind:B").tolist()
    [True, False, True]
    """
    if spec is None or not isinstance(spec, str):
        return spec
    key, _, group = spec.partition(":")
    if not group:
        raise ValueError(f"cells are chosen as KEY:GROUP (an obs column and one of its groups), got {spec!r}")
    check_comparison(obs, key, group)  # the same column and group checks as a comparison's
    return obs[key].astype(str).to_numpy() == group


def perturb_run(run_dir, programme: int | str, value: float | None = None, shift: float | None = None,
                cells: str | np.ndarray | None = None) -> pd.DataFrame:
    """:func:`perturb` on a saved ``sciencevae cells`` run folder (its model/, adapter.json and cells.h5ad),
    without retraining; ``cells`` as in :func:`chosen_cells`."""
    import anndata as ad

    from sciencevae.adapters.cells import UNS_KEY, CellsAdapter
    from sciencevae.io import load

    from .gene_programmes import names_or_ids
    from .reference_mapping import check_cells_run

    run = check_cells_run(run_dir)
    adata = ad.read_h5ad(run / "cells.h5ad", backed="r")  # the counts are read a chunk of cells at a time
    adapter = CellsAdapter.load(run / "adapter.json")
    uns = adata.uns[UNS_KEY]
    params = uns.get("params", {})
    n_programmes = int(np.asarray(adata.obsm["X_sciencevae"]).shape[1])
    names = names_or_ids(adata, adapter, params.get("gene_symbols"))
    return perturb_parts(load(run / "model"), prepared_cells(adapter, adata), uns, n_programmes, names, programme,
                         value, shift, chosen_cells(adata.obs, cells))


def prepared_cells(adapter, adata) -> Prepared:
    """The cells of a run as the model reads them; a mapped query's batches the model never saw get no batch and
    the genes it lacks are zeros, as when it was mapped (:mod:`.reference_mapping`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fitted genes are missing.*")
        return adapter.prepare(adata, missing_genes="zero", unseen_categories="zero")


def perturb_parts(model: BetaVAE, prepared: Prepared, uns: dict, n_programmes: int, names: list[str],
                  programme: int | str, value: float | None, shift: float | None, cells: np.ndarray | None
                  ) -> pd.DataFrame:
    """:func:`perturb` with the target and rotation read from a run's ``uns["sciencevae"]``; ``programme`` a
    number or a guided run's programme name (:func:`programme_number`)."""
    given, programme = programme, programme_number(uns, programme)
    where = target(uns, programme, n_programmes)
    status = np.asarray(uns.get("guided", {}).get("status", []), dtype=object)
    if programme < len(status) and status[programme] == "inactive":
        name = f"programme {programme}" if str(given) == str(programme) else f"{given} (programme {programme})"
        warnings.warn(f"{name} is inactive in this run (guided.csv): its activity does not vary "
                      "between cells and its loadings are noise, so the changes mean little", UserWarning,
                      stacklevel=2)
    found = uns.get("consensus")
    rotation = np.asarray(found["rotations"])[0] if found is not None else np.asarray(uns["rotation"])
    return perturb(model, prepared, rotation, where, names, value=value, shift=shift, cells=cells)
