"""Gene programmes: simulated programmes with known genes and usages, enrichment and
association with known answers, outputs, CLI, and the real CellBench / PBMC data."""

import hashlib
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import hypergeom, spearmanr
from sklearn.metrics import roc_auc_score

import sciencevae
from sciencevae import BetaVAE
from sciencevae.case_studies import gene_programmes as gp
from sciencevae.cli import main
from sciencevae.datasets import cell_programmes, hard_programmes

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CELLBENCH = DATA / "scrna" / "cellbench_celseq2_5cl_3plates_counts.h5ad"


def simulated(n_cells=2000, n_genes=500, seed=0):
    sim = cell_programmes(n_cells, n_genes=n_genes, seed=seed)
    obs = pd.DataFrame({"batch": sim["batch"].astype(str), "cell_type": [f"type{i}" for i in sim["identity"]]},
                       index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(sim["counts"], obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])), sim


@pytest.fixture(scope="module")
def fitted():
    adata, sim = simulated()
    sets = {f"programme{p}": [f"g{j}" for j in np.flatnonzero(sim["membership"][:, p])] for p in range(6)}
    sets["random"] = [f"g{j}" for j in np.random.default_rng(9).choice(500, 30, replace=False)]
    res = gp.run(adata, n_latent=6, batch_key="batch", n_top_genes=None, gene_sets=sets, n_top=30,
                 epochs=100, seed=0, progress=False)
    return res, sim, adata


def test_programme_genes_are_found_from_the_loadings(fitted):
    res, sim, _ = fitted
    for p in range(sim["membership"].shape[1]):
        member = sim["membership"][:, p]
        auroc = max(max(roc_auc_score(member, w), roc_auc_score(member, -w)) for w in res.weights.T)
        assert auroc >= 0.9, (p, auroc)


def test_activity_usage_tracks_a_latent(fitted):
    res, sim, _ = fitted
    np.testing.assert_allclose(res.rotation @ res.rotation.T, np.eye(6), atol=1e-8)  # varimax is orthogonal
    latents = res.adata.obsm["X_sciencevae"]
    for k in range(sim["usage"].shape[1]):
        rho = max(abs(spearmanr(sim["usage"][:, k], latents[:, j])[0]) for j in range(latents.shape[1]))
        assert rho >= 0.6, (k, rho)


def test_enrichment_finds_the_true_sets_and_not_the_random_one(fitted):
    res, _, _ = fitted
    table = res.enrichment
    best = table.groupby("gene_set")["q"].min()
    assert (best.drop("random") < 1e-6).all()
    assert best["random"] > 0.05
    row = table.iloc[0]
    expected = hypergeom.sf(row.overlap - 1, 500, row.set_size, 30)
    assert row.p == pytest.approx(expected)


def test_enrichment_and_association_known_answers():
    genes = [f"g{j}" for j in range(100)]
    weights = np.zeros((100, 1))
    weights[:10, 0] = np.arange(10, 0, -1)  # g0..g9 lead the programme
    table = gp.enrichment(weights, genes, {"lead": genes[:10], "tail": genes[50:60]}, n_top=10)
    lead = table[(table.gene_set == "lead") & (table.direction == "+")].iloc[0]
    assert lead.overlap == 10 and lead.p == pytest.approx(hypergeom.sf(9, 100, 10, 10))
    assert table[(table.gene_set == "tail") & (table.direction == "+")].iloc[0].overlap == 0
    with pytest.warns(UserWarning, match="no gene set has 5 or more of its genes among the 100 modelled genes"):
        empty = gp.enrichment(weights, genes, {"elsewhere": ["TP53", "MYC", "g1"]})
    assert empty.empty and {"q", "rank_q"} <= set(empty.columns)  # same columns as a full table
    latents = np.r_[np.ones(20), np.zeros(30)][:, None] + np.r_[np.zeros(20), np.linspace(-1, 1, 30)][:, None]
    obs = pd.DataFrame({"group": ["a"] * 20 + ["b"] * 30})
    assoc = gp.association(latents, obs, ["group"])
    a = assoc[assoc.group == "a"].iloc[0]
    assert a["mean"] == pytest.approx(1.0) and a.effect_size > 1.5 and a.n_cells == 20


