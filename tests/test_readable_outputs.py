"""What a scientist looks at first is right, labelled and quiet: figure contents and labels checked
on the figure objects, every written variable's attributes against what it holds, reports that name
their input, and runs that print no warning that is not about the data."""

import hashlib
import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.image import AxesImage

from sciencevae.case_studies import climate_figures as cf
from sciencevae.case_studies import climate_trend as ct
from sciencevae.case_studies import gene_programmes as gp
from sciencevae.case_studies import programme_figures as pf
from sciencevae.cli import main
from sciencevae.datasets import count_programmes, monthly_field


@pytest.fixture(scope="module")
def programmes():
    counts, _ = count_programmes(240, n_genes=40, seed=2)
    obs = pd.DataFrame({"condition": np.repeat(["ctrl", "stim"], 120)}, index=[f"c{i}" for i in range(240)])
    adata = ad.AnnData(counts.toarray().astype(np.float32), obs=obs)
    return gp.run(adata, n_latent=3, epochs=3, n_top_genes=None, progress=False)


@pytest.fixture(scope="module")
def climate():
    field = ct.synthetic_dataset(monthly_field(n_years=6, n_lat=8, n_lon=12))
    return field, ct.run(field, var="sst", n_latent=4, beta=1.0, epochs=100, progress=False)


def test_top_genes_show_both_ends_of_every_programme(programmes):
    figure = pf.top_gene_bars(programmes, n_genes=5)
    for ax in [a for a in figure.axes if a.get_visible()]:
        j = int(ax.get_title().split()[1])
        shown = {t.get_text() for t in ax.get_yticklabels()}
        rows = programmes.programmes[(programmes.programmes["programme"] == j) & (programmes.programmes["rank"] <= 5)]
        assert set(rows["gene"]) <= shown and len(shown) == 10
        assert "loading" in ax.get_xlabel()


def test_group_heatmap_keeps_magnitudes(programmes):
    figure = pf.group_heatmap(programmes, "condition")
    ax = figure.axes[0]
    image = next(c for c in ax.get_children() if isinstance(c, AxesImage))
    table = programmes.association[programmes.association["obs_key"] == "condition"]
    expected = table.pivot(index="group", columns="programme", values="effect_size").to_numpy()
    np.testing.assert_allclose(np.asarray(image.get_array()), expected)  # Cohen's d itself, not a z-score
    assert not np.allclose(np.abs(expected), 1 / np.sqrt(2))  # what per-programme z-scores of two groups give
    means = table.pivot(index="group", columns="programme", values="mean").to_numpy()
    assert {t.get_text() for t in ax.texts} == {f"{m:.2g}" for m in means.ravel()}
    assert "Cohen's d" in figure.axes[1].get_ylabel() and ax.get_xlabel() and ax.get_ylabel() == "condition"


def test_umap_panels_are_labelled(programmes):
    figure = pf.umap_activity(programmes)
    panels = [a for a in figure.axes if a.get_title().startswith("programme")]
    colorbars = [a for a in figure.axes if a not in panels and a.get_visible()]
    assert len(panels) == 3 and all(a.get_xlabel() == "UMAP 1" for a in panels)
    assert [c.get_ylabel() for c in colorbars] == ["programme activity"] * 3


def test_maps_have_geographic_labels_units_and_robust_colour_limits(climate):
    field, res = climate
    maps = res.maps.copy(deep=True)
    maps["sst"][{"knob": 0, "lat": 2, "lon": 3}] = 1e3  # one extreme cell (an inland sea)
    figure = cf.knob_maps(res.__class__(**{**res.__dict__, "maps": maps}), "sst")
    ax = figure.axes[0]
    assert ax.get_xlabel() == "longitude (°E)" and ax.get_ylabel() == "latitude (°N)"
    vmax = ax.collections[0].norm.vmax
    assert vmax < 100 and vmax == pytest.approx(cf.robust_limit(maps["sst"].sel(knob=0).values))
    assert any(a.get_ylabel() == "degC per knob s.d." for a in figure.axes)


def test_decomposition_points_avoid_an_inland_sea_and_label_units(climate):
    field, res = climate
    mask = res.components["mean_state"].copy(deep=True)
    mask[:, :] = 1.0
    mask[:, 5] = np.nan  # a land strip ...
    mask[2:4, 6:8] = np.nan
    mask[3, 10] = np.nan
    lake = xr.zeros_like(mask).fillna(0)
    lake[:, :] = 1.0
    lake[0, 0] = 50.0  # ... and the strongest signal in a one-cell "sea" cut off by land
    mask[1, :] = np.nan
    mask[0, 1:] = np.nan
    points = cf.representative_points([lake], mask)
    assert points[0] != (float(mask.lat[0]), float(mask.lon[0]))
    figure = cf.decomposition_points(res, "sst")
    assert all(ax.get_ylabel() == "sst (degC)" for ax in figure.axes)
    assert "decimal years" in figure.axes[-1].get_xlabel()
    titles = [ax.get_title(loc="left") for ax in figure.axes]
    assert all(("°N" in t or "°S" in t) and ("°E" in t or "°W" in t) for t in titles), titles
    assert [cf._place("lon", v) for v in (-37.0, 202.0, 18.0)] == ["37°W", "158°W", "18°E"]
    coast = xr.DataArray(np.ones((7, 7)), dims=("lat", "lon"), coords={"lat": np.arange(7.0), "lon": np.arange(7.0)})
    coast[:, 0] = np.nan  # land on the west: the strongest cell next to it is a coast, not the open ocean
    signal = xr.ones_like(coast)
    signal[3, 1] = 9.0
    assert cf.representative_points([signal], coast, percentile=100)[0] != (3.0, 1.0)


