"""Fuzzed bad input: every failure is a ValueError (ShapeError, ConfigError), or TypeError, naming the culprit.

Hypothesis feeds the public entry points values of every wrong kind: ints as bools, floats, negatives and
strings; NaN and infinity; containers where scalars belong; arrays of the wrong rank, layout, dtype and
size. For each input an independent oracle (written here, not taken from the library) says which
arguments are at fault. The contract:

- a valid input works and gives the right answer (the output size by brute force, the logits' shape,
  the config value as written);
- an invalid one raises ValueError or TypeError whose message names one of the faulty arguments, fields,
  keys, or the word for the shape problem ("rank", "dtype", "channels", "collapses");
- nothing else: no XLA runtime error, no OverflowError / RecursionError / KeyError from deep inside, no
  hang, no silent wrong result.

The bugs this fuzzing found stay as regression tests at the end.

The number of examples run is counted per test and printed when the module finishes.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import jresnet
from jresnet.data import UnsafePickleError, safe_loads_pickle
from jresnet.layers import Conv2d
from jresnet.models import ResNet, ResNetSpec
from jresnet.shapes import ConvGeometry
from jresnet.train.config import ConfigError, RunConfig, load_config

EXAMPLES: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_example_count() -> Iterator[None]:
    yield
    total = sum(EXAMPLES.values())
    detail = ", ".join(f"{name} {n}" for name, n in sorted(EXAMPLES.items()))
    sys.__stderr__.write(f"\ntest_fuzz: {total} hypothesis examples ran ({detail})\n")


def ran(test: str) -> None:
    EXAMPLES[test] += 1


def assert_names(err: BaseException, words: set[str]) -> None:
    """``err`` is one of the allowed kinds and its message contains at least one of ``words``."""
    assert isinstance(err, ValueError | TypeError), f"{type(err).__name__}: {err}"
    assert "XlaRuntimeError" not in type(err).__name__, err
    message = str(err)
    assert any(w in message for w in words), f"message names none of {sorted(words)}: {message}"


def is_int(x: Any, minimum: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= minimum


WEIRD = st.one_of(
    st.booleans(), st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
    st.integers(-3, 0), st.lists(st.integers(-1, 3), max_size=3), st.dictionaries(st.text(max_size=2), st.integers(),
                                                                                 max_size=2),
    st.just(np.int64(3)), st.just(2.0), st.just("3"),
)
"""Values of the wrong kind for an int field (or of the right kind and out of range)."""
HUGE_TOO = st.one_of(WEIRD, st.just(10**30))
"""For pure arithmetic; a layer would try to allocate a kernel of 10**30 channels."""


# ----------------------------------------------------------------------------------------------
# ConvGeometry: kernel, stride, padding, dilation and the input size.


def _pad_strategy() -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(0, 4), st.sampled_from(["same", "valid", "SAME", "Valid", "full", ""]),
                     st.tuples(st.integers(0, 3), st.integers(0, 3)), st.lists(st.integers(-1, 3), max_size=3),
                     st.tuples(st.sampled_from(["same", 1.0, True, None]), st.integers(0, 2)), WEIRD)


def _geometry_faults(kernel: Any, stride: Any, padding: Any, dilation: Any) -> set[str]:
    faults = {name for name, v in (("kernel", kernel), ("stride", stride), ("dilation", dilation)) if not is_int(v, 1)}
    if isinstance(padding, str):
        ok = padding.lower() in ("same", "valid")
    elif isinstance(padding, tuple | list):
        ok = len(padding) == 2 and all(is_int(p, 0) for p in padding)
    else:
        ok = is_int(padding, 0)
    return faults if ok else faults | {"padding"}


def _windows(n: int, g: ConvGeometry) -> int:
    """Count window positions by sliding one, the way the seed defines stride."""
    if g.padding == "same":
        return -(-n // g.stride)  # lax's SAME: ceil(n / S) windows
        # (that the split of the padding matches lax is tested in test_shapes.py)
    lo, hi = (0, 0) if g.padding == "valid" else g.padding if isinstance(g.padding, tuple) else (g.padding,) * 2
    return len(range(0, n + lo + hi - (g.dilation * (g.kernel - 1) + 1) + 1, g.stride))


@settings(max_examples=400, deadline=None)
@given(kernel=st.one_of(st.integers(1, 7), HUGE_TOO), stride=st.one_of(st.integers(1, 4), HUGE_TOO),
       padding=_pad_strategy(), dilation=st.one_of(st.integers(1, 3), HUGE_TOO),
       n=st.one_of(st.integers(1, 40), st.integers(-2, 0), st.sampled_from([1.5, True, "8", None, 10**6])))
@example(kernel=3, stride=2, padding=0, dilation=1, n=64)  # 31, not 32
@example(kernel=True, stride=1, padding=0, dilation=1, n=8)
@example(kernel=3, stride=1, padding=(1, True), dilation=1, n=8)
def test_conv_geometry_is_right_or_names_the_argument(kernel, stride, padding, dilation, n) -> None:
    ran("ConvGeometry")
    faults = _geometry_faults(kernel, stride, padding, dilation)
    try:
        g = ConvGeometry(kernel, stride, padding, dilation)
    except Exception as err:  # noqa: BLE001 -- the assertion says what was allowed
        assert faults, f"valid geometry refused: {err!r}"
        assert_names(err, faults)
        return
    assert not faults, f"accepted invalid {sorted(faults)}: {g}"
    try:
        out = g.out_size(n)
    except Exception as err:  # noqa: BLE001
        if not is_int(n, 1):
            assert_names(err, {"input size"})
        else:
            assert _windows(n, g) < 1, f"refused a fitting input {n}: {err}"
            assert_names(err, {"does not fit"})
        return
    assert is_int(n, 1) and out == _windows(n, g) >= 1, (g, n, out)


# ----------------------------------------------------------------------------------------------
# ResNetSpec fields, through an abstract model and its forward pass.

SPEC_FIELDS = {f.name for f in dataclasses.fields(ResNetSpec)}
BLOCKS = ("basic", "bottleneck", "preact_basic", "preact_bottleneck")


def _mostly(valid: st.SearchStrategy[Any], weird: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A valid value about five times in six."""
    return st.one_of(valid, valid, valid, valid, valid, weird)


