"""jresnet.norm_core: batch norm in training mode equals the plain formula, values and gradients, on every core."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from jresnet import native
from jresnet.layers import BatchNorm2d
from jresnet.norm_core import (
    ONEDNN_MAX_CHANNELS,
    batch_norm_train,
    batch_norm_train_with_stats,
    batch_stats,
    get_norm_core,
    resolved_norm_core,
    set_norm_core,
)

needs_onednn = pytest.mark.skipif(not native.available(), reason=f"oneDNN kernels: {native.unavailable_reason()}")
on_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the oneDNN norm core is CPU-only")
CORES = ["xla", pytest.param("onednn", marks=[needs_onednn, on_cpu])]


@contextmanager
def norm_core_set_to(name: str) -> Iterator[None]:
    previous = set_norm_core(name)
    try:
        yield
    finally:
        set_norm_core(previous)


def _relative_error(got: jax.Array, want: jax.Array) -> float:
    return float(jnp.max(jnp.abs(got - want))) / (float(jnp.max(jnp.abs(want))) or 1.0)


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


def _formula(x, weight, bias, eps, relu):
    y = _plain(x, weight, bias, eps)
    return jax.nn.relu(y) if relu else y


@pytest.mark.parametrize("core", CORES)
@settings(deadline=None, max_examples=20, derandomize=True)
@given(b=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 20),
       offset=st.floats(-20, 20), spread=st.floats(0.1, 10), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_each_core_matches_the_formula_with_and_without_relu(core, b, h, w, c, offset, spread, relu, seed):
    if b * h * w < 4:  # with 1-3 values per channel the gradient is ~0 and relative error meaningless
        return
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((b, h, w, c)) * spread + offset, jnp.float32)
    weight, bias = (jnp.asarray(rng.standard_normal(c), jnp.float32) for _ in range(2))
    r = jnp.asarray(rng.standard_normal((b, h, w, c)), jnp.float32)

    def grads(norm):
        return jax.grad(lambda *a: jnp.sum(jnp.sin(norm(*a)[0]) * r), (0, 1, 2))

    ours = lambda *a: batch_norm_train_with_stats(*a, 1e-5, relu=relu)  # noqa: E731
    formula = lambda *a: (_formula(*a, 1e-5, relu),)  # noqa: E731
    with norm_core_set_to(core):
        assert resolved_norm_core() == core
        both = jax.jit(lambda *a: (ours(*a), grads(ours)(*a), formula(*a)[0], grads(formula)(*a)))  # one compile
        # the core really computes it (not a fallback): oneDNN's custom call is in the program or absent
        assert ("jresnet_batch_norm_forward" in both.lower(x, weight, bias).as_text()) == (core == "onednn")
        (y, mean, var), got, want_y, want = both(x, weight, bias)
    flat = np.asarray(x, np.float64).reshape(-1, c)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-5, atol=1e-5 * spread)
    np.testing.assert_allclose(var, flat.var(0), rtol=1e-4, atol=1e-6)
    assert _relative_error(y, want_y) < 1e-5
    for name, g, ref in zip(("x", "weight", "bias"), got, want, strict=True):
        assert _relative_error(g, ref) < 2e-4, f"{core} d{name}"


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("relu", [False, True])
def test_gradients_of_gradients_match_the_formulas(core: str, relu: bool) -> None:
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((4, 5, 6, 8)) * 3 + 2, jnp.float32)
    weight, bias = (jnp.asarray(rng.standard_normal(8), jnp.float32) for _ in range(2))
    r = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def grad_norm(norm):  # a gradient penalty: the gradient's squared norm, differentiated again
        def penalty(*a):
            grads = jax.grad(lambda *b: jnp.sum(jnp.sin(norm(*b)) * r), (0, 1, 2))(*a)
            return sum(jnp.sum(jnp.square(g)) for g in grads)
        return jax.grad(penalty, (0, 1, 2))

    with norm_core_set_to(core):
        got = jax.jit(grad_norm(lambda *a: batch_norm_train_with_stats(*a, 1e-5, relu=relu)[0]))(x, weight, bias)
    want = grad_norm(lambda *a: _formula(*a, 1e-5, relu))(x, weight, bias)
    for name, g, ref in zip(("x", "weight", "bias"), got, want, strict=True):
        assert _relative_error(g, ref) < 1e-4, f"d{name}"


@pytest.mark.parametrize("core", CORES)
def test_no_gradient_flows_through_the_returned_statistics(core: str) -> None:
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 3, 3, 4)), jnp.float32)
    with norm_core_set_to(core):
        stats = lambda x_: batch_norm_train_with_stats(x_, jnp.ones(4), jnp.zeros(4), 1e-5)[1:]  # noqa: E731
        grads = jax.grad(lambda x_: jnp.sum(sum(stats(x_))))(x)
    assert not np.any(np.asarray(grads))


@pytest.mark.parametrize("core", CORES)
def test_statistics_keep_their_digits_far_from_zero(core: str) -> None:
    # A one-pass E[x²] - E[x]² would lose ~3 digits at mean 100 and std 1.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 5, 2)) + 100.0, jnp.float32)
    with norm_core_set_to(core):
        _, mean, var = batch_norm_train_with_stats(x, jnp.ones(2), jnp.zeros(2), 1e-5)
    flat = np.asarray(x, np.float64).reshape(-1, 2)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, flat.var(0), rtol=1e-4)


def _custom_calls(program: str) -> set[str]:
    return set(re.findall(r'(?:custom_call_target="|custom_call @)(jresnet_[a-z_]+)', program))


@on_cpu
@needs_onednn
def test_auto_runs_forward_and_backward_through_onednn_for_float32_on_cpu_only() -> None:
    assert get_norm_core() == "auto"
    assert resolved_norm_core(jnp.float32) == "onednn"
    assert resolved_norm_core(jnp.bfloat16) == "xla"
    def compiled_calls(channels: int) -> set[str]:  # traced afresh each time: jit caches ignore the core
        x = jnp.ones((2, 4, 4, channels), jnp.float32)
        ones, zeros = jnp.ones(channels), jnp.zeros(channels)
        step = jax.grad(lambda x_: jnp.sum(batch_norm_train_with_stats(x_, ones, zeros, 1e-5, relu=True)[0]))
        # A program traced for a GPU holds no CPU custom call: the platform branch is XLA's formula.
        cuda = jax.jit(step).trace(x).lower(lowering_platforms=("cuda",)).as_text()
        assert "custom_call" not in cuda
        return _custom_calls(jax.jit(step).lower(x).compile().as_text())

    assert compiled_calls(3) == {"jresnet_batch_norm_forward", "jresnet_batch_norm_backward"}
    with norm_core_set_to("xla"):
        assert compiled_calls(3) == set()
    # Above ONEDNN_MAX_CHANNELS XLA's norm is the faster one, so "auto" keeps it; "onednn" set explicitly
    # takes every float32 norm.
    assert compiled_calls(ONEDNN_MAX_CHANNELS) != set()
    assert compiled_calls(ONEDNN_MAX_CHANNELS + 1) == set()
    with norm_core_set_to("onednn"):
        assert compiled_calls(ONEDNN_MAX_CHANNELS + 1) == {"jresnet_batch_norm_forward", "jresnet_batch_norm_backward"}


@on_cpu
@needs_onednn
def test_a_bf16_layer_keeps_xlas_norm_and_bf16_params_still_work() -> None:
    def calls(x: jax.Array, bn: BatchNorm2d) -> set[str]:
        graphdef, state = nnx.split(bn)

        def loss(state: nnx.State, x_: jax.Array) -> jax.Array:
            return jnp.sum(nnx.merge(graphdef, state).forward_nhwc(x_, relu=True).astype(jnp.float32))

        return _custom_calls(jax.jit(jax.grad(loss)).lower(state, x).as_text())

    x = jnp.asarray(np.random.default_rng(8).standard_normal((2, 4, 4, 3)), jnp.float32)
    assert calls(x, BatchNorm2d(3)) == {"jresnet_batch_norm_forward", "jresnet_batch_norm_backward"}
    assert calls(x.astype(jnp.bfloat16), BatchNorm2d(3)) == set()  # oneDNN's norm is float32-only
    # float32 activations with bf16 parameters: oneDNN reads float32 copies, and the values stay right
    bn = BatchNorm2d(3)
    bn.weight[...], bn.bias[...] = jnp.full(3, 2.0, jnp.bfloat16), jnp.full(3, 0.5, jnp.bfloat16)
    y = bn.forward_nhwc(x, relu=True)
    assert _relative_error(y, _formula(x, jnp.full(3, 2.0), jnp.full(3, 0.5), 1e-5, True)) < 1e-5


@pytest.mark.parametrize("core", CORES)
def test_vmap_and_remat_give_per_instance_values_and_gradients(core: str) -> None:
    rng = np.random.default_rng(5)
    x, r = (jnp.asarray(rng.standard_normal((3, 2, 4, 4, 6)), jnp.float32) for _ in range(2))
    w, b = jnp.asarray(rng.standard_normal(6), jnp.float32), jnp.asarray(rng.standard_normal(6), jnp.float32)

    def loss(norm, w_, b_):  # a sum over 3 independent instances, each normalised with its own statistics
        return jnp.sum(jnp.sin(jax.vmap(lambda v: norm(v, w_, b_))(x)) * r)

    def ours(v, w_, b_):
        return batch_norm_train_with_stats(v, w_, b_, 1e-5, relu=True)[0]

    with norm_core_set_to(core):
        got = jax.jit(jax.grad(lambda w_, b_: loss(ours, w_, b_), (0, 1)))(w, b)
        remat = jax.jit(jax.grad(lambda w_, b_: loss(jax.checkpoint(ours), w_, b_), (0, 1)))(w, b)
        values = jax.vmap(lambda v: ours(v, w, b))(x)
    want = jax.grad(lambda w_, b_: loss(lambda v, ww, bb: _formula(v, ww, bb, 1e-5, True), w_, b_), (0, 1))(w, b)
    for i in range(3):
        assert _relative_error(values[i], _formula(x[i], w, b, 1e-5, True)) < 1e-5
    for g, g_remat, ref in zip(got, remat, want, strict=True):
        assert _relative_error(g, ref) < 2e-4 and _relative_error(g_remat, ref) < 2e-4


def test_set_norm_core_validates_and_returns_the_previous_name() -> None:
    with pytest.raises(ValueError, match=r"auto.*onednn.*xla.*'nope'"):
        set_norm_core("nope")
    assert get_norm_core() == "auto"
    with norm_core_set_to("xla"):
        assert get_norm_core() == "xla" and resolved_norm_core() == "xla"
    assert get_norm_core() == "auto"


def test_asking_for_onednn_where_it_cannot_load_says_why(monkeypatch) -> None:
    monkeypatch.setattr(native, "status", lambda: native.NativeStatus(False, reason="no C++ compiler found"))
    with pytest.raises(RuntimeError, match=r"set_norm_core\('onednn'\).*no C\+\+ compiler found"):
        set_norm_core("onednn")
    assert get_norm_core() == "auto"
    assert resolved_norm_core() == "xla"  # auto falls back without a word
    x = jnp.asarray(np.random.default_rng(6).standard_normal((2, 3, 3, 4)), jnp.float32)
    y, _, _ = batch_norm_train_with_stats(x, jnp.ones(4), jnp.zeros(4), 1e-5, relu=True)
    assert _relative_error(y, _formula(x, jnp.ones(4), jnp.zeros(4), 1e-5, True)) < 1e-6


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("train", [True, False])
def test_the_layers_relu_option_equals_a_relu_after_it(core: str, train: bool) -> None:
    x = jnp.asarray(np.random.default_rng(7).standard_normal((4, 6, 6, 5)) * 2 + 1, jnp.float32)  # NHWC
    fused, plain = BatchNorm2d(5, momentum=0.5), BatchNorm2d(5, momentum=0.5)
    if not train:
        for bn in (fused, plain):
            bn.running_mean[...], bn.running_var[...] = jnp.full(5, 0.5), jnp.full(5, 2.0)
            bn.eval()
    with norm_core_set_to(core):
        got, want = fused.forward_nhwc(x, relu=True), jax.nn.relu(plain.forward_nhwc(x))
    assert _relative_error(got, want) < 1e-5
    assert np.all(np.asarray(got) >= 0)
    for name in ("running_mean", "running_var"):  # updated once per call, the same either way
        np.testing.assert_allclose(getattr(fused, name)[...], getattr(plain, name)[...], rtol=1e-5)
