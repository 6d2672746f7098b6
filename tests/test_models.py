"""jresnet.models: ResNetSpec validation, ResNet structure, torchvision key paths, features, defaults."""

from __future__ import annotations

import math
import re
from dataclasses import fields

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jresnet.blocks import BasicBlock, Bottleneck
from jresnet.layers import BatchNorm2d, Conv2d, Linear
from jresnet.models import ResNet, ResNetSpec
from jresnet.registry import create_model
from jresnet.typing import ShapeError

SPEC_FIELDS = [f.name for f in fields(ResNetSpec)]


def _abstract(name: str, **overrides) -> ResNet:
    return nnx.eval_shape(lambda: create_model(name, **overrides))


def _eval_shape(model: nnx.Module, shape: tuple[int, ...], method: str = "__call__"):
    """Abstract forward pass (nothing compiles); works for abstract and concrete models."""
    graphdef, state = nnx.split(model)

    def f(state, x):
        return getattr(nnx.merge(graphdef, state, copy=True), method)(x)

    return jax.eval_shape(f, state, jax.ShapeDtypeStruct(shape, jnp.float32))


def _flat_keys(model: nnx.Module) -> set[str]:
    return {".".join(str(p) for p in path) for path, _ in nnx.to_flat_state(nnx.state(model))}


def _tiny_spec(**kw) -> ResNetSpec:
    base = dict(depths=(1, 1), widths=(4, 8), strides=(1, 2), stem="cifar", stem_width=4, num_classes=3)
    base.update(kw)
    return ResNetSpec(**base)


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


# ----------------------------------------------------------------------------------------------
# Parameter paths mirror torchvision's state-dict keys.


def _torchvision_resnet18_keys() -> set[str]:
    """torchvision.models.resnet18().state_dict() keys, minus the num_batches_tracked buffers."""
    bn = ("weight", "bias", "running_mean", "running_var")
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{k}" for k in bn}
    for stage in range(1, 5):
        for b in range(2):
            prefix = f"layer{stage}.{b}"
            keys |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
            keys |= {f"{prefix}.bn{i}.{k}" for i in (1, 2) for k in bn}
            if stage > 1 and b == 0:
                keys.add(f"{prefix}.downsample.0.weight")
                keys |= {f"{prefix}.downsample.1.{k}" for k in bn}
    return keys


def test_resnet18_keys_are_torchvision_keys() -> None:
    model = _abstract("resnet18")
    expected = _torchvision_resnet18_keys()
    assert len(expected) == 122 - 20  # 122 state-dict entries, 20 of them num_batches_tracked
    assert _flat_keys(model) == expected


def test_parameters_and_statistics_have_the_right_kinds() -> None:
    model = _abstract("resnet18")
    params = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    stats = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}
    assert "bn1.running_mean" in stats and "layer2.0.downsample.1.running_var" in stats
    assert "bn1.weight" in params and "layer2.0.downsample.0.weight" in params and "fc.bias" in params
    assert not any(k.endswith(("running_mean", "running_var")) for k in params)
    assert params | stats == _flat_keys(model)


