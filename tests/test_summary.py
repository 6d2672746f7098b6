"""jresnet.summary: the per-layer table, its totals, and check_model's collapse diagnosis."""

from __future__ import annotations

import pytest
from flax import nnx

import jresnet
from jresnet.layers import Conv2d
from jresnet.registry import create_model
from jresnet.summary import Summary, check_model, summary
from jresnet.typing import ShapeError, checks_enabled, set_checks


@pytest.fixture(scope="module")
def resnet50() -> jresnet.ResNet:
    return nnx.eval_shape(lambda: create_model("resnet50"))


@pytest.fixture(scope="module")
def resnet50_summary(resnet50) -> Summary:
    return summary(resnet50, (3, 224, 224), name="resnet50")


def _rows(s: Summary) -> dict[str, jresnet.summary.LayerRow]:
    return {r.path: r for r in s.rows}


def test_resnet50_totals(resnet50_summary) -> None:
    assert resnet50_summary.total_params == 25_557_032
    # torchvision publishes 4.09 GFLOPS for resnet50, which are multiply-accumulates
    assert resnet50_summary.total_macs == pytest.approx(4.09e9, rel=0.01)
    assert resnet50_summary.output_shape == (1000,)
    assert resnet50_summary.input_shape == (3, 224, 224)


def test_resnet50_rows(resnet50_summary) -> None:
    rows = _rows(resnet50_summary)
    conv1 = rows["conv1"]
    assert conv1.ksp == "7/2/3" and conv1.eaten == "6"
    assert conv1.in_shape == (3, 224, 224) and conv1.out_shape == (64, 112, 112)
    assert conv1.params == 64 * 3 * 7 * 7
    assert conv1.macs == 64 * 112 * 112 * 3 * 7 * 7
    assert rows["maxpool"].ksp == "3/2/1" and rows["maxpool"].out_shape == (64, 56, 56)
    assert rows["bn1"].params == 2 * 64
    assert rows["layer1.0"].shortcut == "projection (B)"  # 64 -> 256 channels
    assert rows["layer1.1"].shortcut == "identity"
    assert rows["layer2.0"].shortcut == "projection (B)"
    assert rows["layer2.0.conv2"].ksp == "3/2/1"  # V1.5: the stride is in the 3x3
    assert rows["layer2.0.downsample.0"].ksp == "1/2/0"
    assert rows["layer4.2"].out_shape == (2048, 7, 7)
    assert rows["fc"].in_shape == (2048,) and rows["fc"].out_shape == (1000,)
    assert rows["fc"].params == 2048 * 1000 + 1000 and rows["fc"].macs == 2048 * 1000
    assert sum(r.kind == "Conv2d" for r in resnet50_summary.rows) == 1 + 16 * 3 + 4
    # blocks are nested below the model, and their layers below them
    assert rows["layer1.0"].depth + 1 == rows["layer1.0.conv1"].depth


def test_resnet50_table_text(resnet50_summary) -> None:
    text = str(resnet50_summary)
    assert text.startswith("resnet50 on input 3×224×224")
    assert "7/2/3" in text and "projection (B)" in text
    assert "25,557,032" in text
    assert f"{resnet50_summary.total_macs:,}" in text
    last = text.splitlines()[-1]
    assert last.startswith("total") and "1000" in last


def _cifar_macs(n: int, size: int = 32, num_classes: int = 10) -> int:
    """MACs of He et al.'s 6n+2 CIFAR net: every 3x3 conv is C_out*H*W*C_in*9, plus the fc."""
    total = 16 * size * size * 3 * 9
    cin, h = 16, size
    for width, stride in zip((16, 32, 64), (1, 2, 2), strict=True):
        for b in range(n):
            if b == 0:
                h = (h + 2 - 3) // stride + 1
            total += width * h * h * cin * 9 + width * h * h * width * 9
            cin = width
    return total + 64 * num_classes


