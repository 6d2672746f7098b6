"""Shared fixtures, and a persistent XLA compilation cache for the whole suite."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import pytest
from flax import nnx

# Many tests compile the same small models, in this process and in subprocesses: share XLA's
# persistent cache between them (it keys on the program and the flags, so results are unchanged).
_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                               str(Path(tempfile.gettempdir()) / "jresnet-tests-xla-cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)


@pytest.fixture
def rngs() -> nnx.Rngs:
    """A fresh, seeded ``nnx.Rngs`` (a default stream, so it also feeds dropout/drop-path)."""
    return nnx.Rngs(0)
