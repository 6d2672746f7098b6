"""The jitted train and eval steps: pure functions over a `TrainState` and a uint8 batch.

Augmentation runs inside the step on the device, keyed by ``fold_in(state.rng, state.step)``, so a
resumed run sees exactly the same crops and flips. With ``precision="bf16"`` the images enter the model
as bfloat16, every layer computes in bf16 against f32 parameters, and BatchNorm statistics, the loss
and the optimiser stay f32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jresnet.data import augment, normalize
from jresnet.functional import apply
from jresnet.train.state import TrainState

__all__ = ["make_eval_step", "make_train_step"]

Metrics = dict[str, jax.Array]


def _prepare(images: jax.Array, mean: Sequence[float], std: Sequence[float], dtype: Any) -> jax.Array:
    return normalize(images, mean, std).astype(dtype)


def _ema(decay: float, ema: Any, new: Any) -> Any:
    return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    crop_padding: int,
    flip: bool,
    label_smoothing: float,
    precision: str,
    ema_decay: float | None,
    skip_nonfinite: bool,
    shardings: tuple[Any, Any] | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """Build ``step(state, images_uint8, labels) -> (state, metrics)``, jitted with the state donated.

    ``shardings`` is (replicated, batch-sharded) NamedShardings for a data-parallel mesh: the batch is
    split over the ``data`` axis and parameters are replicated, so BatchNorm sees the global batch.
    """
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32

    def loss_fn(params: Any, batch_stats: Any, x: jax.Array, labels: jax.Array) -> tuple[jax.Array, Any]:
        logits, new_stats = apply(graphdef, params, batch_stats, x, train=True)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, new_stats)

    def step(state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, Metrics]:
        key = jax.random.fold_in(state.rng, state.step)
        x = _prepare(augment(key, images, crop_padding=crop_padding, flip=flip), mean, std, dtype)
        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, labels)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
        if ema_decay is not None:
            new = new.replace(ema_params=_ema(ema_decay, state.ema_params, params),
                              ema_batch_stats=_ema(ema_decay, state.ema_batch_stats, new_stats))
        if skip_nonfinite:  # keep the old weights, count the step as skipped, move on
            kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
            new = kept.replace(step=state.step + 1, skipped=state.skipped + (~finite).astype(jnp.int32))
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            "grad_norm": grad_norm,
            "lr": jnp.asarray(schedule(state.step), jnp.float32),
            "finite": finite,
        }
        return new, metrics

    if shardings is None:
        return jax.jit(step, donate_argnums=(0,))
    replicated, batch = shardings
    return jax.jit(step, donate_argnums=(0,), in_shardings=(replicated, batch, batch),
                   out_shardings=(replicated, replicated))


def make_eval_step(
    graphdef: nnx.GraphDef,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    precision: str,
    shardings: tuple[Any, Any] | None = None,
) -> Callable[[Any, Any, jax.Array, jax.Array, jax.Array], Metrics]:
    """Build ``eval(params, batch_stats, images_uint8, labels, mask) -> sums`` with running statistics.

    Returns sums (correct, loss, count) over the rows where ``mask`` is True, so padded rows of the
    last batch count for nothing and every example counts once.
    """
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32

    def evaluate(params: Any, batch_stats: Any, images: jax.Array, labels: jax.Array,
                 mask: jax.Array) -> Metrics:
        logits, _ = apply(graphdef, params, batch_stats, _prepare(images, mean, std, dtype), train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        weight = mask.astype(jnp.float32)
        return {
            "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * weight),
            "loss": jnp.sum(losses * weight),
            "count": jnp.sum(weight),
        }

    if shardings is None:
        return jax.jit(evaluate)
    replicated, batch = shardings
    return jax.jit(evaluate, in_shardings=(replicated, replicated, batch, batch, batch),
                   out_shardings=replicated)