def test_written_variables_describe_what_they_hold(climate, tmp_path):
    field, res = climate
    field["sst"].attrs.update(actual_range=np.array([-2.0, 35.0]), statistic="Mean")
    res.save(tmp_path / "run")
    components = xr.open_dataset(tmp_path / "run" / "components.nc")
    for name in ("mean_state", "seasonal", "trend", "residual"):
        attrs = components[name].attrs
        assert attrs["units"] == "degC" and name.split("_")[0] in attrs["long_name"]
        assert not {"actual_range", "statistic", "valid_range"} & set(attrs)
    assert components["mean_state"].attrs["cell_methods"] == "time: mean"
    # what the attributes claim of the values: anomalies have zero time mean, the parts add up to the input
    for name in ("seasonal", "trend"):
        assert float(np.abs(components[name].mean("time")).max()) < 1e-3
    total = components["mean_state"] + components["seasonal"] + components["trend"] + components["residual"]
    np.testing.assert_allclose(total.transpose(*field["sst"].dims).values, field["sst"].values, atol=1e-3)
    maps = xr.open_dataset(tmp_path / "run" / "maps.nc")
    assert "per knob standard deviation" in maps["sst"].attrs["long_name"] and maps["sst"].attrs["units"] == "degC"
    latents = xr.open_dataset(tmp_path / "run" / "latents.nc")
    assert latents["kl"].attrs["units"] == "nats" and all(latents[v].attrs["units"] == "1" for v in latents.data_vars)
    assert "unit variance" in latents["knob"].attrs["long_name"]
    np.testing.assert_allclose(latents["knob"].var("time").values, 1.0, rtol=1e-3)
    for ds in (components, maps, latents):
        assert ds.attrs["sciencevae_version"] and json.loads(ds.attrs["settings"])["n_latent"] == 4


def test_cells_h5ad_describes_its_arrays(programmes, tmp_path):
    programmes.save(tmp_path / "run")
    out = ad.read_h5ad(tmp_path / "run" / "cells.h5ad")
    described = out.uns["sciencevae"]["descriptions"]
    for group, name in (("obsm", "X_sciencevae"), ("varm", "sciencevae_loadings"), ("var", "sciencevae_used")):
        assert name in (getattr(out, group) if group != "var" else out.var.columns) and described[group][name]
    assert described["uns"]["kl_per_latent"] and "kl_per_latent" in out.uns["sciencevae"]


def test_command_line_runs_are_quiet_and_their_reports_name_the_input(tmp_path, capsys):
    counts, _ = count_programmes(200, n_genes=30, seed=3)
    path = tmp_path / "cells.h5ad"
    ad.AnnData(counts.toarray().astype(np.float32)).write_h5ad(path)
    field = tmp_path / "field.nc"
    ct.synthetic_dataset(monthly_field(n_years=3, n_lat=6, n_lon=8)).to_netcdf(field)
    runs = {"cells": ["cells", str(path), "--n-top-genes", "0", "--n-latent", "3", "--epochs", "2"],
            "climate": ["climate", str(field), "--var", "sst", "--n-latent", "3", "--epochs", "3"]}
    for name, args in runs.items():
        capsys.readouterr()
        assert main([*args, "--out", str(tmp_path / name), "--quiet"]) == 0
        err = capsys.readouterr().err
        assert "warning" not in err.lower() and "val=nan" not in err, err
        report = (tmp_path / name / "report.html").read_text()
        source = path if name == "cells" else field
        assert str(source.resolve()) in report and hashlib.sha256(source.read_bytes()).hexdigest() in report
        assert ">run.json<" in report and "INCOMPLETE" not in report


def test_a_one_cell_group_has_no_effect_size_and_raises_no_warning():
    latents = np.random.default_rng(0).normal(size=(50, 2))
    obs = pd.DataFrame({"batch": ["a"] * 49 + ["b"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = gp.association(latents, obs, ["batch"])
    assert table.loc[table["group"] == "b", "effect_size"].isna().all()
    assert table.loc[table["group"] == "a", "effect_size"].isna().all()  # against a one-cell rest: undefined too
