"""The explicit training state: everything one train step reads and returns.

The model is split once with ``nnx.split`` into a static graphdef and these pytrees, so the step is a
pure function (see `jresnet.train.step`) and the state checkpoints as it is.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jresnet.functional import init

__all__ = ["TrainState", "create_state"]


@struct.dataclass
class TrainState:
    """Parameters, BatchNorm statistics, optimiser state, the EMA copy (or None), the base RNG key and
    the step counter. ``skipped`` counts steps dropped by the ``skip`` NaN policy."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None
    ema_batch_stats: Any = None
    skipped: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))


def create_state(model: nnx.Module, tx: optax.GradientTransformation, *, seed: int,
                 ema: bool) -> tuple[nnx.GraphDef, TrainState]:
    """Split ``model`` and build its initial `TrainState` (EMA starts as a copy of the weights)."""
    graphdef, params, batch_stats = init(model)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(seed),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats) if ema else None,
        skipped=jnp.zeros((), jnp.int32),
    )
    return graphdef, state
