"""Fixtures shared by the reliability tests (test_checkpoint.py, test_faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .runs import PRISTINE_ARGS, RUN_NAME, complete_checkpoints, overrides


@pytest.fixture(scope="session")
def pristine_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished small run folder (checkpoints 2, 4, 6); tests copy it and never change it."""
    from jresnet.train import loop
    from jresnet.train.config import load_config

    out = tmp_path_factory.mktemp("pristine")
    loop.train(load_config(None, overrides(out, *PRISTINE_ARGS)), verbose=False)
    run = out / RUN_NAME
    assert complete_checkpoints(run / "checkpoints") == [2, 4, 6]
    return run


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """For in-process ``cli.main``: leave XLA_FLAGS alone for the rest of the session, and keep the CLI's
    one-line errors (no JRESNET_DEBUG tracebacks)."""
    monkeypatch.setenv("JRESNET_XLA_FLAGS", "0")
    monkeypatch.delenv("JRESNET_DEBUG", raising=False)
