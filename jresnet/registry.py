"""Named ResNets: the torchvision ImageNet family, He et al.'s CIFAR nets, and common variants.

``create_model("resnet50", num_classes=10, rngs=nnx.Rngs(0))`` builds one; ``get_spec(name)`` gives its
`ResNetSpec`; ``list_models()`` names them all. Any spec field can be overridden by keyword.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from jresnet.models import ResNet, ResNetSpec

__all__ = ["create_model", "get_spec", "list_models", "register_model"]

_REGISTRY: dict[str, Callable[[], ResNetSpec]] = {}


def register_model(name: str, make_spec: Callable[[], ResNetSpec]) -> None:
    """Register ``make_spec`` under ``name`` (so configs and the CLI can name the model)."""
    if name in _REGISTRY:
        raise ValueError(f"a model named {name!r} is already registered")
    _REGISTRY[name] = make_spec


def list_models() -> list[str]:
    """Names of every registered model."""
    return sorted(_REGISTRY)


def get_spec(name: str, **overrides: Any) -> ResNetSpec:
    """The `ResNetSpec` registered as ``name``, with fields overridden by keyword."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    spec = _REGISTRY[name]()
    return spec.replace(**overrides) if overrides else spec


def create_model(name: str, *, rngs: nnx.Rngs | int = 0, **overrides: Any) -> ResNet:
    """Build the model registered as ``name``; ``rngs`` is an ``nnx.Rngs`` or an int seed."""
    if isinstance(rngs, int):
        rngs = nnx.Rngs(params=rngs, dropout=rngs + 1)
    return ResNet(get_spec(name, **overrides), rngs=rngs)


def _imagenet(block: str, depths: tuple[int, ...], **kw: Any) -> Callable[[], ResNetSpec]:
    return lambda: ResNetSpec(depths=depths, block=block, stem="imagenet", **kw)  # type: ignore[arg-type]


def _cifar_he2016(depth: int) -> Callable[[], ResNetSpec]:
    """He et al. 2016, section 4.2: 6n+2 layers, 16/32/64 planes, option A, 10 classes."""
    n = (depth - 2) // 6
    return lambda: ResNetSpec(depths=(n, n, n), widths=(16, 32, 64), strides=(1, 2, 2), block="basic",
                              stem="cifar", stem_width=16, shortcut="A", num_classes=10)


for _name, _block, _depths in (
    ("resnet18", "basic", (2, 2, 2, 2)),
    ("resnet34", "basic", (3, 4, 6, 3)),
    ("resnet50", "bottleneck", (3, 4, 6, 3)),
    ("resnet101", "bottleneck", (3, 4, 23, 3)),
    ("resnet152", "bottleneck", (3, 8, 36, 3)),
):
    register_model(_name, _imagenet(_block, _depths))
register_model("wide_resnet50_2", _imagenet("bottleneck", (3, 4, 6, 3), base_width=128))
register_model("resnext50_32x4d", _imagenet("bottleneck", (3, 4, 6, 3), groups=32, base_width=4))

for _depth in (20, 32, 44, 56, 110, 1202):
    register_model(f"resnet{_depth}", _cifar_he2016(_depth))

register_model("resnet18_cifar", lambda: ResNetSpec(
    depths=(2, 2, 2, 2), stem="cifar", stem_width=64, num_classes=10))
register_model("preact_resnet18", lambda: ResNetSpec(
    depths=(2, 2, 2, 2), block="preact_basic", stem="cifar", stem_width=64, num_classes=10))
register_model("wide_resnet28_10", lambda: ResNetSpec(  # Zagoruyko & Komodakis: depth 28 = 6*4+4, k=10
    depths=(4, 4, 4), widths=(16, 32, 64), strides=(1, 2, 2), block="preact_basic", stem="cifar",
    stem_width=16, width_multiplier=10, num_classes=10))
register_model("resnet50d", lambda: ResNetSpec(  # Bag of Tricks' ResNet-D, as timm's resnet50d
    depths=(3, 4, 6, 3), block="bottleneck", stem="deep", stem_width=64, shortcut="D", num_classes=10))
