"""State dicts: torchvision keys and layouts, safetensors round trips, and clear mismatch errors."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jresnet
from jresnet.convert import load_state_dict, load_weights_file, save_safetensors, state_dict


def test_state_dict_uses_torchvision_keys_and_layouts() -> None:
    sd = state_dict(jresnet.create_model("resnet18"))
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert sd["layer2.0.downsample.1.running_var"].shape == (128,)
    assert sd["fc.weight"].shape == (1000, 512)
    convs = [k for k, v in sd.items() if v.ndim == 4]
    bns = [k for k in sd if k.endswith("running_mean")]
    assert len(convs) == 20 and len(bns) == 20  # torchvision resnet18: 20 convs, 20 BNs
    assert len(sd) == len(convs) + 4 * len(bns) + 2  # + fc.weight, fc.bias


def test_safetensors_round_trip_gives_the_same_function(tmp_path: Path) -> None:
    a = jresnet.create_model("resnet20", rngs=1)
    b = jresnet.create_model("resnet20", rngs=2)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32), np.float32))
    a.eval()
    b.eval()
    assert not np.allclose(a(x), b(x))
    # PyTorch's BN counters ride along in real checkpoints; they are ignored.
    weights = load_weights_file(save_safetensors(a, tmp_path / "a.safetensors"))
    weights["bn1.num_batches_tracked"] = np.array(7)
    load_state_dict(b, weights)
    np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b(x)))


def test_mismatches_name_the_keys_and_shapes() -> None:
    model = jresnet.create_model("resnet20")
    sd = state_dict(model)
    with pytest.raises(ValueError, match=r"missing 1 key\(s\), e.g. \['fc.bias'\]"):
        load_state_dict(model, {k: v for k, v in sd.items() if k != "fc.bias"})
    with pytest.raises(ValueError, match=r"unexpected 1 key\(s\), e.g. \['head.weight'\]"):
        load_state_dict(model, {**sd, "head.weight": np.zeros((1,))})
    wrong = dict(sd, **{"conv1.weight": np.zeros((16, 1, 3, 3), np.float32)})
    with pytest.raises(jresnet.ShapeError, match=r"conv1.weight is \(C_out, C_in, K, K\) \(16, 3, 3, 3\)"):
        load_state_dict(model, wrong)


def test_missing_or_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_weights_file(tmp_path / "nope.safetensors")
