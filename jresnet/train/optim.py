"""Optimisers and schedules from a config, built from optax's parts.

- SGD with momentum (optionally Nesterov), with PyTorch's coupled weight decay: the decay is added to
  the gradient before the momentum, which is what He et al.'s and torchvision's recipes use.
- AdamW with decoupled weight decay (optax.adamw).
- Weight decay applies to conv and linear weights only; BatchNorm parameters and biases are masked
  off (every parameter with fewer than 2 dimensions).
- Schedules: linear warmup then cosine, multistep (×gamma at given steps) or constant.
- Optional global-norm clipping first in the chain.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from jresnet.train.config import OptimConfig

__all__ = ["build_optimizer", "build_schedule", "decay_mask"]


def build_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule named by ``cfg.schedule`` over ``total_steps`` optimiser steps."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else cfg.lr, peak_value=cfg.lr, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1), end_value=0.0)
    if cfg.schedule == "multistep":
        main = optax.piecewise_constant_schedule(cfg.lr, {int(m): cfg.gamma for m in cfg.milestones})
    elif cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    else:
        raise ValueError(f"optim.schedule must be cosine, multistep or constant; got {cfg.schedule!r}")
    if not warmup:
        return main
    # Warm up linearly, then follow the main schedule on the same step counter (milestones stay absolute).
    ramp = optax.linear_schedule(cfg.lr * 0.0, cfg.lr, warmup)
    return lambda step: jax.numpy.where(step < warmup, ramp(step), main(step))


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: conv kernels and linear weights (ndim >= 2)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def build_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain for ``cfg`` and its learning-rate schedule (for logging)."""
    schedule = build_schedule(cfg, total_steps)
    parts: list[optax.GradientTransformation] = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.name == "sgd":
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif cfg.name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=decay_mask))
    else:
        raise ValueError(f"optim.name must be sgd or adamw; got {cfg.name!r}")
    return optax.chain(*parts), schedule
