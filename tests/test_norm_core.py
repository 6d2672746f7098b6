"""jresnet.norm_core: batch norm in training mode equals the plain formula, values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from jresnet.layers import BatchNorm2d
from jresnet.norm_core import batch_norm_train, batch_stats


def _plain(x: jax.Array, weight: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """What BatchNorm2d computed before norm_core, differentiated by JAX itself."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    scale = weight * lax.rsqrt(var + eps)
    return x * scale + (bias - mean * scale)


@settings(deadline=None, max_examples=25, derandomize=True)
@given(b=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 5),
       offset=st.floats(-20, 20), spread=st.floats(0.1, 10), seed=st.integers(0, 2**16))
def test_values_and_gradients_match_autodiff_of_the_formula(b, h, w, c, offset, spread, seed):
    rng = np.random.default_rng(seed)
    if b * h * w < 4:  # with 1-3 values per channel the gradient is ~0 and relative error meaningless
        return
    x = jnp.asarray(rng.standard_normal((b, h, w, c)) * spread + offset, jnp.float32)
    weight = jnp.asarray(rng.standard_normal(c), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(c), jnp.float32)
    r = jnp.asarray(rng.standard_normal((b, h, w, c)), jnp.float32)

    def loss(norm):
        return jax.jit(jax.value_and_grad(lambda x, wt, bs: jnp.sum(jnp.sin(norm(x, wt, bs, 1e-5)) * r), (0, 1, 2)))

    (v_ref, g_ref), (v, g) = loss(_plain)(x, weight, bias), loss(batch_norm_train)(x, weight, bias)
    ours, plain = batch_norm_train(x, weight, bias, 1e-5), _plain(x, weight, bias, 1e-5)
    assert np.array_equal(np.asarray(ours), np.asarray(plain))
    np.testing.assert_allclose(v, v_ref, rtol=1e-6, atol=1e-6)
    for name, ours, ref in zip(("x", "weight", "bias"), g, g_ref, strict=True):
        scale = float(jnp.max(jnp.abs(ref))) or 1.0
        err = float(jnp.max(jnp.abs(ours - ref))) / scale
        assert err < 2e-4, f"d{name}: relative error {err:.2e}"


def test_batch_stats_are_the_biased_two_pass_statistics():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 5, 2)) + 100.0, jnp.float32)
    mean, var = batch_stats(x)
    flat = np.asarray(x, np.float64).reshape(-1, 2)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, flat.var(0), rtol=1e-4)  # two passes: no cancellation at mean 100


def test_the_layer_trains_through_norm_core_and_updates_running_stats_once():
    bn = BatchNorm2d(3, momentum=0.5)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3, 5, 5)) * 2 + 3, jnp.float32)
    y = bn(x)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 2, 3)), 1.0, atol=1e-3)
    flat = np.asarray(x, np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(bn.running_mean[...], 0.5 * flat.mean(1), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var[...], 0.5 + 0.5 * flat.var(1, ddof=1), rtol=1e-4)
    # training mode goes through norm_core, eval mode does not
    assert "custom_vjp_call" in str(jax.make_jaxpr(lambda v: BatchNorm2d(3)(v))(x))
    frozen = BatchNorm2d(3, use_running_average=True)
    assert "custom_vjp_call" not in str(jax.make_jaxpr(lambda v: frozen(v))(x))
