"""Batch normalisation in training mode, with a hand-written backward pass.

JAX differentiates ``(x - mean) * rsqrt(var + eps) * weight + bias`` through the mean and through the
variance separately, which XLA turns into more passes over the activation than the textbook gradient
needs. The textbook gradient, with x̂ = (x - mean) / sqrt(var + eps) over N = B·H·W values per channel:

    dbias = Σ dy,  dweight = Σ dy·x̂,  dx = weight / sqrt(var + eps) · (dy - dbias/N - x̂·dweight/N)

two reductions and one elementwise pass. The forward is the same two-pass mean and (biased) variance
as before, so values are unchanged; `batch_stats` returns the same statistics for the running averages,
and XLA computes them once (common-subexpression elimination merges the identical reductions).

On CPU the backward reads x - mean, which the forward's variance pass writes anyway, rather than x:
Σ dy·x̂ = rsqrt(var + eps)·Σ dy·(x - mean). XLA CPU's library reductions cannot fuse a per-channel
broadcast, so the x-based form first wrote x̂ to memory (resnet20's step 1.02x faster without it).

**The norm core.** `batch_norm_train_with_stats` is what `BatchNorm2d` calls in training; it can also
apply the ReLU that follows the norm. `set_norm_core` picks who computes it on CPU:

- **"onednn"**: oneDNN's batch-normalisation primitive (PyTorch's CPU BatchNorm) through XLA's FFI
  (`jresnet.native`), with the ReLU fused into its passes: the statistics, the normalisation, the ReLU and
  the backward each in oneDNN's own loops, where XLA CPU writes x - mean, x̂ and the ReLU's mask between
  its library reductions. It won only at few channels (resnet20's fp32 train step: 1.04x; see the
  README's lever table), so "auto" keeps XLA's for norms of more than `ONEDNN_MAX_CHANNELS` channels.
  Values equal the formula's to float rounding (oneDNN sums in its own order), not bit for bit.
- **"xla"**: the formula above, compiled by XLA, on every backend.
- **"auto"** (the default): "onednn" where it applies and wins (CPU, float32, the kernels built, at most
  `ONEDNN_MAX_CHANNELS` channels), else "xla"; "onednn" set explicitly takes every float32 norm. On
  GPU and TPU it is always XLA's (`lax.platform_dependent`), so a program traced for an accelerator holds
  no CPU custom call.

Gradients of gradients work on both: the oneDNN backward is itself differentiable, by autodiff of the
formula (gradient penalties; Hessian-vector products as the gradient of a gradient-vector product). Like
every custom_vjp, neither core has forward-mode derivatives (`jax.jvp`, `jax.hessian`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jresnet import native
from jresnet.core_choice import CoreChoice

__all__ = ["batch_norm_train", "batch_norm_train_with_stats", "batch_stats", "get_norm_core", "normalize",
           "resolved_norm_core", "set_norm_core"]

CORES = ("auto", "onednn", "xla")
_choice = CoreChoice("set_norm_core", CORES)

_AXES = (0, 1, 2)  # B, H, W of an NHWC activation


def batch_stats(x32: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance of an NHWC float32 activation, in two passes."""
    mean = jnp.mean(x32, axis=_AXES)
    var = jnp.mean(jnp.square(x32 - mean), axis=_AXES)
    return mean, var


def normalize(x32: jax.Array, mean: jax.Array, var: jax.Array, weight: jax.Array, bias: jax.Array,
              eps: float | jax.Array) -> jax.Array:
    """(x - mean) / sqrt(var + eps) * weight + bias per channel, as one scale and one shift of x."""
    scale = weight * lax.rsqrt(var + eps)
    return x32 * scale + (bias - mean * scale)


@jax.custom_vjp
def _batch_norm(x32: jax.Array, weight: jax.Array, bias: jax.Array, eps: jax.Array) -> jax.Array:
    return normalize(x32, *batch_stats(x32), weight, bias, eps)


