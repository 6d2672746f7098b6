"""jresnet.typing: aliases, ShapeError, require_images, set_checks, the shapechecked decorator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxtyping import Array, Float, TypeCheckError

import jresnet
from jresnet.layers import NCHWModule, ReLU
from jresnet.typing import (
    Images,
    Labels,
    Logits,
    ShapeError,
    checks_enabled,
    fmt_nchw,
    recording,
    require_images,
    set_checks,
    shapechecked,
)

REPO = Path(__file__).resolve().parents[1]


def test_shape_error_is_a_value_error() -> None:
    assert issubclass(ShapeError, ValueError)
    assert jresnet.ShapeError is ShapeError


def test_aliases_describe_the_public_layout() -> None:
    assert isinstance(jnp.zeros((2, 3, 4, 5)), Images)
    assert not isinstance(jnp.zeros((3, 4, 5)), Images)
    assert not isinstance(jnp.zeros((2, 3, 4, 5), jnp.int32), Images)
    assert isinstance(jnp.zeros((2, 10)), Logits)
    assert not isinstance(jnp.zeros((2, 10, 1)), Logits)
    assert isinstance(jnp.zeros((2,), jnp.int32), Labels)
    assert not isinstance(jnp.zeros((2,), jnp.float32), Labels)


def test_fmt_nchw_reorders_internal_shapes() -> None:
    assert fmt_nchw((2, 5, 6, 3)) == "(B=2, C=3, H=5, W=6)"
    assert fmt_nchw((2, 10)) == "(2, 10)"


# ----------------------------------------------------------------------------------------------
# require_images: the messages a person reads.


def test_require_images_accepts_float_arrays() -> None:
    require_images(jnp.zeros((2, 3, 8, 8)), "here", 3)
    require_images(np.zeros((2, 3, 8, 8), np.float32), "here", 3)
    require_images(jnp.zeros((2, 8, 8, 3), jnp.float16), "here", 3, layout="NHWC")
    require_images(jnp.zeros((2, 7, 8, 8)), "here", None)


def test_require_images_accepts_bfloat16() -> None:
    """bf16 images are floating point (the layers promise bf16 compute for bf16 inputs)."""
    require_images(jnp.zeros((2, 3, 8, 8), jnp.bfloat16), "here", 3)


def test_require_images_rejects_non_arrays() -> None:
    with pytest.raises(TypeError, match=r"here: .*\(B, C, H, W\).*list"):
        require_images([[1.0]], "here", 3)


def test_three_d_input_mentions_rank_and_x_none() -> None:
    with pytest.raises(ShapeError) as info:
        require_images(jnp.zeros((3, 32, 32)), "conv1 (Conv2d)", 3)
    msg = str(info.value)
    assert "conv1 (Conv2d)" in msg
    assert "rank 4" in msg and "rank 3" in msg
    assert "x[None]" in msg


def test_rank_two_input_has_no_batch_hint() -> None:
    with pytest.raises(ShapeError, match="rank 2") as info:
        require_images(jnp.zeros((32, 32)), "m", 3)
    assert "x[None]" not in str(info.value)


def test_integer_images_are_a_type_error_mentioning_dtype() -> None:
    with pytest.raises(TypeError) as info:
        require_images(jnp.zeros((2, 3, 8, 8), jnp.int8), "m", 3)
    msg = str(info.value)
    assert "dtype" in msg and "int8" in msg
    assert not isinstance(info.value, ShapeError)


def test_nhwc_images_are_recognised() -> None:
    with pytest.raises(ShapeError) as info:
        require_images(jnp.zeros((2, 32, 32, 3)), "m", 3)
    msg = str(info.value)
    assert "NHWC" in msg
    assert "(B, C, H, W)" in msg
    assert "transpose(0, 3, 1, 2)" in msg


def test_wrong_channels_give_the_numbers() -> None:
    with pytest.raises(ShapeError) as info:
        require_images(jnp.zeros((2, 5, 8, 8)), "layer1.0.conv1 (Conv2d)", 4)
    msg = str(info.value)
    assert "layer1.0.conv1" in msg
    assert "C_in=4" in msg and "C=5" in msg
    assert "NHWC" not in msg


def test_nhwc_layout_checks_the_last_axis() -> None:
    require_images(jnp.zeros((2, 8, 8, 4)), "m", 4, layout="NHWC")
    with pytest.raises(ShapeError, match="C_in=4"):
        require_images(jnp.zeros((2, 4, 8, 8)), "m", 4, layout="NHWC")


# ----------------------------------------------------------------------------------------------
# set_checks and the decorator.


class _Halver(NCHWModule):
    """Returns fewer channels than its annotation promises."""

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W C"]:
        return x[..., : x.shape[-1] // 2]


def test_set_checks_returns_previous_and_toggles() -> None:
    before = checks_enabled()
    try:
        assert set_checks(False) == before
        assert checks_enabled() is False
        assert set_checks(True) is False
        assert checks_enabled() is True
    finally:
        set_checks(before)


def test_annotations_are_checked_by_jaxtyping() -> None:
    with pytest.raises(TypeCheckError):
        _Halver()(jnp.ones((1, 4, 3, 3)))


def test_set_checks_false_switches_off_both_kinds_of_check() -> None:
    previous = set_checks(False)
    try:
        y = _Halver()(jnp.ones((1, 4, 3, 3)))  # the annotation is wrong, but nobody checks
        assert y.shape == (1, 2, 3, 3)
        y = ReLU()(jnp.full((1, 2, 3, 3), -2, jnp.int32))  # int images pass without checks
        assert y.dtype == jnp.int32 and int(y.max()) == 0
    finally:
        set_checks(previous)
    with pytest.raises(TypeError, match="dtype"):
        ReLU()(jnp.full((1, 2, 3, 3), -2, jnp.int32))


def test_checks_run_at_trace_time_under_jit() -> None:
    relu = ReLU()
    f = jax.jit(lambda x: relu(x))
    with pytest.raises(ShapeError, match="x\\[None\\]"):
        f.lower(jax.ShapeDtypeStruct((3, 8, 8), jnp.float32))  # traced, never run
    assert f.lower(jax.ShapeDtypeStruct((1, 3, 8, 8), jnp.float32)) is not None


def test_recording_collects_internal_calls_with_depth() -> None:
    block = jresnet.BasicBlock(4, 4, 1, rngs=nnx.Rngs(0))
    with recording() as outer:
        with recording() as records:
            block(jnp.ones((2, 4, 5, 5)))
        assert outer == []  # the inner recorder does not leak into the outer one
    names = [type(r.module).__name__ for r in records]
    assert names[0] == "BasicBlock"
    assert names.count("Conv2d") == 2 and names.count("BatchNorm2d") == 2
    assert records[0].depth == 0 and all(r.depth == 1 for r in records[1:])
    assert records[0].in_shape == (2, 5, 5, 4)  # internal NHWC
    assert records[0].out_shape == (2, 5, 5, 4)


def test_jresnet_checks_env_var_disables_checks() -> None:
    pythonpath = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, "JRESNET_CHECKS": "0", "PYTHONPATH": pythonpath}
    code = "import jresnet.typing as t; print(t.checks_enabled())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_checks_leave_the_compiled_program_unchanged() -> None:
    """Checks run while tracing only: the lowered program is identical with them on and off."""
    import jax
    import jax.numpy as jnp

    import jresnet
    from jresnet.functional import apply, init

    graphdef, params, stats = init(jresnet.create_model("resnet20", depths=(1, 1, 1)))
    x = jnp.ones((2, 3, 32, 32))

    def lowered_text(on: bool) -> str:
        def forward(p, s, images):  # a fresh function: JAX caches traces per function
            return apply(graphdef, p, s, images, train=False)[0]

        previous = jresnet.set_checks(on)
        try:
            return jax.jit(forward).lower(params, stats, x).as_text()
        finally:
            jresnet.set_checks(previous)

    assert lowered_text(True) == lowered_text(False)
