"""Augmentation: pure, deterministic per key, vectorised, jit-safe, and semantically what it says."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jresnet.data import augment, normalize, random_crop, random_flip

BATCH_SHAPE = (32, 3, 8, 8)


@pytest.fixture
def images() -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).integers(1, 256, BATCH_SHAPE, dtype=np.uint8))


def padded_windows(image: np.ndarray, padding: int) -> list[np.ndarray]:
    """Every H×W window of the zero-padded image (C, H, W), computed with numpy."""
    _, height, width = image.shape
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    return [
        padded[:, top : top + height, left : left + width]
        for top in range(2 * padding + 1)
        for left in range(2 * padding + 1)
    ]


def test_crop_keeps_shape_and_dtype_and_each_output_is_a_window_of_the_padded_input(
    images: jax.Array,
) -> None:
    cropped = random_crop(jax.random.key(0), images, 2)
    assert cropped.shape == BATCH_SHAPE and cropped.dtype == jnp.uint8
    host_images, host_cropped = np.asarray(images), np.asarray(cropped)
    window_index = []
    for image, crop in zip(host_images, host_cropped, strict=True):
        matches = [i for i, window in enumerate(padded_windows(image, 2)) if np.array_equal(window, crop)]
        assert matches, "a crop that is no window of the padded image"
        window_index.append(matches[0])
    assert len(set(window_index)) > 5  # offsets are drawn per example, not once per batch


def test_crop_with_zero_padding_is_the_identity(images: jax.Array) -> None:
    assert np.array_equal(random_crop(jax.random.key(3), images, 0), images)


def test_crop_refuses_negative_padding(images: jax.Array) -> None:
    with pytest.raises(ValueError, match="padding must be >= 0, got -1"):
        random_crop(jax.random.key(0), images, -1)


def test_flip_mirrors_some_examples_left_right_and_keeps_the_others(images: jax.Array) -> None:
    flipped = np.asarray(random_flip(jax.random.key(1), images))
    assert flipped.dtype == np.uint8 and flipped.shape == BATCH_SHAPE
    host = np.asarray(images)
    mirrored = [
        bool(np.array_equal(out, np.flip(src, axis=-1))) for src, out in zip(host, flipped, strict=True)
    ]
    kept = [bool(np.array_equal(out, src)) for src, out in zip(host, flipped, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 4 <= sum(mirrored) <= 28  # about half of 32


def test_flip_twice_with_the_same_key_is_the_identity(images: jax.Array) -> None:
    key = jax.random.key(9)
    assert np.array_equal(random_flip(key, random_flip(key, images)), images)


@pytest.mark.parametrize("operation", ["crop", "flip", "augment"])
def test_same_key_same_result_other_key_other_result(images: jax.Array, operation: str) -> None:
    apply = {
        "crop": lambda key: random_crop(key, images, 4),
        "flip": lambda key: random_flip(key, images),
        "augment": lambda key: augment(key, images, crop_padding=4, flip=True),
    }[operation]
    assert np.array_equal(apply(jax.random.key(5)), apply(jax.random.key(5)))
    assert not np.array_equal(apply(jax.random.key(5)), apply(jax.random.key(6)))


def test_augment_without_crop_or_flip_is_the_identity(images: jax.Array) -> None:
    out = augment(jax.random.key(0), images, crop_padding=0, flip=False)
    assert np.array_equal(out, images) and out.dtype == jnp.uint8


def test_under_jit_the_results_equal_the_eager_ones(images: jax.Array) -> None:
    key = jax.random.key(2)
    jitted = jax.jit(augment, static_argnames=("crop_padding", "flip"))
    out = jitted(key, images, crop_padding=4, flip=True)
    assert out.dtype == jnp.uint8 and out.shape == BATCH_SHAPE
    assert np.array_equal(out, augment(key, images, crop_padding=4, flip=True))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    assert np.allclose(jax.jit(normalize)(images, mean, std), normalize(images, mean, std), atol=1e-6)


def test_work_does_not_grow_with_the_batch_so_there_is_no_loop_over_examples() -> None:
    def equations(batch: int) -> int:
        batch_images = jnp.zeros((batch, 3, 8, 8), jnp.uint8)
        traced = jax.make_jaxpr(lambda key, x: augment(key, x, crop_padding=4, flip=True))
        return len(traced(jax.random.key(0), batch_images).jaxpr.eqns)

    assert equations(2) == equations(64)


def test_accepts_host_numpy_batches(images: jax.Array) -> None:
    host = np.asarray(images)
    assert np.array_equal(
        augment(jax.random.key(1), host, crop_padding=2, flip=True),
        augment(jax.random.key(1), images, crop_padding=2, flip=True),
    )


def test_normalize_maps_pixels_by_hand() -> None:
    pixels = jnp.asarray(np.array([0, 51, 255], np.uint8).reshape(1, 1, 1, 3))
    out = normalize(pixels, (0.2,), (0.4,))
    assert out.dtype == jnp.float32
    assert np.allclose(out.ravel(), [-0.5, 0.0, 2.0], atol=1e-6)  # (0 - .2)/.4, (.2 - .2)/.4, (1 - .2)/.4


def test_normalize_is_per_channel(images: jax.Array) -> None:
    out = normalize(images, (0.0, 0.5, 1.0), (1.0, 0.5, 0.25))
    expected = (np.asarray(images, np.float32) / 255 - np.array([0, 0.5, 1])[:, None, None]) / np.array(
        [1, 0.5, 0.25]
    )[:, None, None]
    assert np.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("mean", "std", "words"),
    [
        ((0.5,), (0.5, 0.5, 0.5), "mean must hold one value per channel (3,), got shape (1,)"),
        ((0.5, 0.5, 0.5), (0.5, 0.0, 0.5), "std must be positive"),
    ],
)
def test_normalize_refuses_stats_that_do_not_fit(
    images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...], words: str
) -> None:
    with pytest.raises(ValueError) as raised:
        normalize(images, mean, std)
    assert words in str(raised.value)


def test_a_batch_of_the_wrong_rank_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="images"):
        random_flip(jax.random.key(0), jnp.zeros((3, 8, 8), jnp.uint8))
