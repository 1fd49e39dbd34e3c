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
