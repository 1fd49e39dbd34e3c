"""The β-VAE: a pure ``nn.Module`` (``VAEModule``) and a thin user-facing ``BetaVAE``.

``VAEModule`` follows inference -> generative -> terms: the encoder gives a
diagonal Gaussian q(z|x), z is drawn by reparameterisation, the decoder and
likelihood give p(x|z), and :class:`~sciencevae.objectives.ElboTerms` carries
the per-sample reconstruction and per-latent KL to an
:class:`~sciencevae.objectives.Objective`. The prior is N(0, I).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn
from torch.distributions import Distribution

from . import distributed
from .data import (Batch, BatchSource, Prepared, as_prepared, check_counts, round_counts, rounding_message,
                   split_rows, subset_rows)
from .fused_nb import CompiledFunction, compile_pays
from .streaming import Streamed, StreamingSource
from .likelihoods import LIKELIHOODS, make_likelihood
from .networks import ConvDecoder, ConvEncoder, GaussianEncoder, LinearDecoder, MLPDecoder
from .objectives import ElboTerms, Objective
from .train import TrainConfig, batch_and_lr, epoch_sums, fit, resolve_device

__all__ = ["ModelConfig", "VAEModule", "BetaVAE", "posterior_kl"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a β-VAE; validated on construction and on load.

    >>> ModelConfig(n_features=50, n_latent=6).decoder
    'mlp'
    """

    n_features: int
    n_latent: int = 10
    likelihood: str = "gaussian"
    likelihood_options: dict = field(default_factory=dict)
    hidden: tuple[int, ...] = (256, 128)
    decoder: str = "mlp"
    n_covariates: int = 0
    encode_covariates: bool = True
    encoder: str = "mlp"
    image_shape: tuple[int, ...] | None = None
    conv_channels: int = 32
    penalised_loadings: bool = False

    def __post_init__(self) -> None:
        for name in ("n_features", "n_latent"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.n_covariates, int) or self.n_covariates < 0:
            raise ValueError(f"n_covariates must be an integer >= 0, got {self.n_covariates!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; choose one of {sorted(LIKELIHOODS)}")
        if self.decoder not in ("mlp", "linear", "conv"):
            raise ValueError(f"decoder must be 'mlp', 'linear' or 'conv', got {self.decoder!r}")
        if self.encoder not in ("mlp", "conv"):
            raise ValueError(f"encoder must be 'mlp' or 'conv', got {self.encoder!r}")
        if self.penalised_loadings and self.decoder != "linear":
            raise ValueError(f"penalised loadings need decoder='linear', got {self.decoder!r}")
        self._check_image_shape()
        if not isinstance(self.likelihood_options, dict):
            raise ValueError("likelihood_options must be a dict")
        hidden = tuple(self.hidden)
        if not hidden or not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive integers, got {self.hidden!r}")
        object.__setattr__(self, "hidden", hidden)

    def _check_image_shape(self) -> None:
        uses_conv = "conv" in (self.encoder, self.decoder)
        if self.image_shape is None:
            if uses_conv:
                raise ValueError("conv encoder/decoder need image_shape=(channels, height, width)")
            return
        shape = tuple(self.image_shape)
        if len(shape) != 3 or int(np.prod(shape)) != self.n_features or min(shape) < 1:
            raise ValueError(f"image_shape {shape} must be (C, H, W) with C*H*W = n_features = {self.n_features}")
        object.__setattr__(self, "image_shape", shape)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["image_shape"] = None if self.image_shape is None else list(self.image_shape)
        return d