def _forward(x32: jax.Array, weight: jax.Array, bias: jax.Array,
             eps: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    mean, var = batch_stats(x32)
    # On CPU, x - mean is the buffer the variance pass already reads; saving it (instead of x) lets the
    # backward reduce dy * (x - mean) without a per-channel broadcast inside the reduction, which XLA CPU's
    # library reductions cannot fuse: it would write x̂ to memory first (resnet20: 19 passes of up to 8 MB a
    # step). GPUs and TPUs fuse the broadcast, and there x itself (the conv's output) costs no extra buffer.
    saved = lax.platform_dependent(x32, mean, cpu=lambda x, m: x - m, default=lambda x, m: x)
    return normalize(x32, mean, var, weight, bias, eps), (saved, mean, var, weight, eps)


def _backward(residuals: tuple[jax.Array, ...], dy: jax.Array) -> tuple[jax.Array, ...]:
    saved, mean, var, weight, eps = residuals
    centered = lax.platform_dependent(saved, mean, cpu=lambda s, m: s, default=lambda s, m: s - m)
    n = centered.shape[0] * centered.shape[1] * centered.shape[2]
    inv = lax.rsqrt(var + eps)
    dbias = jnp.sum(dy, axis=_AXES)
    dweight = jnp.sum(dy * centered, axis=_AXES) * inv  # Σ dy·x̂, with x̂ = (x - mean)·inv per channel
    dx = (weight * inv) * (dy - (dbias + centered * (inv * dweight)) / n)
    return dx, dweight, dbias, jnp.zeros_like(eps)


_batch_norm.defvjp(_forward, _backward)


def batch_norm_train(x32: jax.Array, weight: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """Normalise an NHWC float32 activation with its own batch statistics, then scale by weight and add bias.

    Values equal the plain formula's; gradients equal JAX's autodiff of it, in fewer passes.
    """
    return _batch_norm(x32, weight, bias, jnp.asarray(eps, jnp.float32))


def set_norm_core(name: str) -> str:
    """Choose the norm core: "auto" (default), "onednn" or "xla"; returns the previous name.

    It takes effect when a function is next traced (jit caches keep what they traced before). "onednn"
    raises if its kernels cannot be loaded on this machine, and says why.
    """
    return _choice.set(name)


def get_norm_core() -> str:
    """The norm core new traces use, as set: "auto", "onednn" or "xla"."""
    return _choice.name


def resolved_norm_core(dtype: jnp.dtype | type = jnp.float32) -> str:
    """The core a CPU trace of a training-mode batch norm of a ``dtype`` activation runs: "onednn" or "xla".

    Under "auto", a "onednn" norm of more than `ONEDNN_MAX_CHANNELS` channels still runs XLA's."""
    if _choice.name != "xla" and jnp.dtype(dtype) == jnp.float32 and native.available():
        return "onednn"
    return "xla"


def _formula(x32: jax.Array, weight: jax.Array, bias: jax.Array, eps: float, relu: bool) -> jax.Array:
    """The batch norm (and ReLU) as JAX differentiates it: the reference every order of oneDNN's gradient follows."""
    y = normalize(x32, *batch_stats(x32), weight, bias, eps)
    return jax.nn.relu(y) if relu else y


def _workspace_bytes(shape: tuple[int, ...], eps: float, relu: bool) -> int:
    # XLA has no zero-sized custom-call buffers to spare; without the ReLU the workspace is unused.
    return max(native.batch_norm_plan(shape, eps, relu).workspace_bytes, 1) if relu else 1


def _f32(shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _onednn_forward(x32: jax.Array, weight: jax.Array, bias: jax.Array, eps: float,
                    relu: bool) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """oneDNN's forward: (y, mean, biased variance, the ReLU's workspace)."""
    c = x32.shape[-1]
    workspace = jax.ShapeDtypeStruct((_workspace_bytes(x32.shape, eps, relu),), jnp.uint8)
    call = jax.ffi.ffi_call("jresnet_batch_norm_forward", (_f32(x32.shape), _f32((c,)), _f32((c,)), workspace),
                            vmap_method="sequential")
    return tuple(call(x32, weight, bias, eps=np.float32(eps), relu=relu))


@partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _onednn_grads(x32: jax.Array, dy: jax.Array, mean: jax.Array, var: jax.Array, weight: jax.Array,
                  bias: jax.Array, workspace: jax.Array, eps: float, relu: bool) -> tuple[jax.Array, ...]:
    """oneDNN's backward: (dx, dweight, dbias). ``bias`` is only for the reference that differentiates it."""
    c = x32.shape[-1]
    call = jax.ffi.ffi_call("jresnet_batch_norm_backward", (_f32(x32.shape), _f32((c,)), _f32((c,))),
                            vmap_method="sequential")
    return tuple(call(x32, dy, mean, var, weight, workspace, eps=np.float32(eps), relu=relu))


def _onednn_forward_rule(x32: jax.Array, weight: jax.Array, bias: jax.Array, eps: float,
                         relu: bool) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    # Calls the custom_vjp function itself, so that differentiating this rule again uses the rules too.
    out = _onednn_forward(x32, weight, bias, eps, relu)
    return out, (x32, weight, bias, out[1], out[2], out[3])


def _onednn_forward_backward(eps: float, relu: bool, residuals: tuple[jax.Array, ...],
                             cotangents: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    # Only y's cotangent counts: the statistics leave `batch_norm_train_with_stats` under stop_gradient and
    # otherwise feed only `_onednn_grads`, whose rule gives them none; the workspace is integers.
    x32, weight, bias, mean, var, workspace = residuals
    return _onednn_grads(x32, cotangents[0], mean, var, weight, bias, workspace, eps, relu)


def _onednn_grads_rule(x32: jax.Array, dy: jax.Array, mean: jax.Array, var: jax.Array, weight: jax.Array,
                       bias: jax.Array, workspace: jax.Array, eps: float,
                       relu: bool) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    out = _onednn_grads(x32, dy, mean, var, weight, bias, workspace, eps, relu)
    return out, (x32, dy, weight, bias)


def _onednn_grads_backward(eps: float, relu: bool, residuals: tuple[jax.Array, ...],
                           cotangents: tuple[jax.Array, ...]) -> tuple[jax.Array | None, ...]:
    # The gradient of the gradient, by autodiff of the formula's VJP. The formula recomputes the statistics
    # from x, so its x-derivative already holds their dependence on x; the mean and variance operands (equal
    # to those statistics) then get no cotangent of their own, and the ReLU mask is piecewise constant.
    x32, dy, weight, bias = residuals

    def grads(x_: jax.Array, dy_: jax.Array, w_: jax.Array, b_: jax.Array) -> tuple[jax.Array, ...]:
        return jax.vjp(lambda a, b, c: _formula(a, b, c, eps, relu), x_, w_, b_)[1](dy_)

    dx, ddy, dweight, dbias = jax.vjp(grads, x32, dy, weight, bias)[1](tuple(cotangents))
    return dx, ddy, None, None, dweight, dbias, None


_onednn_forward.defvjp(_onednn_forward_rule, _onednn_forward_backward)
_onednn_grads.defvjp(_onednn_grads_rule, _onednn_grads_backward)


# oneDNN 3.2's batch norm beats XLA's in the train step only at few channels. Measured on the 2-core AVX2 VM,
# batch 128, paired in one process (`experiments/norm_core_ab.py`): resnet20's step ran 1.043x faster with
# every norm on oneDNN and 1.040x with those of <= 32 channels only (its 64-channel stage gains nothing);
# resnet18_cifar's (64-512 channels) ran 0.916x with every norm on oneDNN and 0.976x with the ReLU-fused
# ones only. Alone, a norm's forward + backward at 64+ channels ran 0.67-0.80x XLA's speed without the ReLU.
ONEDNN_MAX_CHANNELS = 32


def _onednn_is_faster(shape: tuple[int, ...]) -> bool:
    """Whether oneDNN's norm beats XLA's for an NHWC activation of ``shape``.

    With or without the ReLU alike: in the step, ReLU-fused norms of 64+ channels lost too (see above).
    """
    return shape[-1] <= ONEDNN_MAX_CHANNELS


def _xla_with_stats(x32: jax.Array, weight: jax.Array, bias: jax.Array, eps: float,
                    relu: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    # The statistics twice, once for the running averages and once differentiably: XLA computes them once.
    y = batch_norm_train(x32, weight, bias, eps)
    return (jax.nn.relu(y) if relu else y), *batch_stats(lax.stop_gradient(x32))


def batch_norm_train_with_stats(x: jax.Array, weight: jax.Array, bias: jax.Array, eps: float, *,
                                relu: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch norm of an NHWC activation, optionally followed by a ReLU: (y, mean, var), float32.

    It computes in float32 whatever x's dtype; the norm core (`set_norm_core`) decides which kernels, by x's
    own dtype (oneDNN's norm is float32-only, so a bf16 model keeps XLA's). mean and var are the batch's
    per-channel mean and biased variance, for the running averages; no gradient flows through them (y's
    gradient already accounts for them).
    """
    x32 = x.astype(jnp.float32)
    weight, bias = weight.astype(jnp.float32), bias.astype(jnp.float32)
    skip = _choice.name == "auto" and not _onednn_is_faster(x.shape)  # "onednn" set explicitly takes every shape
    if resolved_norm_core(x.dtype) == "xla" or 0 in x.shape or skip:
        return _xla_with_stats(x32, weight, bias, eps, relu)

    def onednn(x_: jax.Array, w_: jax.Array, b_: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        y, mean, var, _ = _onednn_forward(x_, w_, b_, eps, relu)
        return y, lax.stop_gradient(mean), lax.stop_gradient(var)

    return lax.platform_dependent(x32, weight, bias, cpu=onednn,
                                  default=lambda x_, w_, b_: _xla_with_stats(x_, w_, b_, eps, relu))
