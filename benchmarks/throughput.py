"""Training throughput, held-out ELBO and peak host memory: sciencevae against scvi-tools on the same counts.

Same synthetic NB counts (`sciencevae.datasets.cell_programmes`, 2,000 genes),
same model size (one hidden layer of 128, 10 latents, NB; a linear decoder for
sciencevae and LinearSCVI, an MLP decoder for SCVI), same epochs, batch size and
learning rate, 10% of the cells held out. Reports cells/s (training cells ×
epochs / training seconds), the held-out negative ELBO per cell
(reconstruction summed over genes + KL; lower is better), the peak resident
memory of the process that read the data (CSR) and trained (each method runs
in its own fresh process), and the ratio of our throughput to each peer's from the
same run. Throughput is given two ways: end to end (training cells × epochs /
seconds of the whole training call: setup, our one-off kernel compile and
scvi-tools' trainer setup included) and steady (training cells / the median
epoch after the first: what a long run sees). Needs scvi-tools in the
environment (see linear_scvi.py).

    python benchmarks/throughput.py --cells 10000 --epochs 10 --threads 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("sciencevae (NB, linear)", "LinearSCVI", "SCVI")


SIMULATION_BLOCK = 100_000


def simulate_block(n_cells: int, block: int | None):
    """The counts of one block of cells (``block`` None: the whole set in one draw, as for up to 100k cells)."""
    from sciencevae.datasets import cell_programmes

    return cell_programmes(n_cells, n_genes=2000, genes_per_programme=100, cell_seed=block)["counts"]


def simulate(n_cells: int):
    """Up to 100k cells in one draw; more as 100k-cell blocks of one experiment, drawn in parallel processes."""
    import scipy.sparse as sp

    if n_cells <= SIMULATION_BLOCK:
        return simulate_block(n_cells, None)
    sizes = [min(SIMULATION_BLOCK, n_cells - start) for start in range(0, n_cells, SIMULATION_BLOCK)]
    workers = max(1, min(len(sizes), (os.cpu_count() or 1) // 2, 8))  # each block holds ~5 GB while drawn
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        blocks = pool.starmap(simulate_block, [(size, i) for i, size in enumerate(sizes)])
    return sp.vstack(blocks, format="csr")


def write_split(n_cells: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Simulate the counts once and save the train / held-out CSR matrices (read by every method).

    Files already in ``folder`` (from an earlier run with the same number of cells) are reused.
    """
    import scipy.sparse as sp

    paths = folder / f"train_{n_cells}.npz", folder / f"test_{n_cells}.npz"
    if all(path.exists() for path in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    counts = simulate(n_cells)
    order = np.random.default_rng(seed).permutation(n_cells)
    test, train = order[: n_cells // 10], order[n_cells // 10:]
    for path, rows in zip(paths, (train, test)):
        partial = path.with_suffix(".partial.npz")
        sp.save_npz(partial, counts[rows], compressed=False)
        partial.replace(path)
    return paths


def ours(train, test, epochs: int, batch_size: int, lr: float, device: str, compile: bool | None = None,
         cuda_graph: bool = True) -> dict:
    from sciencevae import BetaVAE

    vae = BetaVAE(train.shape[1], n_latent=10, likelihood="nb", decoder="linear", hidden=(128,))
    started = time.perf_counter()
    history = vae.fit(train, epochs=epochs, batch_size=batch_size, lr=lr, validation=0.0, progress=False,
                      device=device, compile=compile, cuda_graph=cuda_graph)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "epoch_seconds": history["seconds"].tolist(),
            "heldout_neg_elbo": vae.evaluate(test)["neg_elbo"]}


def epoch_timer():
    """A Lightning callback that records the wall seconds of every training epoch."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, module):
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds.append(time.perf_counter() - self.started)

    return EpochTimer()


def scvi_model(kind: str, train, test, epochs: int, batch_size: int, lr: float, device: str) -> dict:
    import anndata as ad
    import scvi

    adata, held = ad.AnnData(train.copy()), ad.AnnData(test.copy())
    model_class = scvi.model.LinearSCVI if kind == "LinearSCVI" else scvi.model.SCVI
    model_class.setup_anndata(adata)
    model = model_class(adata, n_latent=10, n_hidden=128, n_layers=1, gene_likelihood="nb")
    timer = epoch_timer()
    started = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=batch_size, accelerator="gpu" if device == "cuda" else "cpu",
                early_stopping=False, train_size=1.0, enable_progress_bar=False, plan_kwargs={"lr": lr},
                callbacks=[timer])
    seconds = time.perf_counter() - started
    model_class.setup_anndata(held)
    elbo = float(model.get_elbo(held))  # scvi-tools returns the ELBO itself ("higher is better")
    return {"seconds": seconds, "epoch_seconds": timer.seconds, "heldout_neg_elbo": -elbo}


def run_one(method: str, paths: tuple[Path, Path], epochs: int, batch_size: int, lr: float, threads: int,
            device: str, ours_options: dict | None = None, repeat: int = 1) -> dict:
    """One method in this (fresh) process: read the data, train, held-out ELBO and peak memory.

    ``ours_options`` go to our ``fit`` (compile, cuda_graph); ``repeat`` > 1 trains on that many copies of
    the training cells (throughput at scale without simulating more).
    """
    import scipy.sparse as sp
    import torch

    from sciencevae.streaming import peak_host_memory_mb

    import torch._dynamo  # noqa: F401  a one-off import (~2 s) that torch.optim triggers; scvi pays it at import

    torch.set_num_threads(threads)
    train, test = (sp.load_npz(p).tocsr() for p in paths)
    if repeat > 1:
        train = sp.vstack([train] * repeat, format="csr")
    if method == METHODS[0]:
        result = ours(train, test, epochs, batch_size, lr, device, **(ours_options or {}))
    else:
        result = scvi_model(method, train, test, epochs, batch_size, lr, device)
    result["cells_per_s"] = train.shape[0] * epochs / result["seconds"]
    later_epochs = result["epoch_seconds"][1:] or result["epoch_seconds"]
    result["steady_cells_per_s"] = train.shape[0] / float(np.median(later_epochs))
    result["peak_mb"] = peak_host_memory_mb()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10000])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="our NB kernel compiled or not (auto: when the run repays the compile, as fit does)")
    parser.add_argument("--cuda-graph", choices=["on", "off"], default="on",
                        help="our full training steps replayed from a CUDA graph on a GPU (fit's default: on)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="train on this many copies of the training cells (e.g. 10 × 100k: a 1M-cell epoch "
                             "without simulating 1M cells; the held-out cells are unchanged)")
    parser.add_argument("--data-dir", type=Path,
                        help="keep the simulated counts here, reused by later runs (default: a temporary folder)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="which to run (scvi-tools needed only for its two)")
    args = parser.parse_args()
    import torch

    try:
        import scvi

        peers = f"scvi-tools {scvi.__version__}"
    except ImportError:
        if args.methods != [METHODS[0]]:
            raise SystemExit("scvi-tools is not installed: install it (see linear_scvi.py) or pass "
                             f"--methods '{METHODS[0]}'") from None
        peers = "no scvi-tools"

    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {peers}, {args.threads} threads, {where}, "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr:g}, our kernel compiled: {args.compile}, "
          f"CUDA graph: {args.cuda_graph}, training cells repeated: {args.repeat}×")
    print("| cells | method | cells/s end to end | steady cells/s | held-out −ELBO per cell | train s | "
          "first epoch s | peak host MiB | our speed-up (end to end) | our speed-up (steady) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ours_options = {"compile": {"auto": None, "on": True, "off": False}[args.compile],
                    "cuda_graph": args.cuda_graph == "on"}
    spawn = multiprocessing.get_context("spawn")
    for n in args.cells:
        rows = {}
        with tempfile.TemporaryDirectory() as scratch:
            paths = write_split(n, Path(args.data_dir or scratch))
            for method in args.methods:
                with spawn.Pool(1) as pool:
                    rows[method] = pool.apply(run_one, (method, paths, args.epochs, args.batch_size, args.lr,
                                                           args.threads, args.device, ours_options, args.repeat))
        ours_row = rows[args.methods[0]]
        for name, row in rows.items():
            cells = f"{n} (train ×{args.repeat})" if args.repeat > 1 else f"{n}"
            print(f"| {cells} | {name} | {row['cells_per_s']:.0f} | {row['steady_cells_per_s']:.0f} | "
                  f"{row['heldout_neg_elbo']:.1f} | {row['seconds']:.1f} | {row['epoch_seconds'][0]:.1f} | "
                  f"{row['peak_mb']:.0f} | {ours_row['cells_per_s'] / row['cells_per_s']:.2f}× | "
                  f"{ours_row['steady_cells_per_s'] / row['steady_cells_per_s']:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
