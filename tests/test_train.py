"""Training: recovery of known factors, count models on CSR, determinism,
divergence, early stopping, checkpoints and resume."""

import numpy as np
import pandas as pd
import pytest
import torch

import sciencevae.data
from sciencevae import BetaVAE, Objective, TrainingDiverged
from sciencevae.train import CHECKPOINT_NAME

from conftest import linear_r2
from sciencevae.datasets import count_programmes, linear_factors


def test_recovers_three_independent_factors_and_switches_off_the_rest():
    X, z = linear_factors(4000)
    vae = BetaVAE(n_features=50, n_latent=6, hidden=(64, 32))
    vae.fit(X, epochs=100, batch_size=128, lr=1e-3, progress=False)
    latents = vae.encode(X)
    r2 = [linear_r2(latents, z[:, k]) for k in range(3)]
    assert min(r2) >= 0.9, r2
    kl = np.sort(vae.kl_per_latent(X))
    assert np.all(kl[:3] < 0.05), kl  # the unused latents carry (almost) nothing
    assert np.all(kl[3:] > 1.0), kl


def _steadily_falling(losses: pd.Series) -> bool:
    smooth = losses.rolling(3).mean().dropna().to_numpy()
    return losses.iloc[-1] < 0.9 * losses.iloc[0] and np.all(np.diff(smooth) < 0.01 * abs(smooth[0]))


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_count_models_train_on_csr_without_densifying_it(monkeypatch, likelihood):
    counts, activity = count_programmes(n_obs=600, zero_inflation=0.1 if likelihood == "zinb" else 0.0)
    rows_seen = []
    original = sciencevae.data.densify_rows

    def spy(X, rows):
        rows_seen.append(len(rows))
        return original(X, rows)

    monkeypatch.setattr(sciencevae.data, "densify_rows", spy)
    monkeypatch.setattr(sciencevae.data, "MIN_DENSE_DENSITY", 2.0)  # these counts are full enough to be served dense
    vae = BetaVAE(counts.shape[1], n_latent=4, likelihood=likelihood, hidden=(32,))
    history = vae.fit(counts, epochs=25, batch_size=64, lr=3e-3, progress=False)
    assert max(rows_seen) <= 64
    assert _steadily_falling(history["loss"]), history["loss"].round(2).tolist()
    # the programme activities (on the simplex: 2 free coordinates) are linearly readable
    latents = vae.encode(counts)
    assert min(linear_r2(latents, activity[:, k]) for k in range(2)) > 0.7


def test_bernoulli_on_binary_data(rng):
    z = rng.normal(size=(800, 2))
    logits = z @ rng.normal(size=(2, 30)) * 2
    X = (rng.random((800, 30)) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    vae = BetaVAE(30, n_latent=4, likelihood="bernoulli", hidden=(32,))
    history = vae.fit(X, epochs=30, batch_size=64, lr=3e-3, progress=False)
    assert _steadily_falling(history["loss"])
    assert min(linear_r2(vae.encode(X), z[:, k]) for k in range(2)) > 0.7


def test_history_columns_and_per_latent_kl(rng):
    X = rng.normal(size=(100, 5)).astype(np.float32)
    history = BetaVAE(5, n_latent=3, hidden=(8,)).fit(X, epochs=3, progress=False)
    expected = ["epoch", "loss", "reconstruction", "kl", "kl_0", "kl_1", "kl_2", "val_loss"]
    assert all(column in history for column in expected)
    np.testing.assert_allclose(history[["kl_0", "kl_1", "kl_2"]].sum(1), history["kl"], rtol=1e-5)
    assert len(history) == 3


def test_same_seed_gives_identical_results_on_cpu(rng):
    X = rng.normal(size=(300, 6)).astype(np.float32)

    def run(seed):
        vae = BetaVAE(6, n_latent=2, hidden=(16,), seed=seed)
        history = vae.fit(X, epochs=4, batch_size=32, seed=seed, progress=False)
        return history.drop(columns=["seconds", "peak_host_mb"]), vae.encode(X)

    (h1, z1), (h2, z2), (_, z3) = run(0), run(0), run(1)
    pd.testing.assert_frame_equal(h1, h2)
    np.testing.assert_array_equal(z1, z2)
    assert not np.array_equal(z1, z3)


def test_nan_loss_stops_naming_the_epoch_and_keeps_the_last_good_state(monkeypatch, tmp_path, rng):
    X = rng.normal(size=(64, 4)).astype(np.float32)
    original = Objective.loss

    def poisoned(self, terms, step, dataset_size, *covariates):
        out = original(self, terms, step, dataset_size, *covariates)
        if step >= 3 * 2:  # from epoch 4 on (2 steps per epoch)
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(Objective, "loss", poisoned)
    vae = BetaVAE(4, n_latent=2, hidden=(8,))
    with pytest.raises(TrainingDiverged, match=r"epoch 4\b.*learning rate"):
        vae.fit(X, epochs=10, batch_size=32, validation=0.0, checkpoint_dir=tmp_path, progress=False)
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert checkpoint["epoch"] == 3
    for name, value in vae.module.state_dict().items():
        torch.testing.assert_close(value, checkpoint["module"][name])
    assert np.all(np.isfinite(vae.encode(X)))


def test_early_stopping_stops_and_keeps_the_best_weights(rng):
    X = rng.normal(size=(60, 20)).astype(np.float32)  # pure noise: validation loss soon rises
    vae = BetaVAE(20, n_latent=4, hidden=(64,))
    history = vae.fit(X, epochs=300, batch_size=16, lr=1e-2, validation=0.3, early_stopping=5, progress=False)
    assert len(history) < 300
    best = history["val_loss"].idxmin()
    assert len(history) == best + 1 + 5


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path, rng):
    X = rng.normal(size=(200, 6)).astype(np.float32)
    settings = dict(batch_size=32, seed=3, progress=False)
    straight = BetaVAE(6, n_latent=2, hidden=(16,), seed=3)
    straight.fit(X, epochs=6, **settings)
    first = BetaVAE(6, n_latent=2, hidden=(16,), seed=3)
    first.fit(X, epochs=3, checkpoint_dir=tmp_path, **settings)
    resumed = BetaVAE(6, n_latent=2, hidden=(16,), seed=3)
    history = resumed.fit(X, epochs=6, checkpoint_dir=tmp_path, resume=True, **settings)
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(resumed.encode(X), straight.encode(X))
    with pytest.raises(ValueError, match="cannot resume"):
        BetaVAE(6, n_latent=2, hidden=(16,)).fit(X, epochs=7, checkpoint_dir=tmp_path, resume=True,
                                                 batch_size=64, seed=3, progress=False)