@st.composite
def spec_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    stages = draw(st.integers(1, 3))
    seq = st.lists(_mostly(st.integers(1, 2), WEIRD), min_size=stages, max_size=stages)
    per_stage = _mostly(seq.map(tuple), st.one_of(WEIRD, st.just(()), seq, st.lists(st.integers(1, 2), max_size=4)))
    kw = dict(
        depths=draw(per_stage),
        widths=draw(_mostly(st.lists(st.integers(1, 8), min_size=stages, max_size=stages).map(tuple),
                            st.one_of(WEIRD, st.just((4, -8)[:stages])))),
        strides=draw(_mostly(st.lists(st.integers(1, 3), min_size=stages, max_size=stages).map(tuple),
                             st.one_of(WEIRD, st.lists(st.integers(0, 2), max_size=4)))),
        block=draw(_mostly(st.sampled_from(BLOCKS), st.one_of(st.text(max_size=5), st.integers(), st.none(),
                                                              st.booleans(), st.just("Basic"), st.just(["basic"]),
                                                              st.just({"basic": 1})))),
        stem=draw(_mostly(st.sampled_from(["imagenet", "cifar", "deep"]), WEIRD)),
        shortcut=draw(_mostly(st.sampled_from(["A", "B", "D"]), st.one_of(WEIRD, st.just("b")))),
        stem_width=draw(_mostly(st.integers(1, 8), WEIRD)),
        width_multiplier=draw(_mostly(st.sampled_from([1.0, 0.5, 2, 1.7]),
                                      st.one_of(WEIRD, st.just(math.inf), st.just(-1.0), st.just(1e-9)))),
        num_classes=draw(_mostly(st.integers(1, 5), WEIRD)),
        in_channels=draw(_mostly(st.integers(1, 3), WEIRD)),
        groups=draw(_mostly(st.sampled_from([1, 1, 2]), WEIRD)),
        base_width=draw(_mostly(st.sampled_from([64, 64, 32]), WEIRD)),
        zero_init_residual=draw(_mostly(st.booleans(), st.one_of(st.just("no"), st.just(0), st.just(1), st.none()))),
        drop_path_rate=draw(_mostly(st.sampled_from([0.0, 0.1]), st.one_of(
            st.floats(allow_nan=True), st.just(1.0), st.just(-0.1), st.text(max_size=3), st.none(),
            st.booleans()))),
    )
    return kw


