"""jresnet.shapes: the convolution arithmetic, checked against the math and against lax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from jresnet.shapes import (
    ConvGeometry,
    ReceptiveField,
    explain,
    extra_pixel_side,
    out_size,
    output_hw,
    receptive_field,
    same_padding,
)

# ----------------------------------------------------------------------------------------------
# The seed's facts.


@pytest.mark.parametrize(("kernel", "expected"), [(3, 62), (5, 60), (9, 56)])
def test_kernel_eats_k_minus_one_pixels(kernel: int, expected: int) -> None:
    assert expected == 64 - (kernel - 1)
    assert out_size(64, kernel) == expected
    assert ConvGeometry(kernel).out_size(64) == expected
    assert ConvGeometry(kernel, padding="valid").out_size(64) == expected
    assert ConvGeometry(kernel).eaten == kernel - 1
    assert ConvGeometry(kernel).span == kernel


@pytest.mark.parametrize("kernel", [3, 5, 9])
def test_half_padding_keeps_size_for_odd_kernels(kernel: int) -> None:
    p = (kernel - 1) // 2
    assert out_size(64, kernel, padding=p) == 64
    assert ConvGeometry(kernel, padding=p).pads(64) == (p, p)
    assert same_padding(kernel) == (p, p)
    assert extra_pixel_side(kernel) == "none"


def test_stride_two_does_not_simply_halve() -> None:
    assert out_size(64, 3, stride=2, padding=0) == 31
    assert ConvGeometry(3, 2, 0).out_size(64) == 31


@pytest.mark.parametrize("n", [1, 5, 6, 7, 64])
def test_even_kernel_same_padding_puts_extra_pixel_after(n: int) -> None:
    assert same_padding(6) == (2, 3)
    assert ConvGeometry(6, padding="same").pads(n) == (2, 3)
    assert ConvGeometry(6, padding="same").out_size(n) == n
    # lax's SAME convention, the one the library promises to match
    assert [tuple(p) for p in lax.padtype_to_pads((n,), (6,), (1,), "SAME")] == [(2, 3)]
    assert extra_pixel_side(6).startswith("after")


def test_same_padding_with_dilation() -> None:
    # K=4, D=2 spans 2*3+1 = 7 pixels: 6 pixels of padding, 3 + 3
    assert same_padding(4, dilation=2) == (3, 3)
    # K=2, D=3 spans 4: 3 pixels, 1 before and 2 after
    assert same_padding(2, dilation=3) == (1, 2)


def test_padding_spec_normalisation() -> None:
    assert ConvGeometry(3, padding="SAME").padding == "same"
    assert ConvGeometry(3, padding=[1, 2]).padding == (1, 2)
    assert ConvGeometry(3, padding=(1, 2)).pads(10) == (1, 2)
    assert ConvGeometry(3, padding=(1, 2)).out_size(10) == 10 + 3 - 3 + 1


def test_output_hw_handles_rectangles() -> None:
    g = ConvGeometry(3, 2, 1)
    # (n + 2 - 3)//2 + 1
    assert output_hw((10, 7), g) == ((10 - 1) // 2 + 1, (7 - 1) // 2 + 1) == (5, 4)


# ----------------------------------------------------------------------------------------------
# Property: the formula equals what lax.conv_general_dilated produces.


def _lax_out_size(n: int, kernel: int, stride: int, dilation: int, padding) -> int:
    """Spatial size of lax.conv_general_dilated on a (1, 1, n, 1) input (shape inference only)."""
    x = jax.ShapeDtypeStruct((1, 1, n, 1), jnp.float32)
    w = jax.ShapeDtypeStruct((1, 1, kernel, 1), jnp.float32)
    pad = padding if isinstance(padding, str) else [tuple(padding), (0, 0)]

    def conv(x, w):
        return lax.conv_general_dilated(x, w, window_strides=(stride, 1), padding=pad,
                                        rhs_dilation=(dilation, 1),
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))

    return jax.eval_shape(conv, x, w).shape[2]


@st.composite
def explicit_geometries(draw):
    kernel = draw(st.integers(1, 7))
    stride = draw(st.integers(1, 4))
    dilation = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["int", "pair", "valid"]))
    if kind == "int":
        padding = draw(st.integers(0, 4))
        pads = (padding, padding)
    elif kind == "pair":
        pads = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
        padding = pads
    else:
        padding, pads = "valid", (0, 0)
    n = draw(st.integers(1, 40))
    return n, kernel, stride, padding, dilation, pads


@settings(deadline=None, max_examples=150)
@given(explicit_geometries())
def test_out_size_matches_lax_for_explicit_padding(case) -> None:
    n, kernel, stride, padding, dilation, pads = case
    g = ConvGeometry(kernel, stride, padding, dilation)
    assert g.pads(n) == pads
    span = dilation * (kernel - 1) + 1
    if n + pads[0] + pads[1] < span:
        with pytest.raises(ValueError, match="does not fit"):
            g.out_size(n)
        return
    assert g.out_size(n) == _lax_out_size(n, kernel, stride, dilation, pads)
    assert out_size(n, kernel, stride, padding, dilation) == g.out_size(n)


@settings(deadline=None, max_examples=150)
@given(n=st.integers(1, 40), kernel=st.integers(1, 8), stride=st.integers(1, 4), dilation=st.integers(1, 3))
def test_same_padding_matches_lax_same(n: int, kernel: int, stride: int, dilation: int) -> None:
    g = ConvGeometry(kernel, stride, "same", dilation)
    span = dilation * (kernel - 1) + 1
    lax_pads = [tuple(int(v) for v in p) for p in lax.padtype_to_pads((n,), (span,), (stride,), "SAME")]
    assert g.pads(n) == lax_pads[0]
    assert g.out_size(n) == _lax_out_size(n, kernel, stride, dilation, "SAME")
    assert g.out_size(n) == -(-n // stride)  # SAME means ceil(n / S)


@settings(deadline=None, max_examples=15)
@given(n=st.integers(2, 12), kernel=st.integers(1, 6), stride=st.integers(1, 3), dilation=st.integers(1, 2),
       seed=st.integers(0, 2**16))
def test_same_split_reproduces_lax_same_numerically(n, kernel, stride, dilation, seed) -> None:
    """A conv with the library's explicit (lo, hi) pads computes the same numbers as padding="SAME"."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((1, 1, n, n)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((1, 1, kernel, kernel)), jnp.float32)
    g = ConvGeometry(kernel, stride, "same", dilation)

    def conv(padding):
        return lax.conv_general_dilated(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))

    explicit = conv([g.pads(n), g.pads(n)])
    reference = conv("SAME")
    assert explicit.shape == reference.shape
    np.testing.assert_allclose(np.asarray(explicit), np.asarray(reference), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Invalid geometry.


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(kernel=0), ["kernel", "0"]),
        (dict(kernel=-3), ["kernel", "-3"]),
        (dict(kernel=3, stride=0), ["stride", "0"]),
        (dict(kernel=3, padding=-1), ["padding", "-1"]),
        (dict(kernel=3, padding=(1, -2)), ["padding", "-2"]),
        (dict(kernel=3, padding=(1, 2, 3)), ["padding", "(1, 2, 3)"]),
        (dict(kernel=3, padding="full"), ["padding", "full"]),
        (dict(kernel=3, dilation=0), ["dilation", "0"]),
        (dict(kernel=2.5), ["kernel", "2.5"]),
        (dict(kernel=True), ["kernel", "True"]),
    ],
)
def test_invalid_geometry_names_argument_and_value(kwargs, words) -> None:
    with pytest.raises(ValueError) as info:
        ConvGeometry(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_window_larger_than_padded_input() -> None:
    g = ConvGeometry(5, padding=1)
    assert g.out_size(3) == 1  # 3 + 2 = 5 pixels: exactly one window
    with pytest.raises(ValueError) as info:
        g.out_size(2)  # 2 + 2 = 4 < 5
    msg = str(info.value)
    assert "does not fit" in msg
    assert "4" in msg and "K=5" in msg
    with pytest.raises(ValueError, match="does not fit"):
        ConvGeometry(3, dilation=3).out_size(6)  # spans 7 pixels


def test_input_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="input size"):
        ConvGeometry(3).out_size(0)


