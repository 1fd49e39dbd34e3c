"""Gene programmes on simulated counts with known programme genes and usages:
sciencevae (NB β-VAE, linear decoder, with and without the varimax rotation)
against PCA on log-normalised counts (plain and varimax-rotated) and NMF on
normalised counts, with the same number of components.

Scores: AUROC of each true programme's genes from the best component's
loadings (both signs for the signed methods), the Spearman correlation of each
activity's usage with the best component, and seconds. Not run by the tests.

    python benchmarks/gene_programmes.py --threads 2
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from sklearn.decomposition import NMF, PCA
from sklearn.metrics import roc_auc_score

from sciencevae.case_studies import gene_programmes as gp
from sciencevae.datasets import cell_programmes


def scores(weights: np.ndarray, usage_like: np.ndarray, sim: dict, signed: bool) -> dict:
    member = sim["membership"]
    aurocs = []
    for p in range(member.shape[1]):
        candidates = [w for w in weights.T] + ([-w for w in weights.T] if signed else [])
        aurocs.append(max(roc_auc_score(member[:, p], w) for w in candidates))
    rhos = [max(abs(spearmanr(sim["usage"][:, k], c)[0]) for c in usage_like.T) for k in range(sim["usage"].shape[1])]
    return {"min_auroc": min(aurocs), "mean_auroc": float(np.mean(aurocs)), "min_spearman": min(rhos),
            "mean_spearman": float(np.mean(rhos))}


def normalised(counts) -> np.ndarray:
    dense = counts.toarray()
    return dense / dense.sum(1, keepdims=True) * 1e4


def run_ours(sim: dict, k: int, epochs: int, seed: int, rotation: str | None = "varimax"):
    obs = pd.DataFrame({"batch": sim["batch"].astype(str)}, index=[f"c{i}" for i in range(sim["counts"].shape[0])])
    adata = ad.AnnData(sim["counts"], obs=obs)
    res = gp.run(adata, n_latent=k, batch_key="batch", n_top_genes=None, epochs=epochs, seed=seed,
                 rotation=rotation, progress=False)
    return res.weights, res.adata.obsm["X_sciencevae"], True


def run_pca(sim: dict, k: int, epochs: int, seed: int):
    model = PCA(k, random_state=seed)
    usage = model.fit_transform(np.log1p(normalised(sim["counts"])))
    return model.components_.T, usage, True


def run_pca_varimax(sim: dict, k: int, epochs: int, seed: int):
    weights, usage, signed = run_pca(sim, k, epochs, seed)
    rotation = gp.varimax(weights)
    return weights @ rotation, usage @ rotation, signed


def run_nmf(sim: dict, k: int, epochs: int, seed: int):
    model = NMF(k, init="nndsvda", max_iter=500, random_state=seed)
    usage = model.fit_transform(normalised(sim["counts"]))
    return model.components_.T, usage, False


def arguments(description: str, threads: int):
    """The command-line settings shared with linear_scvi.py."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--components", type=int, nargs="+", default=[6, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=threads)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def print_summary(rows: list[dict]) -> None:
    """Mean over seeds per method and k, as markdown rows."""
    summary = pd.DataFrame(rows).groupby(["method", "k"], sort=False).mean(numeric_only=True)
    for (method, k), row in summary.iterrows():
        print(f"| {method} | {k} | {row.min_auroc:.3f} | {row.mean_auroc:.3f} | {row.min_spearman:.3f} | "
              f"{row.mean_spearman:.3f} | {row.seconds:.1f} |")


def main() -> None:
    args = arguments(__doc__.splitlines()[0], threads=2)
    methods = (("sciencevae (NB, linear, varimax)", run_ours),
               ("sciencevae (NB, linear, no rotation)", partial(run_ours, rotation=None)),
               ("PCA (log1p CP10k)", run_pca), ("PCA + varimax", run_pca_varimax), ("NMF (CP10k)", run_nmf))
    rows = []
    for seed in args.seeds:
        sim = cell_programmes(args.cells, seed=seed)
        for k in args.components:
            for name, method in methods:
                started = time.perf_counter()
                weights, usage, signed = method(sim, k, args.epochs, seed)
                rows.append({"method": name, "k": k, "seconds": time.perf_counter() - started,
                             **scores(weights, usage, sim, signed)})
    print(f"{args.cells} cells x 500 genes, 4 identity + 2 activity programmes, 2 batches; "
          f"mean over seeds {args.seeds}; torch threads {args.threads}")
    print("| method | k | min AUROC | mean AUROC | min Spearman | mean Spearman | seconds |\n|---|---|---|---|---|---|---|")
    print_summary(rows)


if __name__ == "__main__":
    main()