def test_mlp_gene_weights_are_the_mean_log_mean_derivative():
    counts = sp.csr_matrix(np.random.default_rng(0).poisson(3, size=(40, 12)).astype(np.float32))
    vae = BetaVAE(12, n_latent=2, likelihood="nb", hidden=(8,))
    prepared = sciencevae.as_prepared(counts)
    weights = gp.gene_weights(vae, prepared)
    z = torch.as_tensor(vae.encode(prepared))
    h = 1e-3
    step = torch.tensor([h, 0.0])
    log_mean = lambda codes: torch.log_softmax(vae.module.decoder(codes), -1)  # noqa: E731
    finite = ((log_mean(z + step) - log_mean(z - step)) / (2 * h)).mean(0).detach().numpy()
    np.testing.assert_allclose(weights[:, 0], finite, atol=1e-3)


def test_save_writes_the_documented_outputs(fitted, tmp_path):
    res, _, adata = fitted
    threads = torch.get_num_threads()
    out = res.save(tmp_path / "run")
    cells = ad.read_h5ad(out / "cells.h5ad")
    np.testing.assert_array_equal(cells.obsm["X_sciencevae"], res.adata.obsm["X_sciencevae"])
    assert cells.varm["sciencevae_loadings"].shape == (500, 6)
    assert cells.uns["sciencevae"]["likelihood"] == "nb" and len(cells.uns["sciencevae"]["kl_per_latent"]) == 6
    assert (cells.X != adata.X).nnz == 0  # counts unchanged
    programmes = pd.read_csv(out / "programmes.csv")
    assert list(programmes.columns[:4]) == ["programme", "rank", "gene", "weight"]
    enrichment = pd.read_csv(out / "enrichment.csv")
    assert {"programme", "gene_set", "overlap", "p", "q"} <= set(enrichment.columns)
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["posterior_predictive.png", "programmes_by_batch.png", "programmes_by_cell_type.png",
                       "top_genes.png", "umap_programmes.png"]
    checks = pd.read_csv(out / "model_checks.csv")
    assert len(checks) == 500
    matched = pd.read_csv(out / "label_matching.csv").set_index(["obs_key", "similarity"])
    assert set(matched.index) == {(k, s) for k in ("batch", "cell_type") for s in ("smi", "nn", "spearman")}
    assert matched.loc[("cell_type", "nn"), "matching"] > 0.5 > matched.loc[("batch", "nn"), "matching"]
    assert {"observed_zero_fraction", "simulated_zero_fraction", "zeros", "variance"} <= set(checks.columns)
    assert sciencevae.load(out / "model").config.n_latent == 6
    assert torch.get_num_threads() == threads  # the UMAP's numba pool leaves torch's threads as they were


