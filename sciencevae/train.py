"""The training loop: device, batching, bf16 autocast, validation, early
stopping, checkpoints, divergence checks and progress.

Losses are accumulated on the device and read back once per epoch, so a step
never waits for the host. Randomness comes from two explicit generators seeded
from ``TrainConfig.seed`` (shuffling/splitting on the CPU, reparameterisation
noise on the device): the same seed on the CPU gives identical results.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import BatchSource, position_device
from .distributed import Workers, all_reduce_sum, gather_objects
from .io import atomic_torch_save
from .graphed import GraphedSteps
from .streaming import peak_host_memory_mb
from .threads import training_threads
from .objectives import Objective

__all__ = ["TrainConfig", "TrainingDiverged", "TrainingInterrupted", "fit", "resolve_device", "CHECKPOINT_NAME",
           "batch_and_lr", "LeanFusedAdam"]

BASE_BATCH, BASE_LR = 256, 1e-3

CHECKPOINT_NAME = "checkpoint.pt"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model holds the last good weights."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C during training; the last checkpoint (if any) is kept for ``resume``."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one ``fit`` call (saved with the model).

    >>> TrainConfig(epochs=5).batch_size
    256
    """

    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    validation: float = 0.1
    early_stopping: int | None = None
    precision: str = "32"
    cuda_graph: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ValueError(f"batch_size must be an integer >= 2, got {self.batch_size!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.validation < 1.0:
            raise ValueError(f"validation must be a fraction in [0, 1), got {self.validation!r}")
        if self.early_stopping is not None and (not isinstance(self.early_stopping, int) or self.early_stopping < 1):
            raise ValueError(f"early_stopping must be a patience in epochs (>= 1) or None, got {self.early_stopping!r}")
        if self.precision not in ("32", "bf16"):
            raise ValueError(f"precision must be '32' or 'bf16', got {self.precision!r}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else is checked.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available; use device='auto' or 'cpu'")
    return device


def batch_and_lr(batch_size: int | None, lr: float | None, device: torch.device,
                 world_size: int = 1) -> tuple[int, float]:
    """Defaults for ``fit``: the batch size per process and the learning rate.

    ``batch_size=None`` is 256 on the CPU and 1024 on CUDA (a GPU is only busy
    with large batches). ``lr=None`` scales 1e-3 with the square root of the
    effective batch (``batch_size * world_size``) above 256, the usual rule for
    Adam (Malladi et al. 2022); at 256 or less it stays 1e-3.

    >>> batch_and_lr(None, None, torch.device("cpu"))
    (256, 0.001)
    >>> batch_and_lr(None, None, torch.device("cuda"), world_size=4)
    (1024, 0.004)
    """
    if batch_size is None:
        batch_size = 1024 if device.type == "cuda" else BASE_BATCH
    if lr is None:
        lr = BASE_LR * math.sqrt(max(1.0, batch_size * world_size / BASE_BATCH))
    return batch_size, lr


class LeanFusedAdam(torch.optim.Adam):
    """torch's fused Adam (``fused=True``), stepped without its per-step Python bookkeeping.

    ``torch.optim.Adam.step`` regroups the parameters and their state by device and dtype on every call: ~0.1 ms
    on the CPU, 2-5% of a 2,000-gene step at batch 128. After the first step (which torch runs, creating the
    state) this calls the same fused kernel directly, when there is one parameter group on one device and
    dtype. Same state, ``state_dict`` and updates as ``torch.optim.Adam(fused=True)`` (tested); if the kernel's
    call fails (another torch), torch's own step takes over for good.

    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = LeanFusedAdam([w], lr=0.1)
    >>> for _ in range(2):
    ...     opt.zero_grad(); w.sum().backward(); opt.step()
    >>> [round(v, 4) for v in w.tolist()]  # Adam moves each weight by lr per step under a constant gradient
    [0.8, 0.8, 0.8]
    """

    def __init__(self, params, lr: float):
        super().__init__(params, lr=lr, fused=True)
        self.kernel = getattr(torch, "_fused_adam_", None)  # what torch's fused step calls
        self.lean = self.kernel is not None

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        if (not self.lean or closure is not None or len(self.param_groups) > 1 or not params
                or any(p not in self.state for p in params)):
            return super().step(closure)
        if len({(p.device, p.dtype) for p in params}) > 1:
            self.lean = False
            return super().step()
        states = [self.state[p] for p in params]
        steps = [state["step"] for state in states]
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        try:
            self.kernel(params, [p.grad for p in params], [state["exp_avg"] for state in states],
                        [state["exp_avg_sq"] for state in states], [], steps, amsgrad=False, lr=group["lr"],
                        beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                        maximize=False, grad_scale=None, found_inf=None)
        except (TypeError, RuntimeError):  # the kernel's signature changed: torch's own step from now on
            torch._foreach_sub_(steps, 1)
            self.lean = False
            return super().step()
        return None


def adam_step_size(optimizer: torch.optim.Optimizer):
    """Per parameter, the size of Adam's last step per unit gradient, lr / (sqrt(v̂) + eps), as a function of
    the parameter: the step of a proximal operator applied after Adam's step (a preconditioned proximal
    gradient step, Yun, Lozano & Yang 2021, "Adaptive proximal gradient methods for structured neural
    networks"), so that an L1 penalty keeps its meaning in units of the loss."""
    group = optimizer.param_groups[0]
    beta2 = group["betas"][1]

    def size(parameter: torch.Tensor) -> torch.Tensor:
        state = optimizer.state[parameter]
        second = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
        return group["lr"] / (second.sqrt() + group["eps"])

    return size


@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    best_loss: float = math.inf
    best_weights: dict | None = None
    bad_epochs: int = 0


def _snapshot(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _autocast(device: torch.device, precision: str, cache: bool = True):
    enabled = precision == "bf16" and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=cache)


def _batch_row(module: nn.Module, objective: Objective, batch, step: int, noise: torch.Generator, precision: str,
               optimizer: torch.optim.Optimizer | None, dataset_size: int, autocast_cache: bool = True) -> torch.Tensor:
    """[loss, reconstruction, kl, kl_per_latent...] of one batch, times its size; a training step with an optimizer.

    Nothing here waits for the device, so the step can be captured in a CUDA graph (:mod:`sciencevae.graphed`).
    """
    with _autocast(batch.x.device, precision, autocast_cache):
        parts = objective.loss(module(batch, noise), step, dataset_size, batch.covariates)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()
        inner = getattr(module, "module", module)  # under DistributedDataParallel, the wrapped VAEModule
        if hasattr(inner, "proximal_step"):
            inner.proximal_step(adam_step_size(optimizer), objective.penalty_anneal(step))
    row = torch.cat([torch.stack([parts["loss"], parts["reconstruction"], parts["kl"]]), parts["kl_per_latent"]])
    return row.detach() * batch.x.shape[0]


def epoch_sums(
    module: nn.Module,
    objective: Objective,
    source: BatchSource,
    index: torch.Tensor,
    batch_size: int,
    step: int,
    noise: torch.Generator,
    precision: str = "32",
    optimizer: torch.optim.Optimizer | None = None,
    dataset_size: int | None = None,
) -> torch.Tensor:
    """Sum over samples of [loss, reconstruction, kl, kl_per_latent...] (on the device).

    ``module`` may be wrapped in DistributedDataParallel (it is called, not
    ``.terms``); ``dataset_size`` (default ``len(index)``) is the N of the
    β-TCVAE estimators.
    """
    totals = None
    dataset_size = len(index) if dataset_size is None else dataset_size
    for batch in source.batches(index, batch_size):
        row = _batch_row(module, objective, batch, step, noise, precision, optimizer, dataset_size)
        totals = row if totals is None else totals + row
        if optimizer is not None:
            step += 1
    return totals


def _record(prefix: str, sums: torch.Tensor, n: int) -> dict:
    values = (sums / n).tolist()
    record = {f"{prefix}loss": values[0], f"{prefix}reconstruction": values[1], f"{prefix}kl": values[2]}
    if not prefix:
        record.update({f"kl_{j}": v for j, v in enumerate(values[3:])})
    return record


def _save_checkpoint(path: Path, module, optimizer, state: _State, shuffle, noise, config: TrainConfig,
                     workers: Workers) -> None:
    """Rank 0 writes; every rank's random state goes in (a collective call under torchrun)."""
    rank_rngs = gather_objects((shuffle.get_state(), noise.get_state().cpu()), workers)
    if not workers.is_main:
        return
    payload = {
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "history": state.history,
        "best_loss": state.best_loss,
        "best_weights": state.best_weights,
        "bad_epochs": state.bad_epochs,
        "shuffle_rng": shuffle.get_state(),
        "noise_rng": noise.get_state(),
        "train_config": asdict(config),
        "world_size": workers.world_size,
        "rank_rngs": rank_rngs,
    }
    atomic_torch_save(payload, path)


def _load_checkpoint(path: Path, module, optimizer, shuffle, noise, config: TrainConfig, workers: Workers) -> _State:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved_world = payload.get("world_size", 1)
    if saved_world != workers.world_size:
        raise ValueError(
            f"cannot resume from {path}: it was trained by {saved_world} process(es), this run has "
            f"{workers.world_size}; resume with the same torchrun --nproc_per_node (or none for 1)"
        )
    saved = payload["train_config"]
    for key in ("seed", "batch_size", "validation"):
        if saved[key] != getattr(config, key):
            raise ValueError(
                f"cannot resume from {path}: it was trained with {key}={saved[key]!r}, this run asks for "
                f"{getattr(config, key)!r}; use the same settings or a new checkpoint_dir"
            )
    module.load_state_dict(payload["module"])
    optimizer.load_state_dict(payload["optimizer"])
    shuffle_state, noise_state = payload["rank_rngs"][workers.rank] if "rank_rngs" in payload else (
        payload["shuffle_rng"], payload["noise_rng"])
    shuffle.set_state(shuffle_state)
    noise.set_state(noise_state.to(noise.get_state().device))
    return _State(
        epoch=payload["epoch"],
        step=payload["step"],
        history=payload["history"],
        best_loss=payload["best_loss"],
        best_weights=payload["best_weights"],
        bad_epochs=payload["bad_epochs"],
    )


def _saved_epoch(checkpoint: Path | None) -> int:
    if checkpoint is None or not checkpoint.exists():
        return 0
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])