def _spec_faults(kw: dict[str, Any]) -> set[str]:
    """Fields the spec itself must refuse (combinations that only the blocks know come later)."""
    faults = set()
    for name in ("depths", "widths", "strides"):
        v = kw[name]
        if not isinstance(v, tuple | list) or not v or not all(is_int(x, 1) for x in v):
            faults.add(name)
    if not faults and not len(kw["depths"]) == len(kw["widths"]) == len(kw["strides"]):
        faults |= {"depths", "widths", "strides"}
    if not isinstance(kw["block"], str) or kw["block"] not in BLOCKS:
        faults.add("block")
    if kw["stem"] not in ("imagenet", "cifar", "deep"):
        faults.add("stem")
    if kw["shortcut"] not in ("A", "B", "D"):
        faults.add("shortcut")
    for name in ("stem_width", "num_classes", "in_channels", "groups", "base_width"):
        if not is_int(kw[name], 1):
            faults.add(name)
    wm = kw["width_multiplier"]
    if isinstance(wm, bool) or not isinstance(wm, int | float) or not 0 < wm < math.inf:
        faults.add("width_multiplier")
    dpr = kw["drop_path_rate"]
    if isinstance(dpr, bool) or not isinstance(dpr, int | float) or not 0 <= dpr < 1:
        faults.add("drop_path_rate")
    if kw["shortcut"] == "A" and kw["block"] in ("bottleneck", "preact_bottleneck"):
        faults.add("shortcut")
    if kw["stem"] == "deep" and is_int(kw["stem_width"], 1) and kw["stem_width"] < 2:
        faults.add("stem_width")  # the deep stem's first convs have stem_width // 2 channels
    if kw["block"] in ("basic", "preact_basic") and (kw["groups"] != 1 or kw["base_width"] != 64):
        faults |= {"groups", "base_width"}  # a basic block has neither
    if not isinstance(kw["zero_init_residual"], bool):
        faults.add("zero_init_residual")
    return faults


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_kwargs())
def test_spec_builds_a_right_model_or_names_the_field(kw: dict[str, Any]) -> None:
    ran("ResNetSpec")
    faults = _spec_faults(kw)
    try:
        spec = ResNetSpec(**kw)
    except Exception as err:  # noqa: BLE001
        assert faults, f"valid spec refused: {err!r}"
        assert_names(err, faults)
        return
    assert not faults, f"accepted invalid {sorted(faults)}: {kw}"
    try:
        model = nnx.eval_shape(lambda: ResNet(spec, rngs=nnx.Rngs(0)))
    except Exception as err:  # noqa: BLE001 -- combinations the blocks refuse (groups, base_width, stem_width)
        assert_names(err, SPEC_FIELDS)
        return
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, kw["in_channels"], 32, 32), jnp.float32)
    logits = jax.eval_shape(lambda s, v: nnx.merge(graphdef, s, copy=True)(v), state, x)  # nothing compiles
    assert logits.shape == (2, kw["num_classes"])


# ----------------------------------------------------------------------------------------------
# Config values through load_config(None, ["section.key=value"]).

SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}
LEAF_KEYS = sorted(["name"] + [f"{section}.{f.name}" for section in ("data", "model", "optim", "train")
                               for f in dataclasses.fields(getattr(RunConfig(), section))])
PLAIN = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**300, 10**300), st.integers(-3, 300),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
              st.sampled_from(["digits", "sgd", "cosine", "fp32", "stop", "auto", "fresh", "cifar1", "adam"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=2)),
    max_leaves=6,
)


