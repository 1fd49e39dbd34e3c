"""Observation models p(x | z) for the decoder.

Each likelihood is a small ``nn.Module`` that owns its output activation and
its per-feature parameters (Gaussian variance, NB inverse dispersion) and turns
the decoder's raw output into a ``torch.distributions.Distribution`` whose
``log_prob`` has the same shape as the data (samples x features).

The decoder emits ``n_heads`` blocks of ``n_features`` values; most
likelihoods need one block (the mean), ZINB needs two (mean and zero-inflation
logits). Count likelihoods use the scVI parametrisation: the first block is a
vector of log proportions, ``mean = size_factor * softmax(raw)``, so that the
size factor (library size, the total count of a cell) carries depth and the
decoder carries composition.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.distributions import Bernoulli as _Bernoulli
from torch.distributions import Distribution, Normal, Poisson, constraints
from torch.nn import functional as F

from .fused_nb import log_factorial_sum, nb_log_likelihood_sum

__all__ = [
    "Likelihood",
    "Gaussian",
    "BernoulliLikelihood",
    "PoissonLikelihood",
    "NegativeBinomialLikelihood",
    "ZINBLikelihood",
    "NegativeBinomial",
    "ZeroInflatedNegativeBinomial",
    "LIKELIHOODS",
    "make_likelihood",
]


class NegativeBinomial(Distribution):
    """Negative binomial with mean ``mu`` and inverse dispersion ``theta``.

    ``Var[x] = mu + mu**2 / theta``; ``theta -> inf`` is Poisson. Equal to
    ``scipy.stats.nbinom(n=theta, p=theta / (theta + mu))``.

    >>> d = NegativeBinomial(torch.tensor([2.0]), torch.tensor([5.0]))
    >>> float(d.mean)
    2.0
    """

    arg_constraints = {"mu": constraints.nonnegative, "theta": constraints.positive}
    support = constraints.nonnegative_integer

    def __init__(self, mu: torch.Tensor, theta: torch.Tensor, validate_args: bool = False):
        self.mu, self.theta = torch.broadcast_tensors(mu, theta)
        super().__init__(self.mu.shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def variance(self) -> torch.Tensor:
        return self.mu + self.mu.square() / self.theta

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        mu, theta = self.mu, self.theta
        log_theta_mu = torch.log(theta + mu)
        # theta * log(theta / (theta + mu)) written with log1p: exact for huge theta
        depth = -theta * torch.log1p(mu / theta)
        composition = torch.xlogy(value, mu) - value * log_theta_mu
        gammas = torch.lgamma(value + theta) - torch.lgamma(theta) - torch.lgamma(value + 1.0)
        return depth + composition + gammas

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            rate = torch.distributions.Gamma(self.theta, self.theta / self.mu.clamp_min(1e-12))
            return torch.poisson(rate.sample(sample_shape).expand(shape))


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """NB mixed with a point mass at zero of probability ``sigmoid(zi_logits)``.

    >>> d = ZeroInflatedNegativeBinomial(torch.tensor([2.0]), torch.tensor([5.0]), torch.tensor([0.0]))
    >>> float(d.mean)
    1.0
    """

    arg_constraints = {
        "mu": constraints.nonnegative,
        "theta": constraints.positive,
        "zi_logits": constraints.real,
    }

    def __init__(
        self,
        mu: torch.Tensor,
        theta: torch.Tensor,
        zi_logits: torch.Tensor,
        validate_args: bool = False,
    ):
        mu, theta, self.zi_logits = torch.broadcast_tensors(mu, theta, zi_logits)
        super().__init__(mu, theta, validate_args=validate_args)

    @property
    def zero_probability(self) -> torch.Tensor:
        return torch.sigmoid(self.zi_logits)

    @property
    def mean(self) -> torch.Tensor:
        return (1.0 - self.zero_probability) * self.mu

    @property
    def variance(self) -> torch.Tensor:
        keep = 1.0 - self.zero_probability
        return keep * (self.mu + self.mu.square() / self.theta) + keep * (1 - keep) * self.mu.square()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_zero = -F.softplus(-self.zi_logits)  # log pi
        log_keep = -F.softplus(self.zi_logits)  # log (1 - pi)
        nb = super().log_prob(value)
        at_zero = torch.logaddexp(log_zero, log_keep + nb)
        return torch.where(value == 0, at_zero, log_keep + nb)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            counts = super().sample(sample_shape)
            zero = torch.bernoulli(self.zero_probability.expand(counts.shape))
            return counts * (1.0 - zero)


class Likelihood(nn.Module):
    """Base class: decoder output (batch, n_heads * n_features) -> Distribution.

    ``compiled`` asks for a compiled fused kernel where the likelihood has one (``fused``: NB); ``BetaVAE.fit``
    sets it per run (see :func:`~sciencevae.fused_nb.compile_pays`); a new or loaded model evaluates eagerly.
    With ``compiled`` and ``fused``, CPU training steps are compiled whole (see ``VAEModule.terms``).
    """

    name: ClassVar[str] = ""
    n_heads: ClassVar[int] = 1
    is_count: ClassVar[bool] = False
    fused: ClassVar[bool] = False  # log_likelihood is the fused kernel of sciencevae.fused_nb

    def __init__(self, n_features: int):
        super().__init__()
        self.n_features = int(n_features)
        self.compiled = False

    def options(self) -> dict:
        """JSON-serialisable constructor options (saved in the model config)."""
        return {}

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """Transform applied to the data before the encoder sees it."""
        return x

    def heads(self, raw: torch.Tensor) -> list[torch.Tensor]:
        """Split the decoder output into ``n_heads`` blocks of ``n_features``."""
        return list(raw.split(self.n_features, dim=-1))

    def distribution(self, raw: torch.Tensor, size_factor: torch.Tensor | None = None) -> Distribution:
        raise NotImplementedError

    def forward(self, raw: torch.Tensor, size_factor: torch.Tensor | None = None) -> Distribution:
        return self.distribution(raw, size_factor)

    def log_likelihood(
        self,
        raw: torch.Tensor,
        x: torch.Tensor,
        size_factor: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        count_constant: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample log p(x|raw) summed over features with ``weights`` (B,).

        ``count_constant`` (count likelihoods) is the precomputed
        ``sum_g w_g lgamma(x_g + 1)`` of each row; subclasses may use it to skip
        recomputing it.
        """
        log_prob = self.distribution(raw, size_factor).log_prob(x)
        if weights is not None:
            log_prob = log_prob * weights
        return log_prob.sum(-1)


