"""jresnet.registry: the named models, their exact parameter counts, and the registry's behaviour."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jresnet import registry
from jresnet.models import ResNet, ResNetSpec
from jresnet.registry import create_model, get_spec, list_models, register_model


def _count(model: nnx.Module) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


# The counts the issue gives: torchvision's (1000 classes), He et al.'s CIFAR nets (10 classes),
# Zagoruyko & Komodakis' WRN-28-10, timm's resnet50d.
PUBLISHED = [
    ("resnet18", {}, 11_689_512),
    ("resnet34", {}, 21_797_672),
    ("resnet50", {}, 25_557_032),
    ("resnet101", {}, 44_549_160),
    ("resnet152", {}, 60_192_808),
    ("resnet20", {}, 269_722),
    ("resnet32", {}, 464_154),
    ("resnet44", {}, 658_586),
    ("resnet56", {}, 853_018),
    ("resnet110", {}, 1_727_962),
    ("wide_resnet28_10", {}, 36_479_194),
    ("resnet18_cifar", {}, 11_173_962),
    ("resnet50d", {"num_classes": 1000}, 25_576_264),
    ("wide_resnet50_2", {}, 68_883_240),
    ("resnext50_32x4d", {}, 25_028_904),
]


@pytest.mark.parametrize(("name", "overrides", "expected"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_parameter_count(name: str, overrides: dict, expected: int) -> None:
    model = nnx.eval_shape(lambda: create_model(name, **overrides))
    assert _count(model) == expected
    assert model.num_params() == expected


@pytest.mark.slow
def test_parameter_count_resnet1202() -> None:
    model = create_model("resnet1202")  # concrete: faster than building 1,202 layers abstractly
    assert _count(model) == 19_421_274


def _preact_resnet18_count(num_classes: int = 10) -> int:
    """From the architecture: a 3x3 stem conv (no BN), pre-activation basic blocks (bn1, conv1, bn2, conv2,
    and a bare 1x1 conv projection when the shape changes), a final BN, and the fc."""
    def conv(cin, cout, k):
        return cout * cin * k * k

    def bn(c):
        return 2 * c

    total = conv(3, 64, 3)
    cin = 64
    for planes, stride in zip((64, 128, 256, 512), (1, 2, 2, 2), strict=True):
        for b in range(2):
            s = stride if b == 0 else 1
            total += bn(cin) + conv(cin, planes, 3) + bn(planes) + conv(planes, planes, 3)
            if s != 1 or cin != planes:
                total += conv(cin, planes, 1)
            cin = planes
    return total + bn(512) + 512 * num_classes + num_classes


def test_parameter_count_preact_resnet18() -> None:
    model = nnx.eval_shape(lambda: create_model("preact_resnet18"))
    assert model.final_bn is not None
    assert _count(model) == _preact_resnet18_count(10)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110, 1202])
def test_cifar_nets_follow_he_et_al(depth: int) -> None:
    spec = get_spec(f"resnet{depth}")
    n = (depth - 2) // 6
    assert spec.depths == (n, n, n)
    assert 2 * sum(spec.depths) + 2 == depth  # two convs per block, the stem conv and the fc
    assert spec.widths == (16, 32, 64) and spec.strides == (1, 2, 2)
    assert spec.shortcut == "A" and spec.stem == "cifar" and spec.stem_width == 16
    assert spec.num_classes == 10


def test_torchvision_family_specs() -> None:
    assert get_spec("resnet18").depths == (2, 2, 2, 2) and get_spec("resnet18").block == "basic"
    assert get_spec("resnet50").depths == (3, 4, 6, 3) and get_spec("resnet50").block == "bottleneck"
    assert get_spec("resnet152").depths == (3, 8, 36, 3)
    for name in ("resnet18", "resnet50", "resnet101"):
        spec = get_spec(name)
        assert (spec.stem, spec.shortcut, spec.num_classes, spec.widths) == ("imagenet", "B", 1000,
                                                                             (64, 128, 256, 512))
    assert get_spec("resnext50_32x4d").groups == 32 and get_spec("resnext50_32x4d").base_width == 4
    assert get_spec("wide_resnet50_2").base_width == 128
    assert get_spec("resnet50d").stem == "deep" and get_spec("resnet50d").shortcut == "D"
    assert get_spec("preact_resnet18").block == "preact_basic"


def test_list_models() -> None:
    names = list_models()
    assert names == sorted(names)
    expected = {name for name, _, _ in PUBLISHED} | {"resnet1202", "preact_resnet18"}
    assert expected <= set(names)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        get_spec("resnet51")
    msg = str(info.value)
    assert "resnet51" in msg and "resnet50" in msg and "resnet20" in msg
    with pytest.raises(ValueError, match="nosuchnet"):
        create_model("nosuchnet")


def test_overrides() -> None:
    spec = get_spec("resnet50", num_classes=10, in_channels=1)
    assert (spec.num_classes, spec.in_channels) == (10, 1)
    assert get_spec("resnet50").num_classes == 1000  # the registered spec is untouched
    with pytest.raises(ValueError, match="colour"):
        get_spec("resnet50", colour="red")
    # resnet18 with 10 classes: 11,689,512 - 513,000 + 5,130
    model = nnx.eval_shape(lambda: create_model("resnet18", num_classes=10))
    assert _count(model) == 11_689_512 - (512 * 1000 + 1000) + (512 * 10 + 10)


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register test models into a copy of the registry that is thrown away afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _tiny() -> ResNetSpec:
    return ResNetSpec(depths=(1,), widths=(4,), strides=(1,), stem="cifar", stem_width=4, num_classes=2)


def test_register_model(scratch_registry) -> None:
    register_model("tiny_test_net", _tiny)
    assert "tiny_test_net" in list_models()
    model = create_model("tiny_test_net", rngs=nnx.Rngs(0))
    assert isinstance(model, ResNet) and model.num_classes == 2
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_test_net", _tiny)
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet50", _tiny)


def test_create_model_seeds(scratch_registry) -> None:
    register_model("tiny_test_net", _tiny)

    def weights(rngs):
        return np.asarray(create_model("tiny_test_net", rngs=rngs).layer1[0].conv1.weight[...])

    np.testing.assert_array_equal(weights(0), weights(0))
    np.testing.assert_array_equal(weights(nnx.Rngs(params=3, dropout=4)), weights(3))
    assert not np.array_equal(weights(0), weights(1))
