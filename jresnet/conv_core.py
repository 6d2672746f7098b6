"""The convolution compute core: how jresnet computes and differentiates its convolutions.

Every core computes `lax.conv_general_dilated` in NHWC with a (C_out, C_in, K, K) kernel, with the same
values and gradients; they differ in which kernels run it. `set_conv_core` picks one:

- **"onednn"**: on CPU, fp32, the forward pass and both gradients are oneDNN's convolutions (PyTorch's CPU
  convolutions) called through XLA's FFI (`jresnet.native`). XLA CPU's own convolution kernels were most
  of a ResNet train step and 1.1-4.5x slower than oneDNN's, per shape, on resnet20's convolutions
  (``experiments/conv_core_levers.py --passes``). One exception: the kernel gradient of a 3x3 (K > 1)
  convolution with >= 128 input channels and an output of at most 8x8 pixels is XLA's ("materialized"),
  which beat oneDNN 3.2 there by up to 1.6x. Everything around the convolutions stays XLA's.
- **"materialized"**: `lax.conv_general_dilated` forward and JAX's input-gradient rule; the kernel
  gradient is JAX's rule applied to *materialised* copies of the activation and of the incoming gradient.
  XLA CPU computes a kernel gradient as a convolution over the batch, which needs x and dy transposed to
  (C, H, W, B), and it fuses those transposes with the elementwise ops that produced x: the BatchNorm,
  ReLU and residual adds of every earlier block, recomputed in a loop that reads each input with a stride
  of a whole image (resnet20, batch 128: 2.2 ms for a plain transpose, 67 ms fused with four blocks;
  ~45% of the fp32 step). A `lax.cond` is a boundary XLA does not fuse across. Its predicate is true for
  every float (finite, infinite or NaN), so the other branch never runs; it exists because XLA folds a
  conditional whose branches are identical. In bf16 the boundary cost more than it saved (0.9x), so bf16
  keeps JAX's rule.
- **"lax"**: plain `lax.conv_general_dilated` and JAX's autodiff, for comparison and as an escape hatch.
- **"auto"** (the default): "onednn" where it applies (CPU, fp32, the kernels built, padding >= 0), else
  "materialized". On GPU and TPU both resolve to JAX's own rules (`lax.platform_dependent`), so a program
  traced for an accelerator holds no CPU custom call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jresnet import native
from jresnet.core_choice import CoreChoice

__all__ = ["conv2d_nhwc", "get_conv_core", "resolved_conv_core", "set_conv_core"]

CORES = ("auto", "onednn", "materialized", "lax")
_choice = CoreChoice("set_conv_core", CORES)

Padding = tuple[tuple[int, int], tuple[int, int]]


def set_conv_core(name: str) -> str:
    """Choose the conv core: "auto" (default), "onednn", "materialized" or "lax"; returns the previous name.

    It takes effect when a function is next traced (jit caches keep what they traced before). "onednn"
    raises if its kernels cannot be loaded on this machine, and says why.
    """
    return _choice.set(name)


def get_conv_core() -> str:
    """The conv core new traces use, as set: "auto", "onednn", "materialized" or "lax"."""
    return _choice.name


def resolved_conv_core(dtype: jnp.dtype | type = jnp.float32) -> str:
    """The core a CPU trace of a convolution in ``dtype`` runs: "onednn", "materialized" or "lax".

    "auto" resolves to "onednn" for fp32 where the kernels load, else to "materialized". Even under
    "onednn", `conv2d_nhwc` sends a convolution with negative padding or an empty dimension (which oneDNN
    rejects) to "materialized".
    """
    if _choice.name == "lax":
        return "lax"
    if _choice.name in ("auto", "onednn") and jnp.dtype(dtype) == jnp.float32 and native.available():
        return "onednn"
    return "materialized"


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


def _kernel_grad(x: jax.Array, w: jax.Array, dy: jax.Array, stride: int, padding: Padding, dilation: int,
                 groups: int) -> jax.Array:
    """JAX's own kernel gradient of `_lax_conv`."""
    return jax.vjp(lambda w_: _lax_conv(x, w_, stride, padding, dilation, groups), w)[1](dy)[0]


