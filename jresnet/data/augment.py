"""Data augmentation as pure JAX functions on (B, C, H, W) batches, for the train step to call on device.

Every function is deterministic given its PRNG key, vectorised over the batch (no Python loop over
examples) and safe under `jax.jit`; pass ``padding``, ``crop_padding`` and ``flip`` as static values.
Shapes are checked by jaxtyping + beartype while JAX traces, so a jitted step pays nothing for them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from beartype import beartype
from jax import lax
from jaxtyping import Array, Float32, PRNGKeyArray, Shaped, jaxtyped

__all__ = ["augment", "normalize", "random_crop", "random_flip"]

ImageBatch = Shaped[Array | np.ndarray, "B C H W"]
"""A batch of images in the library's layout, on device or on host; any dtype (uint8 usually)."""
ChannelValues = Sequence[float | Array] | np.ndarray | Array
"""One value per channel, such as a normalisation mean (under jit, a tuple's items may be tracers)."""


@jaxtyped(typechecker=beartype)
def random_crop(key: PRNGKeyArray, images: ImageBatch, padding: int) -> Shaped[Array, "B C H W"]:
    """Zero-pad each image by ``padding`` pixels per side, then crop H×W at a random offset per example.

    Each example's offset is drawn uniformly from ``0 .. 2 * padding`` on each axis; ``padding=0``
    returns the images unchanged. Dtype and shape are kept.

    Raises:
        ValueError: ``padding`` is negative.
    """
    if padding < 0:
        raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
    if padding == 0:
        return jnp.asarray(images)
    return _crop(key, images, padding)


# The kernels are jitted so an eager call compiles one program instead of dispatching (and compiling)
# each primitive; inside a caller's jit they are simply inlined.
@functools.partial(jax.jit, static_argnames="padding")
def _crop(key: Array, images: Array, padding: int) -> Array:
    batch, channels, height, width = images.shape
    padded = jnp.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)

    def crop_one(image: Array, offset: Array) -> Array:
        return lax.dynamic_slice(image, (0, offset[0], offset[1]), (channels, height, width))

    return jax.vmap(crop_one)(padded, offsets)


@jaxtyped(typechecker=beartype)
def random_flip(key: PRNGKeyArray, images: ImageBatch) -> Shaped[Array, "B C H W"]:
    """Mirror each example left-right (along W) with probability 1/2, independently per example."""
    return _flip(key, images)


@jax.jit
def _flip(key: Array, images: Array) -> Array:
    flipped = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flipped[:, None, None, None], images[..., ::-1], images)


def _is_host_data(values: ChannelValues) -> bool:
    """True when ``values`` holds no jax array: only then are its numbers known while tracing."""
    items = values if isinstance(values, Sequence) else [values]
    return not any(isinstance(item, jax.Array) for item in items)


def _per_channel(values: ChannelValues, what: str, channels: int) -> Array:
    array = jnp.asarray(values, dtype=jnp.float32)
    if array.shape != (channels,):
        raise ValueError(
            f"normalize: {what} must hold one value per channel ({channels},), got shape {array.shape}"
        )
    return array


@jaxtyped(typechecker=beartype)
def normalize(images: ImageBatch, mean: ChannelValues, std: ChannelValues) -> Float32[Array, "B C H W"]:
    """Map uint8 pixels to float32 ``(x / 255 - mean) / std`` per channel; mean and std are in [0, 1] units.

    Raises:
        ValueError: ``mean`` or ``std`` does not hold one value per channel, or a host std is not positive.
    """
    images = jnp.asarray(images)
    channels = images.shape[1]
    mean_array = _per_channel(mean, "mean", channels)
    std_array = _per_channel(std, "std", channels)
    if _is_host_data(std) and np.any(np.asarray(std) <= 0):
        raise ValueError(
            f"normalize: std must be positive in every channel, got {tuple(np.asarray(std).tolist())}"
        )
    return _normalize(images, mean_array, std_array)


@jax.jit
def _normalize(images: Array, mean: Array, std: Array) -> Array:
    scaled = images.astype(jnp.float32) / 255.0
    return (scaled - mean[:, None, None]) / std[:, None, None]


@jaxtyped(typechecker=beartype)
def augment(
    key: PRNGKeyArray, images: ImageBatch, *, crop_padding: int, flip: bool
) -> Shaped[Array, "B C H W"]:
    """The standard CIFAR-style augmentation: `random_crop` with ``crop_padding`` (skipped at 0), then
    `random_flip` when ``flip``. Each step gets its own sub-key; dtype and shape are kept."""
    crop_key, flip_key = jax.random.split(key)
    images = jnp.asarray(images)
    if crop_padding:
        images = random_crop(crop_key, images, crop_padding)
    if flip:
        images = random_flip(flip_key, images)
    return images
