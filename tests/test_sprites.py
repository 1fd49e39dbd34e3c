"""The procedural dSprites-like data and the conv networks that model it."""

import numpy as np
import pytest

from sciencevae import BetaVAE
from sciencevae.datasets import Sprites


def centre_of_mass(image):
    rows, cols = np.nonzero(image.reshape(64, 64))
    return rows.mean(), cols.mean()


def test_factors_move_the_sprite_the_way_they_say():
    sprites = Sprites()
    base = np.array([0, 3, 0, 16, 16])
    images = sprites.render(np.array([base, base + [0, 0, 0, 10, 0], base + [0, 0, 0, 0, 10],
                                      base + [0, 2, 0, 0, 0], base + [1, 0, 0, 0, 0], base + [0, 0, 5, 0, 0]]))
    (r0, c0), (r1, c1), (r2, c2) = (centre_of_mass(i) for i in images[:3])
    assert c1 > c0 + 5 and abs(r1 - r0) < 1  # x moves columns
    assert r2 > r0 + 5 and abs(c2 - c0) < 1  # y moves rows
    assert images[3].sum() > 1.3 * images[0].sum()  # larger scale, larger area
    assert not np.array_equal(images[4], images[0])  # another shape
    assert not np.array_equal(images[5], images[0])  # rotated (45° for a square)
    assert set(np.unique(images)) == {0.0, 1.0}


def test_sampler_covers_every_factor_value_and_is_seeded():
    sprites = Sprites()
    factors = sprites.sample_factors(20_000, np.random.default_rng(0))
    for column, size in enumerate(sprites.factor_sizes):
        assert set(np.unique(factors[:, column])) == set(range(size))
    a, fa = sprites.dataset(50, seed=3)
    b, fb = sprites.dataset(50, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fa, fb)


def test_conv_vae_trains_on_sprites():
    sprites = Sprites()
    X, _ = sprites.dataset(256, seed=0)
    vae = BetaVAE(4096, n_latent=4, likelihood="bernoulli", encoder="conv", decoder="conv",
                  image_shape=(1, 64, 64), hidden=(64,), conv_channels=8)
    history = vae.fit(X, epochs=8, batch_size=32, lr=2e-3, validation=0.0, progress=False)
    assert history["loss"].iloc[-1] < 0.5 * history["loss"].iloc[0]
    assert vae.encode(X).shape == (256, 4)
    assert vae.reconstruct(X[:2]).shape == (2, 4096)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(encoder="conv"), "image_shape"),
        (dict(decoder="conv", image_shape=(1, 32, 32)), "n_features"),
        (dict(encoder="conv", image_shape=(1, 60, 60), n_features=3600), "divisible by 16"),
    ],
)
def test_conv_configuration_errors(kwargs, message):
    settings = dict(n_features=4096, n_latent=2, hidden=(8,))
    with pytest.raises(ValueError, match=message):
        BetaVAE(**{**settings, **kwargs})
