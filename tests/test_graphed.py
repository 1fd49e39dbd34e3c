"""Training steps replayed from a CUDA graph (sciencevae.graphed): replayed when they should be, eager where
they must be, the same training as step by step, and a clean fallback when capturing fails."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from sciencevae import BetaVAE, Objective
from sciencevae.datasets import count_programmes
from sciencevae.graphed import WARMUP_STEPS

# 2,000 cells with 10% held out: 1,800 trained, 7 full batches of 256 and one of 8 per epoch
N_CELLS, BATCH, FULL_BATCHES = 2000, 256, 7


def _fit(cuda_graph: bool, device: str = "cuda", objective="beta", precision="32", epochs=4, seed=0):
    counts, _ = count_programmes(n_obs=N_CELLS)
    vae = BetaVAE(counts.shape[1], n_latent=4, likelihood="nb", hidden=(64,), objective=objective)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = vae.fit(counts, epochs=epochs, batch_size=BATCH, lr=3e-3, seed=seed, device=device,
                          precision=precision, progress=False, cuda_graph=cuda_graph)
    graph_warnings = [str(w.message) for w in caught if "CUDA graph" in str(w.message)]
    return history.drop(columns=["seconds", "peak_host_mb"]), graph_warnings, vae


@pytest.fixture
def replays(monkeypatch):
    """Counts the graph replays of the test."""
    counter = {"n": 0}
    original = torch.cuda.CUDAGraph.replay

    def counted(self):
        counter["n"] += 1
        return original(self)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted)
    return counter


def test_on_the_cpu_the_option_changes_nothing():
    with_graph, warned, _ = _fit(True, device="cpu", epochs=2)
    without, _, _ = _fit(False, device="cpu", epochs=2)
    pd.testing.assert_frame_equal(with_graph, without)
    assert not warned


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_full_batches_are_replayed_and_train_as_step_by_step(replays):
    epochs = 4
    graphed, warned, vae = _fit(True, epochs=epochs)
    assert not warned, warned
    assert replays["n"] == epochs * FULL_BATCHES - WARMUP_STEPS  # the short batches and the warm-up are eager
    eager, _, _ = _fit(False, epochs=epochs)
    assert np.isfinite(graphed.to_numpy()).all()
    assert graphed["loss"].iloc[-1] < 0.95 * graphed["loss"].iloc[0]  # H200: 159.1 -> 147.4 in 4 epochs
    # same data order and weights; the noise may be drawn differently inside a graph, so close, not equal
    for column in ("loss", "val_loss", "kl"):
        np.testing.assert_allclose(graphed[column], eager[column], rtol=0.03, err_msg=column)
    assert vae.encode(count_programmes(n_obs=N_CELLS)[0]).shape == (N_CELLS, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_steps_inside_the_kl_warm_up_run_eagerly(replays):
    warmup = 10  # steps 0-9 change the KL weight: eager; from step 10 the full batches can be replayed
    graphed, warned, _ = _fit(True, objective=Objective(warmup_steps=warmup), epochs=3)
    assert not warned, warned
    steps_per_epoch = FULL_BATCHES + 1
    full_after_warmup = sum(1 for epoch in range(3) for b in range(FULL_BATCHES)
                            if epoch * steps_per_epoch + b >= warmup)
    assert replays["n"] == full_after_warmup - WARMUP_STEPS
    eager, _, _ = _fit(False, objective=Objective(warmup_steps=warmup), epochs=3)
    np.testing.assert_allclose(graphed["loss"], eager["loss"], rtol=0.03)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_steps_are_replayed(replays):
    graphed, warned, _ = _fit(True, precision="bf16", epochs=3)
    assert not warned, warned
    assert replays["n"] == 3 * FULL_BATCHES - WARMUP_STEPS
    assert graphed["loss"].iloc[-1] < graphed["loss"].iloc[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_failed_capture_warns_and_trains_exactly_as_step_by_step(monkeypatch, replays):
    def refuse(self, generator):
        raise RuntimeError("no graph-safe generators here")

    monkeypatch.setattr(torch.cuda.CUDAGraph, "register_generator_state", refuse, raising=False)
    graphed, warned, _ = _fit(True, epochs=3)
    assert len(warned) == 1 and "no graph-safe generators here" in warned[0] and "cuda_graph=False" in warned[0]
    assert replays["n"] == 0
    eager, _, _ = _fit(False, epochs=3)
    pd.testing.assert_frame_equal(graphed, eager)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_checkpoints_and_resume_work_with_replayed_steps(tmp_path, replays):
    counts, _ = count_programmes(n_obs=N_CELLS)
    settings = dict(batch_size=BATCH, lr=3e-3, seed=3, device="cuda", progress=False)
    straight = BetaVAE(counts.shape[1], n_latent=4, likelihood="nb", hidden=(64,), seed=3)
    straight.fit(counts, epochs=4, **settings)
    first = BetaVAE(counts.shape[1], n_latent=4, likelihood="nb", hidden=(64,), seed=3)
    first.fit(counts, epochs=2, checkpoint_dir=tmp_path, **settings)  # the noise generator's state is saved
    resumed = BetaVAE(counts.shape[1], n_latent=4, likelihood="nb", hidden=(64,), seed=3)
    history = resumed.fit(counts, epochs=4, checkpoint_dir=tmp_path, resume=True, **settings)
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert replays["n"] == (4 + 2 + 2) * FULL_BATCHES - 3 * WARMUP_STEPS
    np.testing.assert_allclose(history["loss"].iloc[-1], straight.history["loss"].iloc[-1], rtol=0.03)