def test_cli_cells(tmp_path, capsys):
    adata, sim = simulated(300, 200, seed=2)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("P0\tna\t" + "\t".join(f"g{j}" for j in np.flatnonzero(sim["membership"][:, 0])) + "\n")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "run"
    args = ["cells", str(path), "--out", str(out), "--n-latent", "4", "--epochs", "3", "--gene-sets", str(gmt),
            "--batch-key", "batch", "--n-top-genes", "0", "--quiet", "--compare", "cell_type:type0",
            "--sample-key", "batch"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "programme 0:" in printed and "differential activity (samples as the unit)" in printed
    assert (out / "enrichment.csv").exists() and (out / "cells.h5ad").exists()
    table = pd.read_csv(out / "differential.csv")
    assert len(table) == 4 and set(table["group1"]) == {"type0"} and set(table["group2"]) == {"rest"}
    assert set(table["test"]) == {"paired"} and "Differential programme activity by cell_type" in (
        out / "report.html").read_text()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    adata.X = adata.X.multiply(0.5).tocsr()
    adata.write_h5ad(tmp_path / "half.h5ad")
    assert main(["cells", str(tmp_path / "half.h5ad"), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "non-integer" in capsys.readouterr().err
    bad = ["cells", str(path), "--out", str(tmp_path / "o3"), "--quiet", "--compare", "cell_type:type9"]
    assert main(bad) == 2 and "has no group 'type9'" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists() or not any((tmp_path / "o3").iterdir())
    assert main(bad[:-2] + ["--sample-key", "batch"]) == 2 and "give the groups" in capsys.readouterr().err


def test_the_hard_simulation_is_as_hard_as_documented():
    sim = hard_programmes(3000, n_genes=1000, seed=0)
    member, usage = sim["membership"], sim["usage"]
    assert member.shape == (1000, 9) and np.all(member.sum(0) == 40)
    assert (member.sum(1) > 1).sum() >= 60  # shared genes (a quarter of each programme's are another's)
    np.testing.assert_allclose((usage > 0).mean(0), [0.35, 0.5, 0.1], atol=0.03)
    strengths = sim["lfc"].sum(0) / member.sum(0)
    assert strengths[:6].min() < 0.8 and strengths[:6].max() > 1.1  # unequal identities
    assert len(np.unique(sim["batch"])) == 2 and sim["names"][-1] == "stress"
    shares = pd.crosstab(sim["batch"], sim["identity"], normalize="index").to_numpy()
    assert np.abs(shares[0] - shares[1]).max() > 0.05  # identity shares differ by batch


def programme_recovery(weights: np.ndarray, activity: np.ndarray, sim: dict) -> tuple[float, float]:
    """Mean AUROC of each true programme's genes from its own gene list (one-to-one; each component's
    "+" and "-" directions are two lists) and mean Spearman of the activity programmes' usage."""
    from scipy.optimize import linear_sum_assignment

    member = sim["membership"]
    auroc = np.array([[roc_auc_score(member[:, p], w) for w in weights.T] for p in range(member.shape[1])])
    auroc, activity = np.c_[auroc, 1 - auroc], np.c_[activity, -activity]
    rows, columns = linear_sum_assignment(-auroc)
    n_identities = member.shape[1] - sim["usage"].shape[1]
    rhos = [spearmanr(sim["usage"][:, p - n_identities], activity[:, c])[0]
            for p, c in zip(rows, columns) if p >= n_identities]
    return float(auroc[rows, columns].mean()), float(np.mean(rhos))


@pytest.fixture(scope="module")
def consensus_runs():
    """Two consensus runs (3 fits each, seeds 0-2 and 10-12) on the hard simulation."""
    sim = hard_programmes(1000, n_genes=400, seed=3)
    obs = pd.DataFrame({"batch": sim["batch"].astype(str)}, index=[f"c{i}" for i in range(1000)])
    adata = ad.AnnData(sim["counts"], obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(400)]))
    runs = [gp.run(adata, n_latent=10, batch_key="batch", n_top_genes=None, n_fits=3, seed=seed, progress=False)
            for seed in (0, 10)]
    return runs, sim


def test_consensus_programmes_are_found_again_with_other_seeds(consensus_runs):
    from scipy.optimize import linear_sum_assignment

    (first, second), sim = consensus_runs
    k = first.weights.shape[1]
    correlation = np.abs(np.corrcoef(first.weights.T, second.weights.T)[:k, k:])
    rows, columns = linear_sum_assignment(-correlation)
    stable = first.stability["stable"].to_numpy()[rows] & second.stability["stable"].to_numpy()[columns]
    assert stable.sum() >= 7  # 6 identities (one is the others' baseline) + 3 activities
    assert np.all(correlation[rows, columns][stable] >= 0.9)
    assert np.all(~stable[correlation[rows, columns] < 0.9])  # what is not found again is flagged by a run
    for run in (first, second):
        auroc, rho = programme_recovery(run.weights, run.adata.obsm["X_sciencevae"], sim)
        assert auroc >= 0.95 and rho >= 0.55, (auroc, rho)


def test_consensus_stability_is_written_to_every_output(consensus_runs, tmp_path):
    res = consensus_runs[0][0]
    out = res.save(tmp_path / "run")
    programmes = pd.read_csv(out / "programmes.csv")
    assert {"found", "stability", "stable"} <= set(programmes.columns)
    per_programme = programmes.groupby("programme")["stability"].first()
    np.testing.assert_allclose(per_programme.to_numpy(), res.stability["stability"].to_numpy())
    uns = ad.read_h5ad(out / "cells.h5ad").uns["sciencevae"]
    assert list(uns["consensus"]["seeds"]) == [0, 1, 2] and uns["params"]["n_fits"] == 3
    np.testing.assert_allclose(uns["consensus"]["stability"], res.stability["stability"].to_numpy())
    assert uns["consensus"]["members"].shape == (3, res.weights.shape[1])
    report = (out / "report.html").read_text()
    assert "Programme stability across 3 seeds" in report
    assert res.adata.obsm["X_sciencevae"].shape[1] == res.weights.shape[1] == len(res.stability)


def test_cli_cells_consensus(tmp_path, capsys):
    adata, _ = simulated(300, 200, seed=2)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    args = ["cells", str(path), "--n-latent", "4", "--n-top-genes", "0", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "bad"), "--fits", "0"]) == 2
    assert "--fits must be at least 1" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(args + ["--out", str(tmp_path / "noise"), "--fits", "2", "--epochs", "1"]) == 2  # untrained: noise
    assert "no component was found again in 2 of the 2 fits" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "run"), "--fits", "2", "--epochs", "60"]) == 0
    assert "(stability " in capsys.readouterr().out
    assert "stable" in pd.read_csv(tmp_path / "run" / "programmes.csv").columns


