"""Gene programmes on the hard simulation (``sciencevae.datasets.hard_programmes``):
sciencevae against PCA + varimax, NMF, cNMF (the ``cnmf`` package) and, with
``--scvi-python``, scvi-tools' LinearSCVI and SCVI run by ``linear_scvi.py`` in
their own environment — all on the same counts in one run.

Scores, with each true programme matched to its own gene list (one-to-one,
Hungarian on AUROC; a signed method's component offers two lists, its "+" and
"-" directions, as programmes.csv reports them): AUROC of the programme's
genes from the list's loadings, and for the three activity
programmes the Spearman correlation of the true usage with the component's
activity. Seconds are wall time of the whole method. Not run by the tests.

    python benchmarks/gene_programmes.py --threads 1 --scvi-python ../scvi-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import spearmanr
from sklearn.decomposition import NMF, PCA
from sklearn.metrics import roc_auc_score

from sciencevae.case_studies import gene_programmes as gp
from sciencevae.datasets import hard_programmes


def scores(weights: np.ndarray, activity: np.ndarray, sim: dict, signed: bool) -> dict:
    """Matched AUROC per programme and Spearman per activity programme, with their means."""
    member, usage = sim["membership"], sim["usage"]
    n_identities = member.shape[1] - usage.shape[1]
    auroc = np.array([[roc_auc_score(member[:, p], w) for w in weights.T] for p in range(member.shape[1])])
    if signed:  # each direction of a component is its own gene list (programmes.csv's "+" and "-")
        auroc = np.concatenate([auroc, 1 - auroc], axis=1)
        activity = np.concatenate([activity, -activity], axis=1)
    programmes, components = linear_sum_assignment(-auroc)
    matched = dict(zip(programmes, components))
    aurocs = [auroc[p, matched[p]] if p in matched else 0.5 for p in range(member.shape[1])]
    rhos = [abs(spearmanr(usage[:, a], activity[:, matched[n_identities + a]])[0])
            if n_identities + a in matched else 0.0 for a in range(usage.shape[1])]
    row = {"mean_auroc": float(np.mean(aurocs)), "min_auroc": float(np.min(aurocs)),
           "mean_spearman": float(np.mean(rhos))}
    row.update({f"auroc_{name}": a for name, a in zip(sim["names"], aurocs)})
    row.update({f"rho_{name}": r for name, r in zip(sim["names"][n_identities:], rhos)})
    return row


def cells(sim: dict) -> ad.AnnData:
    """The simulation as an AnnData with the batch in obs."""
    obs = pd.DataFrame({"batch": sim["batch"].astype(str)}, index=[f"c{i}" for i in range(sim["counts"].shape[0])])
    genes = pd.DataFrame(index=[f"g{j}" for j in range(sim["counts"].shape[1])])
    return ad.AnnData(sim["counts"].copy(), obs=obs, var=genes)


def normalised(counts) -> np.ndarray:
    dense = counts.toarray()
    return dense / dense.sum(1, keepdims=True) * 1e4


def run_ours(sim: dict, k: int, epochs: int | None, seed: int, n_fits: int = 1, device_type: str = "cpu"):
    """``device_type="cuda"``: the batch size and learning rate the case study takes on a GPU, trained here."""
    batch_size, lr = gp.device_batch_and_lr(sim["counts"].shape[0], device_type)
    res = gp.run(cells(sim), n_latent=k, batch_key="batch", n_top_genes=None, epochs=epochs, seed=seed,
                 progress=False, n_fits=n_fits, batch_size=batch_size, lr=lr)
    return res.weights, res.adata.obsm["X_sciencevae"], True


def run_pca_varimax(sim: dict, k: int, epochs: int, seed: int):
    model = PCA(k, random_state=seed)
    usage = model.fit_transform(np.log1p(normalised(sim["counts"])))
    rotation = gp.varimax(model.components_.T)
    return model.components_.T @ rotation, usage @ rotation, True


def run_nmf(sim: dict, k: int, epochs: int, seed: int):
    model = NMF(k, init="nndsvda", max_iter=500, random_state=seed)
    usage = model.fit_transform(normalised(sim["counts"]))
    return model.components_.T, usage, False


def run_cnmf(sim: dict, k: int, epochs: int, seed: int, n_iter: int = 50):
    """cNMF (Kotliar et al. 2019) with its defaults but ``n_iter`` replicates; gene spectra scores
    (z-scored loadings) and normalised usages."""
    from cnmf import cNMF

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "counts.h5ad"
        cells(sim).write_h5ad(path)
        model = cNMF(output_dir=tmp, name="bench")
        model.prepare(counts_fn=str(path), components=[k], n_iter=n_iter, seed=seed,
                      num_highvar_genes=sim["counts"].shape[1])
        model.factorize()
        model.combine()
        model.consensus(k, density_threshold=0.1, show_clustering=False, close_clustergram_fig=True)
        usage, scores_, _, _ = model.load_results(K=k, density_threshold=0.1)
    genes = [f"g{j}" for j in range(sim["counts"].shape[1])]
    weights = scores_.reindex(genes).fillna(0.0).to_numpy()
    return weights, usage.to_numpy(), False


METHODS = {"sciencevae (defaults)": run_ours, "sciencevae (--fits 5)": partial(run_ours, n_fits=5),
           "sciencevae (a GPU's batch)": partial(run_ours, device_type="cuda"),
           "PCA + varimax": run_pca_varimax, "NMF (CP10k)": run_nmf,
           "cNMF": run_cnmf}


def arguments(description: str, threads: int) -> argparse.Namespace:
    """The command-line settings shared with linear_scvi.py."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None,
                        help="for the VAEs (default: each method's own default, 400 epochs here for all)")
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if "GPU" not in m])
    parser.add_argument("--scvi-python", help="python of an environment with scvi-tools: adds LinearSCVI and SCVI")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def measure(name: str, method, sim: dict, args, seed: int) -> dict:
    torch.set_num_threads(args.threads)  # scanpy's numba pool (in cNMF) resets every OpenMP user's threads
    started = time.perf_counter()
    weights, activity, signed = method(sim, args.components, args.epochs, seed)
    return {"method": name, "seed": seed, "seconds": time.perf_counter() - started,
            **scores(weights, activity, sim, signed)}


