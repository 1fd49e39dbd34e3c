"""Spectra on the guided-programme simulation of ``guided_programmes.py`` (same seeds, sets and scores).

Runs in its own environment, e.g.

    python -m venv spectra-venv && spectra-venv/bin/pip install torch==2.13.0 scSpectra
    spectra-venv/bin/pip install --no-deps -e .

and is called by ``guided_programmes.py --spectra-python spectra-venv/bin/python``; it prints one JSON row
per seed. Spectra (``Spectra.est_spectra``, global gene sets, no cell types) gets log-normalised counts
(``normalize_total`` + ``log1p``, as its tutorial), ``L`` = sets + 4 factors and its defaults otherwise; a
factor is named after the set its labelling gives it (overlap coefficient of its top 50 markers with a
set above its threshold).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guided_programmes import arguments, scores, simulation  # noqa: E402


def run_spectra(seed: int, args) -> dict:
    import scanpy as sc
    from Spectra import Spectra

    sim, sets, kind, adata = simulation(seed, args.cells, args.genes)
    torch.manual_seed(seed)
    np.random.seed(seed)
    started = time.perf_counter()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    model = Spectra.est_spectra(adata, sets, L=len(sets) + args.n_free, use_highly_variable=False, use_cell_types=False,
                                num_epochs=args.spectra_epochs, verbose=False)
    seconds = time.perf_counter() - started
    factors = np.asarray(model.factors)  # factors x genes
    labels = [str(name).split("-X-")[-1] for name in adata.uns["SPECTRA_overlap"].index]
    named, free = {}, []
    for label, loadings in zip(labels, factors):
        if label in sets and label not in named:
            named[label] = loadings
        else:
            free.append(loadings)
    return {"method": "Spectra", "seed": seed, **scores(named, free, sim, kind), "seconds": seconds}


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        print(json.dumps(run_spectra(seed, args)), flush=True)


if __name__ == "__main__":
    main()