@pytest.mark.skipif(not CELLBENCH.exists(), reason="needs ../shared/data (CellBench counts)")
def test_cellbench_cell_lines_separate_and_a_cell_cycle_programme_is_found():
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    adata = ad.read_h5ad(CELLBENCH)
    adata.X = adata.X.astype(np.float32)
    sets = {**gp.read_gmt(DATA / "genesets" / "msigdb_hallmark_v7.5.1_human_symbols.gmt"),
            **gp.read_gmt(DATA / "genesets" / "pegasus_signatures" / "cell_cycle_human.gmt")}
    res = gp.run(adata, n_latent=10, gene_sets=sets, gene_symbols="gene_symbol", epochs=100, progress=False)
    singlets = (adata.obs["demuxlet_cls"] == "SNG").to_numpy()
    latents = res.adata.obsm["X_sciencevae"][singlets]
    labels = adata.obs["cell_line_demuxlet"].to_numpy()[singlets]
    assert cross_val_score(KNeighborsClassifier(15), latents, labels, cv=5).mean() >= 0.95
    cycle = res.enrichment[res.enrichment["gene_set"].isin(["G2/M", "G1/S", "HALLMARK_G2M_CHECKPOINT"])]
    assert cycle["q"].min() < 0.01


def test_pbmc68k_reduced_markers_lead_separate_programmes():
    import scanpy as sc

    pbmc = sc.datasets.pbmc68k_reduced()
    counts = np.rint(np.expm1(pbmc.raw.X.toarray()) * pbmc.obs["n_counts"].to_numpy()[:, None] / 1e4)
    adata = ad.AnnData(counts.astype(np.float32), obs=pbmc.obs[["bulk_labels"]].copy(), var=pbmc.raw.var[[]].copy())
    res = gp.run(adata, n_latent=10, n_top_genes=None, epochs=100, progress=False)
    top = res.programmes[res.programmes["rank"] <= 10]
    leading = {}
    for marker in ("LYZ", "CD79A", "NKG7", "CD3D"):
        rows = top[top["gene"] == marker]
        assert len(rows), f"{marker} is not among the top 10 genes of any programme"
        best = rows.sort_values("rank").iloc[0]
        leading[marker] = (int(best["programme"]), best["direction"])
    # a latent's positive and negative ends are two programmes (as with LDVAE's signed loadings)
    assert len(set(leading.values())) == 4, leading


def test_raising_a_programme_in_silico_raises_its_own_genes(fitted):
    """Known answer: shifting the component that holds a true programme up makes that programme's member
    genes the ones whose expected expression rises most."""
    res, sim, _ = fitted
    genes = list(res.adapter.genes)
    for p in range(sim["membership"].shape[1]):
        member = sim["membership"][:, p]
        scores = [roc_auc_score(member, w) for w in res.weights.T]
        component = int(np.argmax(np.abs(np.array(scores) - 0.5)))
        direction = 1.0 if scores[component] > 0.5 else -1.0
        table = res.perturb(component, shift=2.0 * direction).set_index("gene").loc[genes]
        assert roc_auc_score(member, table["log2_fold_change"]) >= 0.9, p


