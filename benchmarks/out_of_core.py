"""Out-of-core training: 1M cells x 2,000 genes from a backed .h5ad with bounded host memory.

Writes the file block by block (``cell_programmes`` with one programme
structure and a different ``cell_seed`` per block; never the whole matrix in
memory), then trains in a fresh process from ``open_counts`` (rows streamed in
shuffled chunks) and prints the epoch time, cells/s and the training
process's peak resident memory next to the file size.

    python benchmarks/out_of_core.py --cells 1000000 --path /tmp/cells_1m.h5ad --threads 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_cells(path: Path, n_cells: int, n_genes: int, block: int) -> float:
    """Write an AnnData-readable CSR .h5ad block by block; returns the seconds taken."""
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    from sciencevae.datasets import cell_programmes

    started = time.perf_counter()
    partial = path.with_suffix(".part")
    with h5py.File(partial, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        X = f.create_group("X")
        X.attrs["encoding-type"], X.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        X.attrs["shape"] = (n_cells, n_genes)
        data = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(1 << 20,))
        indices = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(1 << 20,))
        indptr = [np.zeros(1, dtype=np.int64)]
        for number, start in enumerate(range(0, n_cells, block)):
            rows = min(block, n_cells - start)
            counts = cell_programmes(rows, n_genes=n_genes, genes_per_programme=100, seed=0,
                                     cell_seed=number)["counts"]
            end = data.shape[0]
            data.resize((end + counts.nnz,))
            indices.resize((end + counts.nnz,))
            data[end:], indices[end:] = counts.data, counts.indices
            indptr.append(counts.indptr[1:].astype(np.int64) + end)
            print(f"  wrote cells {start + rows:,} / {n_cells:,}", flush=True)
        X.create_dataset("indptr", data=np.concatenate(indptr))
        write_elem(f, "obs", pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]))
        write_elem(f, "var", pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]))
    partial.replace(path)
    return time.perf_counter() - started


def train(path: Path, epochs: int, batch_size: int, threads: int, chunk_rows: int, buffer_chunks: int) -> None:
    """Train from the file in this (fresh) process and print the numbers."""
    import torch

    from sciencevae import BetaVAE
    from sciencevae.streaming import open_counts, peak_host_memory_mb

    torch.set_num_threads(threads)
    baseline = peak_host_memory_mb()
    streamed = open_counts(path, chunk_rows=chunk_rows, buffer_chunks=buffer_chunks)
    vae = BetaVAE(streamed.n_features, n_latent=10, likelihood="nb", decoder="linear", hidden=(128,))
    history = vae.fit(streamed, epochs=epochs, batch_size=batch_size, validation=0.02, progress=True)
    n_train = streamed.n_obs - int(streamed.n_obs * 0.02)
    for _, row in history.iterrows():
        print(f"epoch {int(row.epoch)}: {row.seconds:.1f} s (incl. validation), {n_train / row.seconds:,.0f} "
              f"training cells/s, loss {row.loss:.1f}, val {row.val_loss:.1f}")
    print(f"peak host memory of the training process: {peak_host_memory_mb():,.0f} MiB "
          f"(after imports: {baseline:,.0f} MiB); file {path.stat().st_size / 2**30:.2f} GiB; "
          f"chunk {chunk_rows} rows x {buffer_chunks} chunks per group")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--path", type=Path, default=Path("/tmp/sciencevae_cells_1m.h5ad"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--buffer-chunks", type=int, default=4)
    parser.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_only:
        train(args.path, args.epochs, args.batch_size, args.threads, args.chunk_rows, args.buffer_chunks)
        return
    if not args.path.exists():
        seconds = write_cells(args.path, args.cells, args.genes, block=50_000)
        print(f"wrote {args.path} ({args.path.stat().st_size / 2**30:.2f} GiB) in {seconds:.0f} s")
    command = [sys.executable, __file__, "--train-only", *sys.argv[1:]]
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