def print_table(rows: list[dict]) -> None:
    """Mean over seeds per method, as markdown."""
    table = pd.DataFrame(rows).groupby("method", sort=False).mean(numeric_only=True).drop(columns="seed")
    columns = ["mean_auroc", "min_auroc"] + [c for c in table if c.startswith("auroc_")] + ["mean_spearman"] + \
              [c for c in table if c.startswith("rho_")] + ["seconds"]
    print("| method | " + " | ".join(c.replace("auroc_", "").replace("rho_", "ρ ") for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for method, row in table[columns].iterrows():
        cells_ = (f"{v:.1f}" if c == "seconds" else f"{v:.3f}" for c, v in row.items())
        print(f"| {method} | " + " | ".join(cells_) + " |")


def main() -> None:
    args = arguments(__doc__.splitlines()[0], threads=1)
    rows = []
    for seed in args.seeds:
        sim = hard_programmes(args.cells, n_genes=args.genes, seed=seed)
        for name in args.methods:
            rows.append(measure(name, METHODS[name], sim, args, seed))
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}),
                  file=sys.stderr, flush=True)
    if args.scvi_python:
        script = Path(__file__).with_name("linear_scvi.py")
        command = [args.scvi_python, str(script), "--cells", str(args.cells), "--genes", str(args.genes),
                   "--components", str(args.components), "--threads", str(args.threads), "--seeds",
                   *map(str, args.seeds)] + (["--epochs", str(args.epochs)] if args.epochs else [])
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    print(f"{args.cells} cells x {args.genes} genes (hard_programmes: 6 identity + 3 activity programmes, "
          f"overlapping genes, 2 batches); {args.components} components; mean over seeds {args.seeds}; "
          f"torch threads {args.threads}; {args.epochs or 'default'} epochs for the VAEs")
    print_table(rows)


if __name__ == "__main__":
    main()
