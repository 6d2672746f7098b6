"""jresnet.conv_core: every core's values and gradients equal lax's; each core compiles to what it promises."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

from jresnet import native
from jresnet.conv_core import conv2d_nhwc, get_conv_core, resolved_conv_core, set_conv_core

on_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the materialising cond and oneDNN are CPU-only")
needs_onednn = pytest.mark.skipif(not native.available(), reason=f"oneDNN kernels: {native.unavailable_reason()}")
CONV_TARGETS = {target for target in native.FFI_TARGETS if target.startswith("jresnet_conv_")}


@contextmanager
def conv_core_set_to(name: str) -> Iterator[None]:
    previous = set_conv_core(name)
    try:
        yield
    finally:
        set_conv_core(previous)


@pytest.fixture
def lax_core() -> Iterator[None]:
    with conv_core_set_to("lax"):
        yield


@pytest.fixture
def materialized_core() -> Iterator[None]:
    with conv_core_set_to("materialized"):
        yield


CUSTOM_CORES = ["materialized", pytest.param("onednn", marks=needs_onednn)]


@pytest.fixture(params=CUSTOM_CORES)
def core(request) -> Iterator[str]:
    with conv_core_set_to(request.param):
        yield request.param


def _randn(seed: int, *shape: int, dtype=jnp.float32) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _lax_reference(x, w, *, stride, padding, dilation=1, groups=1):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                    dimension_numbers=("NHWC", "OIHW", "NHWC"), feature_group_count=groups)


def _value_and_grads(conv, **geometry):
    """(x, w, r) -> (y, d/dx, d/dw) of a non-linear loss, so a wrong dy or a transposed dw shows."""

    def loss(x, w, r):
        y = conv(x, w, **geometry)
        return jnp.sum(jnp.sin(y) * r.astype(y.dtype)), y

    grads = jax.grad(loss, argnums=(0, 1), has_aux=True)
    return lambda x, w, r: (lambda g, y: (y, *g))(*grads(x, w, r))


def assert_close(got, want, rtol: float) -> None:
    """Max abs error relative to the reference's max abs value (exact equality where the reference is all zero)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = np.max(np.abs(want), initial=0.0)
    err = np.max(np.abs(got - want), initial=0.0)
    assert err <= rtol * max(scale, 1e-30), f"max error {err:.3g} vs scale {scale:.3g}"