def _kernel_grad_materialized(x: jax.Array, w: jax.Array, dy: jax.Array, stride: int, padding: Padding,
                              dilation: int, groups: int) -> jax.Array:
    """JAX's kernel gradient, reading materialised copies of x and dy (see the module doc)."""
    pred = _always(w)
    return _kernel_grad(_materialize(x, pred), w, _materialize(dy, pred), stride, padding, dilation, groups)


def _backward(stride: int, padding: Padding, dilation: int, groups: int, residuals: tuple[jax.Array, jax.Array],
              dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = residuals
    geometry = (stride, padding, dilation, groups)
    (dx,) = jax.vjp(lambda x_: _lax_conv(x_, w, *geometry), x)[1](dy)
    if x.dtype != jnp.float32:  # measured: a bf16 resnet20 step ran 0.9x as fast with the boundary
        return dx, _kernel_grad(x, w, dy, *geometry)
    # Only XLA CPU fuses the transposes badly; GPU and TPU keep JAX's rule.
    dw = lax.platform_dependent(x, dy, cpu=lambda x_, dy_: _kernel_grad_materialized(x_, w, dy_, *geometry),
                                default=lambda x_, dy_: _kernel_grad(x_, w, dy_, *geometry))
    return dx, dw


_conv_materialized.defvjp(_forward, _backward)


def _out_shape(x: jax.Array, w: jax.Array, stride: int, padding: Padding, dilation: int,
               groups: int) -> tuple[int, ...]:
    return jax.eval_shape(lambda: _lax_conv(x, w, stride, padding, dilation, groups)).shape


def _geometry(stride: int, padding: Padding, dilation: int, groups: int) -> dict[str, np.ndarray]:
    """The FFI attributes of onednn_conv.cc: strides, (top, bottom, left, right) padding, dilation, groups."""
    return dict(strides=np.array([stride, stride], np.int64), dilation=np.array([dilation, dilation], np.int64),
                padding=np.array([*padding[0], *padding[1]], np.int64), groups=np.int64(groups))


def _ffi(target: str, shape: tuple[int, ...], operands: tuple[jax.Array, jax.Array], stride: int, padding: Padding,
         dilation: int, groups: int) -> jax.Array:
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method="sequential")
    return call(*operands, **_geometry(stride, padding, dilation, groups))


# oneDNN 3.2's kernel gradient ("jit:avx2") loses to XLA's on small maps with many channels. Measured per
# shape at batch 128 on the 2-core AVX2 VM (`experiments/conv_core_levers.py --passes`), XLA / oneDNN time
# of 3x3 kernel gradients with an 8x8 output or smaller: 0.63 (512 ch, 4x4), 0.74 (256 -> 512), 0.82
# (256 ch, 8x8), 0.92 (128 -> 256); at 16x16 and larger oneDNN wins or ties (0.99 ... 1.90). With 64
# channels at 8x8 (0.92 alone) the resnet20 step came out even (0.985x paired), so that stays with oneDNN;
# resnet18_cifar's step ran 1.074x faster paired with its deep layers on XLA. 1x1 kernel gradients stay
# with oneDNN. (PyTorch's newer oneDNN 3.12 was no faster there: 237 ms for the 512-channel 4x4 kernel
# gradient, XLA 137 ms.)
XLA_KERNEL_GRAD_MAX_OUTPUT_PIXELS = 64
XLA_KERNEL_GRAD_MIN_IN_CHANNELS = 128


def _xla_kernel_grad_is_faster(x_shape: tuple[int, ...], w_shape: tuple[int, ...], dy_shape: tuple[int, ...]) -> bool:
    """Whether XLA's kernel gradient beats oneDNN's for NHWC x and dy and a (C_out, C_in/G, K, K) kernel."""
    kernel_pixels, out_pixels = w_shape[2] * w_shape[3], dy_shape[1] * dy_shape[2]
    return (kernel_pixels > 1 and out_pixels <= XLA_KERNEL_GRAD_MAX_OUTPUT_PIXELS
            and x_shape[-1] >= XLA_KERNEL_GRAD_MIN_IN_CHANNELS)


