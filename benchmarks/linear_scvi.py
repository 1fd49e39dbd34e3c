"""scvi-tools' LinearSCVI and SCVI on the same simulated programmes as gene_programmes.py.

Runs in its own environment (scvi-tools < 1.4.3 on Python 3.11), e.g.

    python -m venv scvi-venv && scvi-venv/bin/pip install torch==2.13.0 'scvi-tools<1.4.3'
    scvi-venv/bin/pip install -e .

and is called by ``gene_programmes.py --scvi-python scvi-venv/bin/python``;
it prints one JSON row per method and seed (same seeds, sizes and scores).
LinearSCVI's programmes are its loadings, varimax-rotated as ours are; SCVI's
(non-linear decoder) are the correlations of its latents with log-normalised
expression, varimax-rotated.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gene_programmes import arguments, cells, normalised, scores  # noqa: E402

from sciencevae.case_studies.gene_programmes import varimax  # noqa: E402
from sciencevae.datasets import hard_programmes  # noqa: E402


def train(sim: dict, k: int, epochs: int | None, seed: int, linear: bool):
    """A fitted LinearSCVI or SCVI with the batch as its batch key; scvi-tools' defaults otherwise
    (``epochs=None``: its own rule, min(20000 / cells x 400, 400))."""
    import scvi

    scvi.settings.seed = seed
    adata = cells(sim)
    kind = scvi.model.LinearSCVI if linear else scvi.model.SCVI
    kind.setup_anndata(adata, batch_key="batch")
    model = kind(adata, n_latent=k)
    model.train(max_epochs=epochs, batch_size=128, accelerator="cpu", early_stopping=False, enable_progress_bar=False)
    return model


def programmes(sim: dict, k: int, epochs: int, seed: int, linear: bool):
    model = train(sim, k, epochs, seed, linear)
    latent = model.get_latent_representation()
    if linear:
        weights = model.get_loadings().to_numpy()
    else:
        expression = np.log1p(normalised(sim["counts"]))
        z = (latent - latent.mean(0)) / latent.std(0)
        x = (expression - expression.mean(0)) / np.maximum(expression.std(0), 1e-12)
        weights = x.T @ z / len(z)
    rotation = varimax(weights)
    return weights @ rotation, latent @ rotation, True


def main() -> None:
    args = arguments(__doc__.splitlines()[0], threads=1)
    import scvi

    for seed in args.seeds:
        sim = hard_programmes(args.cells, n_genes=args.genes, seed=seed)
        methods = ((f"LinearSCVI {scvi.__version__} + varimax", True),
                   (f"SCVI {scvi.__version__} (correlations, varimax)", False))
        for name, linear in methods:
            started = time.perf_counter()
            weights, activity, signed = programmes(sim, args.components, args.epochs, seed, linear)
            row = {"method": name, "seed": seed, "seconds": time.perf_counter() - started,
                   **scores(weights, activity, sim, signed)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