def test_resnet50_keys() -> None:
    keys = _flat_keys(_abstract("resnet50"))
    for key in ("layer1.0.conv3.weight", "layer1.0.bn3.running_var", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.weight", "layer4.2.conv3.weight"):
        assert key in keys
    assert "layer1.1.downsample.0.weight" not in keys


def test_resnet50d_keys_are_timm_keys() -> None:
    """timm's resnet50d: conv1 is Sequential(conv, bn, act, conv, bn, act, conv); every downsample is
    Sequential(pool or Identity, conv, bn), so its conv is always downsample.1 and its BN downsample.2."""
    keys = _flat_keys(_abstract("resnet50d", num_classes=1000))
    for key in ("conv1.0.weight", "conv1.1.weight", "conv1.1.running_var", "conv1.3.weight", "conv1.4.bias",
                "conv1.6.weight", "bn1.weight", "fc.weight",
                "layer2.0.downsample.1.weight", "layer2.0.downsample.2.weight",
                "layer2.0.downsample.2.running_mean", "layer4.0.downsample.1.weight",
                "layer1.0.downsample.1.weight", "layer1.0.downsample.2.weight",
                "layer1.0.downsample.2.running_var"):
        assert key in keys, key
    # timm's layer1 downsample.0 is a parameterless Identity
    assert "layer1.0.downsample.0.weight" not in keys


def test_module_paths_are_set_for_error_messages() -> None:
    model = _abstract("resnet50")
    assert model.conv1.path == "conv1"
    assert model.bn1.path == "bn1"
    assert model.maxpool.path == "maxpool"
    assert model.layer2[0].path == "layer2.0"
    assert model.layer2[0].conv1.path == "layer2.0.conv1"
    assert model.layer3[5].bn3.path == "layer3.5.bn3"
    assert model.layer1[0].downsample[0].path == "layer1.0.downsample.0"
    assert model.layer4[0].downsample[1].path == "layer4.0.downsample.1"
    assert model.fc.path == "fc"
    deep = _abstract("resnet50d")
    assert deep.conv1[3].path == "conv1.3"


# ----------------------------------------------------------------------------------------------
# Forward shapes.


def test_model_maps_images_to_logits() -> None:
    assert _eval_shape(_abstract("resnet50"), (2, 3, 224, 224)).shape == (2, 1000)
    assert _eval_shape(_abstract("resnet20"), (5, 3, 32, 32)).shape == (5, 10)
    assert _eval_shape(_abstract("resnet18", num_classes=7, in_channels=1), (3, 1, 28, 28)).shape == (3, 7)


def test_resnet50_features() -> None:
    model = _abstract("resnet50")
    maps = _eval_shape(model, (2, 3, 224, 224), "features")
    n = _conv_out(_conv_out(224, 7, 2, 3), 3, 2, 1)  # stem: 7x7/2/3 conv, 3x3/2/1 max pool: 56
    expected = []
    for width, stride in zip((64, 128, 256, 512), (1, 2, 2, 2), strict=True):
        n = _conv_out(n, 3, stride, 1)
        expected.append((2, width * 4, n, n))
    assert expected == [(2, 256, 56, 56), (2, 512, 28, 28), (2, 1024, 14, 14), (2, 2048, 7, 7)]
    assert [m.shape for m in maps] == expected


@pytest.mark.parametrize("size", [32, 33])
def test_cifar_features(size: int) -> None:
    maps = _eval_shape(_abstract("resnet20"), (2, 3, size, size), "features")
    expected, n = [], size
    for width, stride in zip((16, 32, 64), (1, 2, 2), strict=True):
        n = _conv_out(n, 3, stride, 1)
        expected.append((2, width, n, n))
    assert [m.shape for m in maps] == expected


def test_concrete_forward_is_finite_and_float32() -> None:
    model = ResNet(_tiny_spec(), rngs=nnx.Rngs(0))
    model.eval()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8)), jnp.float32)
    graphdef, state = nnx.split(model)
    logits, maps = jax.jit(lambda s, x: (lambda m: (m(x), m.features(x)))(nnx.merge(graphdef, s, copy=True)))(
        state, x)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
    assert [m.shape for m in maps] == [(2, 4, 8, 8), (2, 8, 4, 4)]


def test_model_input_errors() -> None:
    model = _abstract("resnet18")
    with pytest.raises(ShapeError) as info:
        _eval_shape(model, (2, 224, 224, 3))
    assert "NHWC" in str(info.value) and "(B, C, H, W)" in str(info.value)
    with pytest.raises(ShapeError, match=r"x\[None\]"):
        _eval_shape(model, (3, 224, 224))


def test_model_checks_under_jit() -> None:
    model = create_model("resnet20")
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, x: nnx.merge(graphdef, s, copy=True)(x))
    with pytest.raises(ShapeError, match="NHWC"):
        f.lower(state, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


# ----------------------------------------------------------------------------------------------
# Spec validation.


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(depths=()), "depths"),
        (dict(depths=(1, 0)), "depths"),
        (dict(widths=(4, -8)), "widths"),
        (dict(strides=(1, 0)), "strides"),
        (dict(strides=(1, 2, 2)), "strides"),
        (dict(depths=(1, 1.5)), "depths"),
        (dict(block="dense"), "block"),
        (dict(stem="tiny"), "stem"),
        (dict(shortcut="C"), "shortcut"),
        (dict(stem_width=0), "stem_width"),
        (dict(num_classes=0), "num_classes"),
        (dict(in_channels=0), "in_channels"),
        (dict(groups=0), "groups"),
        (dict(base_width=0), "base_width"),
        (dict(width_multiplier=0), "width_multiplier"),
        (dict(width_multiplier=True), "width_multiplier"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(block="bottleneck", shortcut="A"), "shortcut"),
    ],
)
def test_spec_rejects_bad_fields(changes, field) -> None:
    with pytest.raises(ValueError) as info:
        _tiny_spec(**changes)
    assert field in str(info.value)