# ----------------------------------------------------------------------------------------------
# explain.


def _trailing_pixels_without_window(n: int, kernel: int, stride: int, lo: int, hi: int) -> int:
    """Brute force: slide the window and count padded pixels after the last window's end."""
    padded = n + lo + hi
    starts = list(range(0, padded - kernel + 1, stride))
    return padded - (starts[-1] + kernel)


def test_explain_shows_the_arithmetic_of_64_k3_s2() -> None:
    text = explain(64, 3, stride=2, padding=0)
    assert _trailing_pixels_without_window(64, 3, 2, 0, 0) == 1  # (64 - 3) % 2
    for part in ("64", "K=3", "S=2", "31", "floor"):
        assert part in text
    assert "32" in text  # the naive 64/2 it warns about
    assert "last 1 padded pixel" in text
    assert "last 1 padded pixel is read by no window" in text


def test_explain_counts_unused_pixels_for_a_larger_stride() -> None:
    unused = _trailing_pixels_without_window(10, 3, 4, 0, 0)
    assert unused == 3  # windows at 0..2 and 4..6; pixels 7, 8, 9 start none
    text = explain(10, 3, stride=4)
    assert f"last {unused} padded pixels are read by no window" in text
    assert "= 2" in text


def test_explain_no_unused_note_when_stride_divides() -> None:
    assert _trailing_pixels_without_window(65, 3, 2, 0, 0) == 0
    text = explain(65, 3, stride=2)
    assert "= 32" in text  # (65 - 3) // 2 + 1
    assert "read by no window" not in text