class Gaussian(Likelihood):
    """Normal with identity mean and a per-feature standard deviation.

    Parameters
    ----------
    n_features
        Number of features.
    learn_variance
        Learn one variance per feature (default). If False the variance is
        fixed at ``variance`` for every feature.
    variance
        The fixed variance, or the starting value of the learned one.

    >>> lik = Gaussian(3)
    >>> lik(torch.zeros(2, 3)).log_prob(torch.zeros(2, 3)).shape
    torch.Size([2, 3])
    """

    name = "gaussian"

    def __init__(self, n_features: int, learn_variance: bool = True, variance: float = 1.0):
        super().__init__(n_features)
        if not variance > 0:
            raise ValueError(f"gaussian variance must be positive, got {variance}")
        self.learn_variance = bool(learn_variance)
        self.variance = float(variance)
        log_scale = torch.full((n_features,), 0.5 * math.log(variance))
        if self.learn_variance:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def options(self) -> dict:
        return {"learn_variance": self.learn_variance, "variance": self.variance}

    def distribution(self, raw: torch.Tensor, size_factor: torch.Tensor | None = None) -> Distribution:
        scale = self.log_scale.clamp(-7.0, 7.0).exp().to(raw.dtype)
        return Normal(raw, scale.expand_as(raw), validate_args=False)


