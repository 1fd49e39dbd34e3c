"""Save and load models: ``weights.pt`` (a plain state_dict) + ``config.json``.

Loading never unpickles code: weights are read with ``torch.load(...,
weights_only=True)`` and the JSON config is checked against its schema before
any module is built. Every file is written to a temporary name in the target
folder and renamed into place, and ``config.json`` is written last, so a folder
without it is an incomplete save.
"""

from __future__ import annotations

import json
import os
import tempfile  # noqa: F401  (used by the doctests)
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .model import BetaVAE

__all__ = ["save", "load", "ModelFolderError", "atomic_path", "atomic_torch_save", "atomic_write_text"]

FORMAT = "sciencevae-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"
HISTORY_NAME = "history.csv"


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete, malformed or does not match its weights."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success.

    >>> with atomic_path(Path(tempfile.mkdtemp()) / "a.txt") as tmp:
    ...     _ = tmp.write_text("hi")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies, as for open()
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write a text file through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _version() -> str:
    from . import __version__

    return __version__


def model_config_dict(vae: "BetaVAE") -> dict:
    """The JSON document saved as config.json."""
    from .objectives import BETA_CONVENTION

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sciencevae_version": _version(),
        "beta_convention": BETA_CONVENTION,
        "model": vae.config.to_dict(),
        "objective": vae.objective.to_dict(),
        "seed": vae.seed,
        "training": None if vae.train_config is None else vae.train_config.__dict__.copy(),
    }


def save(vae: "BetaVAE", path: str | Path) -> Path:
    """Write ``vae`` to folder ``path`` (created if needed); returns the folder.

    >>> from sciencevae import BetaVAE
    >>> folder = save(BetaVAE(n_features=3, n_latent=2, hidden=(4,)), tempfile.mkdtemp())
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'weights.pt']
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in vae.module.state_dict().items()}
    atomic_torch_save(state, folder / WEIGHTS_NAME)
    if vae.history is not None:
        atomic_write_text(vae.history.to_csv(index=False), folder / HISTORY_NAME)
    atomic_write_text(json.dumps(model_config_dict(vae), indent=2), folder / CONFIG_NAME)
    return folder


def _read_config(folder: Path) -> dict:
    config_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ModelFolderError(f"{folder} is not a folder; give the folder written by model.save()")
    if not config_path.exists():
        raise ModelFolderError(f"{folder} has no {CONFIG_NAME}: not a saved model, or an incomplete save")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{config_path} is not valid JSON ({err}); the model folder is damaged") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelFolderError(f"{config_path} is not a sciencevae model config (format != {FORMAT!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(
            f"{config_path} has format_version {config.get('format_version')!r}; "
            f"this sciencevae {_version()} reads version {FORMAT_VERSION}"
        )
    for key, kind in (("model", dict), ("objective", dict), ("seed", int)):
        if not isinstance(config.get(key), kind):
            raise ModelFolderError(f"{config_path}: '{key}' is missing or not a {kind.__name__}")
    return config


def _build(config: dict, config_path: Path) -> "BetaVAE":
    from .model import BetaVAE, ModelConfig
    from .objectives import Objective
    from .train import TrainConfig

    try:
        model_config = ModelConfig(**config["model"])
        objective = Objective(**config["objective"])
        training = TrainConfig(**config["training"]) if config.get("training") else None
    except (TypeError, ValueError) as err:
        raise ModelFolderError(f"{config_path} does not match the config schema: {err}") from None
    vae = BetaVAE(
        **{k: v for k, v in model_config.to_dict().items() if k != "likelihood_options"},
        likelihood_options=model_config.likelihood_options,
        objective=objective,
        seed=config["seed"],
    )
    vae.train_config = training
    return vae


def load(path: str | Path, device: str = "cpu") -> "BetaVAE":
    """Load a model saved with :func:`save`; never executes code from the folder.

    >>> from sciencevae import BetaVAE
    >>> folder = save(BetaVAE(n_features=3, n_latent=2, hidden=(4,)), tempfile.mkdtemp())
    >>> load(folder).config.n_latent
    2
    """
    import pandas as pd

    folder = Path(path)
    config = _read_config(folder)
    vae = _build(config, folder / CONFIG_NAME)
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.exists():
        raise ModelFolderError(f"{folder} has no {WEIGHTS_NAME}; the save is incomplete")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or damaged file: both are a bad folder
        raise ModelFolderError(
            f"{weights_path} could not be read as plain weights ({type(err).__name__}); "
            "sciencevae never loads pickled code: re-save the model with model.save()"
        ) from None
    try:
        vae.module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()
        raise ModelFolderError(
            f"{weights_path} does not match {CONFIG_NAME}: {' '.join(first[:3])}"
        ) from None
    history = folder / HISTORY_NAME
    if history.exists():
        vae.history = pd.read_csv(history)
    vae.to(device)
    vae.module.eval()
    return vae
