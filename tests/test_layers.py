"""jresnet.layers: shapes, numerics against lax / numpy references, BatchNorm rules, error messages."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import jresnet
from jresnet.layers import (
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    DropPath,
    GlobalAvgPool,
    Identity,
    Linear,
    MaxPool2d,
    ReLU,
    to_nchw,
    to_nhwc,
)
from jresnet.typing import ShapeError, set_checks


def _randn(seed: int, *shape: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _shape(module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape of ``module`` by shape inference only (nothing compiles)."""
    return jax.eval_shape(lambda x: module(x), jax.ShapeDtypeStruct(shape, jnp.float32)).shape


def _jit_call(module, x: jax.Array) -> jax.Array:
    """One compile for the whole stateless call, instead of one per eager op."""
    return jax.jit(lambda x: module(x))(x)


# ----------------------------------------------------------------------------------------------
# Conv2d


@pytest.mark.parametrize(
    ("cin", "cout", "k", "s", "p", "d", "groups", "hw", "out_hw"),
    [
        (3, 8, 3, 1, 1, 1, 1, (16, 16), (16, 16)),
        (3, 8, 3, 2, 0, 1, 1, (64, 64), (31, 31)),
        (3, 4, 3, 2, 1, 1, 1, (10, 7), (5, 4)),
        (4, 8, 3, 1, 0, 2, 2, (16, 16), (12, 12)),  # dilation 2 eats 4 pixels
        (3, 5, 6, 1, "same", 1, 1, (7, 9), (7, 9)),
        (4, 4, 1, 2, 0, 1, 4, (7, 7), (4, 4)),  # depthwise 1x1 stride 2
    ],
)
def test_conv2d_output_shape(cin, cout, k, s, p, d, groups, hw, out_hw, rngs) -> None:
    conv = Conv2d(cin, cout, k, s, p, d, groups, rngs=rngs)
    assert conv.weight.shape == (cout, cin // groups, k, k)
    assert conv.bias.shape == (cout,)
    assert _shape(conv, (2, cin, *hw)) == (2, cout, *out_hw)
    assert conv.output_hw(*hw) == out_hw


def test_conv2d_without_bias(rngs) -> None:
    conv = Conv2d(3, 4, 3, bias=False, rngs=rngs)
    assert conv.bias is None
    assert len(jax.tree.leaves(nnx.state(conv, nnx.Param))) == 1


@pytest.mark.parametrize(
    ("cin", "cout", "k", "s", "padding", "lax_padding", "d", "groups", "hw"),
    [
        (3, 4, 3, 1, 1, [(1, 1), (1, 1)], 1, 1, (6, 6)),
        (3, 4, 3, 2, 0, [(0, 0), (0, 0)], 1, 1, (9, 8)),
        (4, 6, 3, 1, 1, [(1, 1), (1, 1)], 1, 2, (5, 5)),  # grouped
        (4, 4, 3, 1, 2, [(2, 2), (2, 2)], 2, 4, (6, 6)),  # depthwise, dilated
        (2, 3, 4, 1, "same", "SAME", 1, 1, (7, 6)),  # even kernel: lax's SAME split
        (2, 3, 4, 2, "same", "SAME", 1, 1, (7, 6)),
        (2, 3, 3, 1, (0, 2), [(0, 2), (0, 2)], 1, 1, (5, 5)),
        (2, 3, 5, 2, "valid", "VALID", 1, 1, (9, 9)),
    ],
)
def test_conv2d_equals_lax_in_nchw(cin, cout, k, s, padding, lax_padding, d, groups, hw, rngs) -> None:
    conv = Conv2d(cin, cout, k, s, padding, d, groups, rngs=rngs)
    conv.bias[...] = _randn(1, cout)
    x = _randn(2, 2, cin, *hw)

    def both(x):
        expected = lax.conv_general_dilated(
            x, conv.weight[...], window_strides=(s, s), padding=lax_padding, rhs_dilation=(d, d),
            dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=groups,
        ) + conv.bias[...][None, :, None, None]
        return expected, conv(x), conv.forward_nhwc(to_nhwc(x))

    expected, y, y_nhwc = jax.jit(both)(x)
    assert y.shape == expected.shape
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5)
    # the internal NHWC path computes the same
    np.testing.assert_allclose(np.asarray(y_nhwc), np.asarray(to_nhwc(y)), atol=1e-6)


