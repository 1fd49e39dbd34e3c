"""Diagnostics of a fitted β-VAE: per-latent KL, active units, posterior
collapse in plain words, rate–distortion sweeps and latent traversals.

Figures are built on ``matplotlib.figure.Figure`` (no pyplot state) and saved
atomically as PNG when a path is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .io import atomic_path
from .model import BetaVAE
from .objectives import Objective

__all__ = [
    "robust_limit",
    "kl_per_latent",
    "active_units",
    "CollapseReport",
    "collapse_report",
    "rate_distortion_sweep",
    "plot_rate_distortion",
    "latent_traversal",
    "plot_traversal",
    "save_figure",
    "panel_grid",
]

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: Var_x E[z_j | x] > 0.01


def save_figure(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write a figure as PNG through a temporary file; returns the path."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def robust_limit(values: np.ndarray, percentile: float = 98.0) -> float:
    """A symmetric colour limit from the ``percentile`` of |values|: one extreme cell (an inland sea)
    does not wash out the rest of a map.

    >>> robust_limit(np.r_[np.ones(99), 100.0])
    1.0
    """
    finite = np.abs(values[np.isfinite(values)])
    limit = float(np.percentile(finite, percentile)) if finite.size else 0.0
    return limit if limit > 0 else 1.0


def panel_grid(n: int, width: float, height: float, max_columns: int = 5):
    """A figure with ``n`` panels in rows of at most ``max_columns``; unused panels hidden.

    >>> figure, axes = panel_grid(7, 3, 2)
    >>> len(axes)
    7
    """
    columns = max(1, min(max_columns, n))
    rows = int(np.ceil(max(n, 1) / columns))
    figure = Figure(figsize=(width * columns, height * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return figure, list(axes[:n])


def kl_per_latent(model: BetaVAE, X, covariates=None) -> np.ndarray:
    """Mean KL(q(z_j|x) || N(0, 1)) over X, nats per latent.

    >>> vae = BetaVAE(n_features=3, n_latent=2, hidden=(4,))
    >>> kl_per_latent(vae, np.zeros((4, 3))).shape
    (2,)
    """
    return model.kl_per_latent(X, covariates)


def active_units(model: BetaVAE, X, covariates=None, threshold: float = ACTIVE_THRESHOLD) -> dict:
    """Active units (Burda 2016): latents whose posterior mean varies over x.

    Returns ``variance`` (Var_x E[z_j|x] per latent), ``active`` (bool mask)
    and ``count`` (how many are active).

    >>> vae = BetaVAE(n_features=3, n_latent=2, hidden=(4,))
    >>> active_units(vae, np.random.default_rng(0).normal(size=(50, 3)))["active"].shape
    (2,)
    """
    variance = model.encode(X, covariates).var(0)
    active = variance > threshold
    return {"variance": variance, "active": active, "count": int(active.sum())}


@dataclass(frozen=True)
class CollapseReport:
    """Per-latent KL and activity, the total rate and a plain-words verdict."""

    table: pd.DataFrame
    n_active: int
    collapsed: list[int]
    total_rate: float
    verdict: str

    def __str__(self) -> str:
        lines = [f"{'latent':>6} {'KL (nats)':>10} {'Var E[z|x]':>11}  state"]
        for j, row in self.table.iterrows():
            lines.append(f"{j:>6} {row.kl:>10.3f} {row.activity:>11.3f}  {'active' if row.active else 'collapsed'}")
        lines.append(f"active units: {self.n_active} of {len(self.table)}; total rate {self.total_rate:.3f} nats")
        return "\n".join(lines + [self.verdict])


def _verdict(n_active: int, n_latent: int, rate: float, beta: float) -> str:
    if n_active == 0:
        return (
            f"posterior collapse: all {n_latent} latents are collapsed (total rate {rate:.3f} nats) and the "
            f"decoder ignores z. Lower beta (now {beta:g}), add a KL warm-up or free bits, or use the capacity objective."
        )
    if n_active == 1 and n_latent > 1:
        return (
            f"near-total collapse: only 1 of {n_latent} latents is active ({rate:.3f} nats). If the data have more "
            f"factors, lower beta (now {beta:g}) or add a KL warm-up."
        )
    if n_active < n_latent:
        return (
            f"{n_active} of {n_latent} latents are active ({rate:.2f} nats); the other {n_latent - n_active} are "
            "switched off. That is expected when the data need fewer knobs than n_latent."
        )
    return f"all {n_latent} latents are active ({rate:.2f} nats); if you expect more factors, add latents."


def collapse_report(model: BetaVAE, X, covariates=None, threshold: float = ACTIVE_THRESHOLD) -> CollapseReport:
    """Which latents collapsed to the prior, the total rate and what to do.

    A latent is collapsed when Var_x E[z_j|x] <= ``threshold`` (active units).

    >>> vae = BetaVAE(n_features=3, n_latent=2, hidden=(4,))
    >>> report = collapse_report(vae, np.random.default_rng(0).normal(size=(50, 3)))
    >>> report.n_active + len(report.collapsed)
    2
    """
    kl = kl_per_latent(model, X, covariates)
    units = active_units(model, X, covariates, threshold)
    table = pd.DataFrame({"kl": kl, "activity": units["variance"], "active": units["active"]})
    table.index.name = "latent"
    rate = float(kl.sum())
    return CollapseReport(
        table=table,
        n_active=units["count"],
        collapsed=[int(j) for j in np.flatnonzero(~units["active"])],
        total_rate=rate,
        verdict=_verdict(units["count"], len(kl), rate, model.objective.beta),
    )


def rate_distortion_sweep(
    X,
    betas: Sequence[float] | None = (0.25, 1.0, 4.0, 16.0),
    capacities: Sequence[float] | None = None,
    model_kwargs: dict | None = None,
    fit_kwargs: dict | None = None,
    X_eval=None,
    objective_options: dict | None = None,
) -> pd.DataFrame:
    """Fit one model per β (or per capacity C, nats) and measure rate and distortion.

    ``model_kwargs`` go to :class:`BetaVAE` (``n_features`` is taken from X),
    ``fit_kwargs`` to ``fit`` and ``objective_options`` to every
    :class:`Objective` (e.g. ``gamma`` and ``capacity_steps``). Rate (KL, nats) and distortion (reconstruction
    NLL) are measured on ``X_eval`` (default X). Returns one row per setting:
    ``beta`` or ``capacity``, ``rate``, ``distortion``, ``neg_elbo``,
    ``active_units``.

    >>> X = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> table = rate_distortion_sweep(X, betas=[1.0, 8.0], model_kwargs=dict(n_latent=2, hidden=(8,)),
    ...                               fit_kwargs=dict(epochs=2, progress=False))
    >>> list(table.columns)
    ['beta', 'rate', 'distortion', 'neg_elbo', 'active_units']
    """
    if (betas is None) == (capacities is None):
        raise ValueError("give either betas or capacities to sweep, not both")
    model_kwargs, fit_kwargs = dict(model_kwargs or {}), dict(fit_kwargs or {})
    options = dict(objective_options or {})
    X_eval = X if X_eval is None else X_eval
    key, values = ("beta", betas) if capacities is None else ("capacity", capacities)
    rows = []
    for value in values:
        if key == "beta":
            objective = Objective(beta=float(value), **options)
        else:
            objective = Objective(kind="capacity", capacity_max=float(value), **options)
        vae = BetaVAE(n_features=np.shape(X)[1], objective=objective, **model_kwargs)
        vae.fit(X, **fit_kwargs)
        scores = vae.evaluate(X_eval)
        rows.append({
            key: float(value),
            "rate": scores["kl"],
            "distortion": scores["reconstruction"],
            "neg_elbo": scores["neg_elbo"],
            "active_units": active_units(vae, X_eval)["count"],
        })
    return pd.DataFrame(rows)


def plot_rate_distortion(table: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Distortion against rate, each point labelled with its β (or C) and active units."""
    key = "beta" if "beta" in table else "capacity"
    figure = Figure(figsize=(5, 4))
    ax = figure.subplots()
    ax.plot(table["rate"], table["distortion"], "o-")
    for _, row in table.iterrows():
        ax.annotate(f"{key}={row[key]:g}\n{int(row['active_units'])} active", (row["rate"], row["distortion"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("rate: KL (nats)")
    ax.set_ylabel("distortion: reconstruction NLL")
    ax.set_title("rate–distortion")
    if path is not None:
        save_figure(figure, path)
    return figure


def latent_traversal(model: BetaVAE, reference=None, values: Sequence[float] = tuple(np.linspace(-2.5, 2.5, 9)),
                     latents: Sequence[int] | None = None) -> np.ndarray:
    """Decode along each latent from a reference code, the others held fixed.

    ``reference`` is a latent vector (n_latent,), a data row (n_features,) to
    encode, or None for the prior mean (zeros). Returns (n_latents_traversed,
    len(values), n_features) decoded means.

    >>> vae = BetaVAE(n_features=3, n_latent=2, hidden=(4,))
    >>> latent_traversal(vae, values=[-1, 0, 1]).shape
    (2, 3, 3)
    """
    n_latent = model.config.n_latent
    if reference is None:
        z0 = np.zeros(n_latent)
    else:
        reference = np.asarray(reference, dtype=np.float32)
        z0 = reference if reference.shape == (n_latent,) else model.encode(reference.reshape(1, -1))[0]
    latents = list(range(n_latent)) if latents is None else list(latents)
    values = np.asarray(values, dtype=np.float32)
    codes = np.repeat(z0[None, None, :], len(latents), 0).repeat(len(values), 1).astype(np.float32)
    for row, j in enumerate(latents):
        codes[row, :, j] = values
    decoded = model.decode(codes.reshape(-1, n_latent))
    return decoded.reshape(len(latents), len(values), -1)


def plot_traversal(traversal: np.ndarray, image_shape: Sequence[int] | None = None,
                   labels: Sequence[str] | None = None, values: Sequence[float] | None = None,
                   path: str | Path | None = None) -> Figure:
    """Image grid (rows: latents, columns: values) or, without an image shape,
    each latent's effect on every feature (decoded minus the centre column)."""
    n_rows, n_cols, _ = traversal.shape
    labels = list(labels) if labels is not None else [f"z{j}" for j in range(n_rows)]
    if image_shape is not None:
        figure = Figure(figsize=(1.0 * n_cols + 1, 1.0 * n_rows))
        axes = np.atleast_2d(figure.subplots(n_rows, n_cols, squeeze=False))
        channels, height, width = image_shape
        for r in range(n_rows):
            for c in range(n_cols):
                image = traversal[r, c].reshape(channels, height, width)
                ax = axes[r, c]
                ax.imshow(image[0] if channels == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(labels[r], rotation=0, ha="right", va="center", fontsize=8)
                if r == 0 and values is not None:
                    ax.set_title(f"{values[c]:+.1f}", fontsize=8)
        figure.subplots_adjust(wspace=0.05, hspace=0.05)
    else:
        figure = Figure(figsize=(6, 1.6 * n_rows))
        axes = figure.subplots(n_rows, 1, squeeze=False)[:, 0]
        x = np.arange(n_cols) if values is None else np.asarray(values)
        for r, ax in enumerate(axes):
            ax.plot(x, traversal[r] - traversal[r, n_cols // 2], lw=0.8)
            ax.set_ylabel(labels[r], fontsize=8)
        axes[-1].set_xlabel("latent value")
    if path is not None:
        save_figure(figure, path)
    return figure
