"""Synthetic data with known generating factors, shipped as code (no download).

Used by the tests, the README's first run and the benchmarks: every generator
returns the data together with the truth that produced it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["linear_factors", "count_programmes", "cell_programmes", "hard_programmes", "given_gene_sets", "Sprites",
           "monthly_field", "daily_field"]


def linear_factors(
    n_obs: int, n_features: int = 50, noise: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """X = z A + noise with 3 independent non-Gaussian factors.

    The factors are uniform on [-1.7, 1.7], a centred Gamma(4, 0.5) and a
    Laplace(0, 0.7); ``A`` is a random (3, n_features) Gaussian mixing matrix.
    A β-VAE with more than 3 latents should use 3 and switch the rest off.

    Returns
    -------
    X
        (n_obs, n_features) float32 data.
    factors
        (n_obs, 3) the true factors.

    >>> X, z = linear_factors(100, n_features=8)
    >>> X.shape, z.shape
    ((100, 8), (100, 3))
    """
    rng = np.random.default_rng(seed)
    factors = np.stack(
        [rng.uniform(-1.7, 1.7, n_obs), rng.gamma(4.0, 0.5, n_obs) - 2.0, rng.laplace(0.0, 0.7, n_obs)], axis=1
    )
    mixing = rng.normal(size=(3, n_features))
    X = factors @ mixing + noise * rng.normal(size=(n_obs, n_features))
    return X.astype(np.float32), factors


def count_programmes(
    n_obs: int = 600,
    n_genes: int = 40,
    n_programmes: int = 3,
    dispersion: float = 5.0,
    zero_inflation: float = 0.0,
    seed: int = 0,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Negative-binomial counts whose mean mixes a few gene programmes.

    Each cell has programme activities on the simplex (Dirichlet(0.5)), each
    programme is a composition over genes (Dirichlet(0.3)), library sizes are
    log-normal around 800, and counts are NB with inverse dispersion
    ``dispersion``; a fraction ``zero_inflation`` of entries is set to 0.

    Returns
    -------
    counts
        (n_obs, n_genes) CSR float32 integer counts.
    activity
        (n_obs, n_programmes) the true programme activities.

    >>> counts, activity = count_programmes(50, n_genes=10)
    >>> counts.shape, activity.shape
    ((50, 10), (50, 3))
    """
    rng = np.random.default_rng(seed)
    activity = rng.dirichlet(np.full(n_programmes, 0.5), size=n_obs)
    programmes = rng.dirichlet(np.full(n_genes, 0.3), size=n_programmes)
    library = rng.lognormal(np.log(800), 0.3, size=n_obs)
    mu = (activity @ programmes) * library[:, None]
    counts = rng.poisson(rng.gamma(dispersion, mu / dispersion))
    if zero_inflation:
        counts[rng.random(counts.shape) < zero_inflation] = 0
    return sp.csr_matrix(counts.astype(np.float32)), activity


