"""Gene-set-guided programmes: gene sets as a prior in the model, not only afterwards.

Programme k of ``n_sets`` guided ones is softly confined to gene set k: the
linear decoder's loadings of genes outside the set carry an L1 penalty
(:data:`GUIDE_PENALTY`, times :func:`count_scale`), those inside none, so a set's genes explain the data
for free and a gene outside enters only when the data insist (the soft mask
of expiMap, Lotfollahi et al. 2023, Nat Cell Biol 25:337). ``n_denovo`` free
programmes follow for what no set covers; their loadings pay the same penalty
on genes some set already claims and a smaller one (:data:`DENOVO_PENALTY`)
on the others, so that a de-novo programme never takes over a set's
programme, and an uncovered programme goes to a de-novo one rather than
bending a guided one. Over the KL warm-up (:func:`guided_warmup`) a guided
programme's penalty falls from :data:`PENALTY_START` times its strength to its
own, so that each programme first settles inside its set.

After training, each guided programme is oriented so that its set's genes
load positively, and described (:func:`guided_table`): whether it is active in
these data (the variance over cells of its posterior means is at least
:data:`ACTIVE_VARIANCE`), the genes it added to its set and
dropped from it (a gene is in a programme when the programme raises it: its
loading is at least :data:`IN_PROGRAMME` of the programme's largest), and whether the data
refined the set (genes added or dropped), corrected it (fewer than half of
the programme's genes are in the set) or replaced it (none are: the set's name
does not describe the programme).

>>> prior = gene_set_prior(["a", "b", "c", "d", "e", "f"], {"S": ["a", "b", "x"]}, n_denovo=1, min_size=2)
>>> prior.names, prior.given, prior.penalty().shape
(['S'], [3], (6, 2))
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sciencevae.consensus import Consensus, consensus, orient
from sciencevae.streaming import column_means

__all__ = ["GeneSetPrior", "gene_set_prior", "set_members", "guided_rotation", "guided_table", "guided_notes",
           "guided_consensus", "count_scale", "guided_warmup", "GUIDE_PENALTY", "PENALTY_START", "DENOVO_PENALTY",
           "IN_PROGRAMME", "MOVES_WITH", "N_DENOVO", "ACTIVE_VARIANCE"]

#: L1 penalty on a guided programme's loadings of genes outside its set (nats per cell per unit loading).
GUIDE_PENALTY = 0.1
#: A guided programme's penalty outside its set starts this many times stronger and falls to its own over
#: the KL warm-up (:meth:`GeneSetPrior.penalty`, :meth:`sciencevae.objectives.Objective.penalty_anneal`): on
#: the hard simulation at 10,000 cells, without it an incomplete set's programme went into another set's
#: latent. The de-novo programmes' penalties do not start stronger: so penalised, their latents could die
#: before they found the uncovered programme (simulation), and on CellBench Hallmark sets took up the cell
#: lines (ten sets active instead of six, ESTROGEN_RESPONSE for keratins).
PENALTY_START = 3.0
#: L1 penalty on a de-novo programme's loadings of genes no given set claims (claimed genes: GUIDE_PENALTY).
DENOVO_PENALTY = 0.03
#: A gene is in a programme when its loading is at least this share of the programme's largest loading.
IN_PROGRAMME = 0.2
#: A programme is active when the variance over cells of its activity (posterior means; the prior's is 1) is at
#: least this: 0.2, about 0.1 nats of KL per cell. Real programmes of the hard simulation, the weak one in 10% of
#: cells included, reach 0.5-1.3; a decoy set fitted noise to 0.10 on 1,500 cells. Burda et al.'s 0.01 (the
#: collapse criterion of :mod:`sciencevae.diagnostics`) says only that a latent is not entirely unused.
ACTIVE_VARIANCE = 0.2
#: A de-novo programme moves with a guided one when their activities correlate at least this much over cells
#: (Pearson): the set likely lacks the de-novo programme's genes (on the hard simulation at 10,000 cells, half
#: of an incomplete set's programme went to a de-novo one at r = 0.64; other pairs stayed within 0.25).
MOVES_WITH = 0.5
#: De-novo programmes by default: on CellBench (5 cell lines, 48 Hallmark and cell-cycle sets) 5 were too few for
#: the cell lines, sex, mitochondrial and cancer-testis programmes, which then bent guided ones; 10 held them.
N_DENOVO = 10


def set_members(genes, gene_sets: dict[str, list[str]], min_size: int = 5
                ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Per gene set, a bool mask over ``genes`` of its members; sets with fewer than ``min_size`` of their
    genes among ``genes`` are left out, returned second (name -> genes found) and named in a warning.

    >>> kept, small = set_members(["a", "b", "c"], {"S": ["a", "b"], "T": ["c", "z"]}, min_size=2)
    >>> {k: v.tolist() for k, v in kept.items()}, small
    ({'S': [True, True, False]}, {'T': 1})
    """
    genes = np.asarray([str(g) for g in genes])
    position = pd.Index(genes)
    members = {}
    for name, listed in gene_sets.items():
        found = position.get_indexer(pd.unique(np.asarray([str(g) for g in listed], dtype=object)))
        mask = np.zeros(len(genes), bool)
        mask[found[found >= 0]] = True
        members[name] = mask
    small = {name: int(m.sum()) for name, m in members.items() if m.sum() < min_size}
    if small and len(small) < len(members):
        shown = ", ".join(f"{name} ({n})" for name, n in list(small.items())[:5]) + (" ..." if len(small) > 5 else "")
        warnings.warn(f"{len(small)} of {len(gene_sets)} gene sets have fewer than {min_size} of their genes among the "
                      f"modelled genes and are left out: {shown}", UserWarning, stacklevel=3)
    return {name: m for name, m in members.items() if name not in small}, small