@st.composite
def geometries(draw):
    groups = draw(st.sampled_from([1, 2, 3]))  # channel counts are multiples of it, all in 1..6
    cin, cout = groups * draw(st.integers(1, 6 // groups)), groups * draw(st.integers(1, 6 // groups))
    k = draw(st.integers(1, 5))
    dilation = draw(st.sampled_from([1, 2]))
    span = dilation * (k - 1) + 1

    def pads():
        kind = draw(st.sampled_from(["zero", "same", "asymmetric", "large"]))
        if kind == "zero":
            return (0, 0)
        if kind == "same":
            return ((span - 1) // 2, span // 2)
        if kind == "asymmetric":
            lo, more = draw(st.integers(0, k)), draw(st.integers(1, k))
            return (lo, lo + more) if draw(st.booleans()) else (lo + more, lo)
        return (draw(st.integers(k + 1, k + 3)), draw(st.integers(k + 1, k + 3)))

    return dict(batch=draw(st.integers(1, 3)), hw=(draw(st.integers(1, 12)), draw(st.integers(1, 12))), cin=cin,
                cout=cout, k=k, stride=draw(st.sampled_from([1, 2, 3])), dilation=dilation, groups=groups,
                padding=(pads(), pads()), seed=draw(st.integers(0, 2**16)))


@pytest.mark.parametrize("core_name", CUSTOM_CORES)
@settings(deadline=None, max_examples=60, derandomize=True)
@given(g=geometries())
def test_values_and_gradients_match_lax(core_name: str, g) -> None:
    span = g["dilation"] * (g["k"] - 1) + 1
    assume(all(n + lo + hi >= span for n, (lo, hi) in zip(g["hw"], g["padding"])))  # else the output is empty
    with conv_core_set_to(core_name):
        assert resolved_conv_core() == core_name
        _check_values_and_gradients(g)


def _check_values_and_gradients(g) -> None:
    geometry = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"], groups=g["groups"])
    x = _randn(g["seed"], g["batch"], *g["hw"], g["cin"])
    w = _randn(g["seed"] + 1, g["cout"], g["cin"] // g["groups"], g["k"], g["k"])
    r = _randn(g["seed"] + 2, *jax.eval_shape(lambda x, w: _lax_reference(x, w, **geometry), x, w).shape)
    both = jax.jit(lambda *a: (_value_and_grads(conv2d_nhwc, **geometry)(*a),  # one compile per example
                               _value_and_grads(_lax_reference, **geometry)(*a)))
    got, want = both(x, w, r)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, 1e-5)


def _kernel_grad_hlo(x, w) -> str:
    loss = lambda w, x: jnp.sum(jnp.sin(conv2d_nhwc(x, w, stride=1, padding=((1, 1), (1, 1)))))  # noqa: E731
    return jax.jit(jax.grad(loss)).lower(w, x).compile().as_text()  # x an input, as in training: not a constant


@on_cpu
def test_materialized_core_puts_a_conditional_in_the_kernel_gradient(materialized_core) -> None:
    x, w = _randn(0, 2, 6, 6, 3), _randn(1, 4, 3, 3, 3)
    assert "conditional(" in _kernel_grad_hlo(x, w)
    with conv_core_set_to("lax"):
        assert "conditional(" not in _kernel_grad_hlo(x, w)  # a fresh trace sees the switch


def _transpose_fusion_inputs(hlo: str, activation_size: int) -> list[int]:
    """For each fusion whose fused computation transposes, how many of its parameters are activation-sized."""
    params: dict[str, list[int]] = {}
    transposing: set[str] = set()
    current = None
    for line in hlo.splitlines():
        if header := re.match(r"^(?:ENTRY )?%(\S+) \((.*)\) -> .*\{$", line):
            current = header[1]
            shapes = re.findall(r"\w+\[([\d,]*)\]", header[2])
            params[current] = [math.prod(int(d) for d in s.split(",") if d) for s in shapes]
        elif current and re.search(r"= \S+ transpose\(", line):
            transposing.add(current)
    calls = re.findall(r"= \S+ fusion\(.*calls=%([\w.\-]+)", hlo)
    return [sum(n == activation_size for n in params[c]) for c in calls if c in transposing]


def _residual_chain_grad_hlo(shape=(8, 8, 8, 4), blocks: int = 4) -> str:
    c = shape[-1]
    ws = [_randn(10 + i, c, c, 3, 3) * 0.1 for i in range(blocks)]
    scales = [(_randn(20 + i, c), _randn(30 + i, c)) for i in range(blocks)]  # a folded BatchNorm per block

    def loss(ws, scales, x):
        for w, (a, b) in zip(ws, scales):
            x = jax.nn.relu(conv2d_nhwc(x, w, stride=1, padding=((1, 1), (1, 1))) * a + b + x)
        return jnp.sum(x * x)

    return jax.jit(jax.grad(loss)).lower(ws, scales, _randn(0, *shape)).compile().as_text()


@on_cpu
def test_kernel_gradient_transposes_read_one_buffer_not_the_residual_chain(materialized_core) -> None:
    counts = _transpose_fusion_inputs(_residual_chain_grad_hlo(), 8 * 8 * 8 * 4)
    assert counts and max(counts) >= 1, "found no transpose fusion of an activation: the HLO parse needs updating"
    assert max(counts) <= 2, counts


@on_cpu
def test_lax_core_shows_the_fused_transpose_pathology(lax_core) -> None:
    # The bug conv_core works around: XLA recomputes earlier blocks inside the kernel gradient's transposes.
    counts = _transpose_fusion_inputs(_residual_chain_grad_hlo(), 8 * 8 * 8 * 4)
    assert max(counts, default=0) >= 3, counts


@pytest.mark.parametrize(("stride", "groups"), [(1, 1), (2, 2)])
def test_bf16_is_close_to_fp32(stride: int, groups: int) -> None:
    geometry = dict(stride=stride, padding=((1, 1), (1, 1)), groups=groups)
    x = _randn(0, 2, 7, 7, 4, dtype=jnp.bfloat16)
    w = _randn(1, 6, 4 // groups, 3, 3, dtype=jnp.bfloat16) * 0.3
    r = _randn(2, 2, (7 - 1) // stride + 1, (7 - 1) // stride + 1, 6)
    run = jax.jit(_value_and_grads(conv2d_nhwc, **geometry))
    got, want = run(x, w, r), run(x.astype(jnp.float32), w.astype(jnp.float32), r)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == jnp.bfloat16
        assert_close(a, b, 2e-2)


def test_set_conv_core_validates_and_returns_the_previous_name() -> None:
    assert get_conv_core() == "auto"
    with pytest.raises(ValueError, match=r"auto.*onednn.*materialized.*lax.*'nope'"):
        set_conv_core("nope")
    assert get_conv_core() == "auto"  # a rejected name changes nothing
    try:
        assert set_conv_core("lax") == "auto"
        assert get_conv_core() == "lax"
        assert resolved_conv_core() == "lax"
        assert set_conv_core("lax") == "lax"
    finally:
        assert set_conv_core("auto") == "lax"


def test_asking_for_onednn_where_it_cannot_load_says_why(monkeypatch) -> None:
    monkeypatch.setattr(native, "status", lambda: native.NativeStatus(False, reason="no C++ compiler found"))
    with pytest.raises(RuntimeError, match=r"set_conv_core\('onednn'\).*no C\+\+ compiler found"):
        set_conv_core("onednn")
    assert get_conv_core() == "auto"
    assert resolved_conv_core() == "materialized"  # auto falls back without a word


def _custom_calls(program: str) -> set[str]:
    """jresnet's FFI targets called in compiled HLO text or lowered StableHLO text."""
    return set(re.findall(r'(?:custom_call_target="|custom_call @)(jresnet_[a-z_]+)', program))


@on_cpu
@needs_onednn
def test_auto_runs_all_three_passes_through_onednn_in_fp32_only() -> None:
    assert resolved_conv_core(jnp.float32) == "onednn"
    assert resolved_conv_core(jnp.bfloat16) == "materialized"
    x, w = _randn(0, 2, 12, 12, 3), _randn(1, 4, 3, 3, 3)  # a 12x12 map: oneDNN's kernel gradient (see below)

    def both_grads_hlo(x, w) -> str:
        loss = lambda w, x: jnp.sum(jnp.sin(conv2d_nhwc(x, w, stride=1, padding=((1, 1), (1, 1)))))  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, x).compile().as_text()

    assert _custom_calls(both_grads_hlo(x, w)) == CONV_TARGETS
    assert _custom_calls(both_grads_hlo(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))) == set()
    with conv_core_set_to("lax"):
        assert _custom_calls(both_grads_hlo(x, w)) == set()


@on_cpu
@needs_onednn
@pytest.mark.parametrize(("hw", "k", "c_in", "xla_kernel_grad"),
                         [(8, 3, 128, True), (9, 3, 128, False), (8, 3, 64, False), (4, 1, 128, False)])
def test_deep_small_maps_take_xla_kernel_gradient_and_still_match_lax(hw: int, k: int, c_in: int,
                                                                      xla_kernel_grad: bool) -> None:
    # oneDNN's kernel gradient loses to XLA's on <= 8x8 outputs with >= 128 input channels and K > 1.
    p = (k - 1) // 2
    geometry = dict(stride=1, padding=((p, p), (p, p)))
    x, w, r = _randn(0, 2, hw, hw, c_in), _randn(1, 5, c_in, k, k) * 0.1, _randn(2, 2, hw, hw, 5)
    run = jax.jit(_value_and_grads(conv2d_nhwc, **geometry))
    calls = _custom_calls(run.lower(x, w, r).compile().as_text())
    assert ("jresnet_conv_backward_weights" not in calls) == xla_kernel_grad
    assert {"jresnet_conv_forward", "jresnet_conv_backward_data"} <= calls
    for a, b in zip(run(x, w, r), _value_and_grads(_lax_reference, **geometry)(x, w, r), strict=True):
        assert_close(a, b, 1e-5)


@needs_onednn
def test_a_program_lowered_for_gpu_holds_no_cpu_custom_call() -> None:
    x, w = _randn(0, 2, 12, 12, 3), _randn(1, 4, 3, 3, 3)
    loss = lambda w, x: jnp.sum(jnp.sin(conv2d_nhwc(x, w, stride=1, padding=((1, 1), (1, 1)))))  # noqa: E731
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    assert _custom_calls(step.trace(w, x).lower(lowering_platforms=("cpu",)).as_text()) == CONV_TARGETS
    assert _custom_calls(step.trace(w, x).lower(lowering_platforms=("cuda",)).as_text()) == set()


@needs_onednn
def test_geometries_onednn_rejects_fall_back_to_xla(core) -> None:
    geometry = dict(stride=1, padding=((-1, 2), (1, 1)))  # negative padding crops
    x, w, r = _randn(0, 2, 6, 6, 3), _randn(1, 4, 3, 3, 3), _randn(2, 2, 5, 6, 4)
    got = jax.jit(_value_and_grads(conv2d_nhwc, **geometry))(x, w, r)
    assert "jresnet_conv" not in jax.jit(lambda x, w: conv2d_nhwc(x, w, **geometry)).lower(x, w).as_text()
    for a, b in zip(got, _value_and_grads(_lax_reference, **geometry)(x, w, r), strict=True):
        assert_close(a, b, 1e-5)


def test_vmap_over_a_leading_axis_matches_a_loop(core) -> None:
    geometry = dict(stride=2, padding=((1, 1), (1, 1)))
    xs, w = _randn(0, 3, 2, 7, 7, 4), _randn(1, 5, 4, 3, 3)
    conv = jax.vmap(lambda x: conv2d_nhwc(x, w, **geometry))
    batched = conv(xs)
    assert ("jresnet_conv_forward" in _custom_calls(jax.jit(conv).lower(xs).as_text())) == (core == "onednn")
    for i in range(3):
        assert_close(batched[i], _lax_reference(xs[i], w, **geometry), 1e-5)


def test_gradients_of_gradients_match_lax(core) -> None:
    # A gradient penalty: d/dw of |d loss/dx|^2 needs the backward passes' own derivatives.
    geometry = dict(stride=2, padding=((1, 1), (1, 1)))
    x, w, r = _randn(0, 2, 9, 9, 4), _randn(1, 6, 4, 3, 3) * 0.3, _randn(2, 2, 5, 5, 6)

    def penalty(conv):
        def loss(x, w):
            return jnp.sum(jnp.sin(conv(x, w, **geometry)) * r)

        def grad_norm(x, w):
            gx, gw = jax.grad(loss, argnums=(0, 1))(x, w)
            return jnp.sum(gx * gx) + jnp.sum(jnp.cos(gw))

        return jax.jit(jax.grad(grad_norm, argnums=(0, 1)))

    for a, b in zip(penalty(conv2d_nhwc)(x, w), penalty(_lax_reference)(x, w), strict=True):
        assert_close(a, b, 1e-5)


def _float64_reference(x: np.ndarray, w: np.ndarray, dy: np.ndarray, **geometry) -> list[np.ndarray]:
    with jax.enable_x64():
        x64, w64, dy64 = (jnp.asarray(v, jnp.float64) for v in (x, w, dy))
        y, vjp = jax.vjp(lambda a, b: _lax_reference(a, b, **geometry), x64, w64)
        return [np.asarray(v) for v in (y, *vjp(dy64))]


@pytest.mark.slow
@pytest.mark.parametrize(("c_in", "c_out", "hw", "stride", "k"), [(16, 16, 32, 1, 3), (16, 32, 32, 2, 3),
                                                                   (32, 64, 16, 2, 1)])
def test_on_resnet_sized_convs_every_core_is_within_1e_5_of_float64(core, c_in, c_out, hw, stride, k) -> None:
    # A kernel gradient sums batch x H x W products, so fp32 results differ by summation order: each core's
    # error is measured against float64. oneDNN's kernel gradient is the least exact pass (measured at batch 32:
    # up to 6e-6 of the largest entry, where XLA's is 8e-7), and it is PyTorch's kernel gradient too.
    p = (k - 1) // 2
    geometry = dict(stride=stride, padding=((p, p), (p, p)))
    x, w = _randn(0, 32, hw, hw, c_in), _randn(1, c_out, c_in, k, k) * 0.1
    dy = _randn(2, 32, (hw + 2 * p - k) // stride + 1, (hw + 2 * p - k) // stride + 1, c_out)
    truth = _float64_reference(np.asarray(x), np.asarray(w), np.asarray(dy), **geometry)
    y, vjp = jax.vjp(lambda a, b: conv2d_nhwc(a, b, **geometry), x, w)
    for got, want in zip((y, *vjp(dy)), truth, strict=True):
        assert_close(got, want, 1e-5)
