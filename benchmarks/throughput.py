"""Training throughput and held-out ELBO: sciencevae against scvi-tools on the same counts.

Same synthetic NB counts (`sciencevae.datasets.cell_programmes`, 2,000 genes),
same model size (one hidden layer of 128, 10 latents, NB, linear decoder for
both sciencevae and LinearSCVI; an MLP decoder for SCVI), same epochs and batch
size, 10% of the cells held out. Reports cells/s per epoch (training cells ×
epochs / seconds) and the held-out negative ELBO per cell (reconstruction
summed over genes + KL; lower is better), and the ratio to each peer from the
same run. Needs scvi-tools in the environment (see linear_scvi.py).

    python benchmarks/throughput.py --cells 10000 --epochs 5 --threads 2
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sciencevae import BetaVAE
from sciencevae.datasets import cell_programmes


def split(sim: dict, seed: int = 0):
    n = sim["counts"].shape[0]
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[: n // 10], order[n // 10:]
    return sim["counts"][train], sim["counts"][test]


def ours(train, test, epochs: int, batch_size: int) -> dict:
    vae = BetaVAE(train.shape[1], n_latent=10, likelihood="nb", decoder="linear", hidden=(128,))
    started = time.perf_counter()
    vae.fit(train, epochs=epochs, batch_size=batch_size, validation=0.0, progress=False)
    seconds = time.perf_counter() - started
    return {"cells_per_s": train.shape[0] * epochs / seconds, "heldout_neg_elbo": vae.evaluate(test)["neg_elbo"],
            "seconds": seconds}


def scvi_model(kind: str, train, test, epochs: int, batch_size: int) -> dict:
    import scvi

    adata = ad.AnnData(train.copy())
    held = ad.AnnData(test.copy())
    model_class = scvi.model.LinearSCVI if kind == "LinearSCVI" else scvi.model.SCVI
    model_class.setup_anndata(adata)
    model = model_class(adata, n_latent=10, n_hidden=128, n_layers=1, gene_likelihood="nb")
    started = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=batch_size, accelerator="cpu", early_stopping=False,
                train_size=1.0, enable_progress_bar=False)
    seconds = time.perf_counter() - started
    model_class.setup_anndata(held)
    elbo = float(model.get_elbo(held))  # scvi-tools returns the ELBO itself ("higher is better")
    return {"cells_per_s": train.shape[0] * epochs / seconds, "heldout_neg_elbo": -elbo, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10000])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import scvi

    print(f"torch {torch.__version__}, scvi-tools {scvi.__version__}, threads {args.threads}, CPU, "
          f"{args.epochs} epochs, batch {args.batch_size}")
    print("| cells | method | cells/s | held-out −ELBO per cell | seconds | our speed-up |\n|---|---|---|---|---|---|")
    for n in args.cells:
        train, test = split(cell_programmes(n, n_genes=2000, genes_per_programme=100))
        rows = {"sciencevae (NB, linear)": ours(train, test, args.epochs, args.batch_size)}
        for kind in ("LinearSCVI", "SCVI"):
            rows[kind] = scvi_model(kind, train, test, args.epochs, args.batch_size)
        base = rows["sciencevae (NB, linear)"]["cells_per_s"]
        for name, row in rows.items():
            print(f"| {n} | {name} | {row['cells_per_s']:.0f} | {row['heldout_neg_elbo']:.1f} | "
                  f"{row['seconds']:.1f} | {base / row['cells_per_s']:.2f}× |")


if __name__ == "__main__":
    main()