def _yaml(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("...").strip()


keys = st.one_of(
    st.sampled_from(LEAF_KEYS), st.sampled_from(LEAF_KEYS), st.sampled_from(sorted(SECTIONS)),
    st.builds(lambda k, extra: f"{k}.{extra}", st.sampled_from(LEAF_KEYS), st.text("abcxyz_", min_size=1, max_size=4)),
    st.builds(lambda s, f: f"{s}.{f}", st.sampled_from(["data", "model", "optim", "train", "trian", "x"]),
              st.text("abcdefghilmnoprstuvwxyz_", min_size=1, max_size=8)),
    st.text(max_size=12).filter(lambda k: "=" not in k),
)
values = st.one_of(PLAIN.map(_yaml), st.text(max_size=12))


@settings(max_examples=500, deadline=None)
@given(key=keys, value=values, before=st.sampled_from([[], ["train.steps=10"], ["optim.lr=0.05"]]))
@example(key="optim.lr", value="1e-4", before=[])  # YAML 1.1 would read a string
@example(key="train.steps", value="5", before=["train.epochs=5"])  # steps replaces epochs
@example(key="optim", value="{lr: {a: 1}}", before=[])
@example(key="name", value="a/b", before=[])
@example(key="optim.lr", value="!!python/name:os.system", before=[])
@example(key="train.batch_size", value="1.0e+3", before=[])
def test_config_values_load_as_written_or_name_the_key(key: str, value: str, before: list[str]) -> None:
    ran("load_config")
    from jresnet.train.config import _parse_override

    text = f"{key}={value}"
    try:
        cfg = load_config(None, [*before, text])
    except ConfigError as err:
        message = str(err)
        if err.key is None:  # a malformed override, YAML it cannot parse, or a rule over two keys
            assert repr(text) in message or "override" in message or key.strip() in message, message
        else:
            top = key.strip().split(".")[0]
            assert err.key.split(".")[0] == top or key.strip().startswith(err.key.split("[")[0]), (err.key, key)
            assert err.key.split("[")[0] in message, message
        return
    except Exception as err:  # noqa: BLE001
        raise AssertionError(f"{text!r}: {type(err).__name__}: {err}") from err
    assert isinstance(cfg, RunConfig)
    k = key.strip()
    if k in LEAF_KEYS:  # not a silent rewrite: the stored value is the value written
        expected = _parse_override(text)[1]
        section, _, field = k.rpartition(".")
        got = getattr(getattr(cfg, section) if section else cfg, field)
        if isinstance(expected, list):
            expected = tuple(expected)
        assert got == expected or repr(got) == repr(expected), (got, expected)  # repr: NaN inside a mapping
        assert type(got) is type(expected) or (type(got), type(expected)) == (float, int), (got, expected)


# ----------------------------------------------------------------------------------------------
# Images into resnet20 and into a Conv2d: eagerly and under jax.jit.

MODEL = jresnet.create_model("resnet20")
MODEL.eval()
GRAPHDEF, STATE = nnx.split(MODEL)
JITTED_MODEL = jax.jit(lambda state, x: nnx.merge(GRAPHDEF, state, copy=True)(x))

DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16, "int8": jnp.int8,
          "int32": jnp.int32, "uint8": jnp.uint8, "bool": jnp.bool_, "complex64": jnp.complex64}
FLOATS = {"float32", "float16", "bfloat16"}


@st.composite
def images(draw: st.DrawFn, channels: int) -> tuple[Any, dict[str, str]]:
    """An input and its faults: {fault: word the message must contain} (empty when the input is valid)."""
    kind = draw(st.sampled_from(["jax"] * 6 + ["numpy", "list", "scalar", "none"]))
    if kind in ("list", "scalar", "none"):
        value = {"list": [[1.0, 2.0]], "scalar": 3.0, "none": None}[kind]
        return value, {"not an array": "array", "rank": "rank"}  # under jit a float is a rank-0 array
    layout = draw(st.sampled_from(["NCHW"] * 4 + ["NHWC", "CHW", "BCHW1", "HW", "empty"]))
    b, h, w = draw(st.integers(0, 2)), draw(st.integers(0, 9)), draw(st.integers(0, 9))
    c = draw(st.sampled_from([channels] * 4 + [1, 2, 4, 16]))
    shape = {"NCHW": (b, c, h, w), "NHWC": (b, h, w, c), "CHW": (c, h, w), "BCHW1": (b, c, h, w, 1), "HW": (h, w),
             "empty": ()}[layout]
    dtype = draw(st.sampled_from(["float32"] * 4 + sorted(DTYPES)))
    faults = {}
    if len(shape) != 4:
        faults["rank"] = "rank"
    if dtype not in FLOATS:
        faults["dtype"] = "dtype"
    if len(shape) == 4 and shape[1] != channels:
        faults["channels"] = "C_in"
    if len(shape) == 4 and min(shape[2], shape[3]) < 3:
        # 0: a window cannot fit; 1 or 2: layer3's stride-2 conv would get a 1-pixel map (total stride 4)
        faults["size"] = "collapse"
    if layout == "NHWC" and shape[1] == channels:
        assume(False)  # (B, H, W, C) with H == C is a valid (B, C, H, W) image: no one can tell
    x = jnp.zeros(shape, DTYPES[dtype])
    if kind == "numpy":
        x = np.zeros(shape, np.float32 if dtype == "bfloat16" else np.dtype(dtype))  # accepted like a jax array
    return x, faults


def _under_jit(x: Any, faults: dict[str, str]) -> dict[str, str]:
    """The faults to expect when ``x`` goes through jax.jit: the same as eagerly."""
    return dict(faults)


