"""Encoders and decoders. Networks only: no losses, no likelihoods here."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["mlp", "GaussianEncoder", "MLPDecoder", "LinearDecoder", "ConvEncoder", "ConvDecoder"]

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

    With ``n_penalised`` features, an L1 penalty per loading (the ``penalty`` buffer, features x latents, set
    with :meth:`set_penalty`) is applied by :meth:`proximal_step` after each optimiser step: a gene-set prior
    (expiMap's soft mask, Lotfollahi et al. 2023) is a penalty of 0 inside a programme's set and > 0 outside.

    >>> dec = LinearDecoder(2, 6)
    >>> dec.loadings(n_features=6).shape
    torch.Size([6, 2])
    """

    def __init__(self, n_latent: int, n_output: int, n_covariates: int = 0, n_penalised: int = 0):
        super().__init__()
        self.n_latent = n_latent
        self.linear = nn.Linear(n_latent + n_covariates, n_output)
        self.penalised = n_penalised > 0
        if self.penalised:
            self.register_buffer("penalty", torch.zeros(n_penalised, n_latent))
            self.register_buffer("penalty_start", torch.zeros(n_penalised, n_latent))

    def set_penalty(self, penalty: torch.Tensor, start: torch.Tensor | None = None) -> None:
        """Set the L1 penalty per loading (features x latents, >= 0, in units of the loss per unit loading)
        and its value at the first step (``start``, >= ``penalty``; None: the same), from which it falls
        over the KL warm-up (:meth:`proximal_step`).

        A latent's penalised loadings start at 0 when some of its loadings are free (a gene-set-guided
        programme starts inside its set); a latent penalised throughout keeps its random start.
        """
        start = penalty if start is None else start
        if not self.penalised or penalty.shape != self.penalty.shape or start.shape != penalty.shape:
            raise ValueError(f"the penalty must have shape {tuple(getattr(self, 'penalty', torch.zeros(0)).shape)}, "
                             f"got {tuple(penalty.shape)} (start {tuple(start.shape)})")
        if not bool(torch.all(penalty >= 0)):
            raise ValueError("loading penalties must be >= 0")
        if not bool(torch.all(start >= penalty)):
            raise ValueError("a loading penalty's start must be >= the penalty (it falls over the warm-up)")
        with torch.no_grad():
            self.penalty.copy_(penalty)
            self.penalty_start.copy_(start)
            confined = (penalty == 0).any(dim=0, keepdim=True) & (penalty > 0)  # a column's free loadings first
            self.loadings(len(penalty)).masked_fill_(confined, 0.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.penalised and prefix + "penalty_start" not in state_dict and prefix + "penalty" in state_dict:
            state_dict[prefix + "penalty_start"] = state_dict[prefix + "penalty"]  # saved before the schedule
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def proximal_step(self, step_size, anneal: float = 0.0) -> None:
        """Soft-threshold each penalised loading by its step size x its penalty (the proximal operator of the
        L1 penalty after a gradient step); ``step_size(parameter)`` gives the optimiser's step per unit
        gradient of each weight (:func:`sciencevae.train.adam_step_size`). The penalty is
        ``penalty + anneal * (penalty_start - penalty)``: ``anneal`` falls from 1 to 0 over the KL warm-up
        (:meth:`sciencevae.objectives.Objective.penalty_anneal`)."""
        if self.penalised:
            n = len(self.penalty)
            w = self.loadings(n)
            penalty = self.penalty if anneal == 0.0 else torch.lerp(self.penalty, self.penalty_start, anneal)
            threshold = step_size(self.linear.weight)[:n, : self.n_latent] * penalty
            w.copy_(torch.sign(w) * torch.clamp(w.abs() - threshold, min=0.0))

    def forward(self, z: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(_with_covariates(z, covariates))

    def loadings(self, n_features: int) -> torch.Tensor:
        """Weights of the first output head: (n_features, n_latent)."""
        return self.linear.weight[:n_features, : self.n_latent]


def _conv_stack(image_shape: Sequence[int], channels: int) -> tuple[int, int]:
    """Number of stride-2 layers (4) and the flattened width after them."""
    c, h, w = image_shape
    if h % 16 or w % 16:
        raise ValueError(f"conv networks need image height and width divisible by 16, got {h}x{w}")
    return 4, channels * (h // 16) * (w // 16)


class ConvEncoder(nn.Module):
    """Images (flattened C*H*W rows) -> q(z|x); 4 conv layers (4x4, stride 2) then an MLP.

    The architecture of Burgess et al. 2018 for 64x64 dSprites.

    >>> enc = ConvEncoder((1, 64, 64), n_latent=3, hidden=(32,), channels=8)
    >>> [t.shape for t in enc(torch.zeros(2, 4096))]
    [torch.Size([2, 3]), torch.Size([2, 3])]
    """

    def __init__(self, image_shape: Sequence[int], n_latent: int, hidden: Sequence[int],
                 channels: int = 32, n_covariates: int = 0):
        super().__init__()
        self.image_shape = tuple(image_shape)
        n_layers, flat = _conv_stack(image_shape, channels)
        layers: list[nn.Module] = []
        n_in = image_shape[0]
        for _ in range(n_layers):
            layers += [nn.Conv2d(n_in, channels, 4, stride=2, padding=1), nn.SiLU()]
            n_in = channels
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.head = GaussianEncoder(flat, n_latent, hidden, n_covariates)

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None):
        features = self.conv(x.reshape(-1, *self.image_shape))
        return self.head(features, covariates)


class ConvDecoder(nn.Module):
    """z -> MLP -> 4 transposed convs (4x4, stride 2) -> raw output per pixel, flattened.

    >>> ConvDecoder((1, 64, 64), n_latent=3, n_heads=1, hidden=(32,), channels=8)(torch.zeros(2, 3)).shape
    torch.Size([2, 4096])
    """

    def __init__(self, image_shape: Sequence[int], n_latent: int, n_heads: int, hidden: Sequence[int],
                 channels: int = 32, n_covariates: int = 0):
        super().__init__()
        c, h, w = image_shape
        n_layers, flat = _conv_stack(image_shape, channels)
        self.start = (channels, h // 16, w // 16)
        self.fc = MLPDecoder(n_latent, flat, hidden, n_covariates)
        layers: list[nn.Module] = []
        for i in range(n_layers):
            last = i == n_layers - 1
            layers.append(nn.ConvTranspose2d(channels, c * n_heads if last else channels, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.SiLU())
        self.deconv = nn.Sequential(*layers)
        self.n_heads, self.channels_out = n_heads, c

    def forward(self, z: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        features = nn.functional.silu(self.fc(z, covariates))
        out = self.deconv(features.reshape(-1, *self.start))
        # (B, heads*C, H, W) -> (B, heads * C*H*W): head blocks first, as the likelihoods expect
        return out.reshape(out.shape[0], self.n_heads, -1).reshape(out.shape[0], -1)
