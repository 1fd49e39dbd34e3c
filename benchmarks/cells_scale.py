"""The whole ``sciencevae cells`` command at atlas sizes: wall time by phase and peak host memory.

Writes a synthetic count matrix (cells x 2,000 genes, about 7% non-zeros, 10 overlapping programmes,
two batches) to an h5ad once per size, then runs the command on it in a fresh process and reads the
phases it records in ``run.json`` (``seconds``: read, check — highly variable genes and the training
matrix —, train, describe — encoding, loadings, enrichment, association —, save — figures, h5ad,
tables) and its peak resident memory (``ru_maxrss`` of the child).

    OMP_NUM_THREADS=1 python benchmarks/cells_scale.py --cells 10000 200000 --epochs 1
    OMP_NUM_THREADS=1 python benchmarks/cells_scale.py --cells 2000 --epochs 1   # smoke test, ~30 s
    ... --scvi-python /path/to/scvi-venv/bin/python   # the peer on the same files (up to 200k cells)
    ... --compare-python /path/to/other-venv/bin/python   # another sciencevae version on the same files

Options: ``--layout`` (X / layer / raw / zarr / 10x / mtx: where the counts are, :data:`LAYOUTS`), ``--genes``
(2,000), ``--density`` (0.07), ``--work DIR`` (where the h5ad files and runs go; default a temporary folder,
removed at the end unless ``--keep``), ``--threads`` (torch threads of the command, default 1), and any
further arguments after ``--`` go to ``sciencevae cells``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

#: How the counts are stored: X of an h5ad; a layer ("counts") or .raw of an h5ad whose X holds log-normalised
#: values; X of a .zarr; a 10x Genomics .h5 or mtx folder (no batch column: run without --batch-key).
LAYOUTS = {"X": (".h5ad", []), "layer": (".h5ad", ["--layer", "counts"]), "raw": (".h5ad", ["--layer", "raw"]),
           "zarr": (".zarr", []), "10x": (".h5", []), "mtx": ("_mtx", [])}
#: Entries (cells x genes) simulated at once: 50,000 cells of 2,000 genes.
CHUNK_ENTRIES = 100_000_000
#: The child process: the command's own entry point, then its peak resident memory (KiB on Linux).
CHILD = ("import resource, sys; from sciencevae.cli import main; code = main(sys.argv[1:]); "
         "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")
#: The peer in its own environment: scvi-tools' read, setup_anndata, SCVI(n_latent=10).train on the CPU
#: (its default batch size, 128) and get_latent_representation, timed; then its peak memory.
CHILD_SCVI = """
import json, resource, sys, time
import anndata as ad, scvi, torch
torch.set_num_threads(int(sys.argv[3]))
t = [time.perf_counter()]
adata = ad.read_h5ad(sys.argv[1]); t.append(time.perf_counter())
scvi.model.SCVI.setup_anndata(adata, batch_key="batch"); model = scvi.model.SCVI(adata, n_latent=10)
t.append(time.perf_counter())
model.train(max_epochs=int(sys.argv[2]), accelerator="cpu", enable_progress_bar=False); t.append(time.perf_counter())
model.get_latent_representation(); t.append(time.perf_counter())
phases = dict(zip(["read", "setup", "train", "latent"], [b - a for a, b in zip(t, t[1:])]))
print(json.dumps({**phases, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def atlas_chunk(rng: np.random.Generator, n_cells: int, base: np.ndarray, loadings: np.ndarray,
                batch_shift: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Counts of ``n_cells`` cells: Poisson-gamma (NB, theta 4) around exp(base + usage @ loadings + batch)
    times a log-normal library size; returns the CSR matrix (float32) and each cell's batch (0/1)."""
    n_programmes = loadings.shape[0]
    usage = rng.dirichlet(np.full(n_programmes, 0.3), size=n_cells) * 3.0
    batch = rng.integers(0, 2, size=n_cells)
    log_mean = base[None] + usage @ loadings + batch[:, None] * batch_shift[None]
    library = rng.lognormal(0.0, 0.4, size=(n_cells, 1))
    mean = np.exp(log_mean) * library * rng.gamma(4.0, 1 / 4.0, size=log_mean.shape)
    counts = rng.poisson(mean).astype(np.float32)
    return sp.csr_matrix(counts), batch


def write_atlas(path: Path, n_cells: int, n_genes: int = 2000, density: float = 0.07, seed: int = 0,
                layout: str = "X") -> Path:
    """A synthetic file of ``n_cells`` x ``n_genes`` counts with about ``density`` non-zeros, built in chunks
    of ``CHUNK_ENTRIES`` entries (memory: the CSR matrix plus one dense chunk), in one of :data:`LAYOUTS`."""
    rng = np.random.default_rng(seed)
    base = rng.normal(np.log(-np.log1p(-density)) - 0.75, 1.2, size=n_genes)
    loadings = np.zeros((10, n_genes))
    for k in range(10):
        genes = rng.choice(n_genes, size=60, replace=False)
        loadings[k, genes] = rng.uniform(0.5, 1.5, size=60)
    batch_shift = np.where(rng.random(n_genes) < 0.1, rng.normal(0, 0.7, n_genes), 0.0)
    blocks, batches = [], []
    chunk_cells = max(1000, CHUNK_ENTRIES // n_genes)
    for start in range(0, n_cells, chunk_cells):
        block, batch = atlas_chunk(rng, min(chunk_cells, n_cells - start), base, loadings, batch_shift)
        blocks.append(block)
        batches.append(batch)
    X = sp.vstack(blocks, format="csr")
    obs = pd.DataFrame({"batch": pd.Categorical(np.concatenate(batches).astype(str))},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    if layout == "10x":
        return write_10x_h5(path, X, list(obs.index), list(var.index))
    if layout == "mtx":
        return write_10x_mtx(path, X, list(obs.index), list(var.index))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    if layout in ("layer", "raw"):  # what published files hold: log-normalised X, counts beside it
        logged = X.copy()
        logged.data = np.log1p(logged.data / np.repeat(np.asarray(X.sum(1)).ravel(), np.diff(X.indptr)) * 1e4)
        if layout == "raw":
            adata.raw = adata
        else:
            adata.layers["counts"] = X
        adata.X = logged
    adata.write_zarr(path) if layout == "zarr" else adata.write_h5ad(path)
    return path


def write_10x_h5(path: Path, X: sp.csr_matrix, barcodes: list[str], genes: list[str]) -> Path:
    """Counts as Cell Ranger writes them (``matrix`` group: features x barcodes in compressed-column form,
    which is the cells x genes CSR's arrays as they are)."""
    import h5py

    with h5py.File(path, "w") as f:
        group = f.create_group("matrix")
        for key, values in (("data", X.data.astype(np.int32)), ("indices", X.indices), ("indptr", X.indptr)):
            group.create_dataset(key, data=values, compression="gzip", chunks=True)
        group["shape"] = np.array([X.shape[1], X.shape[0]], dtype=np.int64)
        group["barcodes"] = np.array(barcodes, dtype="S")
        features = group.create_group("features")
        features["id"] = np.array([f"ENSG{j:011d}" for j in range(len(genes))], dtype="S")
        features["name"] = np.array(genes, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        features["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
    return path


def write_10x_mtx(folder: Path, X: sp.csr_matrix, barcodes: list[str], genes: list[str]) -> Path:
    """Counts as Cell Ranger writes an mtx folder: features x barcodes coordinates barcode by barcode
    (gzip level 1), features.tsv.gz with types, barcodes.tsv.gz."""
    import gzip

    folder.mkdir(parents=True)
    with gzip.open(folder / "matrix.mtx.gz", "wt", compresslevel=1) as f:
        f.write(f"%%MatrixMarket matrix coordinate integer general\n{X.shape[1]} {X.shape[0]} {X.nnz}\n")
        for start in range(0, X.shape[0], 50_000):
            part = X[start:start + 50_000].tocoo()
            pd.DataFrame({"feature": part.col + 1, "cell": part.row + start + 1, "value": part.data.astype(np.int64)}
                         ).to_csv(f, sep=" ", header=False, index=False)
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.writelines(f"ENSG{j:011d}\t{name}\tGene Expression\n" for j, name in enumerate(genes))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.writelines(f"{b}\n" for b in barcodes)
    return folder


def size(path: Path) -> int:
    """Bytes of a file or of a folder's files (a .zarr)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def run_command(path: Path, out: Path, epochs: int, threads: int, extra: list[str], python: str = sys.executable
                ) -> dict:
    """Run ``sciencevae cells`` on ``path`` in a child process (of ``python``: e.g. another version's
    environment), in the file's folder (so that no source folder is imported instead); its phases, wall time
    and peak memory."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    batch = [] if path.suffix == ".h5" or path.is_dir() and path.suffix != ".zarr" else ["--batch-key", "batch"]
    arguments = ["cells", str(path), "--out", str(out), "--epochs", str(epochs), *batch, "--quiet", *extra]
    command = [python, "-c", CHILD, *arguments]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=path.parent)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"sciencevae cells failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    peak_kib = int(done.stderr.rsplit("PEAK_KIB", 1)[1].split()[0])
    peak_gb = peak_kib * 1024 / 1e9
    seconds = json.loads((out / "run.json").read_text())["seconds"]
    return {"wall": wall, "peak_gb": peak_gb, **seconds}


def run_scvi(python: str, path: Path, epochs: int, threads: int) -> dict:
    """scvi-tools on the same file (``CHILD_SCVI``, in the environment of ``python``): phases, wall, peak."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    done = subprocess.run([python, "-c", CHILD_SCVI, str(path), str(epochs), str(threads)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"scvi-tools failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {**row, "wall": time.perf_counter() - started, "peak_gb": row["peak_kib"] * 1024 / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--density", type=float, default=0.07)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="X", help="how the counts are stored "
                        "(X / layer / raw of an h5ad, zarr, 10x .h5)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--scvi-python", default=None, help="python of an environment with scvi-tools: runs "
                        "its read + setup + train + latent on the same files, up to --scvi-max-cells")
    parser.add_argument("--scvi-max-cells", type=int, default=200_000)
    parser.add_argument("--compare-python", default=None, help="python of an environment with another "
                        "sciencevae version: its command runs on the same files too (e.g. before a change)")
    parser.add_argument("extra", nargs="*", help="after --: arguments for sciencevae cells")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cells_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# sciencevae cells at scale: {args.genes} genes, density {args.density}, {args.epochs} epoch(s), "
          f"torch/OpenMP threads {args.threads}, {os.cpu_count()} CPUs\n")
    print("| cells | command | file GB | read | check | train | describe | save | total s | peak GB | "
          "train cells/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for n_cells in args.cells:
            suffix, flags = LAYOUTS[args.layout]
            path = work / f"atlas_{n_cells}_{args.layout}{suffix}"
            if not path.exists():  # in a spawned process: Linux keeps a parent's peak memory in its children
                writer = multiprocessing.get_context("spawn").Process(
                    target=write_atlas, args=(path, n_cells, args.genes, args.density, 0, args.layout))
                writer.start()
                writer.join()
            pythons = [("sciencevae cells", sys.executable)]
            if args.compare_python:
                pythons.append((f"sciencevae cells ({args.compare_python})", args.compare_python))
            for i, (name, python) in enumerate(pythons):
                out = work / f"run_{n_cells}_{i}"
                shutil.rmtree(out, ignore_errors=True)
                r = run_command(path, out, args.epochs, args.threads, [*flags, *args.extra], python)
                rate = n_cells * args.epochs / r["train"] if r["train"] else float("nan")
                print(f"| {n_cells:,} | {name} ({args.layout}) | {size(path) / 1e9:.2f} | {r['read']:.1f} | "
                      f"{r['check']:.1f} | {r['train']:.1f} | {r['describe']:.1f} | {r['save']:.1f} | "
                      f"{r['wall']:.1f} | {r['peak_gb']:.2f} | {rate:,.0f} |", flush=True)
            if args.scvi_python and n_cells <= args.scvi_max_cells and args.layout == "X":
                p = run_scvi(args.scvi_python, path, args.epochs, args.threads)
                print(f"| {n_cells:,} | scvi-tools SCVI (setup in check, latent in describe, nothing written) | "
                      f"{size(path) / 1e9:.2f} | {p['read']:.1f} | {p['setup']:.1f} | {p['train']:.1f} | "
                      f"{p['latent']:.1f} | – | {p['wall']:.1f} | {p['peak_gb']:.2f} | "
                      f"{n_cells * args.epochs / p['train']:,.0f} |", flush=True)
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
