"""Shared fixtures for the core tests (shapes, layers, blocks, models, summary, functional, cli)."""

from __future__ import annotations

import pytest
from flax import nnx


@pytest.fixture
def rngs() -> nnx.Rngs:
    """A fresh, seeded ``nnx.Rngs`` (a default stream, so it also feeds dropout/drop-path)."""
    return nnx.Rngs(0)
