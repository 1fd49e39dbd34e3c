"""The sciencevae command: --version, --help, fit, clear one-line errors."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sciencevae
from sciencevae.cli import main

from sciencevae.datasets import count_programmes, linear_factors


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_version_and_help_through_the_installed_command():
    command = Path(sys.executable).parent / "sciencevae"
    out = subprocess.run([str(command), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"sciencevae {sciencevae.__version__}"
    out = subprocess.run([sys.executable, "-m", "sciencevae.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "fit" in out.stdout


def test_fit_csv_writes_model_latents_and_history(tmp_path, capsys):
    X, _ = linear_factors(300, n_features=12)
    frame = pd.DataFrame(X, index=[f"s{i}" for i in range(300)], columns=[f"f{j}" for j in range(12)])
    data = tmp_path / "data.csv"
    frame.to_csv(data)
    before = sha256(data)
    out = tmp_path / "run"
    assert main(["fit", str(data), "--out", str(out), "--n-latent", "4", "--epochs", "3", "--quiet"]) == 0
    assert "per-latent KL" in capsys.readouterr().out
    latents = pd.read_csv(out / "latents.csv", index_col=0)
    assert latents.shape == (300, 4) and latents.index[0] == "s0"
    assert len(pd.read_csv(out / "history.csv")) == 3
    loaded = sciencevae.load(out / "model")
    np.testing.assert_allclose(loaded.encode(X), latents.to_numpy(), rtol=1e-5, atol=1e-6)
    assert sha256(data) == before


def test_fit_sparse_counts_with_and_without_the_compiled_kernel_and_cuda_graph(tmp_path, monkeypatch):
    from sciencevae import fused_nb

    counts, _ = count_programmes(n_obs=200)
    data = tmp_path / "counts.npz"
    sp.save_npz(data, counts)
    compiled_calls = []
    real = fused_nb._compiled
    monkeypatch.setattr(fused_nb, "_compiled", lambda *key: compiled_calls.append(key) or real(*key))
    losses = {}
    for flag in ("off", "on"):
        out = tmp_path / f"run_{flag}"
        args = ["fit", str(data), "--out", str(out), "--likelihood", "nb", "--decoder", "linear", "--n-latent", "3",
                "--epochs", "2", "--quiet", "--compile", flag, "--cuda-graph", flag]
        assert main(args) == 0
        assert bool(compiled_calls) == (flag == "on")
        loaded = sciencevae.load(out / "model")
        assert loaded.loadings.shape == (counts.shape[1], 3)
        assert loaded.train_config.cuda_graph == (flag == "on")  # saved with the model (no effect on a CPU)
        losses[flag] = pd.read_csv(out / "history.csv")["loss"].to_numpy()
    np.testing.assert_allclose(losses["on"], losses["off"], rtol=1e-4)  # the same maths either way


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: ["fit", str(d / "missing.npy"), "--out", str(d / "o")], "does not exist"),
        (lambda d: ["fit", str(d / "x.npy"), "--out", str(d / "x.npy")], "would overwrite the input"),
        (lambda d: ["fit", str(d / "x.npy"), "--out", str(d / "full")], "not empty"),
        (lambda d: ["fit", str(d / "x.npy"), "--out", str(d / "o"), "--likelihood", "poisson"], "non-integer"),
        (lambda d: ["fit", str(d / "x.txt"), "--out", str(d / "o")], "suffix"),
    ],
)
def test_errors_are_one_line_and_leave_inputs_alone(tmp_path, capsys, setup, message):
    np.save(tmp_path / "x.npy", np.abs(np.random.default_rng(0).normal(size=(20, 3))))
    (tmp_path / "x.txt").write_text("1 2 3\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep")
    before = {p.name: sha256(p) for p in tmp_path.rglob("*") if p.is_file()}
    assert main(setup(tmp_path) + ["--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert {p.name: sha256(p) for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("args, message", [
    (["cells", "x.h5ad", "--out", "o", "--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (["cells", "x.h5ad", "--out", "o", "--batch-mmd", "many"], "argument --batch-mmd: invalid float value"),
    (["cells"], "the following arguments are required: input, --out"),
    (["clim"], "invalid choice: 'clim'"),
])
def test_flag_errors_are_one_line_too(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "usage:" not in err
    assert err.count("\n") == 1 and err.rstrip().endswith("-h)")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "fit", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "o")])


def _fit_run(folder, n_obs: int, *options: str):
    """Save linear-factor data and fit it through the CLI; returns (data file, run folder)."""
    X, _ = linear_factors(n_obs, n_features=10)
    data, run = folder / "x.npy", folder / "run"
    np.save(data, X)
    assert main(["fit", str(data), "--out", str(run), "--quiet", *options]) == 0
    return data, run


def test_diagnose_a_run_on_its_recorded_input(tmp_path, capsys):
    data, run = _fit_run(tmp_path, 800, "--n-latent", "5", "--epochs", "30")
    capsys.readouterr()
    assert main(["diagnose", str(run)]) == 0
    out = capsys.readouterr().out
    assert "active units:" in out and "of 5" in out and "KL (nats)" in out and str(data) in out


def test_diagnose_warns_about_collapse_and_falls_back_to_history(tmp_path, capsys):
    data, run = _fit_run(tmp_path, 300, "--beta", "5000", "--epochs", "20")
    capsys.readouterr()
    assert main(["diagnose", str(run), "--data", str(data)]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "collapse" in captured.err
    (run / "run.json").unlink()
    assert main(["diagnose", str(run)]) == 0
    assert "pass --data" in capsys.readouterr().out
    assert main(["diagnose", str(tmp_path / "nowhere")]) == 2


def test_a_killed_run_resumes_to_the_result_of_an_uninterrupted_one(tmp_path):
    import os
    import signal
    import time

    import torch

    X, _ = linear_factors(4000, n_features=30)
    data = tmp_path / "x.npy"
    np.save(data, X)
    command = Path(sys.executable).parent / "sciencevae"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def fit(out, *extra):
        return [str(command), "fit", str(data), "--out", str(out), "--epochs", "150", "--n-latent", "4",
                "--batch-size", "64", "--quiet", *extra]

    run = tmp_path / "run"
    process = subprocess.Popen(fit(run), env=env)
    checkpoint = run / "checkpoint" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["epoch"] >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-training, not finished
    assert (run / "INCOMPLETE").exists() and not (run / "latents.csv").exists()
    subprocess.run(fit(run, "--resume"), env=env, check=True)
    assert not (run / "INCOMPLETE").exists()
    straight = tmp_path / "straight"
    subprocess.run(fit(straight), env=env, check=True)
    resumed = pd.read_csv(run / "latents.csv", index_col=0)
    pd.testing.assert_frame_equal(resumed, pd.read_csv(straight / "latents.csv", index_col=0))
    assert len(pd.read_csv(run / "history.csv")) == 150