class Sprites:
    """dSprites-like 64x64 binary images drawn from 5 known factors, as code.

    Factors (integer indices; ``factor_sizes`` values each):
    ``shape`` (square, ellipse, heart), ``scale`` (6 steps, 0.5-1),
    ``orientation`` (40 steps over 2π), ``x`` and ``y`` (32 positions each).
    The sampler interface (``factor_sizes``, ``sample_factors``, ``render``)
    is what :func:`sciencevae.metrics.betavae_score` and
    :func:`~sciencevae.metrics.factorvae_score` use.

    >>> sprites = Sprites()
    >>> X, factors = sprites.dataset(10)
    >>> X.shape, factors.shape, float(X.max())
    ((10, 4096), (10, 5), 1.0)
    """

    factor_names = ("shape", "scale", "orientation", "x", "y")
    factor_sizes = (3, 6, 40, 32, 32)

    def __init__(self, size: int = 64):
        self.size = int(size)
        self.image_shape = (1, self.size, self.size)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 5) independent uniform factor indices."""
        return np.stack([rng.integers(0, k, size=n) for k in self.factor_sizes], axis=1)

    def values(self, factors: np.ndarray) -> np.ndarray:
        """Factor indices -> physical values (shape id, scale, angle in rad, x, y in [0, 1])."""
        f = np.asarray(factors, dtype=np.float64)
        return np.stack(
            [f[:, 0], 0.5 + 0.1 * f[:, 1], 2 * np.pi * f[:, 2] / 40, f[:, 3] / 31, f[:, 4] / 31], axis=1
        )

    def render(self, factors: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Binary images, flattened row-major to (n, size * size) float32."""
        factors = np.asarray(factors)
        return np.concatenate(
            [self._render_chunk(factors[i : i + chunk]) for i in range(0, len(factors), chunk)]
        ) if len(factors) else np.zeros((0, self.size**2), np.float32)

    def _render_chunk(self, factors: np.ndarray) -> np.ndarray:
        shape, scale, angle, x, y = (v[:, None, None] for v in self.values(factors).T)
        grid = (np.arange(self.size) + 0.5) / self.size
        v, u = np.meshgrid(grid, grid, indexing="ij")  # v: rows (down), u: columns
        radius = 0.18 * scale
        dx = (u[None] - (0.2 + 0.6 * x)) / radius
        dy = (v[None] - (0.2 + 0.6 * y)) / radius
        a = np.cos(angle) * dx + np.sin(angle) * dy
        b = -np.sin(angle) * dx + np.cos(angle) * dy
        square = np.maximum(np.abs(a), np.abs(b)) <= 0.8
        ellipse = a**2 + (b / 0.5) ** 2 <= 1.0
        hx, hy = 1.15 * a, -1.15 * b + 0.15
        heart = (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 <= 0
        image = np.where(shape == 0, square, np.where(shape == 1, ellipse, heart))
        return image.reshape(len(factors), -1).astype(np.float32)

    def dataset(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random images and their factor indices."""
        factors = self.sample_factors(n, np.random.default_rng(seed))
        return self.render(factors), factors


def monthly_field(
    n_years: int = 40,
    n_lat: int = 18,
    n_lon: int = 36,
    start_year: int = 1960,
    noise: float = 0.15,
    seed: int = 0,
    seasonal_change: float = 0.0,
) -> dict[str, np.ndarray]:
    """A synthetic monthly surface-temperature-like field with known parts.

    ``field = mean_state + seasonal + trend + enso + noise`` on a regular
    global grid (latitude descending, as in many products), with a land block
    that is NaN at every time step and 0.5% scattered missing values:

    - seasonal: an annual cycle whose amplitude grows with |latitude|, whose
      phase shifts with longitude and flips between hemispheres; its amplitude
      is multiplied by ``1 + seasonal_change * trend_index`` (e.g. -0.3: the
      seasons weaken as it warms; 0: they do not change);
    - trend: a nonlinear (accelerating) global curve ``g(t)`` times a pattern
      that is stronger at high northern latitudes;
    - enso: a 3-7 year quasi-periodic index times a tropical east-Pacific blob.

    Returns a dict of numpy arrays: ``field`` (time, lat, lon), ``seasonal``,
    ``trend``, ``enso``, ``mean_state`` (lat, lon), ``seasonal_amplitude``
    (lat, lon; at ``trend_index`` 0), ``trend_index`` (time), ``enso_index``
    (time), ``month`` (time, 1-12), ``time`` (datetime64[ns]), ``lat``, ``lon``, ``land``.

    >>> d = monthly_field(n_years=2, n_lat=6, n_lon=8)
    >>> d["field"].shape, d["time"][:2].astype(str).tolist()
    ((24, 6, 8), ['1960-01-01T00:00:00.000000000', '1960-02-01T00:00:00.000000000'])
    """
    n_time = 12 * n_years
    time = np.array([np.datetime64(f"{start_year + t // 12:04d}-{t % 12 + 1:02d}-01", "ns") for t in range(n_time)])
    month = np.arange(n_time) % 12 + 1
    return _field(time, np.arange(n_time) / 12.0, 2 * np.pi * (month - 1) / 12, n_years, n_lat, n_lon, noise,
                  seed, seasonal_change)


def daily_field(
    n_years: int = 10,
    n_lat: int = 6,
    n_lon: int = 8,
    start_year: int = 1990,
    noise: float = 0.3,
    seed: int = 0,
    seasonal_change: float = 0.0,
) -> dict[str, np.ndarray]:
    """The field of :func:`monthly_field` sampled daily (standard calendar, leap days included): the
    seasonal cycle follows the day of the year, the trend and ENSO-like mode the same curves of time.

    >>> d = daily_field(n_years=3, n_lat=3, n_lon=4, start_year=1991)  # 1992 is a leap year
    >>> d["field"].shape, str(d["time"][365 + 59].astype("datetime64[D]"))
    ((1096, 3, 4), '1992-02-29')
    """
    day = np.arange(np.datetime64(f"{start_year:04d}-01-01"), np.datetime64(f"{start_year + n_years:04d}-01-01"))
    year = day.astype("datetime64[Y]")
    day_of_year = (day - year.astype("datetime64[D]")).astype(float)
    length = ((year + 1).astype("datetime64[D]") - year.astype("datetime64[D]")).astype(float)
    years = year.astype(float) + 1970 - start_year + day_of_year / length
    return _field(day.astype("datetime64[ns]"), years, 2 * np.pi * day_of_year / length, n_years, n_lat, n_lon,
                  noise, seed, seasonal_change)


def _field(time: np.ndarray, years: np.ndarray, angle: np.ndarray, n_years: int, n_lat: int, n_lon: int,
           noise: float, seed: int, seasonal_change: float) -> dict[str, np.ndarray]:
    """The parts of :func:`monthly_field` at the given times (``years`` since the start, ``angle`` of the
    annual cycle in radians)."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(85.0, -85.0, n_lat)
    lon = np.linspace(0.0, 360.0, n_lon, endpoint=False) + 180.0 / n_lon
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")

    mean_state = 28.0 * np.cos(la) ** 1.5 - 1.0
    amplitude = 1.0 + 7.0 * np.abs(np.sin(la))
    phase = 0.5 * lo + np.where(la < 0, np.pi, 0.0)  # radians of the annual cycle
    trend_index = 0.6 * (years / n_years) ** 2 + 0.2 * (years / n_years)
    scale = 1.0 + seasonal_change * trend_index
    seasonal = scale[:, None, None] * amplitude[None] * np.cos(angle[:, None, None] - phase[None])

    trend_pattern = 1.0 + 0.8 * (np.sin(la) > 0.5) + 0.3 * np.cos(lo)
    trend = trend_index[:, None, None] * trend_pattern[None]

    n_months = 12 * n_years
    slow = np.convolve(rng.normal(size=n_months + 24), np.ones(24) / 24, mode="valid")[:n_months]
    slow = np.interp(years, np.arange(n_months) / 12.0, slow)
    enso_index = np.sin(2 * np.pi * years / 4.3) * (1 + 0.5 * slow / slow.std()) + 0.3 * slow / slow.std()
    enso_index = (enso_index - enso_index.mean()) / enso_index.std()
    blob = np.exp(-((np.rad2deg(la) / 12) ** 2) - ((np.rad2deg(lo) - 250) / 40) ** 2)
    enso = 1.2 * enso_index[:, None, None] * blob[None]

    field = mean_state[None] + seasonal + trend + enso + noise * rng.normal(size=seasonal.shape)
    land = (np.rad2deg(la) > 10) & (np.rad2deg(la) < 60) & (np.rad2deg(lo) > 60) & (np.rad2deg(lo) < 120)
    field[:, land] = np.nan
    field[rng.random(field.shape) < 0.005] = np.nan
    month = (time.astype("datetime64[M]").astype(int) % 12) + 1
    return {
        "field": field.astype(np.float32), "seasonal": seasonal, "trend": trend, "enso": enso,
        "mean_state": mean_state, "seasonal_amplitude": amplitude, "trend_index": trend_index,
        "enso_index": enso_index, "month": month, "time": time, "lat": lat, "lon": lon, "land": land,
    }


def cell_programmes(
    n_cells: int = 2000,
    n_genes: int = 500,
    n_identities: int = 4,
    n_activities: int = 2,
    genes_per_programme: int = 30,
    dispersion: float = 10.0,
    seed: int = 0,
    cell_seed: int | None = None,
) -> dict[str, np.ndarray]:
    """Single-cell counts with known identity and activity programmes (cNMF-style simulation).

    Every cell has one identity (cell type) and a usage in [0, 1] of each
    activity programme; each programme up-regulates its own disjoint set of
    genes (log fold change 1.5-2.5). Library sizes are log-normal, two batches
    scale every gene by a batch factor, counts are NB with inverse dispersion
    ``dispersion``. ``seed`` fixes everything; with ``cell_seed`` the
    programmes, gene effects and batch effects still come from ``seed`` but the
    cells are drawn from ``cell_seed``, so blocks with different ``cell_seed``
    are more cells of one experiment (used to write files larger than memory).

    Returns ``counts`` (cells x genes CSR), ``identity`` (cells,), ``usage``
    (cells x n_activities), ``batch`` (cells,), ``membership`` (genes x
    programmes bool, identities first) and ``library`` (cells,).

    >>> sim = cell_programmes(100, n_genes=200)
    >>> sim["counts"].shape, sim["membership"].shape
    ((100, 200), (200, 6))
    """
    rng = np.random.default_rng(seed)
    n_programmes = n_identities + n_activities
    if n_programmes * genes_per_programme > n_genes:
        raise ValueError("n_genes is too small for disjoint programme gene sets")
    order = rng.permutation(n_genes)
    membership = np.zeros((n_genes, n_programmes), bool)
    for p in range(n_programmes):
        membership[order[p * genes_per_programme:(p + 1) * genes_per_programme], p] = True
    lfc = membership * rng.uniform(1.5, 2.5, size=membership.shape)
    base = rng.lognormal(0.0, 1.0, n_genes)
    cells = rng if cell_seed is None else np.random.default_rng([seed, cell_seed])
    identity = cells.integers(0, n_identities, n_cells)
    usage = cells.beta(0.5, 0.5, size=(n_cells, n_activities))
    batch = cells.integers(0, 2, n_cells)
    batch_effect = rng.lognormal(0.0, 0.3, size=(2, n_genes))
    log_rate = np.log(base)[None] + lfc[:, identity].T + usage @ lfc[:, n_identities:].T
    proportions = np.exp(log_rate) * batch_effect[batch]
    proportions /= proportions.sum(1, keepdims=True)
    library = cells.lognormal(np.log(3000), 0.4, n_cells)
    mu = proportions * library[:, None]
    counts = cells.poisson(cells.gamma(dispersion, mu / dispersion))
    return {"counts": sp.csr_matrix(counts.astype(np.float32)), "identity": identity, "usage": usage,
            "batch": batch, "membership": membership, "library": library}


#: The activity programmes of :func:`hard_programmes`: name, share of cells where it is active, log fold change.
HARD_ACTIVITIES = (("cycling", 0.35, 1.4), ("interferon", 0.5, 0.9), ("stress", 0.1, 0.9))


def hard_programmes(
    n_cells: int = 3000,
    n_genes: int = 1000,
    n_identities: int = 6,
    genes_per_programme: int = 40,
    overlap: float = 0.25,
    dispersion: float = 4.0,
    n_batches: int = 2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Counts where programmes are hard to tell apart: the benchmark simulation for gene programmes.

    Harder than :func:`cell_programmes` in every way that separates methods:

    - more identity (``n_identities``, log fold change 0.5-1.5, so some are weak)
      than activity programmes (:data:`HARD_ACTIVITIES`: cycling, strong, in 35%
      of cells; interferon, moderate, in half; stress, weak (0.9), in 10%);
    - gene membership overlaps: a share ``overlap`` of each programme's genes is
      drawn from the other programmes' genes;
    - activity usage is 0 outside the cells where the programme is active and
      uniform in (0.2, 1] inside them, independently per programme;
    - identities differ in library size (x0.6-1.6) and their shares differ by batch;
    - batches scale every gene (log-normal, s.d. 0.25) and a further 10% of
      genes, programme genes among them, by x2 or x0.5 in one batch;
    - NB counts with inverse dispersion ``dispersion`` (4: noisy) around
      log-normal library sizes (median 1,500).

    Returns ``counts`` (cells x genes CSR, float32), ``identity`` (cells,),
    ``usage`` (cells x 3), ``batch`` (cells,), ``membership`` (genes x
    programmes bool, identities first), ``lfc`` (genes x programmes),
    ``library`` (cells,) and ``names`` (programme names).

    >>> sim = hard_programmes(200, n_genes=400)
    >>> sim["counts"].shape, sim["membership"].shape, sim["names"][-1]
    ((200, 400), (400, 9), 'stress')
    """
    rng = np.random.default_rng(seed)
    n_programmes = n_identities + len(HARD_ACTIVITIES)
    n_own = genes_per_programme - int(round(overlap * genes_per_programme))
    if n_programmes * n_own > n_genes:
        raise ValueError(f"n_genes={n_genes} is too small for {n_programmes} programmes of {genes_per_programme} genes")
    order = rng.permutation(n_genes)
    membership = np.zeros((n_genes, n_programmes), bool)
    for p in range(n_programmes):
        membership[order[p * n_own:(p + 1) * n_own], p] = True
    taken = order[:n_programmes * n_own]
    for p in range(n_programmes):
        others = taken[~membership[taken, p]]
        membership[rng.choice(others, genes_per_programme - n_own, replace=False), p] = True
    strength = np.r_[rng.uniform(0.5, 1.5, n_identities), [a[2] for a in HARD_ACTIVITIES]]
    lfc = membership * strength * rng.uniform(0.7, 1.3, size=membership.shape)
    base = rng.lognormal(0.0, 1.0, n_genes)
    batch = rng.integers(0, n_batches, n_cells)
    shares = rng.dirichlet(np.full(n_identities, 3.0), size=n_batches)
    identity = np.array([rng.choice(n_identities, p=shares[b]) for b in batch])
    active = rng.random((n_cells, len(HARD_ACTIVITIES))) < [a[1] for a in HARD_ACTIVITIES]
    usage = active * rng.uniform(0.2, 1.0, size=active.shape)
    batch_effect = rng.lognormal(0.0, 0.25, size=(n_batches, n_genes))
    hit = rng.choice(n_genes, n_genes // 10, replace=False)
    batch_effect[rng.integers(0, n_batches, len(hit)), hit] *= rng.choice([0.5, 2.0], len(hit))
    log_rate = np.log(base)[None] + lfc[:, identity].T + usage @ lfc[:, n_identities:].T
    proportions = np.exp(log_rate) * batch_effect[batch]
    proportions /= proportions.sum(1, keepdims=True)
    size = rng.uniform(0.6, 1.6, n_identities)[identity]
    library = rng.lognormal(np.log(1500), 0.4, n_cells) * size
    mu = proportions * library[:, None]
    counts = rng.poisson(rng.gamma(dispersion, mu / dispersion))
    names = [f"identity_{i}" for i in range(n_identities)] + [a[0] for a in HARD_ACTIVITIES]
    return {"counts": sp.csr_matrix(counts.astype(np.float32)), "identity": identity, "usage": usage,
            "batch": batch, "membership": membership, "lfc": lfc, "library": library, "names": names}


def given_gene_sets(membership: np.ndarray, names: list[str], genes: list[str], incomplete: str = "identity_2",
                    noisy: str = "interferon", uncovered: str = "identity_5", seed: int = 0
                    ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Gene sets for the programmes of a simulation as a curated database would give them, some of them wrong:
    the test of gene-set-guided programmes.

    Every programme gets its true genes as a set, except that ``incomplete`` gets half of them, ``noisy``
    three fifths of them plus as many genes of no programme as it lost, ``uncovered`` no set at all, and a
    ``decoy`` set of genes in no programme (as many as the largest programme) is added.

    Returns the sets (name -> gene names; names of programmes, plus ``"decoy"``) and what each set is
    (``"correct"``, ``"incomplete"``, ``"noisy"``, ``"decoy"``).

    >>> sim = hard_programmes(50, n_genes=400)
    >>> sets, kind = given_gene_sets(sim["membership"], sim["names"], [f"g{i}" for i in range(400)])
    >>> len(sets), kind["interferon"], kind["decoy"], "identity_5" in sets
    (9, 'noisy', 'decoy', False)
    """
    rng = np.random.default_rng(seed)
    genes = np.asarray(genes)
    free = np.flatnonzero(~membership.any(axis=1))
    sets, kind = {}, {}
    for p, name in enumerate(names):
        own = np.flatnonzero(membership[:, p])
        if name == uncovered:
            continue
        if name == incomplete:
            own, kind[name] = rng.choice(own, len(own) // 2, replace=False), "incomplete"
        elif name == noisy:
            kept = rng.choice(own, round(0.6 * len(own)), replace=False)
            own, kind[name] = np.r_[kept, rng.choice(free, len(own) - len(kept), replace=False)], "noisy"
        else:
            kind[name] = "correct"
        sets[name] = sorted(genes[own].tolist())
    sets["decoy"], kind["decoy"] = sorted(genes[rng.choice(free, int(membership.sum(0).max()), replace=False)]), "decoy"
    return sets, kind