@dataclass
class GeneSetPrior:
    """The gene sets that guide programmes ``0 .. n_sets - 1`` (``membership``: genes x sets, bool; ``given``:
    genes listed per set, before matching), followed by ``n_denovo`` free programmes."""

    names: list[str]
    membership: np.ndarray
    given: list[int]
    n_denovo: int

    @property
    def n_latent(self) -> int:
        return len(self.names) + self.n_denovo

    def penalty(self, outside: float = GUIDE_PENALTY, denovo: float = DENOVO_PENALTY,
                scale: np.ndarray | None = None, start: float = 1.0) -> np.ndarray:
        """(genes, n_latent) L1 penalty per loading: 0 inside a guided programme's set, ``outside`` outside
        it; for de-novo programmes ``outside`` on genes some set claims and ``denovo`` on the others; each
        gene's row times ``scale`` (genes,) when given (:func:`count_scale`). ``start`` (the penalty at the
        first step, :data:`PENALTY_START`): a guided programme's penalty outside its set times ``start``; the
        de-novo programmes' as they are, free from the start to find what the sets miss.

        >>> prior = GeneSetPrior(["S"], np.array([[True], [False]]), [1], n_denovo=1)
        >>> prior.penalty(start=3.0).astype(float).round(2).tolist()
        [[0.0, 0.1], [0.3, 0.03]]
        """
        claimed = self.membership.any(axis=1, keepdims=True)
        free = np.where(claimed, outside, denovo)
        out = np.c_[np.where(self.membership, 0.0, outside * start), np.repeat(free, self.n_denovo, axis=1)]
        if scale is not None:
            out = out * scale[:, None]
        return out.astype(np.float32)


def count_scale(counts) -> np.ndarray:
    """(genes,) the square root of each gene's mean count over the mean over genes: the scale of each gene's
    penalty. A loading's gradient noise grows so with the gene's counts, so a highly expressed gene (the
    mitochondrial ones) needs as much evidence as a rare one to join a set; without it, on CellBench,
    mitochondrial genes took over the G2M-checkpoint programme (and with the mean count itself, not its
    square root, rare genes joined sets freely). ``counts``: (cells, genes), a matrix, Prepared or Streamed.

    >>> count_scale(np.array([[1.0, 4.0], [1.0, 4.0]])).round(3).tolist()
    [0.632, 1.265]
    """
    mean = column_means(counts)
    return np.sqrt(mean / max(mean.mean(), 1e-12))


