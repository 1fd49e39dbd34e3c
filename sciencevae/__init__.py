"""sciencevae: β-VAEs that hand scientists disentangled knobs.

>>> import sciencevae
>>> sciencevae.BetaVAE(n_features=4, n_latent=2, hidden=(8,)).config.n_latent
2
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sciencevae")
except PackageNotFoundError:  # pragma: no cover - running from a plain source tree
    __version__ = "0.0.0+unknown"

from .data import Prepared, as_prepared, one_hot
from .io import load, save
from .model import BetaVAE, ModelConfig
from .objectives import Objective
from .train import TrainConfig, TrainingDiverged

__all__ = [
    "BetaVAE",
    "ModelConfig",
    "Objective",
    "Prepared",
    "TrainConfig",
    "TrainingDiverged",
    "as_prepared",
    "load",
    "one_hot",
    "save",
    "__version__",
]
