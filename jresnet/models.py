"""`ResNetSpec` describes a ResNet; `ResNet` builds it as a Flax NNX module.

Parameter paths mirror torchvision's state-dict keys (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``) so that weight conversion is a table. Defaults follow torchvision:
kaiming-normal fan_out convs, BN eps 1e-5, momentum 0.9 (Flax convention; PyTorch's 0.1), the stride
in the 3×3 conv of a bottleneck (V1.5). Departures: pre-activation nets end with a BN+ReLU before
pooling (``final_bn``), as in He et al.'s "Identity Mappings" and Wide ResNets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jresnet.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ShortcutKind
from jresnet.layers import (
    BatchNorm2d,
    Conv2d,
    GlobalAvgPool,
    Linear,
    MaxPool2d,
    NCHWModule,
    ReLU,
    to_nchw,
    to_nhwc,
)
from jresnet.shapes import collapse_message, ksp_text
from jresnet.typing import ShapeError, require_images, shapechecked

__all__ = ["BLOCKS", "ResNet", "ResNetSpec"]

BlockName = Literal["basic", "bottleneck", "preact_basic", "preact_bottleneck"]
StemName = Literal["imagenet", "cifar", "deep"]

BLOCKS: dict[str, type] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
}
_STEMS = ("imagenet", "cifar", "deep")


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass(frozen=True)
class ResNetSpec:
    """Everything that defines a ResNet's architecture.

    - ``stem``: "imagenet" (7×7/2 conv + 3×3/2 maxpool), "cifar" (3×3/1 conv, no pool) or "deep"
      (ResNet-D: three 3×3 convs, the first with stride 2, then the maxpool).
    - ``depths``, ``widths``, ``strides``: blocks, planes and first-block stride of each stage.
    - ``block``: "basic", "bottleneck", "preact_basic" or "preact_bottleneck".
    - ``shortcut``: "B" (projection), "A" (subsample + zero channels) or "D" (avg-pool projection).
    - ``width_multiplier`` scales every stage width (Wide ResNet's k).
    """

    depths: tuple[int, ...]
    widths: tuple[int, ...] = (64, 128, 256, 512)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    block: BlockName = "basic"
    stem: StemName = "imagenet"
    stem_width: int = 64
    shortcut: ShortcutKind = "B"
    width_multiplier: float = 1.0
    num_classes: int = 1000
    in_channels: int = 3
    groups: int = 1
    base_width: int = 64
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("depths", "widths", "strides"):
            value = getattr(self, name)
            if not isinstance(value, tuple | list) or not value:
                raise ValueError(f"ResNetSpec.{name} must be a non-empty tuple of ints; got {value!r}")
            object.__setattr__(self, name, tuple(value))
            for i, v in enumerate(getattr(self, name)):
                if not _is_int(v, 1):
                    raise ValueError(f"ResNetSpec.{name}[{i}] must be an int >= 1; got {v!r}")
        if not len(self.depths) == len(self.widths) == len(self.strides):
            raise ValueError(
                f"ResNetSpec: depths, widths and strides need one entry per stage; got "
                f"{len(self.depths)}, {len(self.widths)} and {len(self.strides)}"
            )
        if not isinstance(self.block, str) or self.block not in BLOCKS:
            raise ValueError(f"ResNetSpec.block must be one of {sorted(BLOCKS)}; got {self.block!r}")
        if self.stem not in _STEMS:
            raise ValueError(f"ResNetSpec.stem must be one of {list(_STEMS)}; got {self.stem!r}")
        if self.shortcut not in ("A", "B", "D"):
            raise ValueError(f"ResNetSpec.shortcut must be 'A', 'B' or 'D'; got {self.shortcut!r}")
        for name in ("stem_width", "num_classes", "in_channels", "groups", "base_width"):
            if not _is_int(getattr(self, name), 1):
                raise ValueError(f"ResNetSpec.{name} must be an int >= 1; got {getattr(self, name)!r}")
        if isinstance(self.width_multiplier, bool) or not isinstance(self.width_multiplier, int | float) \
                or not 0 < self.width_multiplier < math.inf:
            raise ValueError(f"ResNetSpec.width_multiplier must be > 0; got {self.width_multiplier!r}")
        if isinstance(self.drop_path_rate, bool) or not isinstance(self.drop_path_rate, int | float) \
                or not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"ResNetSpec.drop_path_rate must be in [0, 1); got {self.drop_path_rate!r}")
        if self.stem == "deep" and self.stem_width < 2:
            raise ValueError(f"ResNetSpec.stem_width must be >= 2 for the deep stem (its first convs have "
                             f"stem_width/2 channels); got {self.stem_width}")
        if self.block in ("basic", "preact_basic") and (self.groups != 1 or self.base_width != 64):
            raise ValueError(f"ResNetSpec: basic blocks support only groups=1 and base_width=64; got "
                             f"groups={self.groups}, base_width={self.base_width}")
        for name in ("zero_init_residual",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ResNetSpec.{name} must be a bool; got {getattr(self, name)!r}")
        if self.shortcut == "A" and self.block in ("bottleneck", "preact_bottleneck"):
            raise ValueError("ResNetSpec: shortcut 'A' is for basic blocks (He et al.'s CIFAR nets); "
                             "bottlenecks change channels inside the first block, use shortcut='B'")

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Planes per stage after the width multiplier."""
        return tuple(max(1, int(round(w * self.width_multiplier))) for w in self.widths)

    @property
    def preact(self) -> bool:
        return self.block.startswith("preact")

    def replace(self, **changes: Any) -> ResNetSpec:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"ResNetSpec has no field(s) {sorted(unknown)}; fields: {[f.name for f in fields(self)]}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return ResNetSpec(**values)


class ResNet(NCHWModule):
    """A ResNet built from a `ResNetSpec`. ``model(x)`` maps (B, C, H, W) images to (B, num_classes)
    logits; ``model.features(x)`` returns each stage's (B, C, H, W) map for downstream models.

    Transposes to (B, H, W, C) once on the way in; see `jresnet.layers`.
    """

    def __init__(self, spec: ResNetSpec, *, rngs: nnx.Rngs) -> None:
        if not isinstance(spec, ResNetSpec):
            raise TypeError(f"ResNet: spec must be a ResNetSpec; got {type(spec).__name__}")
        self.spec = spec
        self.in_channels = spec.in_channels
        self.num_classes = spec.num_classes
        self._build_stem(spec, rngs)
        block_cls = BLOCKS[spec.block]
        channels = self._stem_out
        total_blocks = sum(spec.depths)
        index = 0
        self.stage_names = tuple(f"layer{i + 1}" for i in range(len(spec.depths)))
        for name, depth, planes, stride in zip(self.stage_names, spec.depths, spec.stage_widths, spec.strides):
            blocks = []
            for b in range(depth):
                rate = spec.drop_path_rate * index / max(total_blocks - 1, 1)  # linear rule (Huang et al.)
                blocks.append(block_cls(channels, planes, stride if b == 0 else 1, shortcut=spec.shortcut,
                                        zero_init_residual=spec.zero_init_residual, drop_path=rate,
                                        groups=spec.groups, base_width=spec.base_width, rngs=rngs))
                channels = planes * block_cls.expansion
                index += 1
            setattr(self, name, nnx.List(blocks))
        self.num_features = channels
        self.final_bn = BatchNorm2d(channels) if spec.preact else None
        self.avgpool = GlobalAvgPool()
        self.fc = Linear(channels, spec.num_classes, rngs=rngs)
        self._name_modules()

    def _build_stem(self, spec: ResNetSpec, rngs: nnx.Rngs) -> None:
        w = spec.stem_width
        if spec.stem == "deep":  # timm's ResNet-D: conv1 is a 7-item Sequential, 3×3 convs w/2, w/2, w
            half = w // 2
            self.conv1 = nnx.List([
                Conv2d(spec.in_channels, half, 3, 2, 1, bias=False, rngs=rngs), BatchNorm2d(half), ReLU(),
                Conv2d(half, half, 3, 1, 1, bias=False, rngs=rngs), BatchNorm2d(half), ReLU(),
                Conv2d(half, w, 3, 1, 1, bias=False, rngs=rngs),
            ])
        elif spec.stem == "imagenet":
            self.conv1 = Conv2d(spec.in_channels, w, 7, 2, 3, bias=False, rngs=rngs)
        else:
            self.conv1 = Conv2d(spec.in_channels, w, 3, 1, 1, bias=False, rngs=rngs)
        # Pre-activation nets normalise at the start of each block, so the stem has no BN of its own.
        self.bn1 = None if spec.preact else BatchNorm2d(w)
        self.maxpool = MaxPool2d(3, 2, 1) if spec.stem in ("imagenet", "deep") else None
        self._stem_out = w

    def _name_modules(self) -> None:
        """Give every submodule its torchvision-style path, for error messages and the summary."""
        for path, module in nnx.iter_modules(self):
            if path and hasattr(module, "path"):
                module.path = ".".join(str(p) for p in path)

    def check_input(self, x: Any, layout: str = "NHWC") -> None:
        require_images(x, "ResNet input", self.in_channels, layout=layout)
        h, w = (x.shape[2], x.shape[3]) if layout == "NCHW" else (x.shape[1], x.shape[2])
        self._check_downsampling(h, w)

    def _downsampling_path(self) -> list[Any]:
        """The stem's layers and each stage's strided conv, in the order a forward pass meets them."""
        layers = list(self.conv1) if isinstance(self.conv1, nnx.List) else [self.conv1]
        layers = [m for m in layers if hasattr(m, "geometry")]
        if self.maxpool is not None:
            layers.append(self.maxpool)
        for name in self.stage_names:
            first = getattr(self, name)[0]
            layers += [c for c in (getattr(first, f"conv{i}", None) for i in (1, 2, 3))
                       if c is not None and c.geometry.stride > 1]
        return layers

    def _check_downsampling(self, h: int, w: int) -> None:
        """A stride-S layer that receives a 1-pixel map downsamples nothing: the image is too small."""
        path = self._downsampling_path()
        total = math.prod(m.geometry.stride for m in path)
        size, collapsed_at = (h, w), "the input"
        for m in path:
            g = m.geometry
            if g.stride > 1 and min(size) == 1:
                ksp = ksp_text(g.kernel, g.stride, g.pads(size[0]))
                raise ShapeError(collapse_message(m.path, f"{type(m).__name__}, K/S/P={ksp}", size, collapsed_at,
                                                  g.stride, total, (h, w)))
            try:
                new = (g.out_size(size[0]), g.out_size(size[1]))
            except ValueError:
                return  # the layer itself reports a window that does not fit, with its arithmetic
            if min(new) == 1 and min(size) > 1:
                collapsed_at = m.path
            size = new

    def _stem_nhwc(self, x: jax.Array) -> jax.Array:
        if isinstance(self.conv1, nnx.List):
            for layer in self.conv1:
                x = layer.forward_nhwc(x)
        else:
            x = self.conv1.forward_nhwc(x)
        if self.bn1 is not None:
            x = self.bn1.forward_nhwc(x, relu=True)
        if self.maxpool is not None:
            x = self.maxpool.forward_nhwc(x)
        return x

    def features_nhwc(self, x: jax.Array) -> list[jax.Array]:
        """Each stage's output in (B, H, W, C); the last one after ``final_bn`` for pre-activation nets."""
        x = self._stem_nhwc(x)
        maps = []
        for name in self.stage_names:
            for block in getattr(self, name):
                x = block.forward_nhwc(x)
            maps.append(x)
        if self.final_bn is not None:
            maps[-1] = self.final_bn.forward_nhwc(maps[-1], relu=True)
        return maps

    @shapechecked
    def forward_nhwc(self, x: Float[Array, "B H W C"]) -> Float[Array, "B {self.num_classes}"]:
        return self.fc(self.avgpool.forward_nhwc(self.features_nhwc(x)[-1]))

    @shapechecked(layout="NCHW")
    def __call__(self, x: Float[Array, "B C H W"]) -> Float[Array, "B {self.num_classes}"]:  # type: ignore[override]
        """(B, C, H, W) images -> (B, num_classes) logits."""
        logits = self.forward_nhwc(to_nhwc(x))
        return logits.astype(jnp.float32)

    @shapechecked(layout="NCHW")
    def features(self, x: Float[Array, "B C H W"]) -> list[Float[Array, "B _C _H _W"]]:
        """Each stage's (B, C, H, W) feature map, for detection heads, FPNs and other downstream models."""
        return [to_nchw(m) for m in self.features_nhwc(to_nhwc(x))]

    def num_params(self) -> int:
        """Trainable parameters."""
        return sum(int(p.size) for p in jax.tree.leaves(nnx.state(self, nnx.Param)))

