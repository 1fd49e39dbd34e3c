"""Two-process torchrun training on the CPU (gloo) gives one model, as good as one process."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LinearRegression

from sciencevae import BetaVAE
from sciencevae.datasets import linear_factors
from sciencevae.distributed import Workers, launched_workers, shard_rows

EPOCHS = 25

RANK_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np, torch
    from sciencevae import BetaVAE
    from sciencevae.distributed import launched_workers
    torch.set_num_threads(1)
    X = np.load(sys.argv[1])
    vae = BetaVAE(X.shape[1], n_latent=5, hidden=(64,), seed=0)
    history = vae.fit(X, epochs=int(sys.argv[3]), batch_size=64, progress=False, checkpoint_dir=sys.argv[2])
    weights = b"".join(v.numpy().tobytes() for v in vae.module.state_dict().values())
    rank = launched_workers().rank
    with open(f"{sys.argv[2]}/rank{rank}.json", "w") as f:
        json.dump({"sha": hashlib.sha256(weights).hexdigest(), "val_loss": history["val_loss"].tolist()}, f)
    np.save(f"{sys.argv[2]}/latents{rank}.npy", vae.encode(X))
    """
)


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _factor_r2(latents: np.ndarray, factors: np.ndarray) -> float:
    return min(LinearRegression().fit(latents, f).score(latents, f) for f in factors.T)


def test_shards_are_disjoint_equal_and_cover_the_rows():
    rows = torch.randperm(101)
    shards = [shard_rows(rows, Workers(rank=r, world_size=3)) for r in range(3)]
    assert {len(s) for s in shards} == {33}
    assert len(set(torch.cat(shards).tolist())) == 99
    assert len(torch.cat([shard_rows(rows, Workers(r, 3), equal=False) for r in range(3)])) == 101


def test_launched_workers_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launched_workers() == Workers(rank=2, world_size=4, local_rank=0)
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(ValueError, match="not integers"):
        launched_workers()


def test_two_process_torchrun_matches_one_process(tmp_path):
    X, factors = linear_factors(3000, n_features=30, seed=1)
    np.save(tmp_path / "X.npy", X)
    (tmp_path / "rank_script.py").write_text(RANK_SCRIPT)
    _torchrun(["rank_script.py", "X.npy", str(tmp_path), str(EPOCHS)], tmp_path)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sha"] == ranks[1]["sha"], "the two ranks ended with different weights"
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"], "validation loss was not all-reduced"
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rank_rngs"]) == 2

    torch.set_num_threads(1)
    single = BetaVAE(X.shape[1], n_latent=5, hidden=(64,), seed=0)
    history = single.fit(X, epochs=EPOCHS, batch_size=128, progress=False)  # same effective batch: 2 x 64
    two_process_r2 = _factor_r2(np.load(tmp_path / "latents0.npy"), factors)
    assert two_process_r2 > 0.95
    assert two_process_r2 > _factor_r2(single.encode(X), factors) - 0.02
    assert ranks[0]["val_loss"][-1] < history["val_loss"].iloc[-1] * 1.03


def test_cli_fit_under_torchrun_writes_one_run_folder(tmp_path):
    X, _ = linear_factors(1000, n_features=12, seed=2)
    np.save(tmp_path / "X.npy", X)
    out = tmp_path / "run"
    _torchrun(["-m", "sciencevae.cli", "fit", "X.npy", "--out", str(out), "--epochs", "3", "--n-latent", "3",
               "--quiet", "--checkpoint-every", "1"], tmp_path)
    assert not (out / "INCOMPLETE").exists()
    latents = pd.read_csv(out / "latents.csv", index_col=0)
    assert latents.shape == (1000, 3)
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 3 and np.isfinite(history["val_loss"]).all()
    assert hashlib.sha256((out / "model" / "weights.pt").read_bytes()).hexdigest()


STREAMED_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np, torch
    from sciencevae import BetaVAE
    from sciencevae.distributed import launched_workers
    from sciencevae.streaming import open_counts
    torch.set_num_threads(1)
    streamed = open_counts(sys.argv[1], chunk_rows=100, buffer_chunks=2)
    vae = BetaVAE(streamed.n_features, n_latent=6, likelihood="nb", decoder="linear", hidden=(32,), seed=0)
    history = vae.fit(streamed, epochs=8, batch_size=64, progress=False)
    weights = b"".join(v.numpy().tobytes() for v in vae.module.state_dict().values())
    rank = launched_workers().rank
    with open(f"{sys.argv[2]}/streamed{rank}.json", "w") as f:
        json.dump({"sha": hashlib.sha256(weights).hexdigest(), "val_loss": history["val_loss"].tolist(),
                   "neg_elbo": float(vae.evaluate(streamed)["neg_elbo"])}, f)
    """
)


def test_two_processes_stream_their_own_blocks_of_a_backed_file(tmp_path):
    import anndata as ad

    from sciencevae.datasets import cell_programmes
    from sciencevae.streaming import open_counts

    sim = cell_programmes(2400, n_genes=200, seed=7)
    ad.AnnData(sim["counts"]).write_h5ad(tmp_path / "cells.h5ad")
    (tmp_path / "streamed_script.py").write_text(STREAMED_SCRIPT)
    _torchrun(["streamed_script.py", "cells.h5ad", str(tmp_path)], tmp_path)
    ranks = [json.loads((tmp_path / f"streamed{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sha"] == ranks[1]["sha"] and ranks[0]["val_loss"] == ranks[1]["val_loss"]

    torch.set_num_threads(1)
    single = BetaVAE(200, n_latent=6, likelihood="nb", decoder="linear", hidden=(32,), seed=0)
    streamed = open_counts(tmp_path / "cells.h5ad", chunk_rows=100, buffer_chunks=2)
    single.fit(streamed, epochs=8, batch_size=128, progress=False)
    assert ranks[0]["neg_elbo"] < single.evaluate(streamed)["neg_elbo"] * 1.03
