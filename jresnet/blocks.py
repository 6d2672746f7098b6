"""Residual blocks: BasicBlock, Bottleneck (V1.5) and their pre-activation variants.

Every block computes ``y = F(x) + shortcut(x)``, which needs both terms to have the same shape:

- H and W: every conv in F has stride 1 and P=(K-1)/2, except the one that downsamples;
- C: F's last conv outputs the block's ``out_channels``;
- when the block changes the shape, the shortcut cannot be the identity. It becomes a projection
  ``W_s x`` (a 1×1 conv with the block's stride plus BN: option B), strided subsampling plus
  zero-padded channels (option A, He et al. 2016's CIFAR nets), or ResNet-D's 2×2 average pool before a
  stride-1 1×1 conv (option D).

The choice is made here, once, and shown as ``block.shortcut_kind`` and in the summary table.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jresnet.layers import AvgPool2d, BatchNorm2d, Conv2d, DropPath, Identity, NCHWModule
from jresnet.typing import ShapeError, fmt_nchw, shapechecked

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResidualBlock",
    "ShortcutOptionA",
    "ShortcutKind",
    "choose_shortcut",
]

ShortcutKind = Literal["B", "A", "D"]
"""How a shape-changing block adapts x: "B" projection (1×1 conv + BN), "A" subsample + zero
channels, "D" avg-pool + 1×1 conv + BN (ResNet-D)."""

_SHORTCUT_NAMES = {"identity": "identity", "B": "projection (B)", "A": "subsample+zero-pad (A)",
                   "D": "avgpool+projection (D)"}


def choose_shortcut(in_channels: int, out_channels: int, stride: int, kind: ShortcutKind) -> str:
    """'identity' when F keeps the shape (stride 1, C_in == C_out), else the configured ``kind``."""
    if kind not in ("A", "B", "D"):
        raise ValueError(f"shortcut must be 'A', 'B' or 'D'; got shortcut={kind!r}")
    if stride == 1 and in_channels == out_channels:
        return "identity"
    if kind == "A" and out_channels < in_channels:
        raise ValueError(
            f"shortcut 'A' zero-pads channels, so it cannot go from {in_channels} to fewer ({out_channels}) "
            "channels; use shortcut='B'"
        )
    return kind


class ShortcutOptionA(NCHWModule):
    """Option A: keep every S-th pixel (x[:, :, ::S, ::S]) and zero-pad the new channels on both sides.

    It has no parameters, which is why He et al.'s resnet20 has 0.27M of them.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H2 W2 {self.out_channels}"]:
        s = self.stride
        extra = self.out_channels - self.in_channels
        y = x[:, ::s, ::s, :]
        return jnp.pad(y, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


def _projection(in_channels: int, out_channels: int, stride: int, kind: str, *, norm: bool,
                rngs: nnx.Rngs) -> nnx.List:
    """The projection shortcut as a list, so that its keys read ``downsample.0``, ``downsample.1``
    like torchvision's (and timm's for ResNet-D, whose ``downsample.0`` is the pool)."""
    layers: list[Any] = []
    if kind == "D":  # timm's downsample_avg is always (pool or identity, conv, norm): keep its keys
        layers.append(AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else Identity())
        stride = 1
    layers.append(Conv2d(in_channels, out_channels, 1, stride, 0, bias=False, rngs=rngs))
    if norm:
        layers.append(BatchNorm2d(out_channels))
    return nnx.List(layers)


class ResidualBlock(NCHWModule):
    """What all residual blocks share: the shortcut, drop-path and the checked residual add."""

    out_channels: int
    stride: int
    shortcut_kind: str

    def _build_shortcut(self, in_channels: int, out_channels: int, stride: int, shortcut: ShortcutKind,
                        *, norm: bool, rngs: nnx.Rngs, drop_path: float) -> None:
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.shortcut_kind = choose_shortcut(in_channels, out_channels, stride, shortcut)
        if self.shortcut_kind == "identity":
            self.downsample = None
        elif self.shortcut_kind == "A":
            self.downsample = ShortcutOptionA(in_channels, out_channels, stride)
        else:
            self.downsample = _projection(in_channels, out_channels, stride, self.shortcut_kind, norm=norm,
                                          rngs=rngs)
        self.drop_path = DropPath(drop_path, rngs=rngs) if drop_path > 0 else None

    @property
    def shortcut_name(self) -> str:
        """The shortcut as the summary shows it: identity, projection (B), ..."""
        return _SHORTCUT_NAMES[self.shortcut_kind]

    def shortcut_nhwc(self, x: jax.Array) -> jax.Array:
        """The shortcut branch applied to x (NHWC)."""
        if self.downsample is None:
            return x
        if isinstance(self.downsample, ShortcutOptionA):
            return self.downsample.forward_nhwc(x)
        for layer in self.downsample:
            x = layer.forward_nhwc(x)
        return x

    def residual_add(self, fx: jax.Array, shortcut: jax.Array) -> jax.Array:
        """F(x) + shortcut, after checking that the shapes agree; drop-path applies to F(x)."""
        if fx.shape != shortcut.shape:
            raise ShapeError(
                f"{self.where}: y = F(x) + x needs equal shapes, but F(x) is {fmt_nchw(fx.shape)} and the "
                f"shortcut is {fmt_nchw(shortcut.shape)}. Fix: keep the block's H, W and C (stride 1, "
                "P=(K-1)/2, last conv outputs C_in channels), or add a projection shortcut "
                "(a 1×1 conv with the block's stride)."
            )
        if self.drop_path is not None:
            fx = self.drop_path(fx)
        return fx + shortcut


class BasicBlock(ResidualBlock):
    """Two 3×3 convs: conv1 (stride S) -> bn1 -> relu -> conv2 -> bn2, plus the shortcut, then relu."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, *, shortcut: ShortcutKind = "B",
                 zero_init_residual: bool = False, drop_path: float = 0.0, rngs: nnx.Rngs,
                 **_: Any) -> None:
        out = planes * self.expansion
        self.conv1 = Conv2d(in_channels, planes, 3, stride, 1, bias=False, rngs=rngs)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, out, 3, 1, 1, bias=False, rngs=rngs)
        self.bn2 = BatchNorm2d(out, zero_init=zero_init_residual)
        self._build_shortcut(in_channels, out, stride, shortcut, norm=True, rngs=rngs, drop_path=drop_path)

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H2 W2 {self.out_channels}"]:
        out = self.bn1.forward_nhwc(self.conv1.forward_nhwc(x), relu=True)
        out = self.bn2.forward_nhwc(self.conv2.forward_nhwc(out))
        return jax.nn.relu(self.residual_add(out, self.shortcut_nhwc(x)))


class Bottleneck(ResidualBlock):
    """1×1 reduce -> 3×3 (stride S: ResNet V1.5, as torchvision) -> 1×1 expand to 4·planes, plus shortcut.

    ``groups`` and ``base_width`` give ResNeXt and wide_resnet50_2 as in torchvision.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, *, shortcut: ShortcutKind = "B",
                 zero_init_residual: bool = False, drop_path: float = 0.0, groups: int = 1,
                 base_width: int = 64, rngs: nnx.Rngs) -> None:
        width = int(planes * (base_width / 64.0)) * groups
        out = planes * self.expansion
        self.conv1 = Conv2d(in_channels, width, 1, 1, 0, bias=False, rngs=rngs)
        self.bn1 = BatchNorm2d(width)
        self.conv2 = Conv2d(width, width, 3, stride, 1, groups=groups, bias=False, rngs=rngs)
        self.bn2 = BatchNorm2d(width)
        self.conv3 = Conv2d(width, out, 1, 1, 0, bias=False, rngs=rngs)
        self.bn3 = BatchNorm2d(out, zero_init=zero_init_residual)
        self._build_shortcut(in_channels, out, stride, shortcut, norm=True, rngs=rngs, drop_path=drop_path)

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H2 W2 {self.out_channels}"]:
        out = self.bn1.forward_nhwc(self.conv1.forward_nhwc(x), relu=True)
        out = self.bn2.forward_nhwc(self.conv2.forward_nhwc(out), relu=True)
        out = self.bn3.forward_nhwc(self.conv3.forward_nhwc(out))
        return jax.nn.relu(self.residual_add(out, self.shortcut_nhwc(x)))