def test_resnet20_summary() -> None:
    model = nnx.eval_shape(lambda: create_model("resnet20"))
    s = summary(model, (3, 32, 32))
    assert s.total_params == 269_722
    assert s.total_macs == _cifar_macs(3)
    rows = _rows(s)
    assert rows["layer2.0"].shortcut == "subsample+zero-pad (A)"
    assert rows["layer2.0.downsample"].ksp == "1/2/0" and rows["layer2.0.downsample"].params == 0
    assert rows["layer2.0.downsample"].out_shape == (32, 16, 16)
    assert rows["layer1.0"].shortcut == "identity"
    assert s.output_shape == (10,)


def test_resnet152_summary_runs() -> None:
    model = nnx.eval_shape(lambda: create_model("resnet152"))
    s = summary(model, (3, 224, 224))
    assert s.total_params == 60_192_808
    assert s.total_macs == pytest.approx(11.51e9, rel=0.01)  # torchvision's published 11.51 GFLOPS


def test_preact_summary_has_the_final_bn() -> None:
    s = summary(nnx.eval_shape(lambda: create_model("preact_resnet18")), (3, 32, 32))
    assert "final_bn" in _rows(s)
    assert s.total_params == nnx.eval_shape(lambda: create_model("preact_resnet18")).num_params()


def test_summary_of_a_single_layer(rngs) -> None:
    s = summary(Conv2d(3, 8, 3, 2, 1, rngs=rngs), (3, 32, 32))
    assert len(s.rows) == 1
    assert s.output_shape == (8, 16, 16)
    assert s.total_params == 8 * 3 * 9 + 8
    assert s.total_macs == 8 * 16 * 16 * 3 * 9
    assert s.rows[0].ksp == "3/2/1"
    s = summary(Conv2d(3, 8, 6, 1, "same", rngs=rngs), (3, 10, 10))
    assert s.rows[0].ksp == "6/1/(2,3)"


def test_summary_rejects_bad_input_shapes(resnet50) -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        summary(resnet50, (3, 224))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        summary(resnet50, (3, 0, 224))


def test_summary_restores_the_checks_setting() -> None:
    model = nnx.eval_shape(lambda: create_model("resnet20"))
    previous = set_checks(False)
    try:
        s = summary(model, (3, 32, 32))
        assert len(s.rows) > 20  # rows come from the checked calls, so summary turned checks on...
        assert checks_enabled() is False  # ...and back off
    finally:
        set_checks(previous)


def test_summary_prints_the_table(capsys) -> None:
    summary(nnx.eval_shape(lambda: create_model("resnet20")), (3, 32, 32), name="resnet20", print_table=True)
    assert "269,722" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# check_model


def test_check_model_passes_at_224(resnet50) -> None:
    result = check_model(resnet50, (3, 224, 224))
    assert result.total_params == 25_557_032


def test_check_model_8x8_collapses(resnet50) -> None:
    # conv1 7/2/3: 8 -> 4; maxpool 3/2/1: 4 -> 2; layer2.0.conv2 3/2/1: 2 -> 1;
    # so layer3.0.conv2, the next stride-2 layer, receives a 1x1 map
    with pytest.raises(ShapeError) as info:
        check_model(resnet50, (3, 8, 8))
    msg = str(info.value)
    assert "layer3.0.conv2" in msg
    assert "collapsed" in msg
    assert "layer2.0.conv2" in msg  # where it collapsed
    assert "32" in msg  # the model's total stride: 2 * 2 * 2 * 2 * 2


def test_check_model_4x4_collapses_earlier(resnet50) -> None:
    # conv1: 4 -> 2; maxpool: 2 -> 1; layer2.0.conv2 receives 1x1
    with pytest.raises(ShapeError) as info:
        jresnet.check_model(resnet50, (3, 4, 4))
    msg = str(info.value)
    assert "layer2.0.conv2" in msg and "collapsed" in msg and "1×1" in msg


def test_check_model_32x32_fits_exactly(resnet50) -> None:
    check_model(resnet50, (3, 32, 32))  # total stride 32: the last stage sees 1x1 but downsamples nothing


def test_check_model_reports_zero_size_outputs(rngs) -> None:
    with pytest.raises(ShapeError) as info:
        check_model(Conv2d(3, 8, 5, rngs=rngs), (3, 3, 3))
    assert "collapses to zero size" in str(info.value) and "K=5" in str(info.value)