def test_explain_stride_one_has_no_stride_note() -> None:
    text = explain(64, 3, padding=1)
    assert "= 64" in text
    assert "does not simply divide" not in text and "read by no window" not in text


def test_explain_uneven_same_padding_says_after() -> None:
    text = ConvGeometry(6, padding="same").explain(10)
    assert "P=(2, 3)" in text
    assert "after" in text


# ----------------------------------------------------------------------------------------------
# Receptive field.


def _brute_force_receptive_field(layers: list[tuple[int, int, int]]) -> tuple[int, float]:
    """Propagate output pixel 0 back through (K, S, P) layers; returns its input interval's size and
    centre (pixel i covers [i, i+1))."""
    lo, hi = 0, 0
    for k, s, p in reversed(layers):
        lo, hi = lo * s - p, hi * s - p + k - 1
    return hi - lo + 1, (lo + hi + 1) / 2


def test_receptive_field_of_three_3x3() -> None:
    rf = receptive_field([ConvGeometry(3, 1, 1)] * 3)
    assert rf.size == 7  # 1 + 2 + 2 + 2
    assert rf.jump == 1
    assert isinstance(rf, ReceptiveField)


def test_receptive_field_with_strides() -> None:
    # r: 1 -> 1 + 2*1 = 3 (jump 2) -> 3 + 2*2 = 7 (jump 4) -> 7 + 2*4 = 15 (jump 4)
    rf = receptive_field([ConvGeometry(3, 2, 1), ConvGeometry(3, 2, 1), ConvGeometry(3, 1, 1)])
    assert rf.size == 15
    assert rf.jump == 4
    size, centre = _brute_force_receptive_field([(3, 2, 1), (3, 2, 1), (3, 1, 1)])
    assert (rf.size, rf.start) == (size, centre)


def test_receptive_field_of_empty_stack_and_bad_items() -> None:
    assert receptive_field([]).size == 1
    with pytest.raises(ValueError, match=r"layers\[1\]"):
        receptive_field([ConvGeometry(3), (3, 1, 1)])  # type: ignore[list-item]


@settings(deadline=None, max_examples=100)
@given(st.lists(st.tuples(st.integers(1, 7), st.integers(1, 3), st.integers(0, 3)), min_size=1, max_size=6))
def test_receptive_field_matches_brute_force(layers) -> None:
    rf = receptive_field([ConvGeometry(k, s, p) for k, s, p in layers])
    size, centre = _brute_force_receptive_field(layers)
    assert rf.size == size
    assert rf.start == pytest.approx(centre)
    assert rf.jump == int(np.prod([s for _, s, _ in layers]))