def test_a_linear_decoder_s_perturbation_of_one_cell_follows_the_loadings(fitted):
    """For one cell, log expected expression moves by shift x the programme's loadings, up to a constant
    (the softmax's normaliser): exactly, through a linear decoder."""
    res, _, adata = fitted
    one = np.zeros(adata.n_obs, bool)
    one[7] = True
    table = res.perturb(2, shift=1.5, cells=one).set_index("gene").loc[list(res.adapter.genes)]
    moved = table["log2_fold_change"].to_numpy() * np.log(2)
    expected = 1.5 * res.weights[:, 2]
    np.testing.assert_allclose(moved - moved.mean(), expected - expected.mean(), atol=2e-4)
    current = float(res.adata.obsm["X_sciencevae"][7, 2])
    unchanged = res.perturb(2, value=current, cells=one)
    np.testing.assert_allclose(unchanged["log2_fold_change"], 0.0, atol=1e-4)


def test_perturb_from_the_command_line_on_a_saved_run(fitted, tmp_path, capsys):
    res, _, _ = fitted
    run = res.save(tmp_path / "run")
    assert main(["perturb", str(run), "--programme", "1", "--shift", "2", "--cells", "cell_type:type0"]) == 0
    printed = capsys.readouterr().out
    assert "programme 1 shifted by +2 in cell_type:type0" in printed and "up (log2 fold change):" in printed
    written = pd.read_csv(run / "perturbations" / "programme_1_shift+2.csv")
    type0 = (res.adata.obs["cell_type"] == "type0").to_numpy()
    direct = res.perturb(1, shift=2.0, cells=type0)
    np.testing.assert_allclose(written["log2_fold_change"], direct["log2_fold_change"], rtol=1e-5, atol=1e-6)
    assert list(written.columns) == ["gene", "before", "after", "difference", "log2_fold_change"]
    for bad, message in ((["--programme", "9", "--shift", "1"], "programme 9 is not in this run"),
                         (["--programme", "0", "--set", "1", "--cells", "cell_type:type9"], "no group 'type9'"),
                         (["--programme", "0", "--set", "1", "--cells", "tissue:x"], "no obs column 'tissue'"),
                         (["--programme", "cycling", "--shift", "1"], "only a guided run (--guided) names")):
        assert main(["perturb", str(run), *bad]) == 2
        assert message in capsys.readouterr().err
    assert main(["perturb", str(tmp_path), "--programme", "0", "--shift", "1"]) == 2
    assert "not a sciencevae cells run folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="exactly one of value"):
        res.perturb(0)
    assert main(["perturb", str(run), "--programme", "1", "--shift", "2", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "programme_1_shift+2.csv").exists()  # a folder given as --out holds the default name
    with pytest.warns(UserWarning, match="the decoder extrapolates"):
        res.perturb(1, shift=1e3)
    with pytest.raises(ValueError, match="must be a finite number"):
        res.perturb(1, shift=float("nan"))


def test_a_misfit_after_a_short_training_points_at_the_training_first():
    from sciencevae.case_studies.model_checks import PredictiveCheck

    misfit = PredictiveCheck(table=pd.DataFrame(), summary=pd.DataFrame(), verdict="nb under-predicts zeros: try zinb")
    said = gp._short_training_said(misfit, {"epochs": 3}, 1000)
    assert said.verdict.endswith("trained for 3 of the default 400 epochs: train fully before changing the likelihood")
    assert gp._short_training_said(misfit, {"epochs": 400}, 1000).verdict == misfit.verdict


def test_mapping_the_reference_s_own_cells_gives_its_activities(fitted, tmp_path):
    from sciencevae.case_studies.reference_mapping import map_to_reference

    res, _, adata = fitted
    run = res.save(tmp_path / "ref")
    mapped = map_to_reference(adata, run)
    np.testing.assert_allclose(mapped.adata.obsm["X_sciencevae"], res.adata.obsm["X_sciencevae"], atol=1e-4)
    np.testing.assert_allclose(mapped.weights, res.weights, atol=1e-6)
    assert mapped.settings["genes_missing_in_query"] == 0 and mapped.settings["reference"] == str(run.resolve())


def test_new_cells_with_missing_genes_and_a_new_batch_are_mapped_from_the_command_line(fitted, tmp_path, capsys):
    res = fitted[0]
    run = res.save(tmp_path / "ref")
    sim = cell_programmes(400, n_genes=500, seed=0, cell_seed=7)  # the reference's programmes, new cells
    obs = pd.DataFrame({"batch": sim["batch"].astype(str), "cell_type": [f"type{i}" for i in sim["identity"]]},
                       index=[f"q{i}" for i in range(400)])
    query = ad.AnnData(sim["counts"], obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(500)]))
    query = query[:, 40:].copy()  # 40 of the model's genes missing
    query.obs["batch"] = np.where(query.obs["batch"] == "0", "0", "new")  # a batch the reference never saw
    query.obs["donor"] = [f"d{i % 4}" for i in range(query.n_obs)]
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    out = tmp_path / "mapped"
    assert main(["cells", str(path), "--reference", str(run), "--out", str(out), "--quiet",
                 "--compare", "cell_type:type1", "--sample-key", "donor"]) == 0
    printed = capsys.readouterr().out
    assert "460 of the model's 500 genes in the query, 40 missing (zeros)" in printed
    assert "note: the query's batch new is not among the reference's batches" in printed
    mapped = ad.read_h5ad(out / "cells.h5ad")
    assert mapped.obsm["X_sciencevae"].shape == (400, 6)
    assert pd.read_csv(out / "programmes.csv").equals(pd.read_csv(run / "programmes.csv"))
    association = pd.read_csv(out / "association.csv")
    strongest = association[association["obs_key"] == "cell_type"]["effect_size"].abs().max()
    assert strongest > 2, "the reference's programmes still tell the query's cell types apart"
    assert (pd.read_csv(out / "differential.csv")["test"] == "paired").all()
    assert main(["perturb", str(out), "--programme", "0", "--shift", "1", "--cells", "batch:new"]) == 0  # a mapped run
    assert "programme 0 shifted by +1 in batch:new" in capsys.readouterr().out
    for extra, message in ((["--fits", "2"], "--fits cannot be used with --reference"),
                           (["--epochs", "3", "--n-latent", "4"], "--epochs, --n-latent cannot be used with"),
                           ([], "is not a sciencevae cells run folder")):
        reference = str(tmp_path) if not extra else str(run)
        assert main(["cells", str(path), "--reference", reference, "--out", str(tmp_path / "x"), "--quiet",
                     *extra]) == 2
        assert message in capsys.readouterr().err
    renamed = query.copy()
    renamed.var_names = [f"gene{i}" for i in range(renamed.n_vars)]
    renamed.write_h5ad(tmp_path / "renamed.h5ad")
    assert main(["cells", str(tmp_path / "renamed.h5ad"), "--reference", str(run), "--out", str(tmp_path / "y"),
                 "--quiet"]) == 2
    assert "has none of the reference model's 500 genes" in capsys.readouterr().err
    query[:, 260:].copy().write_h5ad(tmp_path / "few.h5ad")  # 200 of the 500 genes (the query lacks 40 already)
    assert main(["cells", str(tmp_path / "few.h5ad"), "--reference", str(run), "--out", str(tmp_path / "z"),
                 "--quiet"]) == 2
    assert "has only 200 (40%) of the reference model's 500 genes" in capsys.readouterr().err