def test_conv2d_weight_init_is_kaiming_normal_fan_out(rngs) -> None:
    conv = Conv2d(64, 512, 3, rngs=rngs)  # fan_out = 512*9 = 4608, fan_in = 64*9 = 576
    w = np.asarray(conv.weight[...], np.float64)
    expected_std = math.sqrt(2.0 / (512 * 9))
    assert w.std() == pytest.approx(expected_std, rel=0.02)
    assert abs(w.mean()) < 5 * expected_std / math.sqrt(w.size)
    assert np.all(np.asarray(conv.bias[...]) == 0)


def test_conv2d_init_depends_on_seed() -> None:
    a = Conv2d(3, 4, 3, rngs=nnx.Rngs(0)).weight[...]
    b = Conv2d(3, 4, 3, rngs=nnx.Rngs(0)).weight[...]
    c = Conv2d(3, 4, 3, rngs=nnx.Rngs(1)).weight[...]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(in_channels=0, out_channels=4, kernel_size=3), ["in_channels", "0"]),
        (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), ["groups=2", "in_channels=3"]),
        (dict(in_channels=4, out_channels=4, kernel_size=0), ["kernel", "0"]),
        (dict(in_channels=4, out_channels=4, kernel_size=3, stride=0), ["stride", "0"]),
    ],
)
def test_conv2d_rejects_bad_arguments(kwargs, words, rngs) -> None:
    with pytest.raises(ValueError) as info:
        Conv2d(**kwargs, rngs=rngs)
    for word in words:
        assert word in str(info.value)


def test_conv2d_bfloat16_input_computes_in_bfloat16(rngs) -> None:
    conv = Conv2d(3, 4, 3, 1, 1, rngs=rngs)
    x = _randn(0, 2, 3, 6, 6)
    y, y32 = jax.jit(lambda x: (conv(x.astype(jnp.bfloat16)), conv(x)))(x)
    assert y.dtype == jnp.bfloat16
    assert conv.weight[...].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32), atol=0.1, rtol=0.05)


# ----------------------------------------------------------------------------------------------
# Error messages a person understands.


def test_nhwc_images_into_conv(rngs) -> None:
    conv = Conv2d(3, 8, 3, 1, 1, rngs=rngs)
    with pytest.raises(ShapeError) as info:
        conv(jnp.ones((2, 32, 32, 3)))
    msg = str(info.value)
    assert "Conv2d" in msg
    assert "NHWC" in msg and "(B, C, H, W)" in msg


def test_three_d_image_into_conv(rngs) -> None:
    with pytest.raises(ShapeError) as info:
        Conv2d(3, 8, 3, 1, 1, rngs=rngs)(jnp.ones((3, 32, 32)))
    assert "rank" in str(info.value) and "x[None]" in str(info.value)


def test_int8_images_into_conv(rngs) -> None:
    with pytest.raises(TypeError) as info:
        Conv2d(3, 8, 3, 1, 1, rngs=rngs)(jnp.ones((2, 3, 8, 8), jnp.int8))
    assert "dtype" in str(info.value) and "int8" in str(info.value)


def test_too_small_image_into_conv_shows_the_arithmetic(rngs) -> None:
    conv = Conv2d(3, 8, 5, rngs=rngs)
    with pytest.raises(ShapeError) as info:
        conv(jnp.ones((1, 3, 3, 8)))  # H=3 < K=5 with no padding; W=8 is fine
    msg = str(info.value)
    assert "Conv2d" in msg
    assert "output H" in msg and "H=3" in msg and "K=5" in msg
    assert "collapses" in msg


def test_too_small_image_into_maxpool() -> None:
    with pytest.raises(ShapeError) as info:
        MaxPool2d(3, 2)(jnp.ones((1, 2, 8, 2)))
    msg = str(info.value)
    assert "MaxPool2d" in msg and "W=2" in msg and "collapses" in msg


