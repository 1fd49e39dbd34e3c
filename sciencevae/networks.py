"""Encoders and decoders. Networks only: no losses, no likelihoods here."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["mlp", "GaussianEncoder", "MLPDecoder", "LinearDecoder"]

LOGVAR_MIN, LOGVAR_MAX = -14.0, 8.0


def mlp(n_in: int, hidden: Sequence[int]) -> nn.Sequential:
    """Linear -> SiLU blocks. No normalisation layer: LayerNorm discards the
    magnitude of the latent code in the decoder (seen as a spurious extra active
    latent on linear-Gaussian data) and BatchNorm makes outputs batch-dependent.

    >>> mlp(4, (8, 2))(torch.zeros(3, 4)).shape
    torch.Size([3, 2])
    """
    layers: list[nn.Module] = []
    for n_out in hidden:
        layers += [nn.Linear(n_in, n_out), nn.SiLU()]
        n_in = n_out
    return nn.Sequential(*layers)


def _with_covariates(x: torch.Tensor, covariates: torch.Tensor | None) -> torch.Tensor:
    return x if covariates is None else torch.cat([x, covariates.to(x.dtype)], dim=-1)


class GaussianEncoder(nn.Module):
    """x (+ covariates) -> mean and log-variance of a diagonal Gaussian q(z|x).

    >>> mu, logvar = GaussianEncoder(5, 2, (8,))(torch.zeros(3, 5))
    >>> mu.shape, logvar.shape
    (torch.Size([3, 2]), torch.Size([3, 2]))
    """

    def __init__(self, n_input: int, n_latent: int, hidden: Sequence[int], n_covariates: int = 0):
        super().__init__()
        self.body = mlp(n_input + n_covariates, hidden)
        width = hidden[-1] if hidden else n_input + n_covariates
        self.mean = nn.Linear(width, n_latent)
        self.logvar = nn.Linear(width, n_latent)

    def forward(
        self, x: torch.Tensor, covariates: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(_with_covariates(x, covariates))
        return self.mean(h), self.logvar(h).clamp(LOGVAR_MIN, LOGVAR_MAX)


class MLPDecoder(nn.Module):
    """z (+ covariates) -> raw decoder output of width ``n_output``.

    >>> MLPDecoder(2, 6, (8,))(torch.zeros(3, 2)).shape
    torch.Size([3, 6])
    """

    def __init__(self, n_latent: int, n_output: int, hidden: Sequence[int], n_covariates: int = 0):
        super().__init__()
        self.body = mlp(n_latent + n_covariates, hidden)
        width = hidden[-1] if hidden else n_latent + n_covariates
        self.out = nn.Linear(width, n_output)

    def forward(self, z: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.body(_with_covariates(z, covariates)))


class LinearDecoder(nn.Module):
    """z (+ covariates) -> W z + b: the columns of W are the latents' loadings.

    >>> dec = LinearDecoder(2, 6)
    >>> dec.loadings(n_features=6).shape
    torch.Size([6, 2])
    """

    def __init__(self, n_latent: int, n_output: int, n_covariates: int = 0):
        super().__init__()
        self.n_latent = n_latent
        self.linear = nn.Linear(n_latent + n_covariates, n_output)

    def forward(self, z: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(_with_covariates(z, covariates))

    def loadings(self, n_features: int) -> torch.Tensor:
        """Weights of the first output head: (n_features, n_latent)."""
        return self.linear.weight[:n_features, : self.n_latent]