class VAEModule(nn.Module):
    """Encoder, decoder and likelihood; returns per-sample ELBO terms.

    >>> m = VAEModule(ModelConfig(n_features=5, n_latent=2, hidden=(8,)))
    >>> terms = m.terms(Batch(torch.zeros(3, 5), None, None, None, None))
    >>> terms.reconstruction.shape, terms.kl.shape
    (torch.Size([3]), torch.Size([3, 2]))
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.likelihood = make_likelihood(c.likelihood, c.n_features, **c.likelihood_options)
        n_out = c.n_features * self.likelihood.n_heads
        seen = c.n_covariates if c.encode_covariates else 0  # scvi-tools' encode_covariates: decoder-only when False
        if c.encoder == "conv":
            self.encoder = ConvEncoder(c.image_shape, c.n_latent, c.hidden, c.conv_channels, seen)
        else:
            self.encoder = GaussianEncoder(c.n_features, c.n_latent, c.hidden, seen)
        reversed_hidden = tuple(reversed(c.hidden))
        if c.decoder == "linear":
            self.decoder = LinearDecoder(c.n_latent, n_out, c.n_covariates,
                                         c.n_features if c.penalised_loadings else 0)
        elif c.decoder == "conv":
            self.decoder = ConvDecoder(c.image_shape, c.n_latent, self.likelihood.n_heads, reversed_hidden,
                                       c.conv_channels, c.n_covariates)
        else:
            self.decoder = MLPDecoder(c.n_latent, n_out, reversed_hidden, c.n_covariates)

    def proximal_step(self, step_size, anneal: float = 0.0) -> None:
        """After an optimiser step: the proximal step of the loadings' L1 penalty, if any (``step_size``,
        ``anneal``: :meth:`LinearDecoder.proximal_step`)."""
        if self.config.penalised_loadings:
            self.decoder.proximal_step(step_size, anneal)

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> ElboTerms:
        """Same as :meth:`terms` (``forward`` is what DistributedDataParallel hooks)."""
        return self.terms(batch, generator)

    def inference(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of q(z|x)."""
        covariates = batch.covariates if self.config.encode_covariates else None
        return self.encoder(self.likelihood.encoder_input(batch.x), covariates)

    def generative(
        self, z: torch.Tensor, covariates: torch.Tensor | None, size_factor: torch.Tensor | None
    ) -> Distribution:
        """p(x|z) as a torch Distribution."""
        return self.likelihood(self.decoder(z, covariates), size_factor)

    def terms(self, batch: Batch, generator: torch.Generator | None = None) -> ElboTerms:
        """Per-sample reconstruction (B,) and per-latent KL (B, L) of one batch.

        Training steps on the CPU with a compiled likelihood (``likelihood.compiled``, NB) run compiled as one
        region, forward and backward (:func:`_compiled_terms`): the same values, ~6% less time per step than
        compiling the likelihood alone (fewer small operators, each with its own dispatch and autograd node).
        """
        if self._compiles_whole_step(batch):
            noise = torch.randn((batch.x.shape[0], self.config.n_latent), generator=generator, dtype=torch.float32)
            return ElboTerms(*_compiled_terms()(self, batch.x, batch.covariates, batch.size_factor,
                                                batch.feature_weights, batch.count_constant, noise))
        mu, logvar = self.inference(batch)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return ElboTerms(*self.terms_given_noise(mu, logvar, noise, batch))

    def terms_given_noise(self, mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor,
                          batch: Batch) -> tuple[torch.Tensor, ...]:
        """(reconstruction, kl, z, mu, logvar) from the posterior's parameters and the reparameterisation noise."""
        z = mu + torch.exp(0.5 * logvar) * noise
        log_lik = self._log_likelihood(z, batch)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)
        return -log_lik, kl, z, mu, logvar

    def _compiles_whole_step(self, batch: Batch) -> bool:
        """A CPU training step (gradients on) of an unmasked batch, with a compiled fused likelihood."""
        return (self.likelihood.compiled and self.likelihood.fused and batch.mask is None
                and batch.x.device.type == "cpu" and torch.is_grad_enabled())

    def _log_likelihood(self, z: torch.Tensor, batch: Batch) -> torch.Tensor:
        """log p(x|z) per sample, summed over the observed features with their weights."""
        raw = self.decoder(z, batch.covariates)
        if batch.mask is None:
            return self.likelihood.log_likelihood(
                raw, batch.x, batch.size_factor, batch.feature_weights, batch.count_constant
            )
        log_lik = self.likelihood(raw, batch.size_factor).log_prob(batch.x)
        log_lik = torch.where(batch.mask, log_lik, torch.zeros_like(log_lik))
        if batch.feature_weights is not None:
            log_lik = log_lik * batch.feature_weights
        return log_lik.sum(-1)


