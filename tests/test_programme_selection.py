"""Choosing the number of programmes and β from stability across seeds: known answers on simulated
programmes, the choice rule, outputs and the CLI's refusals."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from sciencevae.case_studies import gene_programmes as gp
from sciencevae.case_studies.programme_selection import choose
from sciencevae.cli import main
from sciencevae.datasets import cell_programmes


def simulated(n_cells=600, n_genes=240, seed=4):
    sim = cell_programmes(n_cells, n_genes=n_genes, seed=seed)  # 4 identity + 2 activity programmes
    obs = pd.DataFrame({"batch": sim["batch"].astype(str)}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(sim["counts"], obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


@pytest.fixture(scope="module")
def swept():
    return gp.run(simulated(), n_latent=[2, 6, 10], batch_key="batch", n_top_genes=None, n_fits=2, progress=False)


def test_the_sweep_finds_the_simulated_programmes_and_not_fewer(swept):
    table = swept.selection.set_index("n_latent")
    assert table.loc[2, "n_stable"] <= 2  # two latents cannot hold six programmes
    assert table.loc[6, "n_stable"] >= 5 and table.loc[10, "n_stable"] >= 5  # 6 programmes (one may be the baseline)
    assert table.loc[2, "reconstruction"] > table.loc[6, "reconstruction"]
    chosen = table[table["chosen"]]
    assert len(chosen) == 1 and chosen.index[0] in (6, 10)
    assert swept.settings["n_latent"] == chosen.index[0] and swept.settings["chosen_by_sweep"] == "n_latent"
    assert len(swept.stability) == swept.weights.shape[1]  # the chosen point's own consensus, no refit


def test_selection_is_written_as_table_figure_and_report(swept, tmp_path):
    out = swept.save(tmp_path / "run")
    np.testing.assert_array_equal(pd.read_csv(out / "selection.csv")["n_stable"], swept.selection["n_stable"])
    assert (out / "figures" / "selection.png").stat().st_size > 10_000
    assert "Choosing n_latent: stability against reconstruction" in (out / "report.html").read_text()


def test_choose_prefers_most_stable_then_fewer_latents_then_lower_elbo():
    table = pd.DataFrame({"n_latent": [6, 6, 10, 12], "beta": [0.5, 1.0, 1.0, 1.0], "n_stable": [7, 7, 7, 4],
                          "neg_elbo": [10.0, 9.0, 8.0, 1.0]})
    assert choose(table) == (6, 1.0)


def test_cli_refuses_a_sweep_without_seeds_and_a_bad_setting(tmp_path, capsys):
    path = tmp_path / "cells.h5ad"
    simulated(100, 200).write_h5ad(path)
    base = ["cells", str(path), "--n-top-genes", "0", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a"), "--n-latent", "auto"]) == 2
    assert "add --fits 2 or more" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--beta", "high"]) == 2
    assert "--beta takes a number, a comma-separated list or 'auto', got 'high'" in capsys.readouterr().err
    for flag, value, message in (("--n-latent", "6,6", "lists a value twice"), ("--n-latent", "0", "at least 1"),
                                 ("--beta", "-1", "0 or more"), ("--epochs", "0", "at least 1")):
        assert main(base + ["--out", str(tmp_path / "c"), flag, value, "--fits", "2"]) == 2
        assert message in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")
