"""The batch-mixing penalty: the MMD against a direct computation, the objective's checks, its effect on a
simulation whose batch effect a linear decoder cannot absorb, the cells run and CLI, and CellBench's plates."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from sciencevae import BetaVAE
from sciencevae.case_studies import gene_programmes as gp
from sciencevae.cli import main
from sciencevae.io import load
from sciencevae.objectives import MMD_BANDWIDTHS, Objective, batch_mmd

CELLBENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scrna" / \
    "cellbench_celseq2_5cl_3plates_counts.h5ad"


def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    distance = ((a[:, None] - b[None]) ** 2).sum(-1)
    return sum(np.exp(-distance / (2 * s * s)) for s in MMD_BANDWIDTHS)


def test_batch_mmd_is_the_squared_mmd_of_each_batch_against_the_minibatch():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 3))
    groups = np.eye(4)[np.r_[rng.integers(0, 3, 39), 3]]  # group 3 has one row: left out
    expected = sum(kernel(z[m], z[m]).mean() - 2 * kernel(z[m], z).mean() + kernel(z, z).mean()
                   for m in (groups[:, g] > 0 for g in range(3)))
    assert float(batch_mmd(torch.tensor(z), torch.tensor(groups))) == pytest.approx(expected, rel=1e-10)
    same = np.r_[z[:20], z[:20]]  # two batches with the same rows: no discrepancy
    assert float(batch_mmd(torch.tensor(same), torch.tensor(np.eye(2)[np.r_[[0] * 20, [1] * 20]]))) == \
        pytest.approx(0.0, abs=1e-12)
    apart = np.r_[z[:20], z[:20] + 3.0]
    assert float(batch_mmd(torch.tensor(apart), torch.tensor(np.eye(2)[np.r_[[0] * 20, [1] * 20]]))) > 0.5


def test_the_objective_refuses_a_penalty_without_its_columns_and_keeps_them_through_a_save(tmp_path):
    with pytest.raises(ValueError, match="batch_mmd needs batch_columns"):
        Objective(batch_mmd=1.0)
    with pytest.raises(ValueError, match="batch_columns must be"):
        Objective(batch_mmd=1.0, batch_columns=(2, 1))
    with pytest.raises(ValueError, match="batch_mmd must be a finite number"):
        Objective(batch_mmd=-1.0, batch_columns=(0, 2))
    with pytest.raises(ValueError, match="go beyond the model's 2 covariate columns"):
        BetaVAE(5, n_latent=2, n_covariates=2, objective=Objective(batch_mmd=1.0, batch_columns=(0, 3)))
    vae = BetaVAE(5, n_latent=2, n_covariates=2, hidden=(4,), objective=Objective(batch_mmd=2.0, batch_columns=(0, 2)))
    loaded = load(vae.save(tmp_path / "model"))
    assert loaded.objective == vae.objective and loaded.objective.batch_columns == (0, 2)


def interacting_batches(seed: int = 0, n: int = 600, g: int = 60):
    """Three cell types in two batches whose effect differs by cell type (a linear decoder's batch offsets
    cannot absorb it, so without the penalty the codes carry the batch)."""
    rng = np.random.default_rng(seed)
    kind, batch = rng.integers(0, 3, n), rng.integers(0, 2, n)
    log_rate = rng.normal(0, 1, g) + rng.normal(0, 1.2, (3, g))[kind] + rng.normal(0, 0.3, (2, 3, g))[batch, kind]
    return rng.poisson(np.exp(log_rate + 1.0)).astype(np.float32), kind, batch


def knn_accuracy(z: np.ndarray, labels: np.ndarray) -> float:
    z = (z - z.mean(0)) / z.std(0)
    return float(cross_val_score(KNeighborsClassifier(15), z, labels, cv=5).mean())


def test_the_penalty_mixes_batches_the_decoder_cannot_absorb_and_keeps_the_cell_types():
    X, kind, batch = interacting_batches()
    covariates = np.eye(2, dtype=np.float32)[batch]
    scores = {}
    for weight in (0.0, 30.0):
        objective = Objective(batch_mmd=weight, batch_columns=(0, 2) if weight else None)
        vae = BetaVAE(X.shape[1], n_latent=4, likelihood="poisson", decoder="linear", n_covariates=2,
                      objective=objective, hidden=(64,))
        vae.fit(X, covariates=covariates, epochs=60, progress=False)
        z = vae.encode(X, covariates=covariates)
        scores[weight] = knn_accuracy(z, batch), knn_accuracy(z, kind)
    assert scores[0.0][0] > 0.85  # the batch is in the codes without the penalty (0.91 when written)
    assert scores[30.0][0] < scores[0.0][0] - 0.1  # 0.67 with it
    assert scores[30.0][1] >= 0.95 and scores[0.0][1] >= 0.95


def test_cells_records_the_penalty_and_the_cli_checks_its_flag(tmp_path, capsys):
    X, kind, batch = interacting_batches(n=300, g=40)
    obs = pd.DataFrame({"batch": [f"b{b}" for b in batch], "kind": [f"k{k}" for k in kind]},
                       index=[f"c{i}" for i in range(len(kind))])
    adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])]))
    res = gp.run(adata, n_latent=3, batch_key="batch", n_top_genes=None, epochs=2, progress=False)
    assert res.model.objective.batch_mmd == gp.BATCH_MMD and res.model.objective.batch_columns == (0, 2)
    assert res.settings["batch_mmd"] == res.adata.uns["sciencevae"]["params"]["batch_mmd"] == gp.BATCH_MMD
    off = gp.run(adata, n_latent=3, batch_key="batch", n_top_genes=None, epochs=2, progress=False, batch_mmd=0)
    assert off.model.objective.batch_mmd == 0 and off.model.objective.batch_columns is None
    alone = gp.run(adata, n_latent=3, n_top_genes=None, epochs=2, progress=False)  # no batch: nothing to mix
    assert alone.model.objective.batch_mmd == 0
    with pytest.raises(ValueError, match="batch_mmd=5 mixes the batches of batch_key"):
        gp.run(adata, n_latent=3, n_top_genes=None, epochs=2, progress=False, batch_mmd=5)
    with pytest.raises(ValueError, match="finite number >= 0"):
        gp.run(adata, n_latent=3, batch_key="batch", n_top_genes=None, epochs=2, progress=False, batch_mmd=np.inf)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    base = ["cells", str(path), "--n-top-genes", "0", "--quiet", "--epochs", "2", "--n-latent", "3"]
    for weight in ("5", "30"):  # the default weight given explicitly is checked too
        assert main(base + ["--out", str(tmp_path / "a"), "--batch-mmd", weight]) == 2
        assert "--batch-mmd mixes the batches of --batch-key" in capsys.readouterr().err
    for weight in ("-1", "inf", "nan"):
        assert main(base + ["--out", str(tmp_path / "b"), "--batch-key", "batch", "--batch-mmd", weight]) == 2
        assert "--batch-mmd must be a finite number >= 0" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "off"), "--batch-mmd", "0"]) == 0  # off: fine without a batch
    out = tmp_path / "run"
    assert main(base + ["--out", str(out), "--batch-key", "batch", "--batch-mmd", "5"]) == 0
    assert json.loads((out / "model" / "config.json").read_text())["objective"]["batch_mmd"] == 5.0
    for weight in ("3", "30"):
        assert main(["cells", str(path), "--reference", str(out), "--batch-mmd", weight, "--out",
                     str(tmp_path / "m")]) == 2
        assert "--batch-mmd cannot be used with --reference" in capsys.readouterr().err
    assert main(["cells", str(path), "--reference", str(out), "--batch-mmd", "0", "--out", str(tmp_path / "m")]) == 0


@pytest.mark.skipif(not CELLBENCH.exists(), reason="CellBench counts not in ../shared/data/scrna")
def test_cellbench_plates_mix_better_with_the_penalty_and_the_cell_lines_stay_apart():
    adata = ad.read_h5ad(CELLBENCH)
    lines, plates = adata.obs["cell_line_demuxlet"].to_numpy(), adata.obs["batch"].to_numpy()
    scores = {}
    for weight in (0.0, gp.BATCH_MMD):
        res = gp.run(adata, batch_key="batch", epochs=100, progress=False, batch_mmd=weight)
        z = res.adata.obsm["X_sciencevae"]
        scores[weight] = knn_accuracy(z, plates), knn_accuracy(z, lines)
    assert scores[gp.BATCH_MMD][0] < scores[0.0][0] - 0.02  # 0.316 against 0.393 when written
    assert scores[gp.BATCH_MMD][1] >= 0.95  # 0.983