def test_a_consensus_programme_is_perturbed_through_the_first_fit_s_member():
    from sciencevae.case_studies.perturbation import Target, target

    uns = {"consensus": {"members": np.array([[-1, 2], [0, 1]]), "signs": np.array([[0.0, -1.0], [1.0, 1.0]])}}
    assert target(uns, 1, 2) == Target(programme=1, component=2, sign=-1.0)
    with pytest.raises(ValueError, match="programme 0 was not found by the run's first fit"):
        target(uns, 0, 2)
    assert target({}, 1, 2) == Target(1, 1, 1.0)


def test_gene_sets_too_small_to_test_are_named_in_a_warning():
    genes = [f"g{j}" for j in range(40)]
    weights = np.random.default_rng(0).normal(size=(40, 2))
    sets = {"big": genes[:10], "tiny": genes[:3] + ["absent1", "absent2", "absent3"]}
    with pytest.warns(UserWarning, match=r"1 of 2 gene sets have fewer than 5 .* left out: tiny \(3\)"):
        table = gp.enrichment(weights, genes, sets)
    assert set(table["gene_set"]) == {"big"}


def test_expression_correlation_is_pearson_of_log_normalised_expression_in_memory_or_streamed():
    from sciencevae.streaming import ArrayRows, Streamed

    rng = np.random.default_rng(4)
    counts = rng.poisson(rng.gamma(1.0, 2.0, size=(60, 7))).astype(np.float64) + np.eye(60, 7)
    activity = rng.normal(size=(60, 2))
    logged = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    expected = np.array([[np.corrcoef(logged[:, g], activity[:, j])[0, 1] for j in range(2)] for g in range(7)])
    for data in (sp.csr_matrix(counts), Streamed(ArrayRows(sp.csr_matrix(counts)), chunk_rows=16)):
        np.testing.assert_allclose(gp.expression_correlation(data, activity), expected, atol=1e-12)
    assert np.all(gp.expression_correlation(counts, np.c_[activity[:, :1], np.ones(60)])[:, 1] == 0)  # no spread