class BernoulliLikelihood(Likelihood):
    """Bernoulli with logits from the decoder (binary data: pixels, peaks).

    >>> BernoulliLikelihood(2)(torch.zeros(1, 2)).mean
    tensor([[0.5000, 0.5000]])
    """

    name = "bernoulli"

    def distribution(self, raw: torch.Tensor, size_factor: torch.Tensor | None = None) -> Distribution:
        return _Bernoulli(logits=raw, validate_args=False)


class _CountLikelihood(Likelihood):
    """Shared parts of the count likelihoods: log1p input and softmax mean."""

    is_count = True

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1.0).log_()  # log1p, exact for counts and vectorised (torch.log1p is not, on the CPU)

    def count_mean(self, raw: torch.Tensor, size_factor: torch.Tensor | None) -> torch.Tensor:
        proportions = torch.softmax(raw, dim=-1, dtype=torch.promote_types(raw.dtype, torch.float32))
        if size_factor is None:
            return proportions
        return proportions * size_factor.reshape(-1, 1).to(proportions.dtype)


class PoissonLikelihood(_CountLikelihood):
    """Poisson with rate ``size_factor * softmax(raw)``.

    >>> PoissonLikelihood(4)(torch.zeros(1, 4), torch.tensor([8.0])).mean
    tensor([[2., 2., 2., 2.]])
    """

    name = "poisson"

    def distribution(self, raw: torch.Tensor, size_factor: torch.Tensor | None = None) -> Distribution:
        return Poisson(self.count_mean(raw, size_factor), validate_args=False)


class NegativeBinomialLikelihood(_CountLikelihood):
    """NB with mean ``size_factor * softmax(raw)`` and learned per-feature theta.

    >>> NegativeBinomialLikelihood(2)(torch.zeros(1, 2), torch.tensor([4.0])).mean
    tensor([[2., 2.]])
    """

    name = "nb"
    fused = True

    def __init__(self, n_features: int):
        super().__init__(n_features)
        self.log_theta = nn.Parameter(torch.zeros(n_features))

    @property
    def theta(self) -> torch.Tensor:
        return self.log_theta.clamp(-12.0, 18.0).exp()

    def distribution(self, raw: torch.Tensor, size_factor: torch.Tensor | None = None) -> Distribution:
        return NegativeBinomial(self.count_mean(raw, size_factor), self.theta.to(raw.dtype))

    def log_likelihood(self, raw, x, size_factor=None, weights=None, count_constant=None) -> torch.Tensor:
        """The fused NB log-likelihood (:mod:`sciencevae.fused_nb`): same value, less work."""
        if size_factor is None:
            size_factor = torch.ones(raw.shape[0], dtype=torch.float32, device=raw.device)
        if count_constant is None:
            count_constant = log_factorial_sum(x.float(), None if weights is None else weights.float())
        log_theta = self.log_theta.clamp(-12.0, 18.0)
        return nb_log_likelihood_sum(raw, size_factor, log_theta, x, weights, self.compiled) - count_constant


class ZINBLikelihood(NegativeBinomialLikelihood):
    """Zero-inflated NB: a second decoder head gives per-sample dropout logits.

    >>> ZINBLikelihood(2)(torch.zeros(1, 4), torch.tensor([4.0])).mean
    tensor([[1., 1.]])
    """

    name = "zinb"
    n_heads = 2

    def distribution(self, raw: torch.Tensor, size_factor: torch.Tensor | None = None) -> Distribution:
        mean_raw, zi_logits = self.heads(raw)
        mu = self.count_mean(mean_raw, size_factor)
        return ZeroInflatedNegativeBinomial(mu, self.theta.to(raw.dtype), zi_logits)

    log_likelihood = Likelihood.log_likelihood  # the fused path is NB-only


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls
    for cls in (Gaussian, BernoulliLikelihood, PoissonLikelihood, NegativeBinomialLikelihood, ZINBLikelihood)
}


def make_likelihood(name: str, n_features: int, **options) -> Likelihood:
    """Build a likelihood by name: gaussian, bernoulli, poisson, nb or zinb.

    >>> make_likelihood("nb", 5).name
    'nb'
    """
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name](n_features, **options)
