"""Out-of-core training: 1M cells x 2,000 genes from a backed .h5ad, or a multi-GB zarr field, in bounded memory.

Cells: writes the file block by block (``cell_programmes`` with one programme
structure and a different ``cell_seed`` per block; never the whole matrix in
memory), then trains in a fresh process from ``open_counts`` (rows streamed in
shuffled chunks) and prints the epoch time, cells/s and the training
process's peak resident memory next to the file size.

Field (``--field``): writes a daily-like 1-degree field (time x 180 x 360,
float32: an annual cycle whose phase follows longitude plus noise) to zarr in
time chunks, then in a fresh process computes the adapter's statistics with
dask, streams one training epoch and encodes every day, printing times and the
peak memory next to the field size.

    python benchmarks/out_of_core.py --cells 1000000 --path /tmp/cells_1m.h5ad --threads 2
    python benchmarks/out_of_core.py --field --days 12000 --path /tmp/field.zarr --threads 2
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


def write_field(path: Path, n_days: int, chunk: int = 240) -> float:
    """Write a (time, 180, 360) float32 zarr field chunk by chunk; returns the seconds taken."""
    import pandas as pd
    import xarray as xr

    started = time.perf_counter()
    lat, lon = np.arange(89.5, -90, -1.0), np.arange(0.5, 360, 1.0)
    amplitude = 2 + 10 * np.abs(np.sin(np.deg2rad(lat)))[:, None]
    phase = np.deg2rad(lon)[None, :]
    rng = np.random.default_rng(0)
    partial = path.with_suffix(".part.zarr")
    for start in range(0, n_days, chunk):
        days = np.arange(start, min(start + chunk, n_days))
        season = np.sin(2 * np.pi * days[:, None, None] / 365.25 + phase[None])
        values = (amplitude[None] * season + rng.normal(size=(len(days), 180, 360))).astype(np.float32)
        da = xr.DataArray(values, dims=("time", "lat", "lon"), name="t",
                          coords={"time": pd.Timestamp("1980-01-01") + pd.to_timedelta(days, "D"), "lat": lat,
                                  "lon": lon})
        kwargs = {"mode": "w"} if start == 0 else {"append_dim": "time"}
        da.to_dataset().chunk({"time": chunk}).to_zarr(partial, zarr_format=2, **kwargs)
        print(f"  wrote days {days[-1] + 1:,} / {n_days:,}", flush=True)
    partial.rename(path)
    return time.perf_counter() - started


def train_field(path: Path, threads: int) -> None:
    """Statistics, one streamed epoch and a streamed encode of the field, in this (fresh) process."""
    import torch

    from sciencevae import BetaVAE
    from sciencevae.adapters.climate import ClimateAdapter, open_field
    from sciencevae.streaming import peak_host_memory_mb

    torch.set_num_threads(threads)
    baseline = peak_host_memory_mb()
    started = time.perf_counter()
    field = open_field(path)
    adapter = ClimateAdapter.from_data(field)
    stats_s = time.perf_counter() - started
    streamed = adapter.stream(field, chunk_rows=240, buffer_chunks=2)
    vae = BetaVAE(adapter.n_features, n_latent=6, hidden=(128,), beta=4.0)
    history = vae.fit(streamed, epochs=1, batch_size=128, validation=0.05, progress=True)
    started = time.perf_counter()
    z = vae.encode(streamed)
    encode_s = time.perf_counter() - started
    n_bytes = field["t"].size * 4
    print(f"field {field['t'].shape} = {n_bytes / 2**30:.2f} GiB float32; statistics (dask) {stats_s:.0f} s; "
          f"one epoch {history['seconds'].iloc[0]:.0f} s; encode {encode_s:.0f} s -> z {z.shape}")
    print(f"peak host memory of the training process: {peak_host_memory_mb():,.0f} MiB "
          f"(after imports: {baseline:,.0f} MiB)")


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
    parser.add_argument("--field", action="store_true", help="the zarr climate field instead of the cells")
    parser.add_argument("--days", type=int, default=12000, help="time steps of the field")
    parser.add_argument("--write-only", action="store_true", help="write the file and stop")
    parser.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_only:
        if args.field:
            train_field(args.path, args.threads)
        else:
            train(args.path, args.epochs, args.batch_size, args.threads, args.chunk_rows, args.buffer_chunks)
        return
    if not args.path.exists():
        if args.field:
            seconds = write_field(args.path, args.days)
        else:
            seconds = write_cells(args.path, args.cells, args.genes, block=50_000)
        print(f"wrote {args.path} in {seconds:.0f} s")
    if args.write_only:
        return
    command = [sys.executable, __file__, "--train-only", *sys.argv[1:]]
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