def posterior_kl(mean: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """(n_latent,) mean over rows of KL(N(mean, exp(logvar)) || N(0, 1)) per latent, in nats, from posterior
    means and log-variances (rows x latents).

    >>> posterior_kl(np.array([[1.0], [-1.0]]), np.zeros((2, 1))).tolist()
    [0.5]
    """
    mean, logvar = np.asarray(mean, dtype=np.float64), np.asarray(logvar, dtype=np.float64)
    return 0.5 * np.mean(mean**2 + np.exp(logvar) - 1.0 - logvar, axis=0)


def _terms_from_noise(module: VAEModule, x, covariates, size_factor, feature_weights, count_constant,
                      noise) -> tuple[torch.Tensor, ...]:
    """:meth:`VAEModule.terms` of an unmasked batch given its noise: the region compiled whole on the CPU."""
    batch = Batch(x=x, mask=None, size_factor=size_factor, covariates=covariates, feature_weights=feature_weights,
                  count_constant=count_constant)
    mu, logvar = module.inference(batch)
    return module.terms_given_noise(mu, logvar, noise, batch)


@functools.cache
def _compiled_terms() -> CompiledFunction:
    """:func:`_terms_from_noise` compiled, once per process (the module's parameters are inputs of the compiled
    code, so every model of the same architecture reuses it)."""
    return CompiledFunction(_terms_from_noise, _terms_from_noise, "the training step")


def _rank_rows(prepared: Prepared, config: TrainConfig, workers: distributed.Workers):
    """This rank's rows (its training shard, then its validation shard) and their positions."""
    train_rows, val_rows = split_rows(prepared.n_obs, config.validation, config.seed)
    train_rows = distributed.shard_rows(train_rows, workers, equal=True)
    val_rows = distributed.shard_rows(val_rows, workers, equal=False)
    if len(train_rows) < 2:
        raise ValueError(f"{prepared.n_obs} samples are too few to shard over {workers.world_size} processes")
    rows = torch.cat([train_rows, val_rows]).numpy()
    positions = torch.arange(len(rows))
    return subset_rows(prepared, rows), (positions[: len(train_rows)], positions[len(train_rows):])


def _rank_blocks(source: StreamingSource, config: TrainConfig, workers: distributed.Workers):
    """Streamed data: this rank's contiguous block of the training rows and of the validation rows."""
    train_rows, val_rows = source.split(config.validation, config.seed)
    train_rows = distributed.shard_rows(train_rows, workers, equal=True, contiguous=True)
    if len(train_rows) < 2:
        raise ValueError(f"{source.n_obs} samples are too few to shard over {workers.world_size} processes")
    return train_rows, distributed.shard_rows(val_rows, workers, equal=False, contiguous=True)


class BetaVAE:
    """A β-VAE with a diagonal-Gaussian posterior and an N(0, I) prior.

    Parameters
    ----------
    n_features
        Number of input features.
    n_latent
        Number of latent dimensions (knobs).
    likelihood
        ``gaussian``, ``bernoulli``, ``poisson``, ``nb`` or ``zinb``.
    beta
        KL weight (β-VAE) or TC weight (β-TCVAE). Reconstruction is summed over
        features and KL over latents, both averaged over the batch: β = 1 is
        the ELBO.
    hidden
        Encoder hidden widths; the MLP decoder mirrors them.
    decoder
        ``mlp``, ``linear`` (its weights are the loadings) or ``conv``.
    n_covariates
        Width of the covariate matrix given to encoder and decoder.
    objective
        ``"beta"``, ``"capacity"``, ``"tcvae"`` or an :class:`Objective` (e.g. with ``batch_mmd`` and
        ``batch_columns``: a batch-mixing penalty on the codes; ``ValueError`` when the columns go beyond
        ``n_covariates``).
    likelihood_options
        Extra likelihood arguments, e.g. ``{"learn_variance": False}``.
    seed
        Seed of the weight initialisation.
    encoder
        ``mlp`` or ``conv`` (4 stride-2 conv layers, Burgess et al. 2018).
    image_shape
        (C, H, W) of image rows (flattened row-major); needed by conv networks.
    conv_channels
        Channels of every conv layer.
    penalised_loadings
        The linear decoder carries an L1 penalty per loading (set by ``loadings_penalty``, or loaded).
    loadings_penalty
        (n_features, n_latent), >= 0: each loading's L1 penalty in nats per sample per unit loading
        (the loss is per sample), applied as a proximal step after every optimiser step (soft threshold
        by Adam's step size x penalty: :func:`~sciencevae.train.adam_step_size`). A gene-set prior: 0 inside
        a programme's set, > 0 outside (expiMap's soft mask). Needs ``decoder="linear"``.
    loadings_penalty_start
        (n_features, n_latent), >= ``loadings_penalty``: the penalty at the first step, falling linearly to
        ``loadings_penalty`` over the objective's KL warm-up (:meth:`Objective.penalty_anneal`); None: no
        schedule.

    Examples
    --------
    >>> X = np.random.default_rng(0).normal(size=(200, 8)).astype("float32")
    >>> vae = BetaVAE(n_features=8, n_latent=2, hidden=(16,))
    >>> history = vae.fit(X, epochs=2, progress=False)
    >>> vae.encode(X).shape
    (200, 2)
    """

    def __init__(
        self,
        n_features: int,
        n_latent: int = 10,
        likelihood: str = "gaussian",
        beta: float = 1.0,
        hidden: tuple[int, ...] = (256, 128),
        decoder: str = "mlp",
        n_covariates: int = 0,
        encode_covariates: bool = True,
        objective: str | Objective = "beta",
        likelihood_options: dict | None = None,
        seed: int = 0,
        encoder: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
        conv_channels: int = 32,
        penalised_loadings: bool = False,
        loadings_penalty: np.ndarray | None = None,
        loadings_penalty_start: np.ndarray | None = None,
    ):
        self.config = ModelConfig(
            n_features=n_features,
            n_latent=n_latent,
            likelihood=likelihood,
            likelihood_options=dict(likelihood_options or {}),
            hidden=tuple(hidden),
            decoder=decoder,
            n_covariates=n_covariates,
            encode_covariates=encode_covariates,
            encoder=encoder,
            image_shape=None if image_shape is None else tuple(image_shape),
            conv_channels=conv_channels,
            penalised_loadings=penalised_loadings or loadings_penalty is not None,
        )
        if isinstance(objective, Objective):
            if beta != 1.0 and beta != objective.beta:
                raise ValueError(f"beta={beta} conflicts with the objective's beta={objective.beta}; set it once")
            self.objective = objective
        else:
            self.objective = Objective(kind=objective, beta=float(beta))
        columns = self.objective.batch_columns
        if columns is not None and columns[1] > n_covariates:
            raise ValueError(f"the objective's batch_columns {columns} go beyond the model's {n_covariates} "
                             "covariate columns")
        self.seed = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.module = VAEModule(self.config)
        if loadings_penalty is not None:
            start = None if loadings_penalty_start is None else torch.as_tensor(
                np.asarray(loadings_penalty_start, dtype=np.float32))
            self.module.decoder.set_penalty(torch.as_tensor(np.asarray(loadings_penalty, dtype=np.float32)), start)
        self.train_config: TrainConfig | None = None
        self.history: pd.DataFrame | None = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"BetaVAE(n_features={c.n_features}, n_latent={c.n_latent}, likelihood={c.likelihood!r}, "
            f"decoder={c.decoder!r}, objective={self.objective.kind!r}, beta={self.objective.beta})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def fit(
        self,
        X,
        epochs: int = 100,
        batch_size: int | None = None,
        lr: float | None = None,
        seed: int = 0,
        device: str = "auto",
        validation: float = 0.1,
        early_stopping: int | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        precision: str = "32",
        progress: bool | str = True,
        checkpoint_every: int = 1,
        covariates=None,
        size_factors=None,
        feature_weights=None,
        compile: bool | None = None,
        cuda_graph: bool = True,
    ) -> pd.DataFrame:
        """Train on X (numpy, torch, scipy CSR, a Prepared or a Streamed); returns the history.

        ``batch_size`` / ``lr`` default to 256 / 1e-3 on the CPU and to 1024
        with a square-root-scaled learning rate on CUDA (see
        :func:`~sciencevae.train.batch_and_lr`); under torchrun
        ``batch_size`` is per process. A :class:`~sciencevae.streaming.Streamed`
        is read from disk in chunks (data larger than memory); it carries its own covariates and
        feature weights.

        The history has one row per epoch: loss, reconstruction, kl, kl_0 ...
        kl_{L-1} (per-latent KL, nats), val_loss, val_reconstruction, val_kl,
        seconds and peak_host_mb (the process's peak resident memory so far,
        MiB). ``early_stopping`` is a patience in epochs on the validation
        loss (the training loss without validation); the best weights are
        kept. ``progress``: a bar per epoch (a string labels it). ``checkpoint_dir`` gets ``checkpoint.pt`` every
        ``checkpoint_every`` epochs and ``resume=True`` continues from it;
        Ctrl-C raises :class:`~sciencevae.train.TrainingInterrupted`. A NaN/inf loss raises
        :class:`~sciencevae.train.TrainingDiverged` naming the epoch and
        restores the last good weights. ``precision="bf16"`` autocasts on CUDA.
        ``compile`` uses the likelihood's compiled kernel (NB; on the CPU the
        whole training step is compiled: ~40% faster per epoch, a few seconds
        to compile once per process);
        ``None`` compiles when the run is long enough to repay it
        (:func:`~sciencevae.fused_nb.compile_pays`; on a GPU only for long
        runs, ~10¹¹ cells × genes × epochs, with ``cuda_graph``).
        ``cuda_graph`` replays full training steps from a CUDA graph on a GPU
        when the data are held there (one launch per step instead of ~100;
        :mod:`~sciencevae.graphed`); False trains step by step.
        """
        prepared = self._checked(X, covariates, size_factors, feature_weights)
        n_rows, n_features = prepared.shape if isinstance(prepared, Streamed) else prepared.X.shape
        workers, device = distributed.start(device)
        target = resolve_device(device)
        # on a GPU compiling pays only where the steps are replayed from a CUDA graph (device-bound)
        pays = compile_pays(n_rows, n_features, epochs, target.type) and (target.type != "cuda" or cuda_graph)
        self.module.likelihood.compiled = pays if compile is None else compile
        batch_size, lr = batch_and_lr(batch_size, lr, target, workers.world_size)
        config = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=str(device),
            validation=validation,
            early_stopping=early_stopping,
            precision=precision,
            cuda_graph=cuda_graph,
        )
        self.module.to(target)
        split = None
        if workers.active and not isinstance(prepared, Streamed):  # this rank keeps only its rows on its device
            prepared, split = _rank_rows(prepared, config, workers)
        source = self._source(prepared)
        if workers.active and isinstance(prepared, Streamed):  # this rank reads only its block of chunks
            split = _rank_blocks(source, config, workers)
        self.history = fit(
            self.module, self.objective, source, config, checkpoint_dir=checkpoint_dir,
            resume=resume, progress=progress, checkpoint_every=checkpoint_every, workers=workers, split=split,
        )
        self.train_config = config
        return self.history

    def _checked(self, X, covariates=None, size_factors=None, feature_weights=None) -> Prepared | Streamed:
        """X as a validated Prepared, or a Streamed checked on its first chunk (the rest as it is read)."""
        if isinstance(X, Streamed):
            if any(v is not None for v in (covariates, size_factors, feature_weights)):
                raise ValueError("streamed data carry their own covariates and weights; give them to "
                                 "Streamed(covariates=..., feature_weights=...)")
            first = min(X.chunk_rows, X.n_obs)
            self._check_input(as_prepared(X.reader.read(0, first),
                                          None if X.covariates is None else X.covariates[:first]))
            return X  # chunks with rounding error are rounded (and said so) as they are read
        prepared = as_prepared(X, covariates, size_factors, feature_weights)
        example = self._check_input(prepared)
        if example is not None:
            warnings.warn(rounding_message("X holds", example), UserWarning, stacklevel=3)
            prepared = replace(prepared, X=round_counts(prepared.X))
        return prepared

    def _source(self, prepared: Prepared | Streamed):
        count_data = self.module.likelihood.is_count
        if isinstance(prepared, Streamed):
            return StreamingSource(prepared, self.device, count_data=count_data)
        return BatchSource(prepared, self.device, count_data=count_data)

    def validate(self, X, covariates=None) -> None:
        """Raise a ValueError naming the problem if X cannot be used with this model.

        >>> BetaVAE(n_features=2, n_latent=1, likelihood="nb", hidden=(4,)).validate(np.array([[1.0, 0.5]]))
        Traceback (most recent call last):
        ...
        ValueError: X holds non-integer values (e.g. 0.5); use the gaussian likelihood for continuous data, or give raw counts to 'nb'
        """
        self._checked(X, covariates)

    def _check_input(self, prepared) -> float | None:
        """Check shapes and values; for counts with rounding error, the first such value (else None)."""
        c = self.config
        if prepared.n_features != c.n_features:
            raise ValueError(f"X has {prepared.n_features} features but the model was built for {c.n_features}")
        n_cov = 0 if prepared.covariates is None else prepared.covariates.shape[1]
        if n_cov != c.n_covariates:
            raise ValueError(f"the model expects {c.n_covariates} covariate columns, got {n_cov}")
        values = prepared.X.data if sp.issparse(prepared.X) else prepared.X
        if c.likelihood == "bernoulli":
            if np.any((values < 0) | (values > 1)):
                raise ValueError("likelihood 'bernoulli' needs values in [0, 1]; binarise the data first")
        if self.module.likelihood.is_count:  # NaN included (a mask means the dense X holds NaN)
            return check_counts(values, likelihood=c.likelihood)
        return None

    @torch.no_grad()
    def _posterior(self, X, covariates=None, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        source = self._source(self._checked(X, covariates))
        self.module.eval()
        # filled in place: small outputs kept between the batches' large temporaries would fragment the heap
        means = np.empty((source.n_obs, self.config.n_latent), dtype=np.float32)
        logvars = np.empty_like(means)
        start = 0
        for batch in source.batches(torch.arange(source.n_obs), batch_size):
            mu, logvar = self.module.inference(batch)
            means[start:start + len(mu)] = mu.float().cpu().numpy()
            logvars[start:start + len(mu)] = logvar.float().cpu().numpy()
            start += len(mu)
        return means, logvars

    def encode(self, X, covariates=None, return_std: bool = False, batch_size: int = 1024):
        """Posterior means (n_obs, n_latent); with ``return_std`` also the std.

        >>> vae = BetaVAE(n_features=3, n_latent=2, hidden=(4,))
        >>> mean, std = vae.encode(np.zeros((5, 3)), return_std=True)
        >>> mean.shape, std.shape
        ((5, 2), (5, 2))
        """
        mean, logvar = self._posterior(X, covariates, batch_size)
        return (mean, np.exp(0.5 * logvar)) if return_std else mean

    @torch.no_grad()
    def decode(self, Z, covariates=None, size_factors=None) -> np.ndarray:
        """Means of p(x|z) for latent codes Z (n, n_latent).

        Count likelihoods give expected counts for ``size_factors`` (default 1:
        normalised expression, i.e. proportions).

        >>> BetaVAE(n_features=3, n_latent=2, hidden=(4,)).decode(np.zeros((1, 2))).shape
        (1, 3)
        """
        self.module.eval()
        z = torch.as_tensor(np.asarray(Z), dtype=torch.float32, device=self.device)
        if z.ndim != 2 or z.shape[1] != self.config.n_latent:
            raise ValueError(f"Z must have shape (n, {self.config.n_latent}), got {tuple(z.shape)}")
        cov = None if covariates is None else torch.as_tensor(covariates, dtype=torch.float32, device=self.device)
        sf = None if size_factors is None else torch.as_tensor(size_factors, dtype=torch.float32, device=self.device)
        return self.module.generative(z, cov, sf).mean.float().cpu().numpy()

    def reconstruct(self, X, covariates=None) -> np.ndarray:
        """Decode the posterior means of X (counts at each sample's library size)."""
        prepared = as_prepared(X, covariates)
        size_factors = None
        if self.module.likelihood.is_count:
            size_factors = np.asarray(prepared.X.sum(axis=1)).ravel()
        return self.decode(self.encode(prepared), prepared.covariates, size_factors)

    @property
    def loadings(self) -> np.ndarray:
        """Linear-decoder loadings (n_features, n_latent); first head for ZINB."""
        if self.config.decoder != "linear":
            raise AttributeError("loadings exist for decoder='linear' only; use decoder sensitivities for MLPs")
        return self.module.decoder.loadings(self.config.n_features).detach().float().cpu().numpy()

    def evaluate(self, X, covariates=None, size_factors=None, feature_weights=None,
                 batch_size: int = 1024, seed: int = 0) -> dict:
        """Distortion and rate over X with one posterior sample per row.

        Returns ``reconstruction`` (mean NLL summed over features: the
        distortion), ``kl`` (mean KL summed over latents: the rate, nats),
        ``kl_per_latent`` and ``neg_elbo`` = reconstruction + kl.

        >>> vae = BetaVAE(n_features=3, n_latent=2, hidden=(4,))
        >>> sorted(vae.evaluate(np.zeros((5, 3))))
        ['kl', 'kl_per_latent', 'neg_elbo', 'reconstruction']
        """
        source = self._source(self._checked(X, covariates, size_factors, feature_weights))
        self.module.eval()
        noise = torch.Generator(device=self.device).manual_seed(seed)
        with torch.no_grad():
            sums = epoch_sums(self.module, Objective(), source, torch.arange(source.n_obs), batch_size, 0, noise)
        mean = (sums / source.n_obs).cpu().numpy().astype(np.float64)
        return {"reconstruction": mean[1], "kl": mean[2], "kl_per_latent": mean[3:], "neg_elbo": mean[0]}

    def kl_per_latent(self, X, covariates=None) -> np.ndarray:
        """Mean KL(q(z_j|x) || N(0,1)) over the samples of X, in nats per latent."""
        return posterior_kl(*self._posterior(X, covariates))

    def save(self, path: str | Path) -> Path:
        """Write weights + JSON config (+ history.csv) to folder ``path``."""
        from .io import save

        return save(self, path)

    def to(self, device: str | torch.device) -> "BetaVAE":
        self.module.to(resolve_device(device) if isinstance(device, str) else device)
        return self