def test_top_genes_by_score_keep_each_end_to_its_loading_sign():
    weights = np.array([[2.0], [0.5], [-0.1], [0.0], [-3.0], [0.01]])
    correlation = np.array([[0.1], [0.6], [-0.7], [0.9], [-0.2], [0.95]])
    table = gp.top_genes(weights, list("abcdef"), n_top=5, correlation=correlation)
    # score |w| r |r|: b 0.18, a 0.02, f 0.009 (correlated, but barely loaded); d: zero loading, in neither
    assert table[table["direction"] == "+"]["gene"].tolist() == ["b", "a", "f"]
    assert table[table["direction"] == "-"]["gene"].tolist() == ["e", "c"]  # e: 3 x 0.04 = 0.12 > c: 0.049
    np.testing.assert_allclose(table["score"], np.abs(table["weight"]) * table["correlation"] ** 2 *
                               np.sign(table["correlation"]))
    assert gp.top_genes(weights, list("abcdef"), n_top=5)["gene"].tolist() == ["a", "b", "f", "e", "c"]


MOUSE = DATA / "scrna" / "mouse_10x_10kcells_first1000genes_counts.h5ad"


@pytest.mark.skipif(not MOUSE.exists(), reason="shared data (mouse 10x counts) absent")
def test_real_programme_genes_are_not_ones_seen_in_a_few_cells():
    """The first 1,000 genes of a real mouse 10x file: by loading, some top genes are detected in fewer than 20
    of 10,000 cells; ranked by :func:`gene_scores` (what programmes.csv holds), none is, and none has a
    loading near 0 (under a tenth of its end's largest)."""
    from sciencevae.adapters.cells import drop_empty_cells, read_cells

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = drop_empty_cells(read_cells(MOUSE))
        res = gp.run(adata, epochs=30, progress=False)
    detected = dict(zip(adata.var_names, np.asarray((adata.X > 0).sum(0)).ravel()))

    def rare_share(table: pd.DataFrame) -> float:
        return float(np.mean([detected[g] < 20 for g in table.loc[table["rank"] <= 5, "gene"]]))

    assert rare_share(res.programmes) == 0.0
    assert rare_share(gp.top_genes(res.weights, res.adapter.genes)) >= 0.05
    assert set(res.programmes.columns) >= {"weight", "correlation", "score"}
    top = res.programmes[res.programmes["rank"] <= 5]
    largest = {(j, d): np.abs(res.weights[:, j][(res.weights[:, j] > 0) == (d == "+")]).max()
               for j, d in zip(top["programme"], top["direction"])}
    assert all(abs(w) >= 0.1 * largest[j, d] for j, d, w in zip(top["programme"], top["direction"], top["weight"]))