def test_error_inside_a_model_names_the_layer_path() -> None:
    model = jresnet.create_model("resnet20")
    conv = model.layer2[0].conv1
    assert conv.path == "layer2.0.conv1"
    assert conv.in_channels == 16
    with pytest.raises(ShapeError) as info:
        conv(jnp.ones((1, 32, 8, 8)))
    msg = str(info.value)
    assert msg.startswith("layer2.0.conv1 (Conv2d)")
    assert "C_in=16" in msg and "C=32" in msg
    with pytest.raises(ShapeError, match=r"^layer3\.0\.bn2 \(BatchNorm2d\)"):
        model.layer3[0].bn2(jnp.ones((1, 3, 8, 8)))


def test_checks_run_under_jit(rngs) -> None:
    conv = Conv2d(3, 8, 3, 1, 1, rngs=rngs)
    f = jax.jit(lambda x: conv(x))
    with pytest.raises(ShapeError, match="NHWC"):
        f.lower(jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
    y = f(jnp.ones((2, 3, 16, 16)))
    np.testing.assert_allclose(np.asarray(y), np.asarray(conv(jnp.ones((2, 3, 16, 16)))), atol=1e-5)


def test_set_checks_false_skips_the_shape_error(rngs, monkeypatch: pytest.MonkeyPatch) -> None:
    conv = Conv2d(3, 8, 3, 1, 1, rngs=rngs)
    calls = []
    original = Conv2d.check_input

    def spy(self, x, layout="NHWC"):
        calls.append(layout)
        return original(self, x, layout)

    monkeypatch.setattr(Conv2d, "check_input", spy)
    x = jnp.ones((2, 3, 8, 8))
    previous = set_checks(False)
    try:
        jax.eval_shape(lambda x: conv(x), x)
        assert calls == []
        set_checks(True)
        jax.eval_shape(lambda x: conv(x), x)
        assert calls == ["NCHW", "NHWC"]  # the public call and the internal one
        set_checks(False)
        with pytest.raises(Exception) as info:  # lax's own error, not ours
            jax.eval_shape(lambda x: conv(x), jnp.ones((2, 8, 8, 3)))
        assert not isinstance(info.value, ShapeError)
    finally:
        set_checks(previous)


# ----------------------------------------------------------------------------------------------
# BatchNorm2d


def _bn_reference(x, gamma, beta, mean, var, eps=1e-5):
    def c(v):
        return np.asarray(v)[None, :, None, None]

    return (x - c(mean)) / np.sqrt(c(var) + eps) * c(gamma) + c(beta)


def test_batchnorm_defaults() -> None:
    bn = BatchNorm2d(5)
    assert bn.eps == 1e-5
    assert bn.momentum == 0.9
    np.testing.assert_array_equal(np.asarray(bn.weight[...]), np.ones(5))
    np.testing.assert_array_equal(np.asarray(bn.bias[...]), np.zeros(5))
    np.testing.assert_array_equal(np.asarray(bn.running_mean[...]), np.zeros(5))
    np.testing.assert_array_equal(np.asarray(bn.running_var[...]), np.ones(5))
    assert isinstance(bn.running_mean, nnx.BatchStat) and isinstance(bn.weight, nnx.Param)
    assert np.all(np.asarray(BatchNorm2d(3, zero_init=True).weight[...]) == 0)


def test_batchnorm_train_mode_normalises_and_updates_running_stats() -> None:
    rng = np.random.default_rng(0)
    b, c, h, w = 4, 3, 5, 6
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    rm0, rv0 = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    bn = BatchNorm2d(c)
    bn.weight[...], bn.bias[...] = jnp.asarray(gamma, jnp.float32), jnp.asarray(beta, jnp.float32)
    bn.running_mean[...], bn.running_var[...] = jnp.asarray(rm0, jnp.float32), jnp.asarray(rv0, jnp.float32)
    x = rng.standard_normal((b, c, h, w)) * 3 + 1

    y = bn(jnp.asarray(x, jnp.float32))

    mean = x.mean(axis=(0, 2, 3))
    biased = x.var(axis=(0, 2, 3))
    unbiased = x.var(axis=(0, 2, 3), ddof=1)
    expected = _bn_reference(x, gamma, beta, mean, biased)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.running_mean[...]), 0.9 * rm0 + 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.running_var[...]), 0.9 * rv0 + 0.1 * unbiased,
                               rtol=1e-5, atol=1e-6)


