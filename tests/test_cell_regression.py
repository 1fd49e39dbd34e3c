"""Per-cell regression on shared time series (case_studies.cell_regression), on known answers."""

import warnings

import numpy as np
import pytest

from sciencevae.case_studies import cell_regression as cr
from sciencevae.case_studies import climate_trend as ct
from sciencevae.datasets import monthly_field


def test_fit_cells_matches_least_squares_cell_by_cell_with_gaps():
    rng = np.random.default_rng(0)
    series = rng.normal(size=(120, 2))
    coef = rng.normal(size=(30, 2))
    data = 5.0 + series @ coef.T + 0.1 * rng.normal(size=(120, 30))
    data[rng.random(data.shape) < 0.2] = np.nan
    data[:, 7] = np.nan  # a cell never observed: coefficients 0, no error
    found = cr.fit_cells(series, data)
    for cell in (0, 3, 29):
        ok = np.isfinite(data[:, cell])
        design = np.c_[np.ones(ok.sum()), series[ok]]
        expected = np.linalg.lstsq(design, data[ok, cell], rcond=None)[0][1:]
        np.testing.assert_allclose(found[cell], expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(found[7], 0.0)


def test_principal_series_has_the_field_s_rank():
    rng = np.random.default_rng(1)
    field = rng.normal(size=(50, 1)) @ rng.normal(size=(1, 40)) + 3.0
    series = cr.principal_series(field, np.ones(40), 4)
    assert series.shape == (50, 1)
    assert cr.principal_series(np.ones((50, 40)), np.ones(40), 4).shape == (50, 0)
    assert abs(np.corrcoef(series[:, 0], field[:, 0])[0, 1]) > 0.999


def test_held_out_years_keep_a_real_signal_and_drop_noise():
    rng = np.random.default_rng(2)
    years = np.arange(240) / 12
    folds = np.floor(years).astype(int) % 2
    signal = np.sin(2 * np.pi * years / 7)[:, None]
    data = signal @ rng.normal(size=(1, 60)) * 0.5 + rng.normal(size=(240, 60))
    noise = rng.normal(size=(240, 3))
    assert cr.supported_series(np.zeros((240, 0)), np.c_[signal, noise], data, folds) == 1
    assert cr.supported_series(np.zeros((240, 0)), noise, data, folds) == 0


def _per_cell_line(field, years):
    """Per-cell least-squares line through the anomalies from the monthly climatology."""
    t = years - years.mean()
    with warnings.catch_warnings():  # land: NaN at every time
        warnings.simplefilter("ignore", RuntimeWarning)
        anomalies = field - np.nanmean(field, 0) - _monthly_climatology(field)
    slope = np.nansum(anomalies * t[:, None, None], 0) / np.sum(t**2)
    return slope[None] * t[:, None, None]


def _monthly_climatology(field):
    months = np.arange(len(field)) % 12
    with warnings.catch_warnings():  # land: NaN at every time
        warnings.simplefilter("ignore", RuntimeWarning)
        clim = np.stack([np.nanmean(field[months == m], 0) for m in range(12)])
    return clim[months] - clim.mean(0)


def test_a_short_noisy_record_s_components_are_no_worse_than_the_simplest_baseline():
    """15 years x 8 x 12 cells, noise 0.8 (benchmarks/climate_baselines.py field (c), seed 4): where the
    decoder has little to learn from, the per-cell regression with its amplitudes shrunk toward the area
    mean makes the trend clearly better than a per-cell line (measured 0.955 against 0.931, factor 0.68; 0.945 without
    the shrinkage) and the seasons as good as a monthly climatology (0.9981 against 0.9980; before the
    regression: 0.87 and 0.997)."""
    truth = monthly_field(n_years=15, n_lat=8, n_lon=12, noise=0.8, seed=4)
    res = ct.run(ct.synthetic_dataset(truth), var="sst", progress=False)
    land = truth["land"]
    years = np.arange(len(truth["time"])) / 12
    r2 = {}
    for name, found, baseline in (
            ("trend", res.components["trend"].values, _per_cell_line(truth["field"], years)),
            ("seasonal", res.components["seasonal"].values, _monthly_climatology(truth["field"]))):
        expected = (truth[name] - truth[name].mean(0))[:, ~land]
        r2[name] = [1 - np.nanvar(f[:, ~land] - expected) / np.var(expected) for f in (found, baseline)]
    assert r2["trend"][0] >= r2["trend"][1] + 0.01, r2
    assert 0.3 < res.settings["trend_shrinkage"][0][0] < 0.95
    assert "per-cell amplitudes shrunk" in ct.trend_component_slopes(res)["sst"]["summary"]
    assert r2["seasonal"][0] >= r2["seasonal"][1] - 1e-4, r2


def test_moments_added_chunk_by_chunk_give_the_whole_record_s_fit_and_error():
    rng = np.random.default_rng(4)
    series = rng.normal(size=(150, 3))
    data = series @ rng.normal(size=(3, 25)) + rng.normal(size=(150, 25))
    data[rng.random(data.shape) < 0.1] = np.nan
    design = cr.with_intercept(series)
    chunked = cr.Moments.zeros(25, 4)
    for start in range(0, 150, 7):  # some chunks have gaps, some not
        chunked.add(design[start:start + 7], data[start:start + 7])
    whole = cr.moments(series, data)
    np.testing.assert_allclose(chunked.solve(), whole.solve(), rtol=1e-10)
    np.testing.assert_allclose(chunked.solve(3), whole.solve(3), rtol=1e-10)
    folds = (np.arange(150) // 12) % 2
    by_fold = cr.fold_moments(series, data, folds)
    assert cr.cross_validated_error(by_fold, 4) == pytest.approx(cr.held_out_error(series, data, folds), rel=1e-10)
    # the closed form equals predicting each held-out fold directly
    direct = 0.0
    for fold in (0, 1):
        coef = cr.fit_cells(series, data, folds != fold)
        test = folds == fold
        for cell in range(25):
            ok = test & np.isfinite(data[:, cell])
            residual = data[ok, cell] - series[ok] @ coef[cell]
            direct += np.sum((residual - residual.mean()) ** 2)
    assert cr.cross_validated_error(by_fold, 4) == pytest.approx(direct, rel=1e-8)


def test_patterns_from_a_sample_of_rows_span_the_record_s_series():
    rng = np.random.default_rng(5)
    courses = np.c_[np.sin(np.arange(400) / 30), np.arange(400) / 400.0]
    field = courses @ rng.normal(size=(2, 60)) + 0.01 * rng.normal(size=(400, 60))
    centre, patterns = cr.principal_patterns(field[rng.choice(400, 80, replace=False)], np.ones(60), 2)
    series = cr.project(field, centre, patterns)
    fitted = cr.with_intercept(series) @ np.linalg.lstsq(cr.with_intercept(series), courses, rcond=None)[0]
    assert np.corrcoef(fitted[:, 0], courses[:, 0])[0, 1] > 0.999
    assert np.corrcoef(fitted[:, 1], courses[:, 1])[0, 1] > 0.999


def test_shrinkage_removes_the_noise_share_of_the_spread_and_keeps_the_weighted_mean():
    """Amplitudes with true spread 1 and halves' noise of variance 2 each (so the full fit's noise has
    variance 1): the factor is ~1/2 and the shrunk amplitudes are closer to the truth; a second group
    without noise is left alone; the weighted mean is kept."""
    rng = np.random.default_rng(0)
    n = 4000
    truth = np.r_[3 + rng.normal(0, 1, n), -2 + rng.normal(0, 1, n)]
    noise_a, noise_b = rng.normal(0, np.sqrt(2), 2 * n), rng.normal(0, np.sqrt(2), 2 * n)
    quiet = np.r_[np.ones(n), np.zeros(n)]  # group 1 has no noise
    halves = ((truth + quiet * noise_a)[:, None], (truth + quiet * noise_b)[:, None])
    full = (halves[0] + halves[1]) / 2
    amplitude, weight = rng.uniform(0.5, 2, 2 * n), rng.uniform(0.2, 1, 2 * n)
    groups = np.r_[np.zeros(n, int), np.ones(n, int)]
    coef = [h / amplitude[:, None] for h in (full, *halves)]
    shrunk, factors = cr.shrink_to_mean(coef[0], (coef[1], coef[2]), (60.0, 60.0), amplitude, weight, groups)
    assert factors.shape == (2, 1)
    assert factors[0, 0] == pytest.approx(0.5, abs=0.05) and factors[1, 0] == 1.0
    found = shrunk[:, 0] * amplitude
    first = slice(0, n)
    assert np.mean((found[first] - truth[first]) ** 2) < 0.6 * np.mean((full[first, 0] - truth[first]) ** 2)
    np.testing.assert_allclose(found[n:], full[n:, 0])
    w = weight[first]
    assert w @ found[first] / w.sum() == pytest.approx(w @ full[first, 0] / w.sum())


def test_shrinkage_leaves_cells_without_weight_out_of_its_statistics():
    """A cell with weight 0 (e.g. unobserved in one half) does not change the factor, however wild its halves."""
    rng = np.random.default_rng(1)
    truth = rng.normal(0, 1, (200, 1))
    halves = [truth + rng.normal(0, 0.1, truth.shape) for _ in range(2)]
    ones, groups = np.ones(200), np.zeros(200, int)
    _, clean = cr.shrink_to_mean(truth, tuple(halves), (30.0, 30.0), ones, ones, groups)
    halves[0][0], weight = 1e6, ones.copy()
    weight[0] = 0.0
    _, masked = cr.shrink_to_mean(truth, tuple(halves), (30.0, 30.0), ones, weight, groups)
    assert masked[0, 0] == pytest.approx(clean[0, 0], abs=0.01) and masked[0, 0] > 0.95
