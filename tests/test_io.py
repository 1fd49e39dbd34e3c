"""Save / load: bitwise-identical encode, schema checks, no unpickling."""

import json
import pickle

import numpy as np
import pytest
import torch

import sciencevae
from sciencevae import BetaVAE, Objective
from sciencevae.io import CONFIG_NAME, WEIGHTS_NAME, ModelFolderError, atomic_path


@pytest.fixture
def trained(rng):
    X = rng.poisson(4.0, size=(120, 8)).astype(np.float32)
    vae = BetaVAE(8, n_latent=3, likelihood="zinb", decoder="linear", hidden=(16,),
                  objective=Objective(kind="tcvae", beta=3.0), seed=7)
    vae.fit(X, epochs=2, progress=False)
    return vae, X


def test_save_load_encode_is_bitwise_identical(trained, tmp_path):
    vae, X = trained
    folder = vae.save(tmp_path / "model")
    loaded = sciencevae.load(folder)
    np.testing.assert_array_equal(loaded.encode(X), vae.encode(X))
    np.testing.assert_array_equal(loaded.loadings, vae.loadings)
    assert loaded.config == vae.config and loaded.objective == vae.objective
    assert loaded.train_config == vae.train_config
    assert len(loaded.history) == 2


def test_config_records_what_beta_means(trained, tmp_path):
    vae, _ = trained
    config = json.loads((vae.save(tmp_path) / CONFIG_NAME).read_text())
    assert "beta = 1" in config["beta_convention"]
    assert config["objective"]["beta"] == 3.0 and config["objective"]["kind"] == "tcvae"
    assert config["model"]["likelihood"] == "zinb"
    assert config["sciencevae_version"] == sciencevae.__version__


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_crafted_pickle_is_refused(trained, tmp_path):
    vae, _ = trained
    folder = vae.save(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / WEIGHTS_NAME).write_bytes(pickle.dumps({"weights": Exploit()}))
    with pytest.raises(ModelFolderError, match="never loads pickled code"):
        sciencevae.load(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: "{not json", "not valid JSON"),
        (lambda c: json.dumps({**c, "format": "other"}), "not a sciencevae model config"),
        (lambda c: json.dumps({**c, "format_version": 99}), "format_version 99"),
        (lambda c: json.dumps({k: v for k, v in c.items() if k != "model"}), "'model' is missing"),
        (lambda c: json.dumps({**c, "model": {**c["model"], "n_latent": -1}}), "n_latent"),
        (lambda c: json.dumps({**c, "model": {**c["model"], "depth": 3}}), "unexpected keyword"),
        (lambda c: json.dumps({**c, "objective": {**c["objective"], "kind": "vae"}}), "objective kind"),
    ],
)
def test_malformed_config_is_named(trained, tmp_path, edit, message):
    vae, _ = trained
    folder = vae.save(tmp_path)
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(edit(config))
    with pytest.raises(ModelFolderError, match=message):
        sciencevae.load(folder)


def test_weights_that_do_not_match_the_config(trained, tmp_path):
    vae, _ = trained
    folder = vae.save(tmp_path)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["model"]["n_latent"] = 5
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="does not match"):
        sciencevae.load(folder)


def test_missing_pieces(tmp_path, trained):
    with pytest.raises(ModelFolderError, match="not a folder"):
        sciencevae.load(tmp_path / "nowhere")
    with pytest.raises(ModelFolderError, match="no config.json"):
        sciencevae.load(tmp_path)
    folder = trained[0].save(tmp_path / "m")
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(ModelFolderError, match="no weights.pt"):
        sciencevae.load(folder)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_weights_file_is_a_plain_state_dict(trained, tmp_path):
    folder = trained[0].save(tmp_path)
    state = torch.load(folder / WEIGHTS_NAME, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_atomic_files_get_ordinary_permissions(tmp_path):
    from sciencevae.io import atomic_write_text

    atomic_write_text("x", tmp_path / "atomic.txt")
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