def test_spec_replace() -> None:
    spec = _tiny_spec()
    assert spec.replace(num_classes=5).num_classes == 5
    assert spec.num_classes == 3
    with pytest.raises(ValueError, match="colour"):
        spec.replace(colour="red")
    with pytest.raises(ValueError, match="num_classes"):
        spec.replace(num_classes=-1)
    assert ResNetSpec(depths=[1, 2], widths=[4, 8], strides=[1, 2]).depths == (1, 2)  # lists become tuples


def test_deep_stem_needs_a_stem_width_of_at_least_two() -> None:
    """The deep stem's first convs have stem_width // 2 channels: stem_width=1 must be rejected by the
    spec, naming stem_width, not later by a Conv2d complaining about out_channels=0."""
    with pytest.raises(ValueError) as info:
        nnx.eval_shape(lambda: ResNet(_tiny_spec(stem="deep", stem_width=1), rngs=nnx.Rngs(0)))
    assert "stem_width" in str(info.value)


def test_basic_blocks_reject_groups_and_base_width() -> None:
    """BasicBlock has no grouped conv and no base width (torchvision raises for them); a spec that sets
    them must not build a model that silently ignores them."""
    with pytest.raises(ValueError, match="groups"):
        ResNet(_tiny_spec(groups=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="base_width"):
        ResNet(_tiny_spec(base_width=128), rngs=nnx.Rngs(0))


def test_resnet_requires_a_spec() -> None:
    with pytest.raises(TypeError, match="ResNetSpec"):
        ResNet({"depths": (1,)}, rngs=nnx.Rngs(0))  # type: ignore[arg-type]


_VALID = {
    "block": ("basic", "bottleneck", "preact_basic", "preact_bottleneck"),
    "stem": ("imagenet", "cifar", "deep"),
    "shortcut": ("A", "B", "D"),
}


def _mostly(draw, good, bad):
    """A valid value most of the time, an invalid one about once in twelve draws."""
    return draw(bad) if draw(st.integers(0, 11)) == 0 else draw(good)


@st.composite
def spec_fields(draw):
    stages = _mostly(draw, st.integers(1, 3), st.just(0))
    n_strides = _mostly(draw, st.just(stages), st.sampled_from([stages + 1, max(stages - 1, 0)]))
    block = _mostly(draw, st.sampled_from(_VALID["block"]), st.just("dense"))
    return dict(
        depths=tuple(_mostly(draw, st.integers(1, 2), st.integers(-1, 0)) for _ in range(stages)),
        widths=tuple(_mostly(draw, st.integers(1, 8), st.integers(-1, 0)) for _ in range(stages)),
        strides=tuple(_mostly(draw, st.integers(1, 3), st.just(0)) for _ in range(n_strides)),
        block=block,
        stem=_mostly(draw, st.sampled_from(_VALID["stem"]), st.just("tiny")),
        shortcut=_mostly(draw, st.sampled_from(_VALID["shortcut"]), st.just("C")),
        stem_width=_mostly(draw, st.integers(1, 8), st.integers(-1, 0)),
        width_multiplier=_mostly(draw, st.sampled_from([1.0, 0.5, 2]), st.sampled_from([0, -1.0])),
        num_classes=_mostly(draw, st.integers(1, 4), st.just(0)),
        in_channels=_mostly(draw, st.integers(1, 3), st.just(0)),
        groups=draw(st.sampled_from([1, 2])) if "bottleneck" in block else 1,
        drop_path_rate=_mostly(draw, st.sampled_from([0.0, 0.2]), st.just(1.0)),
    )


@settings(deadline=None, max_examples=40)
@given(spec_fields())
@example(dict(depths=(1,), widths=(4,), strides=(1,), block="basic", stem="deep", shortcut="B", stem_width=1,
              width_multiplier=1.0, num_classes=2, in_channels=3, groups=1, drop_path_rate=0.0))
@example(dict(depths=(1, 1), widths=(8, 4), strides=(1, 2), block="basic", stem="cifar", shortcut="A",
              stem_width=4, width_multiplier=1.0, num_classes=2, in_channels=3, groups=1, drop_path_rate=0.0))
@example(dict(depths=(1, 1, 1), widths=(1, 1, 1), strides=(2, 2, 2), block="basic", stem="imagenet", shortcut="A",
              stem_width=1, width_multiplier=1.0, num_classes=1, in_channels=1, groups=1, drop_path_rate=0.0))
def test_spec_either_builds_a_working_model_or_names_the_field(kw) -> None:
    try:
        spec = ResNetSpec(**kw)
        model = nnx.eval_shape(lambda: ResNet(spec, rngs=nnx.Rngs(0)))
    except ValueError as err:
        msg = str(err)
        assert any(re.search(rf"\b{name}\b", msg) for name in SPEC_FIELDS), msg
        return
    size = 16
    try:
        logits = _eval_shape(model, (2, kw["in_channels"], size, size))
    except ShapeError as err:  # a spec whose total stride exceeds 16 must say how large an image it needs
        need = re.search(r"feed at least (\d+)×\1 images \(got 16×16\)", str(err))
        assert need, err
        size = int(need[1])
        logits = _eval_shape(model, (2, kw["in_channels"], size, size))
    assert logits.shape == (2, kw["num_classes"])
    maps = _eval_shape(model, (2, kw["in_channels"], size, size), "features")
    expansion = 4 if "bottleneck" in kw["block"] else 1
    assert [m.shape[1] for m in maps] == [w * expansion for w in spec.stage_widths]


# ----------------------------------------------------------------------------------------------
# Defaults.


def test_batchnorm_defaults_in_a_model() -> None:
    model = _abstract("resnet50")
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm2d)]
    assert len(bns) == 1 + 16 * 3 + 4
    assert all(bn.eps == 1e-5 and bn.momentum == 0.9 for bn in bns)


