"""scvi-tools' LinearSCVI on the same simulated programmes as gene_programmes.py.

Runs in its own environment (scvi-tools < 1.4.3 on Python 3.11), e.g.

    python -m venv scvi-venv && scvi-venv/bin/pip install torch==2.13.0 'scvi-tools<1.4.3'
    scvi-venv/bin/pip install -e .
    scvi-venv/bin/python benchmarks/linear_scvi.py --threads 1

and prints rows in the format of gene_programmes.py (same seeds, sizes, scores).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anndata as ad
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gene_programmes import arguments, print_summary, scores  # noqa: E402

from sciencevae.case_studies.gene_programmes import varimax  # noqa: E402
from sciencevae.datasets import cell_programmes  # noqa: E402


def linear_scvi(sim: dict, k: int, epochs: int, seed: int):
    import scvi

    scvi.settings.seed = seed
    obs = pd.DataFrame({"batch": sim["batch"].astype(str)}, index=[f"c{i}" for i in range(sim["counts"].shape[0])])
    adata = ad.AnnData(sim["counts"].copy(), obs=obs)
    scvi.model.LinearSCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.LinearSCVI(adata, n_latent=k)
    model.train(max_epochs=epochs, batch_size=128, accelerator="cpu", early_stopping=False,
                enable_progress_bar=False)
    return model.get_loadings().to_numpy(), model.get_latent_representation()


def main() -> None:
    args = arguments(__doc__.splitlines()[0], threads=1)
    import scvi

    rows = []
    for seed in args.seeds:
        sim = cell_programmes(args.cells, seed=seed)
        for k in args.components:
            started = time.perf_counter()
            weights, usage = linear_scvi(sim, k, args.epochs, seed)
            seconds = time.perf_counter() - started
            rows.append({"method": f"LinearSCVI {scvi.__version__}", "k": k, **scores(weights, usage, sim, True),
                         "seconds": seconds})
            rotation = varimax(weights)
            rows.append({"method": f"LinearSCVI {scvi.__version__} + varimax", "k": k,
                         **scores(weights @ rotation, usage @ rotation, sim, True), "seconds": seconds})
    print_summary(rows)


if __name__ == "__main__":
    main()
