"""The convolution compute core: `lax.conv_general_dilated` with a backward pass that XLA CPU runs well.

Forward, this is exactly `lax.conv_general_dilated` in NHWC with a (C_out, C_in, K, K) kernel. The
backward computes the same two gradients as JAX's own rule (the input gradient is JAX's rule itself),
but it hands the kernel gradient *materialised* copies of the activation and of the incoming gradient.

Why: XLA CPU computes a kernel gradient as a convolution over the batch, which needs x and dy transposed
to (C, H, W, B). XLA fuses those transposes with the elementwise ops that produced x: the BatchNorm,
ReLU and residual adds of every earlier block, recomputed in a loop that reads each input with a stride
of a whole image. Measured on resnet20 at batch 128 (2-core Zen 4, ``experiments/conv_core_levers.py``),
a transpose of a (128, 32, 32, 16) activation takes 2.2 ms on its own and 67 ms fused with a chain of
four residual blocks; those fused transposes were ~45% of the fp32 train step. A `lax.cond` is a
boundary XLA does not fuse across, so the transposes read one buffer each, and the fp32 step runs 1.27x
faster. Its predicate is true for every float (finite, infinite or NaN), so the other branch never runs;
it exists because XLA folds a conditional whose branches are identical. In bf16 the boundary cost more
than it saved (0.9x), so bf16 and other dtypes keep JAX's rule, as do GPU and TPU.

`set_conv_core("lax")` switches back to plain `lax.conv_general_dilated` and JAX's autodiff, for
comparison and as an escape hatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv2d_nhwc", "get_conv_core", "set_conv_core"]

CORES = ("materialized", "lax")
_core = "materialized"

Padding = tuple[tuple[int, int], tuple[int, int]]


def set_conv_core(name: str) -> str:
    """Choose how convolutions are differentiated: "materialized" (default) or "lax"; returns the old one.

    It takes effect when a function is next traced (jit caches keep what they traced before).
    """
    global _core
    if name not in CORES:
        raise ValueError(f"set_conv_core: name must be one of {CORES}; got {name!r}")
    previous, _core = _core, name
    return previous


def get_conv_core() -> str:
    """The conv core new traces use: "materialized" or "lax"."""
    return _core


def _lax_conv(x: jax.Array, w: jax.Array, stride: int, padding: Padding, dilation: int, groups: int) -> jax.Array:
    return lax.conv_general_dilated(
        x, w, window_strides=(stride, stride), padding=padding, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "OIHW", "NHWC"), feature_group_count=groups)


def _always(w: jax.Array) -> jax.Array:
    """A predicate XLA cannot fold that is true for every float value, NaN and infinities included.

    It reads the kernel, which data-parallel training replicates, so no device waits for another's batch.
    """
    probe = w.reshape(-1)[0]
    return jnp.isfinite(probe) | jnp.isnan(probe) | jnp.isinf(probe)


def _materialize(v: jax.Array, pred: jax.Array) -> jax.Array:
    """v itself, in a buffer of its own: XLA does not fuse the ops that computed v into v's users."""
    return lax.cond(pred, lambda u: u, jnp.zeros_like, v)  # the zeros branch is never taken


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_materialized(x: jax.Array, w: jax.Array, stride: int, padding: Padding, dilation: int,
                       groups: int) -> jax.Array:
    return _lax_conv(x, w, stride, padding, dilation, groups)


def _forward(x: jax.Array, w: jax.Array, stride: int, padding: Padding, dilation: int,
             groups: int) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _lax_conv(x, w, stride, padding, dilation, groups), (x, w)


def _backward(stride: int, padding: Padding, dilation: int, groups: int, residuals: tuple[jax.Array, jax.Array],
              dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = residuals

    def conv(x_: jax.Array, w_: jax.Array) -> jax.Array:
        return _lax_conv(x_, w_, stride, padding, dilation, groups)

    (dx,) = jax.vjp(lambda x_: conv(x_, w), x)[1](dy)

    def kernel_grad(x_: jax.Array, dy_: jax.Array) -> jax.Array:
        return jax.vjp(lambda w_: conv(x_, w_), w)[1](dy_)[0]

    def kernel_grad_materialized(x_: jax.Array, dy_: jax.Array) -> jax.Array:
        pred = _always(w)
        return kernel_grad(_materialize(x_, pred), _materialize(dy_, pred))

    if x.dtype != jnp.float32:  # measured: a bf16 resnet20 step ran 0.9x as fast with the boundary
        return dx, kernel_grad(x, dy)
    # Only XLA CPU fuses the transposes badly; GPU and TPU keep JAX's rule.
    dw = lax.platform_dependent(x, dy, cpu=kernel_grad_materialized, default=kernel_grad)
    return dx, dw


_conv_materialized.defvjp(_forward, _backward)


def conv2d_nhwc(x: jax.Array, w: jax.Array, *, stride: int, padding: Sequence[tuple[int, int]], dilation: int = 1,
                groups: int = 1) -> jax.Array:
    """A 2-D convolution of (B, H, W, C_in) images with a (C_out, C_in // groups, K, K) kernel, in NHWC.

    Same values and gradients as ``lax.conv_general_dilated`` with dimension numbers
    ("NHWC", "OIHW", "NHWC"); only how XLA schedules the kernel gradient differs (see the module doc).
    """
    pads = (tuple(padding[0]), tuple(padding[1]))
    if _core == "lax":
        return _lax_conv(x, w, stride, pads, dilation, groups)
    return _conv_materialized(x, w, stride, pads, dilation, groups)
