"""jresnet.functional: init/apply over explicit state, under jax.jit and inside jax.grad."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from jresnet.functional import apply, init
from jresnet.models import ResNet, ResNetSpec


def _tiny(**kw) -> ResNet:
    fields = dict(depths=(1, 1), widths=(4, 8), strides=(1, 2), stem="cifar", stem_width=4, num_classes=3)
    return ResNet(ResNetSpec(**{**fields, **kw}), rngs=nnx.Rngs(0))


def _images(seed: int = 0, batch: int = 4) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)) * 2 + 0.5, jnp.float32)


def _leaves(state) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(state)]


LABELS = jnp.asarray([0, 1, 2, 0])


@pytest.fixture(scope="module")
def parts():
    return init(_tiny())


@pytest.fixture(scope="module")
def train_step(parts):
    """One jitted train step through `apply` inside jax.grad: (loss, logits, new_stats, grads)."""
    graphdef, params, batch_stats = parts

    def loss_fn(params, batch_stats, x, labels):
        logits, new_stats = apply(graphdef, params, batch_stats, x, train=True)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(logp[jnp.arange(labels.shape[0]), labels]), (logits, new_stats)

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, (logits, new_stats)), grads = step(params, batch_stats, _images(), LABELS)
    return loss, logits, new_stats, grads


def test_init_splits_params_from_batch_stats(parts) -> None:
    graphdef, params, batch_stats = parts
    param_keys = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
    stat_keys = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(batch_stats)}
    assert "conv1.weight" in param_keys and "fc.bias" in param_keys and "bn1.weight" in param_keys
    assert "bn1.running_mean" in stat_keys and "layer2.0.downsample.1.running_var" in stat_keys
    assert all(k.endswith(("running_mean", "running_var")) for k in stat_keys)
    assert not param_keys & stat_keys


def test_train_mode_updates_running_stats(parts, train_step) -> None:
    graphdef, params, batch_stats = parts
    _, logits, new_stats, _ = train_step
    assert logits.shape == (4, 3)
    assert jax.tree.structure(new_stats) == jax.tree.structure(batch_stats)
    # the stem BN's running mean after one step: 0.9 * 0 + 0.1 * mean of conv1's output per channel
    conv1 = lax.conv_general_dilated(_images(), params["conv1"]["weight"][...], (1, 1), [(1, 1), (1, 1)],
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    expected_mean = 0.1 * np.asarray(conv1).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(np.asarray(new_stats["bn1"]["running_mean"][...]), expected_mean,
                               rtol=1e-4, atol=1e-5)
    changed = [not np.allclose(a, b) for a, b in zip(_leaves(new_stats), _leaves(batch_stats), strict=True)]
    assert all(changed)
    # the inputs were not mutated
    np.testing.assert_array_equal(np.asarray(batch_stats["bn1"]["running_mean"][...]), 0)


def test_grad_through_apply_is_finite_and_nonzero(parts, train_step) -> None:
    _, params, _ = parts
    loss, _, _, grads = train_step
    assert np.isfinite(float(loss))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    flat = _leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in flat)
    assert np.abs(np.asarray(grads["conv1"]["weight"][...])).sum() > 0
    assert np.abs(np.asarray(grads["fc"]["weight"][...])).sum() > 0
    assert np.abs(np.asarray(grads["layer2"][0]["conv2"]["weight"][...])).sum() > 0


def test_eval_mode_leaves_running_stats_alone(parts) -> None:
    graphdef, params, batch_stats = parts
    evaluate = jax.jit(functools.partial(apply, graphdef, train=False))
    x = _images()
    logits, new_stats = evaluate(params, batch_stats, x)
    assert logits.shape == (4, 3)
    for a, b in zip(_leaves(new_stats), _leaves(batch_stats), strict=True):
        np.testing.assert_array_equal(a, b)
    # eval mode is per-example: changing the other images does not change the first one's logits
    other = x.at[1:].set(_images(5)[1:])
    logits2, _ = evaluate(params, batch_stats, other)
    np.testing.assert_allclose(np.asarray(logits2[0]), np.asarray(logits[0]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(logits2[1:]), np.asarray(logits[1:]))


def test_train_must_be_a_python_bool(parts) -> None:
    graphdef, params, batch_stats = parts
    with pytest.raises(TypeError, match="bool"):
        apply(graphdef, params, batch_stats, _images(), train=1)  # type: ignore[arg-type]


def test_drop_path_rng_state_is_threaded() -> None:
    graphdef, params, state = init(_tiny(depths=(2, 2), drop_path_rate=0.5))
    step = jax.jit(functools.partial(apply, graphdef, train=True))
    x = _images(3, batch=16)
    first, state1 = step(params, state, x)
    again, _ = step(params, state, x)
    second, _ = step(params, state1, x)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))  # a pure function of its state
    assert not np.allclose(np.asarray(first), np.asarray(second))  # new masks from the returned RNG state
