"""Gene-set-guided programmes against Spectra, on the hard simulation with deliberately wrong gene sets.

Data: ``sciencevae.datasets.hard_programmes`` (6 identity + 3 activity programmes, overlapping genes,
batches) with the sets of ``given_gene_sets``: correct sets for six programmes, an incomplete set (half of
identity_2's genes), a noisy set (interferon: three fifths of its genes and two fifths of genes in no
programme), a decoy set of genes in no programme, and no set for identity_5. Both methods get the same
counts, sets and number of free programmes (4): sciencevae ``cells --guided --n-denovo 4``, and, with
``--spectra-python``, Spectra (Kunes et al. 2024, the ``scSpectra`` package; ``L`` = sets + 4, its
defaults otherwise, log-normalised counts) run by ``spectra_guided.py`` in its own environment.

Scores per seed: ``named_auroc``, the mean over the eight real sets of the AUROC of the programme's true
genes from the loadings of the component the method names after the set (Spectra: the factor its
labelling names after it; 0.5 when none is); the same for the incomplete and the noisy set alone;
``decoy_named``, whether a component is named after the decoy (a false claim); ``uncovered_auroc``,
the best AUROC of identity_5's genes over the components not named after a set (de novo / unlabelled);
seconds of wall time. Not run by the tests.

    python benchmarks/guided_programmes.py --threads 2 --spectra-python ../spectra-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from sciencevae.datasets import given_gene_sets, hard_programmes

N_FREE = 4


def simulation(seed: int, n_cells: int, n_genes: int) -> tuple[dict, dict, dict, ad.AnnData]:
    """The simulation, its given sets and what each set is, and the counts as an AnnData (batch in obs)."""
    sim = hard_programmes(n_cells, n_genes=n_genes, seed=seed)
    genes = [f"g{i:04d}" for i in range(n_genes)]
    sets, kind = given_gene_sets(sim["membership"], sim["names"], genes, seed=seed)
    adata = ad.AnnData(sim["counts"])
    adata.var_names, adata.obs["batch"] = genes, sim["batch"].astype(str)
    return sim, sets, kind, adata


def scores(named: dict[str, np.ndarray], free: list[np.ndarray], sim: dict, kind: dict) -> dict:
    """The scores of the module docstring from the loadings of the components named after each set
    (``named``: set -> genes' loadings) and of the others (``free``)."""
    truth, names = sim["membership"], sim["names"]

    def auroc(name: str) -> float:
        w = named.get(name)
        return 0.5 if w is None else float(roc_auc_score(truth[:, names.index(name)], w))

    real = [name for name in kind if name != "decoy"]
    uncovered = truth[:, names.index("identity_5")]
    return {"named_auroc": float(np.mean([auroc(n) for n in real])), "incomplete_auroc": auroc("identity_2"),
            "noisy_auroc": auroc("interferon"), "decoy_named": "decoy" in named,
            "uncovered_auroc": max([float(roc_auc_score(uncovered, w)) for w in free], default=0.5)}


def run_ours(seed: int, args: argparse.Namespace) -> dict:
    from sciencevae.case_studies import gene_programmes as gp  # here: spectra_guided.py runs without it

    sim, sets, kind, adata = simulation(seed, args.cells, args.genes)
    started = time.perf_counter()
    res = gp.run(adata, batch_key="batch", gene_sets=sets, guided=True, n_denovo=args.n_free, n_top_genes=None,
                 progress=False, seed=seed)
    seconds = time.perf_counter() - started
    table = res.guided
    named = {row["name"]: res.weights[:, row["programme"]] for _, row in table.iterrows()
             if row["kind"] == "guided" and row["active"]}  # an inactive programme names nothing
    free = [res.weights[:, j] for j in table.loc[(table["kind"] == "de novo") & table["active"], "programme"]]
    return {"method": "sciencevae guided", "seed": seed, **scores(named, free, sim, kind), "seconds": seconds}


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-free", type=int, default=N_FREE, help="free (de-novo) programmes of both methods")
    parser.add_argument("--spectra-python", help="python of an environment with scSpectra: adds Spectra")
    parser.add_argument("--spectra-epochs", type=int, default=10000, help="Spectra's num_epochs (its default)")
    return parser.parse_args()


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    torch.set_num_threads(args.threads)
    rows = [run_ours(seed, args) for seed in args.seeds]
    if args.spectra_python:
        command = [args.spectra_python, str(Path(__file__).with_name("spectra_guided.py")), "--cells", str(args.cells),
                   "--genes", str(args.genes), "--threads", str(args.threads), "--spectra-epochs",
                   str(args.spectra_epochs), "--n-free", str(args.n_free), "--seeds", *map(str, args.seeds)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    table = pd.DataFrame(rows)
    print(f"{args.cells} cells x {args.genes} genes, seeds {args.seeds}, {args.threads} threads")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(table.drop(columns="seed").groupby("method").mean(numeric_only=True).to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    sys.exit(main())