def test_batchnorm_eval_mode_uses_running_stats() -> None:
    rng = np.random.default_rng(1)
    c = 3
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    x = rng.standard_normal((2, c, 4, 4))
    for bn in (BatchNorm2d(c), BatchNorm2d(c, use_running_average=True)):
        bn.weight[...], bn.bias[...] = jnp.asarray(gamma, jnp.float32), jnp.asarray(beta, jnp.float32)
        bn.running_mean[...], bn.running_var[...] = jnp.asarray(rm, jnp.float32), jnp.asarray(rv, jnp.float32)
        if not bn.use_running_average:
            bn.eval()
            assert bn.use_running_average is True
        y = bn(jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(np.asarray(y), _bn_reference(x, gamma, beta, rm, rv), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(bn.running_mean[...]), rm, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(bn.running_var[...]), rv, rtol=1e-6)
    bn.train()
    assert bn.use_running_average is False
    bn(jnp.asarray(x, jnp.float32))
    assert not np.allclose(np.asarray(bn.running_mean[...]), rm)


def test_batchnorm_bfloat16_keeps_float32_statistics() -> None:
    bn = BatchNorm2d(3)
    x = _randn(3, 2, 3, 4, 4)
    y = bn(x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    assert bn.running_mean[...].dtype == jnp.float32


def test_batchnorm_wrong_channels_and_bad_arguments() -> None:
    with pytest.raises(ShapeError, match="C_in=4"):
        BatchNorm2d(4)(jnp.ones((2, 3, 5, 5)))
    with pytest.raises(ValueError, match="num_features"):
        BatchNorm2d(0)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm2d(3, momentum=1.0)


# ----------------------------------------------------------------------------------------------
# Pooling against an independent numpy reference (PyTorch's semantics).


def _torch_pool_out(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    if ceil_mode:
        out = -(-(n + 2 * p - k) // s) + 1
        if (out - 1) * s >= n + p:  # the last window must start inside the input or the left padding
            out -= 1
        return out
    return (n + 2 * p - k) // s + 1


def _ref_pool(x: np.ndarray, k: int, s: int, p: int, *, kind: str, ceil_mode: bool = False,
              count_include_pad: bool = True) -> np.ndarray:
    """PyTorch's avg_pool2d / max_pool2d loops, written out."""
    b, c, h, w = x.shape
    oh, ow = _torch_pool_out(h, k, s, p, ceil_mode), _torch_pool_out(w, k, s, p, ceil_mode)
    y = np.zeros((b, c, oh, ow))
    for i in range(oh):
        hs = i * s - p
        he = min(hs + k, h + p)
        for j in range(ow):
            ws = j * s - p
            we = min(ws + k, w + p)
            pool_size = (he - hs) * (we - ws)
            h0, h1, w0, w1 = max(hs, 0), min(he, h), max(ws, 0), min(we, w)
            window = x[:, :, h0:h1, w0:w1]
            if kind == "max":
                y[:, :, i, j] = window.max(axis=(2, 3))
            else:
                divisor = pool_size if count_include_pad else (h1 - h0) * (w1 - w0)
                y[:, :, i, j] = window.sum(axis=(2, 3)) / divisor
    return y


@settings(deadline=None, max_examples=100)
@given(k=st.integers(1, 5), s=st.integers(1, 4), ceil_mode=st.booleans(), count_include_pad=st.booleans(),
       data=st.data())
def test_pool_output_sizes_match_pytorch_rule(k, s, ceil_mode, count_include_pad, data) -> None:
    """Shape inference only (no compile): sizes follow PyTorch's floor/ceil rule."""
    p = data.draw(st.integers(0, k // 2))
    h = data.draw(st.integers(max(1, k - 2 * p), 20))
    w = data.draw(st.integers(max(1, k - 2 * p), 20))
    x = jax.ShapeDtypeStruct((1, 2, h, w), jnp.float32)
    avg = AvgPool2d(k, s, p, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    expected = (1, 2, _torch_pool_out(h, k, s, p, ceil_mode), _torch_pool_out(w, k, s, p, ceil_mode))
    assert jax.eval_shape(lambda x: avg(x), x).shape == expected
    assert jax.eval_shape(lambda x: MaxPool2d(k, s, p)(x), x).shape[2:] == (
        _torch_pool_out(h, k, s, p, False), _torch_pool_out(w, k, s, p, False))


@pytest.mark.parametrize(
    ("k", "s", "p", "hw"),
    [(3, 2, 1, (7, 6)), (2, 2, 0, (5, 4)), (3, 1, 1, (4, 4)), (4, 3, 2, (9, 7))],
)
def test_maxpool_matches_reference(k, s, p, hw) -> None:
    x = np.random.default_rng(k * 10 + s).standard_normal((2, 2, *hw))
    y = _jit_call(MaxPool2d(k, s, p), jnp.asarray(x, jnp.float32))
    expected = _ref_pool(x, k, s, p, kind="max")
    assert y.shape == expected.shape
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("k", "s", "p", "ceil_mode", "count_include_pad", "hw"),
    [
        (2, 2, 0, True, False, (7, 7)),  # ResNet-D's shortcut on an odd map: ceil(7/2) = 4
        (3, 2, 1, True, False, (6, 5)),  # ceil mode; n=6: a 4th window would start in the right padding
        (3, 2, 1, True, True, (6, 5)),  # the overhang never counts, the explicit padding does
        (3, 2, 1, False, True, (7, 7)),
        (3, 2, 1, False, False, (7, 7)),
        (2, 3, 1, True, True, (8, 6)),  # stride larger than the kernel
        (4, 3, 2, True, False, (9, 5)),
    ],
)
def test_avgpool_matches_reference(k, s, p, ceil_mode, count_include_pad, hw) -> None:
    x = np.random.default_rng(k * 10 + s).standard_normal((2, 2, *hw))
    pool = AvgPool2d(k, s, p, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    y = _jit_call(pool, jnp.asarray(x, jnp.float32))
    expected = _ref_pool(x, k, s, p, kind="avg", ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    assert y.shape == expected.shape
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-6)


def test_avgpool_ceil_mode_sizes_by_hand() -> None:
    def shape(pool, n):
        return jax.eval_shape(lambda x: pool(x), jax.ShapeDtypeStruct((1, 1, n, n), jnp.float32)).shape[2:]

    assert shape(AvgPool2d(2, 2, ceil_mode=True), 7) == (4, 4)  # ceil(7/2)
    assert shape(AvgPool2d(2, 2), 7) == (3, 3)  # floor((7-2)/2)+1
    # n=6, K=3, S=2, P=1: ceil((6+2-3)/2)+1 = 4, and window 4 starts at 3*2 = 6 >= 6+1? no: 4 windows
    assert shape(AvgPool2d(3, 2, 1, ceil_mode=True), 6) == (4, 4)
    # n=4, K=2, S=2, P=1: ceil((4+2-2)/2)+1 = 3; window 3 starts at 4 < 4+1: kept
    assert shape(AvgPool2d(2, 2, 1, ceil_mode=True), 4) == (3, 3)
    # n=3, K=2, S=2, P=1: ceil((3+2-2)/2)+1 = 3, but window 3 starts at 4 >= 3+1: dropped
    assert shape(AvgPool2d(2, 2, 1, ceil_mode=True), 3) == (2, 2)


def test_maxpool_padding_never_wins() -> None:
    x = -jnp.ones((1, 1, 4, 4)) * 5.0
    y = _jit_call(MaxPool2d(3, 2, 1), x)
    assert y.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(np.asarray(y), -5.0)


@pytest.mark.parametrize(
    "make",
    [lambda: MaxPool2d(2, 2, 2), lambda: AvgPool2d(2, 2, 2, count_include_pad=False),
     lambda: MaxPool2d(1, 1, 1)],
    ids=["max-2-2-2", "avg-2-2-2-exclude-pad", "max-1-1-1"],
)
def test_pool_padding_over_half_the_kernel_is_rejected(make) -> None:
    """PyTorch rejects P > K/2: windows that see only padding would give -inf (max) or 0/0 (average)."""
    with pytest.raises(ValueError, match="padding"):
        make()(jnp.ones((1, 1, 4, 4)))


def test_pool_stride_defaults_to_kernel() -> None:
    assert MaxPool2d(2).geometry.stride == 2
    assert AvgPool2d(3).geometry.stride == 3


# ----------------------------------------------------------------------------------------------
# GlobalAvgPool, Linear, ReLU, Identity, DropPath


def test_global_avg_pool() -> None:
    x = _randn(4, 2, 5, 3, 4)
    y = _jit_call(GlobalAvgPool(), x)
    assert y.shape == (2, 5)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x).mean(axis=(2, 3)), rtol=1e-6, atol=1e-6)
    nhwc = jax.ShapeDtypeStruct((2, 3, 4, 5), jnp.float32)
    assert jax.eval_shape(GlobalAvgPool().forward_nhwc, nhwc).shape == (2, 5)


def test_linear_shape_numerics_and_init(rngs) -> None:
    fc = Linear(512, 10, rngs=rngs)
    assert fc.weight.shape == (10, 512) and fc.bias.shape == (10,)
    bound = 1 / math.sqrt(512)
    w = np.asarray(fc.weight[...])
    assert np.abs(w).max() <= bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert np.abs(np.asarray(fc.bias[...])).max() <= bound
    x = _randn(5, 3, 512)
    np.testing.assert_allclose(np.asarray(_jit_call(fc, x)), np.asarray(x) @ w.T + np.asarray(fc.bias[...]),
                               rtol=1e-5, atol=1e-5)


def test_linear_wrong_features(rngs) -> None:
    fc = Linear(64, 10, rngs=rngs)
    with pytest.raises(ShapeError) as info:
        fc(jnp.ones((2, 32)))
    assert "(B, 64)" in str(info.value) and "(2, 32)" in str(info.value)
    with pytest.raises(ShapeError):
        fc(jnp.ones((2, 64, 1, 1)))
    with pytest.raises(ValueError, match="out_features"):
        Linear(4, 0, rngs=rngs)


def test_relu_and_identity() -> None:
    x = _randn(6, 2, 3, 4, 4)
    np.testing.assert_array_equal(np.asarray(_jit_call(ReLU(), x)), np.maximum(np.asarray(x), 0))
    np.testing.assert_array_equal(np.asarray(_jit_call(Identity(), x)), np.asarray(x))


def test_nchw_conversions_are_inverse() -> None:
    x = _randn(7, 2, 3, 4, 5)
    assert to_nhwc(x).shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(np.asarray(to_nchw(to_nhwc(x))), np.asarray(x))


def test_drop_path_eval_is_identity_and_train_drops_whole_examples() -> None:
    rate = 0.75
    dp = DropPath(rate, rngs=nnx.Rngs(0))
    x = jnp.ones((256, 2, 3, 3))
    y = np.asarray(dp(x))
    per_example = y.reshape(256, -1)
    # every example is either entirely dropped or entirely kept, scaled by 1/(1-rate)
    kept = np.all(np.isclose(per_example, 1 / (1 - rate)), axis=1)
    dropped = np.all(per_example == 0, axis=1)
    assert np.all(kept | dropped)
    assert 0.6 < dropped.mean() < 0.9  # binomial(256, 0.75): sd 0.027
    dp.eval()
    np.testing.assert_array_equal(np.asarray(dp(x)), np.asarray(x))
    with pytest.raises(ValueError, match="rate"):
        DropPath(1.0, rngs=nnx.Rngs(0))