class PreActBasicBlock(ResidualBlock):
    """Pre-activation (He et al., "Identity Mappings"): bn1 -> relu -> conv1 -> bn2 -> relu -> conv2.

    A projection shortcut is a bare 1×1 conv applied to the pre-activated input, as in the
    pre-activation and Wide ResNet papers; there is no relu after the add.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, *, shortcut: ShortcutKind = "B",
                 zero_init_residual: bool = False, drop_path: float = 0.0, rngs: nnx.Rngs,
                 **_: Any) -> None:
        out = planes * self.expansion
        self.bn1 = BatchNorm2d(in_channels)
        self.conv1 = Conv2d(in_channels, planes, 3, stride, 1, bias=False, rngs=rngs)
        self.bn2 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, out, 3, 1, 1, bias=False, rngs=rngs)
        if zero_init_residual:  # no BN closes the branch, so zero the last conv instead
            self.conv2.weight[...] = jnp.zeros_like(self.conv2.weight[...])
        self._build_shortcut(in_channels, out, stride, shortcut, norm=False, rngs=rngs, drop_path=drop_path)

    def _shortcut_from(self, x: jax.Array, pre: jax.Array) -> jax.Array:
        return x if self.downsample is None else self.shortcut_nhwc(pre)

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H2 W2 {self.out_channels}"]:
        pre = self.bn1.forward_nhwc(x, relu=True)
        out = self.conv1.forward_nhwc(pre)
        out = self.conv2.forward_nhwc(self.bn2.forward_nhwc(out, relu=True))
        return self.residual_add(out, self._shortcut_from(x, pre))


class PreActBottleneck(PreActBasicBlock):
    """Pre-activation bottleneck: bn1-relu-conv1(1×1) -> bn2-relu-conv2(3×3, stride) -> bn3-relu-conv3(1×1)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, *, shortcut: ShortcutKind = "B",
                 zero_init_residual: bool = False, drop_path: float = 0.0, groups: int = 1,
                 base_width: int = 64, rngs: nnx.Rngs) -> None:
        width = int(planes * (base_width / 64.0)) * groups
        out = planes * self.expansion
        self.bn1 = BatchNorm2d(in_channels)
        self.conv1 = Conv2d(in_channels, width, 1, 1, 0, bias=False, rngs=rngs)
        self.bn2 = BatchNorm2d(width)
        self.conv2 = Conv2d(width, width, 3, stride, 1, groups=groups, bias=False, rngs=rngs)
        self.bn3 = BatchNorm2d(width)
        self.conv3 = Conv2d(width, out, 1, 1, 0, bias=False, rngs=rngs)
        if zero_init_residual:
            self.conv3.weight[...] = jnp.zeros_like(self.conv3.weight[...])
        self._build_shortcut(in_channels, out, stride, shortcut, norm=False, rngs=rngs, drop_path=drop_path)

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H2 W2 {self.out_channels}"]:
        pre = self.bn1.forward_nhwc(x, relu=True)
        out = self.conv1.forward_nhwc(pre)
        out = self.conv2.forward_nhwc(self.bn2.forward_nhwc(out, relu=True))
        out = self.conv3.forward_nhwc(self.bn3.forward_nhwc(out, relu=True))
        return self.residual_add(out, self._shortcut_from(x, pre))
