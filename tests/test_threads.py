"""Training threads on a shared machine: the choice from the measured load, its bounds, the restore,
and the load measurement against a process that spins."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sciencevae import BetaVAE
from sciencevae import threads as threads_module
from sciencevae.threads import cores_busy_elsewhere, training_threads


@pytest.fixture
def ceiling():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("busy, expected", [(0.0, 4), (0.2, 4), (0.5, 3), (1.0, 3), (2.9, 1), (7.0, 1), (None, 4)])
def test_threads_are_the_idle_cores_within_torchs_setting(monkeypatch, ceiling, busy, expected):
    torch.set_num_threads(4)
    monkeypatch.setattr(threads_module, "available_cores", lambda: 4)
    monkeypatch.setattr(threads_module, "cores_busy_elsewhere", lambda window: busy)
    with training_threads() as choice:
        assert choice.threads == expected == torch.get_num_threads()
    assert torch.get_num_threads() == 4  # restored
    assert choice.describe().startswith(f"{expected} thread")


def test_one_thread_stays_one_and_is_not_measured(monkeypatch, ceiling):
    torch.set_num_threads(1)
    monkeypatch.setattr(threads_module, "cores_busy_elsewhere", lambda window: pytest.fail("measured"))
    with training_threads() as choice:
        assert choice.threads == 1 and choice.busy is None


@pytest.mark.skipif(not threads_module.PROC_STAT.exists(), reason="needs /proc/stat (Linux)")
def test_a_spinning_process_counts_as_a_busy_core():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert cores_busy_elsewhere(0.3) >= 0.6
    finally:
        spinner.kill()
        spinner.wait()


def test_fit_records_its_threads_and_restores_torchs(ceiling):
    torch.set_num_threads(1)
    vae = BetaVAE(n_features=5, n_latent=2, hidden=(8,))
    history = vae.fit(np.random.default_rng(0).normal(size=(64, 5)), epochs=2, progress=False)
    assert list(history["threads"]) == [1, 1] and torch.get_num_threads() == 1


def test_scanpy_s_numba_kernels_leave_torch_s_threads_as_they_were():
    """In a fresh process with OMP_NUM_THREADS=1 (numba starts its OpenMP pool once, and that reset torch
    to the CPU count): highly variable genes keep torch at 1 thread."""
    code = ("import numpy as np, scipy.sparse as sp, anndata as ad, torch; torch.set_num_threads(1); "
            "torch.get_num_threads(); "  # torch's pool in use, as in any session that trained before
            "from sciencevae.adapters.cells import CellsAdapter; "
            "counts = np.random.default_rng(0).poisson(1.0, size=(300, 120)).astype(np.float32); "
            "CellsAdapter.from_adata(ad.AnnData(sp.csr_matrix(counts)), n_top_genes=60); "
            "print(torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "1"
