"""Diagnostics: active units, collapse verdicts, rate–distortion, traversals."""

import numpy as np
import pytest

from sciencevae import BetaVAE
from sciencevae.datasets import Sprites, linear_factors
from sciencevae.diagnostics import (
    active_units,
    collapse_report,
    latent_traversal,
    plot_rate_distortion,
    plot_traversal,
    rate_distortion_sweep,
)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    return linear_factors(1500, n_features=20)


@pytest.fixture(scope="module")
def fitted(data):
    vae = BetaVAE(20, n_latent=6, hidden=(64, 32))
    vae.fit(data[0], epochs=60, batch_size=128, progress=False)
    return vae


def test_three_factors_give_three_active_units(fitted, data):
    units = active_units(fitted, data[0])
    assert units["count"] == 3
    report = collapse_report(fitted, data[0])
    assert report.n_active == 3 and len(report.collapsed) == 3
    assert "3 of 6 latents are active" in report.verdict
    assert report.total_rate == pytest.approx(report.table["kl"].sum())
    text = str(report)
    assert text.count("collapsed") == 3 and "active units: 3 of 6" in text


def test_traversal_of_a_collapsed_latent_changes_nothing(fitted, data):
    values = np.linspace(-2, 2, 5)
    grid = latent_traversal(fitted, data[0][0], values=values)
    assert grid.shape == (6, 5, 20)
    spread = np.abs(grid[:, -1] - grid[:, 0]).mean(1)
    active = active_units(fitted, data[0])["active"]
    assert spread[~active].max() < 0.05 * spread[active].min()


def test_beta_sweep_ends_in_collapse_and_says_so(data, tmp_path):
    X = data[0]
    table = rate_distortion_sweep(
        X, betas=[1.0, 30.0, 3000.0], model_kwargs=dict(n_latent=4, hidden=(32,)),
        fit_kwargs=dict(epochs=25, batch_size=128, progress=False),
    )
    assert table["active_units"].iloc[0] >= 3
    assert table["active_units"].iloc[-1] <= 1
    assert np.all(np.diff(table["rate"]) < 0) and np.all(np.diff(table["distortion"]) > 0)
    figure_path = tmp_path / "rd.png"
    plot_rate_distortion(table, figure_path)
    assert figure_path.read_bytes()[:8] == PNG
    collapsed = BetaVAE(20, n_latent=4, hidden=(32,), beta=3000.0)
    collapsed.fit(X, epochs=25, batch_size=128, progress=False)
    verdict = collapse_report(collapsed, X).verdict
    assert "collapse" in verdict and "lower beta" in verdict.lower()


def test_capacity_sweep_raises_the_rate_with_c(data):
    table = rate_distortion_sweep(
        data[0], betas=None, capacities=[0.5, 6.0], model_kwargs=dict(n_latent=4, hidden=(32,)),
        fit_kwargs=dict(epochs=20, batch_size=128, progress=False),
        objective_options=dict(gamma=50.0, capacity_steps=50),
    )
    assert list(table.columns)[0] == "capacity"
    assert table["rate"].iloc[0] == pytest.approx(0.5, abs=0.4)
    assert table["rate"].iloc[1] > 3.0
    with pytest.raises(ValueError, match="either"):
        rate_distortion_sweep(data[0], betas=[1.0], capacities=[1.0])


def test_image_traversal_grid_is_written(tmp_path):
    sprites = Sprites()
    vae = BetaVAE(4096, n_latent=3, likelihood="bernoulli", encoder="conv", decoder="conv",
                  image_shape=sprites.image_shape, hidden=(32,), conv_channels=8)
    grid = latent_traversal(vae, values=[-1, 0, 1])
    assert grid.shape == (3, 3, 4096) and np.all((grid >= 0) & (grid <= 1))
    path = tmp_path / "traversal.png"
    plot_traversal(grid, image_shape=sprites.image_shape, values=[-1, 0, 1], path=path)
    assert path.read_bytes()[:8] == PNG
    line_path = tmp_path / "lines.png"
    plot_traversal(grid[:, :, :10], path=line_path)
    assert line_path.read_bytes()[:8] == PNG