def test_conv_init_in_a_model_is_kaiming_fan_out() -> None:
    spec = ResNetSpec(depths=(1,), widths=(64,), strides=(1,), stem="cifar", stem_width=64, num_classes=10)
    model = ResNet(spec, rngs=nnx.Rngs(0))
    w = np.asarray(model.layer1[0].conv2.weight[...], np.float64)  # (64, 64, 3, 3): 36,864 draws
    assert w.std() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    fc = np.asarray(model.fc.weight[...])
    assert np.abs(fc).max() <= 1 / math.sqrt(64)
    assert np.all(np.asarray(model.bn1.weight[...]) == 1)


def test_zero_init_residual_zeroes_the_last_bn_of_every_block() -> None:
    model = _abstract("resnet50", zero_init_residual=True)
    concrete = ResNet(_tiny_spec(zero_init_residual=True), rngs=nnx.Rngs(0))
    for block in (*concrete.layer1, *concrete.layer2):
        assert np.all(np.asarray(block.bn2.weight[...]) == 0)
        assert np.all(np.asarray(block.bn1.weight[...]) == 1)
    assert all(isinstance(b, Bottleneck) for b in model.layer3)


def test_drop_path_rate_grows_linearly_with_depth() -> None:
    model = ResNet(_tiny_spec(depths=(2, 2), drop_path_rate=0.3), rngs=nnx.Rngs(0))
    blocks = [*model.layer1, *model.layer2]
    assert blocks[0].drop_path is None  # rate 0 for the first block
    rates = [b.drop_path.dropout.rate for b in blocks[1:]]
    assert rates == pytest.approx([0.1, 0.2, 0.3])


def test_train_and_eval_switch_every_batchnorm() -> None:
    model = ResNet(_tiny_spec(), rngs=nnx.Rngs(0))
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm2d)]
    assert bns and not any(bn.use_running_average for bn in bns)
    model.eval()
    assert all(bn.use_running_average for bn in bns)
    model.train()
    assert not any(bn.use_running_average for bn in bns)


def test_stage_widths_and_structure() -> None:
    spec = ResNetSpec(depths=(4, 4, 4), widths=(16, 32, 64), strides=(1, 2, 2), width_multiplier=10)
    assert spec.stage_widths == (160, 320, 640)
    model = _abstract("resnet34")
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert all(isinstance(b, BasicBlock) for b in model.layer1)
    assert isinstance(model.conv1, Conv2d) and model.conv1.geometry.kernel == 7
    assert isinstance(model.fc, Linear) and model.fc.in_features == 512
    assert model.num_features == 512
    assert _abstract("resnet50").num_features == 2048


def test_a_tiny_image_into_resnet50_is_a_shape_error() -> None:
    """4×4 into resnet50: conv1 7/2/3 gives 2, the maxpool 1, so layer2.0.conv2 (stride 2) gets 1×1."""
    import jax
    import jax.numpy as jnp

    import jresnet

    model = jresnet.create_model("resnet50")
    model.eval()  # no BatchNorm updates inside eval_shape
    with pytest.raises(jresnet.ShapeError, match=r"layer2\.0\.conv2 .* receives a 1×1 map.*collapsed.*at maxpool"):
        jax.eval_shape(model, jax.ShapeDtypeStruct((1, 3, 4, 4), jnp.float32))
    # 31×31 still gives every stride-2 layer two pixels: ceil halving, 31 -> 16 -> 8 -> 8 -> 4 -> 2 -> 1
    assert jax.eval_shape(model, jax.ShapeDtypeStruct((1, 3, 31, 31), jnp.float32)).shape == (1, 1000)