# The three oneDNN passes, each differentiable in terms of the others (a convolution is bilinear), so that
# gradients of gradients (gradient penalties, meta-learning, Hessian-vector products) work as under lax.
@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_onednn(x: jax.Array, w: jax.Array, stride: int, padding: Padding, dilation: int, groups: int) -> jax.Array:
    shape = _out_shape(x, w, stride, padding, dilation, groups)
    return _ffi("jresnet_conv_forward", shape, (x, w), stride, padding, dilation, groups)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _onednn_input_grad(dy: jax.Array, w: jax.Array, x_shape: tuple[int, ...], stride: int, padding: Padding,
                       dilation: int, groups: int) -> jax.Array:
    return _ffi("jresnet_conv_backward_data", x_shape, (dy, w), stride, padding, dilation, groups)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _onednn_kernel_grad(x: jax.Array, dy: jax.Array, w_shape: tuple[int, ...], stride: int, padding: Padding,
                        dilation: int, groups: int) -> jax.Array:
    return _ffi("jresnet_conv_backward_weights", w_shape, (x, dy), stride, padding, dilation, groups)


def _saving_operands(f: Callable[..., jax.Array]) -> Callable[..., tuple[jax.Array, tuple[jax.Array, jax.Array]]]:
    """The forward rule of a oneDNN pass: the pass itself, with its two array operands as residuals.

    It calls the custom_vjp function, not the raw FFI call, so that differentiating the rule again (a
    gradient of a gradient) goes through the custom rules too.
    """
    return lambda a, b, *static: (f(a, b, *static), (a, b))


def _conv_onednn_backward(stride: int, padding: Padding, dilation: int, groups: int,
                          residuals: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = residuals
    geometry = (stride, padding, dilation, groups)
    dx = _onednn_input_grad(dy, w, x.shape, *geometry)
    if _xla_kernel_grad_is_faster(x.shape, w.shape, dy.shape):
        return dx, _kernel_grad_materialized(x, w, dy, *geometry)
    return dx, _onednn_kernel_grad(x, dy, w.shape, *geometry)


def _input_grad_backward(x_shape: tuple[int, ...], stride: int, padding: Padding, dilation: int, groups: int,
                         residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    # dx = conv_x^T(dy, w) is linear in dy and in w: <dx, g> = <dy, conv(g, w)>.
    dy, w = residuals
    geometry = (stride, padding, dilation, groups)
    return _conv_onednn(g, w, *geometry), _onednn_kernel_grad(g, dy, w.shape, *geometry)


def _kernel_grad_backward(w_shape: tuple[int, ...], stride: int, padding: Padding, dilation: int, groups: int,
                          residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    # dw = conv_w^T(x, dy): <dw, g> = <dy, conv(x, g)>.
    x, dy = residuals
    geometry = (stride, padding, dilation, groups)
    return _onednn_input_grad(dy, g, x.shape, *geometry), _conv_onednn(x, g, *geometry)


_onednn_input_grad.defvjp(_saving_operands(_onednn_input_grad), _input_grad_backward)
_onednn_kernel_grad.defvjp(_saving_operands(_onednn_kernel_grad), _kernel_grad_backward)
_conv_onednn.defvjp(_saving_operands(_conv_onednn), _conv_onednn_backward)


def conv2d_nhwc(x: jax.Array, w: jax.Array, *, stride: int, padding: Sequence[tuple[int, int]], dilation: int = 1,
                groups: int = 1) -> jax.Array:
    """A 2-D convolution of (B, H, W, C_in) images with a (C_out, C_in // groups, K, K) kernel, in NHWC.

    Same values and gradients as ``lax.conv_general_dilated`` with dimension numbers
    ("NHWC", "OIHW", "NHWC"); the conv core (`set_conv_core`) decides which kernels compute them.
    """
    pads = (tuple(padding[0]), tuple(padding[1]))
    core = resolved_conv_core(jnp.result_type(x, w))
    if core == "lax":
        return _lax_conv(x, w, stride, pads, dilation, groups)
    empty = 0 in (*x.shape, *w.shape, *_out_shape(x, w, stride, pads, dilation, groups))
    onednn_can = min(min(pair) for pair in pads) >= 0 and not empty
    if core == "onednn" and onednn_can and x.dtype == w.dtype:
        return lax.platform_dependent(
            x, w, cpu=lambda x_, w_: _conv_onednn(x_, w_, stride, pads, dilation, groups),
            default=lambda x_, w_: _conv_materialized(x_, w_, stride, pads, dilation, groups))
    return _conv_materialized(x, w, stride, pads, dilation, groups)
