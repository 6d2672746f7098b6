"""Optimisers, schedules and the weight-decay mask, checked against their definitions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jresnet import create_model
from jresnet.functional import init
from jresnet.train.config import OptimConfig
from jresnet.train.optim import build_optimizer, build_schedule, decay_mask


def test_multistep_schedule_multiplies_at_milestones() -> None:
    s = build_schedule(OptimConfig(lr=0.1, schedule="multistep", milestones=(32000, 48000), gamma=0.1), 64000)
    np.testing.assert_allclose([s(0), s(31999), s(32000), s(47999), s(48000), s(63999)],
                               [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_warmup_then_cosine() -> None:
    s = build_schedule(OptimConfig(lr=0.4, schedule="cosine", warmup_steps=100), 1100)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(50)), 0.2, rtol=1e-6)
    np.testing.assert_allclose(float(s(100)), 0.4, rtol=1e-6)
    # halfway through the cosine part: lr/2
    np.testing.assert_allclose(float(s(600)), 0.2, rtol=1e-4)
    assert float(s(1100)) == pytest.approx(0.0, abs=1e-7)


def test_warmup_keeps_multistep_milestones_absolute() -> None:
    s = build_schedule(OptimConfig(lr=0.1, schedule="multistep", warmup_steps=400, milestones=(1000,)), 2000)
    np.testing.assert_allclose([s(200), s(400), s(999), s(1000)], [0.05, 0.1, 0.1, 0.01], rtol=1e-6)


def test_weight_decay_skips_batchnorm_and_biases() -> None:
    _, params, _ = init(create_model("resnet20"))
    mask = decay_mask(params)
    flat = {"/".join(map(str, k)): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
    decayed = {k for k, v in flat.items() if v}
    assert any("conv1" in k and "weight" in k for k in decayed)
    assert any(k.startswith("['fc']['weight']") or "fc" in k and "weight" in k for k in decayed)
    assert not any("bn" in k or "bias" in k for k in decayed)


def test_sgd_weight_decay_is_pytorch_style() -> None:
    """One SGD step with wd on a conv weight equals p - lr*(g + wd*p); a BN weight gets no decay."""
    params = {"w": jnp.ones((2, 2, 1, 1)), "b": jnp.ones((2,))}
    grads = {"w": jnp.full((2, 2, 1, 1), 0.5), "b": jnp.full((2,), 0.5)}
    tx, _ = build_optimizer(OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.01,
                                        schedule="constant"), 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], 1 - 0.1 * (0.5 + 0.01 * 1), rtol=1e-6)
    np.testing.assert_allclose(new["b"], 1 - 0.1 * 0.5, rtol=1e-6)


def test_adamw_and_clipping_build() -> None:
    params = {"w": jnp.ones((3, 3))}
    tx, _ = build_optimizer(OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, clip_norm=1.0,
                                        schedule="constant"), 10)
    huge = {"w": jnp.full((3, 3), 1e6)}
    updates, _ = tx.update(huge, tx.init(params), params)
    assert np.all(np.isfinite(np.asarray(updates["w"])))
    assert float(optax.tree.norm(updates)) < 1.0  # adam's step is ~lr per entry, clipped input