def _diverged(epoch: int, value: float, config: TrainConfig, checkpoint: Path | None) -> TrainingDiverged:
    kept = f"; the checkpoint {checkpoint} holds the last good epoch" if checkpoint else ""
    return TrainingDiverged(
        f"training diverged: the loss became {value} in epoch {epoch}. The model was restored to the end of "
        f"epoch {epoch - 1}{kept}. Likely causes: a learning rate too high (lr={config.lr:g}; try "
        f"{config.lr / 10:g}) or unscaled input (standardise the features, or use a count likelihood for counts)."
    )


def fit(
    module: nn.Module,
    objective: Objective,
    source: BatchSource,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | str = True,
    checkpoint_every: int = 1,
    workers: Workers = Workers(),
    split: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Train ``module`` on ``source`` with ``objective``; return the per-epoch history.

    Under torchrun (``workers.active``, see :mod:`sciencevae.distributed`) the
    source holds this rank's rows and ``split`` gives its (train, validation)
    positions in them; otherwise ``split`` defaults to a seeded random split of
    the source by ``config.validation``.

    With ``checkpoint_dir``, ``checkpoint.pt`` is written atomically every
    ``checkpoint_every`` epochs and after the last one; ``resume=True``
    continues from it and ends exactly where an uninterrupted run would.
    Ctrl-C stops with :class:`TrainingInterrupted`, naming the last saved epoch.

    On CUDA, with the rows held on the device and one process, full batches
    are trained by replaying the step from a CUDA graph (``config.cuda_graph``,
    see :mod:`sciencevae.graphed`).

    >>> import numpy as np
    >>> from sciencevae.data import as_prepared
    >>> from sciencevae.model import ModelConfig, VAEModule
    >>> module = VAEModule(ModelConfig(n_features=4, n_latent=2, hidden=(8,)))
    >>> source = BatchSource(as_prepared(np.zeros((32, 4))), torch.device("cpu"))
    >>> len(fit(module, Objective(), source, TrainConfig(epochs=2), progress=False))
    2
    """
    device = source.device
    if config.precision == "bf16" and device.type != "cuda":
        warnings.warn("bf16 autocast needs CUDA; training in float32 on the CPU", UserWarning, stacklevel=2)
    train_index, val_index = split if split is not None else source.split(config.validation, config.seed)
    n_train = int(all_reduce_sum(torch.tensor([len(train_index)], device=device), workers))
    batch_size = min(config.batch_size, len(train_index))
    steps_per_epoch = math.ceil(len(train_index) / batch_size)
    objective.warn_if_unfinished(steps_per_epoch * config.epochs)

    module.train()
    if device.type in ("cpu", "cuda"):
        optimizer = LeanFusedAdam(module.parameters(), lr=config.lr)
    else:
        optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
    rank_seed = config.seed + 10_007 * workers.rank  # rank 0 draws what a single process draws
    shuffle = torch.Generator().manual_seed(rank_seed)
    noise = torch.Generator(device=device).manual_seed(rank_seed + 1)
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    n_val = int(all_reduce_sum(torch.tensor([len(val_index)], device=device), workers))
    state = _State()
    if resume and checkpoint is not None and checkpoint.exists():
        state = _load_checkpoint(checkpoint, module, optimizer, shuffle, noise, config, workers)

    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    last_good = _snapshot(module)
    trainable = _data_parallel(module, device) if workers.active else module
    graphed = None
    if _graphs_apply(config, source, workers):
        def step_row(positions: torch.Tensor, step: int, autocast_cache: bool) -> torch.Tensor:
            return _batch_row(trainable, objective, source.batch(positions), step, noise, config.precision, optimizer,
                              n_train, autocast_cache)

        graphed = GraphedSteps(step_row, batch_size, optimizer, device, generators=[noise],
                               from_step=objective.schedule_steps)
    threads_set = ExitStack()  # torch's CPU threads for this fit (fewer on a busy machine), restored after
    threads = threads_set.enter_context(training_threads()).threads if device.type == "cpu" else None
    label = progress if isinstance(progress, str) else "training"  # a string names the bar (e.g. "fit 2/5")
    label += "" if threads is None else f" ({threads} thread{'s' if threads > 1 else ''})"
    bar = tqdm(range(state.epoch, config.epochs), disable=not (progress and workers.is_main), desc=label,
               unit="epoch")
    try:
        for epoch in bar:
            started = time.perf_counter()
            order = train_index[torch.randperm(len(train_index), generator=shuffle)]
            if graphed is not None:
                sums = graphed.epoch(source.chunks(order, batch_size), state.step)
            else:
                sums = epoch_sums(trainable, objective, source, order, batch_size, state.step, noise,
                                  config.precision, optimizer, dataset_size=n_train)
            record = {"epoch": epoch + 1, **_record("", all_reduce_sum(sums, workers), n_train)}
            if not math.isfinite(record["loss"]):
                module.load_state_dict(last_good)
                raise _diverged(epoch + 1, record["loss"], config, checkpoint)
            state.step += steps_per_epoch
            if n_val:
                record.update(_validate(module, objective, source, val_index, batch_size, state.step, config,
                                        workers, n_val))
            record["seconds"] = time.perf_counter() - started
            record["peak_host_mb"] = peak_host_memory_mb()
            if threads is not None:
                record["threads"] = threads
            state.history.append(record)
            state.epoch = epoch + 1
            last_good = _snapshot(module)
            stop = _early_stopping_update(state, record, objective, config, last_good)
            if checkpoint is not None and (state.epoch % checkpoint_every == 0 or stop or state.epoch == config.epochs):
                _save_checkpoint(checkpoint, module, optimizer, state, shuffle, noise, config, workers)
            shown = {"loss": f"{record['loss']:.4g}"}
            if "val_loss" in record:  # no validation split: nothing to show (never "val=nan")
                shown["val"] = f"{record['val_loss']:.4g}"
            bar.set_postfix(shown)
            if stop:
                break
    except KeyboardInterrupt:
        module.load_state_dict(last_good)
        saved = _saved_epoch(checkpoint)
        where = f"the checkpoint {checkpoint} holds epoch {saved}; resume to continue" if saved else "no checkpoint was saved"
        raise TrainingInterrupted(f"training interrupted in epoch {state.epoch + 1}; {where}") from None
    finally:
        threads_set.close()
    if config.early_stopping is not None and state.best_weights is not None:
        module.load_state_dict(state.best_weights)
    module.eval()
    return pd.DataFrame(state.history)


def _graphs_apply(config: TrainConfig, source, workers: Workers) -> bool:
    """Whether training steps are replayed from a CUDA graph: asked for, on CUDA, in one process, and the rows
    held on the device (a streamed source changes its rows by group; scipy rows are densified on the host)."""
    device = source.device
    return (config.cuda_graph and device.type == "cuda" and not workers.active and isinstance(source, BatchSource)
            and position_device(source.rows, device) == device)


def _data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


@torch.no_grad()
def _validate(module, objective, source, val_index, batch_size, step, config, workers: Workers, n_val: int) -> dict:
    """Validation sums over every rank's validation rows (one all-reduce)."""
    module.eval()
    noise = torch.Generator(device=source.device).manual_seed(config.seed + 2 + 10_007 * workers.rank)
    sums = torch.zeros(3 + module.config.n_latent, device=source.device)
    if len(val_index):
        sums = epoch_sums(module, objective, source, val_index, batch_size, step, noise, config.precision, None,
                          dataset_size=n_val)
    module.train()
    return _record("val_", all_reduce_sum(sums, workers), n_val)


def _early_stopping_update(state: _State, record: dict, objective: Objective, config: TrainConfig, weights) -> bool:
    """Track the best monitored loss; True when patience has run out."""
    if config.early_stopping is None or state.step < objective.schedule_steps:
        return False
    monitored = record.get("val_loss", record["loss"])
    if monitored < state.best_loss:
        state.best_loss, state.best_weights, state.bad_epochs = monitored, weights, 0
        return False
    state.bad_epochs += 1
    return state.bad_epochs >= config.early_stopping
