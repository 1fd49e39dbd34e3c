"""Batch removal on real cells with a known batch: CellBench (5 cell lines on 3 CEL-seq2 plates,
../shared/data/scrna), sciencevae ``cells`` against scvi-tools' SCVI and LinearSCVI on the same
highly variable genes, in one run.

Scores on each method's latents (standardised): 15-nearest-neighbour accuracy of the cell line
(5-fold cross-validated; higher = biology kept) and of the plate (lower = batch removed; chance is
the largest plate's share), and the mean over cells of the normalised entropy of plates among each
cell's 15 neighbours (1 = perfectly mixed). Not run by the tests.

    python benchmarks/batch_removal.py --threads 1 --scvi-python ../scvi-venv/bin/python

scvi-tools runs in its own environment (see linear_scvi.py); this script calls itself there with
``--train-scvi``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

CELLBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "scrna" / "cellbench_celseq2_5cl_3plates_counts.h5ad"
LABEL, BATCH = "cell_line_demuxlet", "batch"


def mixing(latents: np.ndarray, labels: np.ndarray, batches: np.ndarray, k: int = 15) -> dict:
    """Cell-line and plate k-NN accuracy (5-fold) and the plates' neighbourhood entropy."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

    z = (latents - latents.mean(0)) / latents.std(0)
    knn = KNeighborsClassifier(n_neighbors=k)
    label_accuracy = cross_val_score(knn, z, labels, cv=5).mean()
    batch_accuracy = cross_val_score(knn, z, batches, cv=5).mean()
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    levels = np.unique(batches)
    counts = np.stack([(batches[neighbours[:, 1:]] == b).sum(1) for b in levels], 1) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(counts > 0, counts * np.log(counts), 0), 1) / np.log(len(levels))
    return {"cell_line_15nn": float(label_accuracy), "plate_15nn": float(batch_accuracy),
            "plate_entropy": float(entropy.mean())}


def ours(path: Path, seed: int, n_fits: int) -> np.ndarray:
    from sciencevae.case_studies import gene_programmes as gp

    adata = ad.read_h5ad(path)
    res = gp.run(adata, n_latent=10, batch_key=BATCH, n_top_genes=None, seed=seed, progress=False, n_fits=n_fits)
    return res.adata.obsm["X_sciencevae"]


def train_scvi(path: Path, seed: int, out: Path) -> None:
    """In the scvi-tools environment: SCVI and LinearSCVI latents (10 dims, batch key, defaults)."""
    import scvi

    for name, kind in (("SCVI", scvi.model.SCVI), ("LinearSCVI", scvi.model.LinearSCVI)):
        scvi.settings.seed = seed
        adata = ad.read_h5ad(path)
        kind.setup_anndata(adata, batch_key=BATCH)
        model = kind(adata, n_latent=10)
        started = time.perf_counter()
        model.train(accelerator="cpu", enable_progress_bar=False)
        np.save(out / f"{name}_{seed}.npy", model.get_latent_representation())
        (out / f"{name}_{seed}.json").write_text(json.dumps({"seconds": time.perf_counter() - started,
                                                             "version": scvi.__version__}))


def hvg_counts(folder: Path) -> Path:
    """CellBench restricted to scanpy's 2,000 seurat_v3 genes per plate, written for every method."""
    from sciencevae.adapters.cells import CellsAdapter

    adata = ad.read_h5ad(CELLBENCH)
    genes = CellsAdapter.from_adata(adata, n_top_genes=2000, batch_key=BATCH).genes
    path = folder / "cellbench_hvg.h5ad"
    ad.AnnData(adata[:, genes].X, obs=adata.obs[[LABEL, BATCH]].copy(),
               var=pd.DataFrame(index=genes)).write_h5ad(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scvi-python")
    parser.add_argument("--train-scvi", nargs=2, metavar=("COUNTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.train_scvi:
        for seed in args.seeds:
            train_scvi(Path(args.train_scvi[0]), seed, Path(args.train_scvi[1]))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = hvg_counts(Path(tmp))
        obs = ad.read_h5ad(path).obs
        labels, batches = obs[LABEL].astype(str).to_numpy(), obs[BATCH].astype(str).to_numpy()
        for seed in args.seeds:
            for name, n_fits in (("sciencevae (defaults)", 1), ("sciencevae (--fits 5)", 5)):
                started = time.perf_counter()
                latents = ours(path, seed, n_fits)
                rows.append({"method": name, "seed": seed, "seconds": time.perf_counter() - started,
                             **mixing(latents, labels, batches)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.scvi_python:
            subprocess.run([args.scvi_python, __file__, "--train-scvi", str(path), tmp, "--threads",
                            str(args.threads), "--seeds", *map(str, args.seeds)], check=True, capture_output=True)
            for name in ("SCVI", "LinearSCVI"):
                for seed in args.seeds:
                    info = json.loads((Path(tmp) / f"{name}_{seed}.json").read_text())
                    rows.append({"method": f"{name} {info['version']}", "seed": seed, "seconds": info["seconds"],
                                 **mixing(np.load(Path(tmp) / f"{name}_{seed}.npy"), labels, batches)})
    table = pd.DataFrame(rows).groupby("method", sort=False).mean(numeric_only=True).drop(columns="seed")
    share = pd.Series(batches).value_counts(normalize=True).max()
    print(f"CellBench CEL-seq2, {len(labels)} cells, 5 cell lines, 3 plates (largest plate {share:.2f} of cells); "
          f"2,000 HVGs; 10 latents; mean over seeds {args.seeds}; torch threads {args.threads}")
    print("| method | cell-line 15-NN accuracy | plate 15-NN accuracy (lower = mixed) | plate entropy (1 = mixed) | seconds |")
    print("|---|---|---|---|---|")
    for method, row in table.iterrows():
        print(f"| {method} | {row.cell_line_15nn:.3f} | {row.plate_15nn:.3f} | {row.plate_entropy:.3f} | "
              f"{row.seconds:.1f} |")


if __name__ == "__main__":
    main()