def _check(call: Any, x: Any, faults: dict[str, str], expected_shape: tuple[int, ...], where: str) -> None:
    try:
        out = call(x)
    except Exception as err:  # noqa: BLE001
        assert faults, f"{where}: valid input {getattr(x, 'shape', x)} {getattr(x, 'dtype', '')} refused: {err!r}"
        assert_names(err, set(faults.values()))
        return
    assert not faults, f"{where}: accepted input with {sorted(faults)}: {getattr(x, 'shape', x)}"
    assert tuple(out.shape) == expected_shape, (where, out.shape, expected_shape)


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(images(channels=3))
def test_bad_images_into_resnet20_are_named_eagerly_and_under_jit(case: tuple[Any, dict[str, str]]) -> None:
    ran("resnet20 input")
    x, faults = case
    expected = (x.shape[0], 10) if not _under_jit(x, faults) else ()
    if faults:  # an eager call with a bad input fails in its checks, before any computing
        _check(MODEL, x, faults, expected, "eager")
    else:  # a valid one would compile every layer for its shape; its shape is checked abstractly here,
        _check(lambda v: jax.eval_shape(MODEL, v), x, faults, expected, "eval_shape")  # concretely below
    _check(lambda v: JITTED_MODEL.lower(STATE, v).out_info, x, _under_jit(x, faults), expected, "jit")


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "dtype"), [((2, 3, 5, 7), jnp.float32), ((1, 3, 3, 3), jnp.bfloat16)])
def test_valid_images_run_eagerly_and_under_jit_with_the_same_result(shape, dtype) -> None:
    """Concrete runs (each new shape compiles every layer, several seconds on CPU): odd sizes, and 1×1
    images, which every stride-2 stage keeps at 1×1."""
    x = jax.random.normal(jax.random.key(0), shape).astype(dtype)
    eager, jitted = MODEL(x), JITTED_MODEL(STATE, x)
    assert eager.shape == jitted.shape == (shape[0], 10) and eager.dtype == jitted.dtype == jnp.float32
    assert np.isfinite(np.asarray(eager)).all()
    tol = 1e-4 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=tol, atol=tol)


def _conv_args() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(dict(
        in_channels=_mostly(st.integers(1, 4), WEIRD), out_channels=_mostly(st.integers(1, 4), WEIRD),
        kernel_size=_mostly(st.integers(1, 5), WEIRD), stride=_mostly(st.integers(1, 3), WEIRD),
        padding=_mostly(st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"]),
                                  st.tuples(st.integers(0, 2), st.integers(0, 2))), _pad_strategy()),
        dilation=_mostly(st.integers(1, 2), WEIRD), groups=_mostly(st.just(1), st.one_of(WEIRD, st.just(2))),
    ))


def _conv_faults(a: dict[str, Any]) -> set[str]:
    faults = {n for n in ("in_channels", "out_channels", "groups") if not is_int(a[n], 1)}
    if not faults and (a["in_channels"] % a["groups"] or a["out_channels"] % a["groups"]):
        faults.add("groups")
    geometry = _geometry_faults(a["kernel_size"], a["stride"], a["padding"], a["dilation"])
    return faults | {"kernel" if g == "kernel" else g for g in geometry}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(args=_conv_args(), data=st.data())
def test_conv2d_arguments_and_inputs_are_checked_eagerly_and_under_jit(args: dict[str, Any],
                                                                       data: st.DataObject) -> None:
    ran("Conv2d")
    faults = _conv_faults(args)
    try:
        conv = Conv2d(**args, rngs=nnx.Rngs(0))
    except Exception as err:  # noqa: BLE001
        assert faults, f"valid Conv2d refused: {err!r}"
        assert_names(err, faults)
        return
    assert not faults, f"accepted invalid {sorted(faults)}: {args}"
    x, input_faults = data.draw(images(channels=args["in_channels"]))
    g = conv.geometry
    if not input_faults and (_windows(x.shape[2], g) < 1 or _windows(x.shape[3], g) < 1):
        input_faults = {"size": "collapses"}  # the kernel does not fit the image
    jit_faults = _under_jit(x, input_faults)
    out_hw = (_windows(x.shape[2], g), _windows(x.shape[3], g)) if not jit_faults else ()
    expected = () if jit_faults else (x.shape[0], args["out_channels"], *out_hw)
    _check(conv, x, input_faults, expected, "eager")  # small: valid calls really run
    _check(lambda v: jax.jit(lambda y: conv(y)).lower(v).out_info, x, jit_faults, expected, "jit")