def gene_set_prior(genes, gene_sets: dict[str, list[str]], n_denovo: int = N_DENOVO,
                   min_size: int = 5) -> GeneSetPrior:
    """The :class:`GeneSetPrior` of ``gene_sets`` (name -> genes) over the modelled ``genes``.

    Raises ``ValueError`` when ``n_denovo`` is negative or no set has ``min_size`` of its genes among
    ``genes``; smaller sets are left out with a warning naming them.
    """
    if not isinstance(n_denovo, (int, np.integer)) or n_denovo < 0:
        raise ValueError(f"n_denovo must be an integer >= 0, got {n_denovo!r}")
    members, _ = set_members(genes, gene_sets, min_size)
    if not members:
        raise ValueError(f"no gene set has {min_size} or more of its genes among the {len(genes)} modelled genes, so "
                         "nothing can guide the programmes; if the sets use gene symbols and var_names do not, pass "
                         "--gene-symbols COLUMN (gene_symbols=)")
    names = list(members)
    return GeneSetPrior(names=names, membership=np.stack([members[n] for n in names], axis=1),
                        given=[len(set(gene_sets[n])) for n in names], n_denovo=int(n_denovo))


def guided_warmup(n_cells: int, epochs: int, batch_size: int, validation: float = 0.1) -> int:
    """Training steps of the KL warm-up of a guided fit: the first half of the steps. Without it a weak
    programme's latent (the hard simulation's stress programme, in 10% of cells) collapsed before it
    found its genes in one of three seeds, and the programmes competed for the uncovered one; a warm-up over
    all of training left a spare de-novo latent active (its KL not settled).

    >>> guided_warmup(3000, 400, 128)
    4400
    """
    n_train = n_cells - int(n_cells * validation)
    return int(epochs * math.ceil(n_train / min(batch_size, n_train)) // 2)


def guided_rotation(weights: np.ndarray, prior: GeneSetPrior, rotation: np.ndarray | None) -> np.ndarray:
    """(latents, latents): a sign per guided programme, so that its set's genes load positively on the whole,
    and ``rotation`` (e.g. varimax of the de-novo loadings; identity when None) for the de-novo ones, each
    then signed so that its largest loadings are positive (:func:`sciencevae.consensus.orient`)."""
    n_sets = len(prior.names)
    inside = np.sum(np.where(prior.membership, weights[:, :n_sets], 0.0), axis=0)
    turn = np.zeros((prior.n_latent, prior.n_latent))
    turn[:n_sets, :n_sets] = np.diag(np.where(inside < 0, -1.0, 1.0))
    rotation = np.eye(prior.n_denovo) if rotation is None else rotation
    turn[n_sets:, n_sets:] = rotation * orient(weights[:, n_sets:] @ rotation)
    return turn


def _listed(genes: np.ndarray, weights: np.ndarray, picked: np.ndarray, n_listed: int) -> str:
    """The ``picked`` genes, largest |weight| first, at most ``n_listed``."""
    order = np.flatnonzero(picked)[np.argsort(-np.abs(weights[picked]))]
    return ",".join(genes[order[:n_listed]])


def _status(active: bool, guided: bool, in_set: float, changed: bool) -> str:
    if not active:
        return "inactive"
    if not guided:
        return "active"
    if in_set == 0:
        return "replaced"
    return "corrected" if in_set < 0.5 else ("refined" if changed else "active")


def guided_consensus(loadings: list[np.ndarray], latents: list[np.ndarray], n_sets: int) -> Consensus:
    """The consensus of several guided fits (``loadings[i]``: genes x programmes, ``latents[i]``: cells x
    programmes of fit i, oriented by :func:`guided_rotation`; the first ``n_sets`` programmes guided).

    A guided programme is its set's in every fit, so its members are its own column in the fits where it is
    active (activity variance at least :data:`ACTIVE_VARIANCE`; every fit when fewer than two): its loadings
    are the median over fits, its activity the mean over its members, ``found`` the share of fits in which it
    is active, and its stability the mean over pairs of fits of the correlation of its loadings (0 for a pair
    where it is inactive in either fit: the set's programme was not found there).
    The de-novo programmes are clustered across fits as in an unguided run
    (:func:`sciencevae.consensus.consensus`) and follow the guided ones; those no two fits share are dropped.

    >>> rng = np.random.default_rng(0)
    >>> w = [np.c_[np.r_[np.ones(5), np.zeros(5)] + rng.normal(0, .1, 10), rng.normal(0, 1, 10)] for _ in range(3)]
    >>> z = [np.c_[rng.normal(size=50), rng.normal(size=50) * 0.1] for _ in range(3)]
    >>> found = guided_consensus(w, z, n_sets=1)
    >>> found.loadings.shape, found.found.tolist(), bool(found.stability[0] > 0.9)
    ((10, 1), [1.0], True)
    """
    n_fits = len(loadings)
    stack = np.stack([np.asarray(w, dtype=float)[:, :n_sets] for w in loadings])  # fits, genes, sets
    active = np.stack([np.asarray(z)[:, :n_sets].var(axis=0) >= ACTIVE_VARIANCE for z in latents])
    median = np.median(stack, axis=0)
    correlation = np.array([[_pearson(stack[f, :, j], median[:, j]) for j in range(n_sets)] for f in range(n_fits)])
    stability = np.zeros(n_sets)
    for j in range(n_sets):
        pairs = [_pearson(stack[f, :, j], stack[g, :, j]) if active[f, j] and active[g, j] else 0.0
                 for f in range(n_fits) for g in range(n_fits) if f != g]
        stability[j] = np.mean(np.maximum(pairs, 0.0))
    # its activity is the mean over the fits where it is active (where it is in fewer than two, over all:
    # mostly noise, so it comes out inactive, as a programme no two fits share is dropped from a consensus)
    counted = active | (active.sum(axis=0, keepdims=True) < min(2, n_fits))
    members = np.where(counted, np.arange(n_sets), -1)
    signs = np.where(counted, 1.0, 0.0)
    parts = [(members, signs, median, correlation, stability)]
    if loadings[0].shape[1] > n_sets:
        try:
            free = consensus([np.asarray(w)[:, n_sets:] for w in loadings])
        except ValueError:  # no de-novo programme found again
            free = None
        if free is not None:
            parts.append((np.where(free.members >= 0, free.members + n_sets, -1), free.signs, free.loadings,
                          free.correlation, free.stability))
    members, signs, median, correlation, stability = (np.concatenate(x, axis=-1) for x in zip(*parts))
    found = np.r_[active.mean(axis=0), (members[:, n_sets:] >= 0).mean(axis=0)]
    return Consensus(loadings=median, members=members, signs=signs, correlation=correlation, found=found,
                     stability=stability)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors; 0 when either is constant (an all-zero loading column)."""
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def guided_table(weights: np.ndarray, latents: np.ndarray, kl: np.ndarray, prior: GeneSetPrior, genes,
                 n_listed: int = 20) -> pd.DataFrame:
    """One row per programme (guided first, then de novo): programme, name (the set, or ``de_novo_<i>``),
    kind, set_size_given, set_size (genes of the set among the modelled genes), activity_variance (of the
    posterior means over cells), kl_nats, active (activity_variance >= :data:`ACTIVE_VARIANCE`), n_genes
    (genes the programme raises: loading at least :data:`IN_PROGRAMME` of its largest; genes it lowers, with
    negative loadings, are neither kept nor added), n_added / added (genes in the programme, not in the set; at most
    ``n_listed``, largest first), n_dropped / dropped (set genes not in the programme), in_set_share (share
    of the programme's genes in its set), status: ``inactive`` (it holds no genes, so all of its set is
    dropped); ``replaced`` (none of its genes in its set: the set's name does not describe it);
    ``corrected`` (fewer than half of its genes in its set); ``refined`` (genes added or dropped,
    most in the set); ``active`` (exactly its set), and for an active de-novo programme moves_with: the
    active guided programme whose activity correlates with its own at r >= :data:`MOVES_WITH` ("" if none;
    the set likely lacks the de-novo programme's genes).

    ``weights`` (genes x programmes) and ``latents`` (cells x programmes) are oriented
    (:func:`guided_rotation`); ``kl`` is per latent before rotation, reported for the guided programmes
    (whose rotation only flips signs; NaN for the de-novo ones, which are rotated among themselves).
    """
    genes = np.asarray([str(g) for g in genes])
    variance = latents.var(axis=0)
    rows = []
    for j in range(prior.n_latent):
        w = weights[:, j]
        strong = w >= IN_PROGRAMME * w.max() if w.max() > 0 else np.zeros(len(w), bool)  # the raised genes
        guided = j < len(prior.names)
        member = prior.membership[:, j] if guided else np.zeros(len(w), bool)
        active = bool(variance[j] >= ACTIVE_VARIANCE)
        strong &= active  # an inactive programme's loadings are noise: it holds no genes
        in_set = float(np.sum(strong & member) / strong.sum()) if guided and active else np.nan
        status = _status(active, guided, in_set, bool(np.any(strong != member)))
        rows.append({"programme": j, "name": prior.names[j] if guided else f"de_novo_{j - len(prior.names)}",
                     "kind": "guided" if guided else "de novo",
                     "set_size_given": prior.given[j] if guided else 0, "set_size": int(member.sum()),
                     "activity_variance": float(variance[j]), "kl_nats": float(kl[j]) if guided else np.nan,
                     "active": active,
                     "status": status, "n_genes": int(strong.sum()),
                     "n_added": int(np.sum(strong & ~member)) if guided else 0,
                     "added": _listed(genes, w, strong & ~member, n_listed) if guided else "",
                     "n_dropped": int(np.sum(member & ~strong)),
                     "dropped": _listed(genes, w, member & ~strong, n_listed), "in_set_share": in_set})
    table = pd.DataFrame(rows)
    return table.assign(moves_with=_moves_with(latents, table, len(prior.names)))


def _moves_with(latents: np.ndarray, table: pd.DataFrame, n_sets: int) -> list[str]:
    """Per programme, the active guided programme an active de-novo one moves with (``""`` if none)."""
    active = table["active"].to_numpy(dtype=bool)
    out = [""] * len(table)
    guided = np.flatnonzero(active[:n_sets])
    for j in np.flatnonzero(active[n_sets:]) + n_sets:
        if len(guided):
            r = np.array([_pearson(latents[:, j], latents[:, g]) for g in guided])
            if r.max() >= MOVES_WITH:
                out[j] = str(table.loc[guided[r.argmax()], "name"])
    return out


def guided_notes(table: pd.DataFrame | None, of_reference: bool = False) -> list[str]:
    """Plain-words notes on guided programmes the data did not support, corrected or replaced; for a run mapped
    onto a guided reference (``of_reference``) each says that it is about the reference's data."""
    if table is None:
        return []
    if of_reference:
        return [f"in the reference run: {note}" for note in guided_notes(table)]
    notes = []
    guided = table[table["kind"] == "guided"]
    for status, words in (("inactive", "inactive in these data (their programme does not vary between cells, or "
                                       "another programme explains it)"),
                          ("corrected", "corrected by the data (fewer than half of each programme's genes are in "
                                        "its set: see added/dropped in guided.csv)"),
                          ("replaced", "replaced by the data (none of each programme's genes are in its set: do not "
                                       "read the programme by the set's name)")):
        hit = guided[guided["status"] == status]
        if len(hit):
            listed = ", ".join(hit["name"].astype(str).head(10)) + (" ..." if len(hit) > 10 else "")
            notes.append(f"{len(hit)} of {len(guided)} gene sets are {words}: {listed}")
    denovo = table[(table["kind"] == "de novo") & table["active"]]
    for _, row in denovo[denovo["moves_with"] != ""].iterrows():
        notes.append(f"{row['name']} moves with {row['moves_with']} (their activities correlate over cells): "
                     f"{row['moves_with']}'s set may lack {row['name']}'s genes")
    free = denovo[denovo["moves_with"] == ""]
    if len(free):
        notes.append(f"{len(free)} de-novo programme{'s' if len(free) > 1 else ''} "
                     f"({', '.join(free['name'])}) found what no given set covers")
    return notes
