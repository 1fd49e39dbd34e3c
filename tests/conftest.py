"""Shared fixtures and helpers."""

import numpy as np
import pytest
import torch

# 2-core CI machines: one intra-op thread per test process avoids spin-waiting.
torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def linear_r2(latents: np.ndarray, target: np.ndarray) -> float:
    """R² of the best linear prediction of ``target`` from ``latents``."""
    design = np.c_[latents, np.ones(len(latents))]
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    return 1.0 - np.var(target - design @ coef) / np.var(target)


def thinned(counts, fraction: float, seed: int = 0):
    """A CSR count matrix binomially thinned to ``fraction`` of its reads (a shallower run; sparser)."""
    out = counts.copy()
    out.data = np.random.default_rng(seed).binomial(out.data.astype(np.int64), fraction).astype(np.float32)
    out.eliminate_zeros()
    return out