# ----------------------------------------------------------------------------------------------
# Safe loading: garbage and mutated pickles into the restricted unpickler.


class _WritesMarker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))  # unpickled by plain pickle, this creates the file


@settings(max_examples=300, deadline=None)
@given(data=st.data(), protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_garbage_and_mutated_pickles_are_value_errors_and_run_nothing(tmp_path_factory: Any, data: st.DataObject,
                                                                      protocol: int) -> None:
    ran("safe pickle")
    marker = tmp_path_factory.getbasetemp() / "fuzzed-pickle-ran-code"
    batch = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"labels": [1, 2],
             b"extra": _WritesMarker(str(marker)) if data.draw(st.booleans()) else b"ok"}
    blob = bytearray(pickle.dumps(batch, protocol=protocol))
    for _ in range(data.draw(st.integers(0, 4))):  # flip, cut or insert bytes
        op, at = data.draw(st.sampled_from(["flip", "cut", "insert"])), data.draw(st.integers(0, len(blob)))
        if op == "flip" and at < len(blob):
            blob[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del blob[at:]
        else:
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    if data.draw(st.integers(0, 5)) == 0:
        blob = bytearray(data.draw(st.binary(max_size=64)))
    try:
        safe_loads_pickle(bytes(blob), source="fuzzed.pkl")
    except UnsafePickleError as err:
        assert "fuzzed.pkl" in str(err) and "refused" in str(err)
    except ValueError as err:
        assert "fuzzed.pkl" in str(err)
    except Exception as err:  # noqa: BLE001
        raise AssertionError(f"{type(err).__name__}: {err}") from err
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_payload_that_would_run_code_is_refused_at_every_protocol(tmp_path: Path, protocol: int) -> None:
    """test_safe_pickle.py covers protocol 2 (as the CIFAR files are); protocols 0-1 spell globals with
    other opcodes (GLOBAL/INST text) and 4-5 with STACK_GLOBAL: all must reach find_class."""
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafePickleError, match="refused to load global"):
        safe_loads_pickle(pickle.dumps(_WritesMarker(str(marker)), protocol=protocol), source="payload")
    assert not marker.exists()


def test_a_persistent_id_is_refused() -> None:
    """A persistent id hands the unpickler an object from outside the stream; none is allowed."""
    import io

    class WithPersistentId(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "outside" if obj == "secret" else None

    buffer = io.BytesIO()
    WithPersistentId(buffer, protocol=2).dump(["secret"])
    with pytest.raises(UnsafePickleError, match="persistent id 'outside'"):
        safe_loads_pickle(buffer.getvalue(), source="payload")


# ----------------------------------------------------------------------------------------------
# Bugs this fuzzing found, fixed since: each stays as a regression test.


def test_config_huge_int_for_a_float_key() -> None:
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, ["optim.lr=" + "9" * 400])


@pytest.mark.parametrize("value", ["model.overrides=&a {x: *a}", "optim.milestones=" + "[" * 3000 + "]" * 3000],
                         ids=["alias loop", "3000 deep"])
def test_config_recursive_yaml(value: str) -> None:
    with pytest.raises(ConfigError, match=value.split("=")[0]):
        load_config(None, [value])


def test_spec_infinite_width_multiplier() -> None:
    with pytest.raises(ValueError, match="width_multiplier"):
        ResNetSpec(depths=(1,), widths=(4,), strides=(1,), width_multiplier=math.inf).stage_widths  # noqa: B018


def test_spec_block_unhashable() -> None:
    with pytest.raises(ValueError, match="block"):
        ResNetSpec(depths=(1,), widths=(4,), strides=(1,), block=["basic"])  # type: ignore[arg-type]


def test_spec_bool_drop_path_rate() -> None:
    with pytest.raises(ValueError, match="drop_path_rate"):
        ResNetSpec(depths=(1,), widths=(4,), strides=(1,), drop_path_rate=False)


@pytest.mark.parametrize("blob", [b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"abc.",
                                  b"\x80\x04\x95" + (2**64 - 1).to_bytes(8, "little") + b"N.",
                                  b"\x80\x02cnumpy\ndtype\n]a."],
                         ids=["BINBYTES8 of 2**62 bytes", "FRAME of 2**64-1 bytes", "APPEND onto numpy.dtype"])
def test_malformed_pickle_is_a_clear_error(blob: bytes) -> None:
    with pytest.raises(ValueError, match="payload: not a valid pickle"):
        safe_loads_pickle(blob, source="payload")