def test_warmup_longer_than_training_warns(rng):
    X = rng.normal(size=(50, 3)).astype(np.float32)
    vae = BetaVAE(3, n_latent=2, hidden=(8,), objective=Objective(warmup_steps=10_000))
    with pytest.warns(UserWarning, match="warm-up"):
        vae.fit(X, epochs=2, progress=False)


def test_tcvae_and_capacity_objectives_train(rng):
    X, _ = linear_factors(400, n_features=10)
    for objective in (Objective(kind="tcvae", beta=4.0), Objective(kind="capacity", gamma=10.0, capacity_steps=40)):
        history = BetaVAE(10, n_latent=3, hidden=(16,), objective=objective).fit(
            X, epochs=8, batch_size=64, progress=False
        )
        assert np.all(np.isfinite(history["loss"]))


def test_unavailable_cuda_is_a_clear_error(rng):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="no CUDA device"):
        BetaVAE(3, n_latent=1, hidden=(4,)).fit(rng.normal(size=(10, 3)), epochs=1, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda_with_bf16():
    counts, _ = count_programmes(n_obs=2000)
    vae = BetaVAE(counts.shape[1], n_latent=4, likelihood="nb", hidden=(64,))
    history = vae.fit(counts, epochs=5, batch_size=256, device="cuda", precision="bf16", progress=False)
    assert vae.device.type == "cuda"
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert vae.encode(counts).shape == (2000, 4)


def test_ctrl_c_stops_cleanly_and_names_the_saved_checkpoint(monkeypatch, tmp_path, rng):
    from sciencevae.train import TrainingInterrupted

    X = rng.normal(size=(64, 4)).astype(np.float32)
    original = Objective.loss

    def interrupted(self, terms, step, dataset_size, *covariates):
        if step == 5:  # in epoch 3 (2 steps per epoch)
            raise KeyboardInterrupt
        return original(self, terms, step, dataset_size, *covariates)

    monkeypatch.setattr(Objective, "loss", interrupted)
    vae = BetaVAE(4, n_latent=2, hidden=(8,))
    with pytest.raises(TrainingInterrupted, match=r"epoch 3; the checkpoint .* holds epoch 2"):
        vae.fit(X, epochs=10, batch_size=32, validation=0.0, checkpoint_dir=tmp_path, progress=False)
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    for name, value in vae.module.state_dict().items():
        torch.testing.assert_close(value, saved["module"][name])


def test_lean_fused_adam_steps_exactly_as_torch_adam_and_resumes_from_its_state_dict():
    from sciencevae.train import LeanFusedAdam

    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 7)]
    start = [torch.randn(shape, generator=gen) for shape in shapes]
    grads = [[torch.randn(shape, generator=gen) for shape in shapes] for _ in range(6)]

    def train(make, steps, params=None, state=None):
        params = params or [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = make(params)
        if state is not None:
            optimizer.load_state_dict(state)
        for step_grads in steps:
            optimizer.zero_grad()
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            optimizer.step()
        return params, optimizer

    reference, _ = train(lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True), grads)
    lean, _ = train(lambda ps: LeanFusedAdam(ps, lr=1e-2), grads)
    for got, want in zip(lean, reference):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # three steps, a checkpoint of the state, three more in a new optimizer: the same end
    halfway, optimizer = train(lambda ps: LeanFusedAdam(ps, lr=1e-2), grads[:3])
    assert optimizer.lean and float(optimizer.state[halfway[0]]["step"]) == 3
    resumed, _ = train(lambda ps: LeanFusedAdam(ps, lr=1e-2), grads[3:], params=halfway,
                       state=optimizer.state_dict())
    for got, want in zip(resumed, reference):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_lean_fused_adam_falls_back_to_torch_when_the_kernel_call_fails():
    from sciencevae.train import LeanFusedAdam

    def changed_signature(*args, **kwargs):
        raise TypeError("_fused_adam_() got an unexpected keyword argument")

    params = [torch.nn.Parameter(torch.ones(4))]
    reference = [torch.nn.Parameter(torch.ones(4))]
    lean, torch_adam = LeanFusedAdam(params, lr=0.1), torch.optim.Adam(reference, lr=0.1, fused=True)
    for step in range(3):
        if step == 1:
            lean.kernel = changed_signature  # as if another torch changed the kernel's arguments
        for p, opt in ((params[0], lean), (reference[0], torch_adam)):
            opt.zero_grad()
            p.grad = torch.full((4,), float(step + 1))
            opt.step()
    assert not lean.lean
    torch.testing.assert_close(params[0], reference[0], rtol=0, atol=0)
    assert float(lean.state[params[0]]["step"]) == 3
