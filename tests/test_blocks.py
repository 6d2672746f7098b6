"""jresnet.blocks: shortcuts (identity, A, B, D), the checked residual add, zero-init, drop-path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jresnet.blocks import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    ShortcutOptionA,
    choose_shortcut,
)
from jresnet.layers import AvgPool2d, BatchNorm2d, Conv2d, to_nhwc
from jresnet.models import ResNet, ResNetSpec
from jresnet.typing import ShapeError


def _randn(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _run(module: nnx.Module, x) -> np.ndarray:
    """Call ``module`` under one jax.jit on a copy (train-mode BN updates stay in the copy)."""
    graphdef, state = nnx.split(module)

    def f(state, x):
        return nnx.merge(graphdef, state, copy=True)(x)

    return np.asarray(jax.jit(f)(state, jnp.asarray(x)))


def _shape(module: nnx.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    graphdef, state = nnx.split(module)
    return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s, copy=True)(x), state,
                          jax.ShapeDtypeStruct(shape, jnp.float32)).shape


def _bn_train(y: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """BatchNorm with batch statistics (biased variance), weight 1 and bias 0, over (B, H, W)."""
    mean = y.mean(axis=(0, 2, 3), keepdims=True)
    var = y.var(axis=(0, 2, 3), keepdims=True)
    return (y - mean) / np.sqrt(var + eps)


def _conv1x1(x: np.ndarray, weight: np.ndarray, stride: int) -> np.ndarray:
    return np.einsum("bchw,oc->bohw", x[:, :, ::stride, ::stride], weight[:, :, 0, 0])


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


# ----------------------------------------------------------------------------------------------
# choose_shortcut


@pytest.mark.parametrize("kind", ["A", "B", "D"])
def test_shape_keeping_blocks_use_identity(kind) -> None:
    assert choose_shortcut(16, 16, 1, kind) == "identity"


@pytest.mark.parametrize(
    ("cin", "cout", "stride", "kind"),
    [(16, 32, 2, "B"), (16, 32, 1, "B"), (16, 16, 2, "B"), (16, 32, 2, "A"), (16, 16, 2, "A"),
     (64, 256, 1, "D"),
     (256, 128, 2, "D"), (256, 128, 2, "B")],
)
def test_shape_changing_blocks_use_the_configured_kind(cin, cout, stride, kind) -> None:
    assert choose_shortcut(cin, cout, stride, kind) == kind


def test_choose_shortcut_rejections() -> None:
    with pytest.raises(ValueError) as info:
        choose_shortcut(32, 16, 2, "A")  # zero-padding cannot remove channels
    assert "shortcut" in str(info.value) and "32" in str(info.value) and "16" in str(info.value)
    with pytest.raises(ValueError, match="'C'"):
        choose_shortcut(16, 32, 2, "C")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Shortcut structure


def test_identity_shortcut_when_the_shape_is_kept(rngs) -> None:
    block = BasicBlock(16, 16, 1, rngs=rngs)
    assert block.shortcut_kind == "identity" and block.shortcut_name == "identity"
    assert block.downsample is None
    assert _shape(block, (2, 16, 9, 9)) == (2, 16, 9, 9)


def test_projection_shortcut_b(rngs) -> None:
    block = BasicBlock(16, 32, 2, rngs=rngs)
    assert block.shortcut_kind == "B" and block.shortcut_name == "projection (B)"
    conv, bn = block.downsample
    assert isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d)
    assert conv.weight.shape == (32, 16, 1, 1)
    assert (conv.geometry.kernel, conv.geometry.stride, conv.geometry.padding) == (1, 2, 0)
    assert conv.bias is None
    assert bn.num_features == 32
    keys = {".".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(block))}
    assert {"downsample.0.weight", "downsample.1.weight", "downsample.1.bias", "downsample.1.running_mean",
            "downsample.1.running_var"} <= keys
    # 3x3/2/1 on 9: (9 + 2 - 3)//2 + 1 = 5; the 1x1/2/0 shortcut: (9 - 1)//2 + 1 = 5
    assert _shape(block, (2, 16, 9, 9)) == (2, 32, 5, 5)


def test_projection_shortcut_numerics(rngs) -> None:
    block = BasicBlock(4, 8, 2, rngs=rngs)
    x = _randn(0, 3, 4, 6, 6)
    graphdef, state = nnx.split(block)

    def shortcut(state, x):
        return nnx.merge(graphdef, state, copy=True).shortcut_nhwc(to_nhwc(x))

    got = np.asarray(jax.jit(shortcut)(state, jnp.asarray(x))).transpose(0, 3, 1, 2)
    expected = _bn_train(_conv1x1(x, np.asarray(block.downsample[0].weight[...]), 2))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_option_a_has_no_parameters_and_pads_zeros(rngs) -> None:
    block = BasicBlock(16, 32, 2, shortcut="A", rngs=rngs)
    assert block.shortcut_kind == "A" and "(A)" in block.shortcut_name
    assert isinstance(block.downsample, ShortcutOptionA)
    assert jax.tree.leaves(nnx.state(block.downsample)) == []
    x = _randn(1, 2, 16, 7, 7)  # odd: x[::2] keeps ceil(7/2) = 4 rows, as the strided 3x3 conv does
    y = _run(ShortcutOptionA(16, 32, 2), x)
    assert y.shape == (2, 32, 4, 4)
    # He et al.'s option A pads planes//4 = 8 zero channels on each side of the 16 kept ones
    np.testing.assert_array_equal(y[:, :8], 0)
    np.testing.assert_array_equal(y[:, 24:], 0)
    np.testing.assert_array_equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert _shape(block, (2, 16, 7, 7)) == (2, 32, 4, 4)


def test_option_a_same_width_is_plain_subsampling() -> None:
    x = _randn(2, 1, 3, 6, 6)
    np.testing.assert_array_equal(_run(ShortcutOptionA(3, 3, 2), x), x[:, :, ::2, ::2])


def _avgpool2_ceil(x: np.ndarray) -> np.ndarray:
    """2x2/2 average pool, ceil mode, counting only real pixels."""
    b, c, h, w = x.shape
    oh, ow = -(-h // 2), -(-w // 2)
    out = np.zeros((b, c, oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, 2 * i: 2 * i + 2, 2 * j: 2 * j + 2].mean(axis=(2, 3))
    return out


def test_option_d_is_avgpool_then_projection(rngs) -> None:
    block = Bottleneck(16, 8, 2, shortcut="D", rngs=rngs)  # 16 -> 32 channels
    assert block.shortcut_kind == "D" and "(D)" in block.shortcut_name
    pool, conv, bn = block.downsample
    assert isinstance(pool, AvgPool2d) and pool.ceil_mode and not pool.count_include_pad
    assert (pool.geometry.kernel, pool.geometry.stride) == (2, 2)
    assert isinstance(conv, Conv2d) and conv.geometry.stride == 1 and conv.weight.shape == (32, 16, 1, 1)
    assert isinstance(bn, BatchNorm2d)
    x = _randn(3, 2, 16, 7, 7)
    graphdef, state = nnx.split(block)
    shortcut = jax.jit(lambda s, x: nnx.merge(graphdef, s, copy=True).shortcut_nhwc(to_nhwc(x)))
    got = shortcut(state, jnp.asarray(x))
    expected = _bn_train(_conv1x1(_avgpool2_ceil(x), np.asarray(conv.weight[...]), 1))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), expected, rtol=1e-4, atol=1e-4)
    # the main branch's 3x3/2/1 conv gives (7 + 2 - 3)//2 + 1 = 4, as ceil(7/2) does
    assert _shape(block, (2, 16, 7, 7)) == (2, 32, 4, 4)


def test_option_d_at_stride_one_has_no_pool(rngs) -> None:
    block = Bottleneck(16, 8, 1, shortcut="D", rngs=rngs)
    kinds = [type(m).__name__ for m in block.downsample]
    assert "AvgPool2d" not in kinds
    assert kinds[-2:] == ["Conv2d", "BatchNorm2d"]
    assert block.downsample[-2].geometry.stride == 1
    assert _shape(block, (2, 16, 5, 5)) == (2, 32, 5, 5)


def test_preact_projection_has_no_batchnorm(rngs) -> None:
    block = PreActBasicBlock(16, 32, 2, rngs=rngs)
    assert [type(m).__name__ for m in block.downsample] == ["Conv2d"]
    assert _shape(block, (2, 16, 8, 8)) == (2, 32, 4, 4)
    assert PreActBasicBlock(16, 16, 1, rngs=rngs).downsample is None


# ----------------------------------------------------------------------------------------------
# Bottleneck structure: V1.5 stride placement, ResNeXt and wide widths.


def test_bottleneck_puts_the_stride_in_the_3x3(rngs) -> None:
    block = Bottleneck(256, 128, 2, rngs=rngs)
    assert block.conv1.geometry.stride == 1 and block.conv1.weight.shape == (128, 256, 1, 1)
    assert block.conv2.geometry.stride == 2 and block.conv2.weight.shape == (128, 128, 3, 3)
    assert block.conv3.weight.shape == (512, 128, 1, 1)
    assert block.out_channels == 512
    assert _shape(block, (1, 256, 14, 14)) == (1, 512, 7, 7)


@pytest.mark.parametrize(
    ("groups", "base_width", "width"),
    [(32, 4, 128), (1, 128, 128), (1, 64, 64)],  # resnext50_32x4d, wide_resnet50_2, resnet50 in layer1
)
def test_bottleneck_width(groups, base_width, width) -> None:
    block = nnx.eval_shape(
        lambda: Bottleneck(64, 64, 1, groups=groups, base_width=base_width, rngs=nnx.Rngs(0)))
    assert block.conv1.weight.shape == (width, 64, 1, 1)
    assert block.conv2.weight.shape == (width, width // groups, 3, 3)
    assert block.conv3.weight.shape == (256, width, 1, 1)


def test_preact_bottleneck_shapes(rngs) -> None:
    block = PreActBottleneck(64, 16, 2, rngs=rngs)
    assert block.bn1.num_features == 64
    assert _shape(block, (2, 64, 8, 8)) == (2, 64, 4, 4)


# ----------------------------------------------------------------------------------------------
# The residual add.


def test_residual_add_names_both_shapes_and_both_fixes(rngs) -> None:
    block = BasicBlock(16, 32, 2, rngs=rngs)
    with pytest.raises(ShapeError) as info:
        block.residual_add(jnp.zeros((2, 4, 4, 32)), jnp.zeros((2, 8, 8, 16)))
    msg = str(info.value)
    assert "BasicBlock" in msg
    assert "(B=2, C=32, H=4, W=4)" in msg and "(B=2, C=16, H=8, W=8)" in msg
    assert "stride 1" in msg and "P=(K-1)/2" in msg  # fix 1: keep the shape
    assert "projection" in msg and "1×1 conv" in msg  # fix 2: project the shortcut


def test_missing_projection_in_a_model_names_the_block() -> None:
    spec = ResNetSpec(depths=(1, 1), widths=(4, 8), strides=(1, 2), stem="cifar", stem_width=4, num_classes=3)
    model = nnx.eval_shape(lambda: ResNet(spec, rngs=nnx.Rngs(0)))
    assert model.layer2[0].shortcut_kind == "B"
    model.layer2[0].downsample = None  # break the block: F(x) is 8×4×4, x is 4×8×8
    with pytest.raises(ShapeError) as info:
        _shape(model, (2, 3, 8, 8))
    msg = str(info.value)
    assert msg.startswith("layer2.0 (BasicBlock)")
    assert "(B=2, C=8, H=4, W=4)" in msg and "(B=2, C=4, H=8, W=8)" in msg


# ----------------------------------------------------------------------------------------------
# zero_init_residual: each block starts as (relu of) its shortcut.


def test_zero_init_basic_block_identity_is_relu_x(rngs) -> None:
    block = BasicBlock(4, 4, 1, zero_init_residual=True, rngs=rngs)
    assert np.all(np.asarray(block.bn2.weight[...]) == 0)
    x = _randn(4, 3, 4, 5, 5)
    np.testing.assert_allclose(_run(block, x), _relu(x), atol=1e-6)
    # and it is not a no-op without zero-init
    assert not np.allclose(_run(BasicBlock(4, 4, 1, rngs=nnx.Rngs(0)), x), _relu(x), atol=1e-3)


def test_zero_init_basic_block_projection_is_relu_of_shortcut(rngs) -> None:
    block = BasicBlock(4, 8, 2, zero_init_residual=True, rngs=rngs)
    x = _randn(5, 3, 4, 6, 6)
    # train mode: the shortcut's BN normalises with this batch's statistics
    expected = _relu(_bn_train(_conv1x1(x, np.asarray(block.downsample[0].weight[...]), 2)))
    np.testing.assert_allclose(_run(block, x), expected, rtol=1e-4, atol=1e-4)


def test_zero_init_bottleneck(rngs) -> None:
    block = Bottleneck(16, 4, 1, zero_init_residual=True, rngs=rngs)
    assert np.all(np.asarray(block.bn3.weight[...]) == 0)
    assert np.all(np.asarray(block.bn2.weight[...]) == 1)
    x = _randn(6, 2, 16, 4, 4)
    np.testing.assert_allclose(_run(block, x), _relu(x), atol=1e-6)
    proj = Bottleneck(8, 4, 2, zero_init_residual=True, rngs=rngs)
    x = _randn(7, 3, 8, 6, 6)
    expected = _relu(_bn_train(_conv1x1(x, np.asarray(proj.downsample[0].weight[...]), 2)))
    np.testing.assert_allclose(_run(proj, x), expected, rtol=1e-4, atol=1e-4)


def test_zero_init_preact_block_is_the_shortcut(rngs) -> None:
    block = PreActBasicBlock(4, 4, 1, zero_init_residual=True, rngs=rngs)
    x = _randn(8, 2, 4, 5, 5)
    np.testing.assert_allclose(_run(block, x), x, atol=1e-6)  # no relu after a pre-activation add
    proj = PreActBasicBlock(4, 8, 2, zero_init_residual=True, rngs=rngs)
    # the projection sees the pre-activated input relu(bn1(x))
    expected = _conv1x1(_relu(_bn_train(x)), np.asarray(proj.downsample[0].weight[...]), 2)
    np.testing.assert_allclose(_run(proj, x), expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Drop-path.


def test_drop_path_is_identity_in_eval_mode() -> None:
    x = _randn(9, 8, 4, 5, 5)
    dropped = BasicBlock(4, 4, 1, drop_path=0.95, rngs=nnx.Rngs(0))
    plain = BasicBlock(4, 4, 1, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(dropped.conv1.weight[...]), np.asarray(plain.conv1.weight[...]))
    dropped.eval()
    plain.eval()
    np.testing.assert_allclose(_run(dropped, x), _run(plain, x), rtol=1e-6, atol=1e-6)


def test_drop_path_drops_most_branches_in_train_mode() -> None:
    block = BasicBlock(4, 4, 1, drop_path=0.95, rngs=nnx.Rngs(0))
    assert block.drop_path is not None
    x = _randn(10, 64, 4, 3, 3)
    y = _run(block, x)
    branch_dropped = np.all(np.isclose(y, _relu(x), atol=1e-6), axis=(1, 2, 3))
    # binomial(64, 0.95): mean 60.8, sd 1.7
    assert branch_dropped.sum() >= 50
    assert BasicBlock(4, 4, 1, rngs=nnx.Rngs(0)).drop_path is None
