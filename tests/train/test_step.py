"""The jitted train step: a pure function of the state and batch, with EMA, bf16 and the NaN policy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jresnet import create_model
from jresnet.train.state import create_state
from jresnet.train.step import make_eval_step, make_train_step

SMALL = {"depths": (1, 1, 1), "in_channels": 1}


def setup(lr: float = 0.1, **step_kwargs):
    model = create_model("resnet20", **SMALL)
    tx = optax.sgd(lr, momentum=0.9)
    ema = step_kwargs.get("ema_decay") is not None
    graphdef, state = create_state(model, tx, seed=0, ema=ema)
    kwargs = dict(mean=[0.3], std=[0.3], crop_padding=1, flip=False, label_smoothing=0.0, precision="fp32",
                  ema_decay=None, skip_nonfinite=False)
    kwargs.update(step_kwargs)
    step = make_train_step(graphdef, tx, optax.constant_schedule(lr), **kwargs)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, (16,), dtype=np.int32))
    return graphdef, state, step, images, labels


def test_step_is_deterministic_and_updates_everything() -> None:
    _, s0, step, x, y = setup()
    before = jax.tree.map(np.asarray, s0)
    a, ma = step(jax.tree.map(jnp.copy, s0), x, y)
    b, mb = step(jax.tree.map(jnp.copy, s0), x, y)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)
    assert int(a.step) == 1 and bool(ma["finite"])
    moved = [not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(before.params), jax.tree.leaves(a.params))]
    assert all(moved)  # every parameter got a gradient
    assert not np.array_equal(before.batch_stats["bn1"]["running_mean"], a.batch_stats["bn1"]["running_mean"])


def test_ema_tracks_the_weights() -> None:
    _, s0, step, x, y = setup(ema_decay=0.9)
    w0 = np.asarray(s0.params["fc"]["weight"])
    s1, _ = step(s0, x, y)
    expected = 0.9 * w0 + 0.1 * np.asarray(s1.params["fc"]["weight"])
    np.testing.assert_allclose(np.asarray(s1.ema_params["fc"]["weight"]), expected, rtol=1e-6, atol=1e-7)


def test_bf16_compute_keeps_f32_parameters_and_statistics() -> None:
    _, s0, step, x, y = setup(precision="bf16")
    s1, metrics = step(s0, x, y)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((s1.params, s1.batch_stats)))
    assert metrics["loss"].dtype == jnp.float32 and bool(metrics["finite"])


@pytest.mark.parametrize("skip", [False, True])
def test_nonfinite_loss_is_flagged_and_skipped_on_request(skip: bool) -> None:
    _, s0, step, x, y = setup(lr=1e30, skip_nonfinite=skip)
    state = s0
    finite = []
    for _ in range(4):
        kept = jax.tree.map(np.asarray, state.params)
        state, metrics = step(state, x, y)
        finite.append(bool(metrics["finite"]))
        if skip and not finite[-1]:
            for u, v in zip(jax.tree.leaves(kept), jax.tree.leaves(state.params), strict=True):
                np.testing.assert_array_equal(u, v)  # the poisoned update was dropped
    assert not all(finite)
    assert int(state.step) == 4
    assert int(state.skipped) == (finite.count(False) if skip else 0)


def test_eval_counts_only_masked_rows() -> None:
    graphdef, s0, _, x, y = setup()
    evaluate = make_eval_step(graphdef, mean=[0.3], std=[0.3], precision="fp32")
    full = evaluate(s0.params, s0.batch_stats, x, y, jnp.ones(16, bool))
    half = evaluate(s0.params, s0.batch_stats, x, y, jnp.arange(16) < 8)
    first = evaluate(s0.params, s0.batch_stats, x[:8], y[:8], jnp.ones(8, bool))
    assert float(full["count"]) == 16 and float(half["count"]) == 8
    np.testing.assert_allclose(float(half["correct"]), float(first["correct"]))
    np.testing.assert_allclose(float(half["loss"]), float(first["loss"]), rtol=1e-5)


# One step of every stem and shortcut family: ImageNet stem with max pool (resnet18), bottlenecks with
# projection shortcuts (resnet50), ResNet-D's deep stem and avg-pool shortcut, pre-activation blocks.
# Shrunk so that each compiles in seconds; a max pool without a gradient once broke every one of these.
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet50d", "preact_resnet18"])
def test_one_train_step_of_each_model_family_moves_every_parameter(name: str) -> None:
    model = create_model(name, depths=(1, 1, 1, 1), width_multiplier=0.25, num_classes=4)
    tx = optax.sgd(0.1, momentum=0.9)
    graphdef, state = create_state(model, tx, seed=0, ema=False)
    step = make_train_step(graphdef, tx, optax.constant_schedule(0.1), mean=[0.5] * 3, std=[0.25] * 3,
                           crop_padding=0, flip=False, label_smoothing=0.0, precision="fp32", ema_decay=None,
                           skip_nonfinite=False)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 4, (4,), dtype=np.int32))
    before = jax.tree.map(np.asarray, state.params)
    after, metrics = step(state, images, labels)
    assert bool(metrics["finite"])
    unchanged = [jax.tree_util.keystr(path) for (path, u), v in
                 zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after.params), strict=True)
                 if np.array_equal(u, v)]
    assert not unchanged, f"no gradient reached {unchanged}"
