"""A functional face over the modules, for people who think in Linen's or Haiku's terms.

``graphdef, params, batch_stats = init(model)`` and
``logits, batch_stats = apply(graphdef, params, batch_stats, x, train=True)``.
``batch_stats`` holds every non-parameter variable: BatchNorm's running statistics and, when drop-path
is on, its RNG counter. Under plain ``jax.jit`` NNX drops BatchNorm updates unless the new state is
returned, so `apply` always returns it.
"""

from __future__ import annotations

import jax
from flax import nnx

__all__ = ["apply", "init"]


def init(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """Split ``model`` into (graphdef, params, batch_stats)."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, ...)
    return graphdef, params, batch_stats


def apply(
    graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, x: jax.Array, *, train: bool
) -> tuple[jax.Array, nnx.State]:
    """Run the model on ``x`` in train or eval mode; returns (output, new batch_stats).

    Merges with ``copy=True``, which is what lets it run inside ``jax.grad`` and ``jax.jit``.
    ``train`` must be a Python bool (it picks the computation, so it is static under jit).
    """
    if not isinstance(train, bool):
        raise TypeError(f"apply: train must be a Python bool (static under jit); got {type(train).__name__}")
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    if train:
        model.train()
    else:
        model.eval()
    y = model(x)
    return y, nnx.state(model, nnx.Not(nnx.Param))
