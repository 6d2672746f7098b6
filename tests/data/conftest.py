"""Fixtures for the data tests; the format writers they share live in `format_writers`."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
"""``../shared/data`` beside the checkout: real MNIST (8k) and the CIFAR-10 JPEG tarball."""


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder, or a skip saying why the test cannot run here."""
    folder = SHARED_DATA.resolve()
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent (it sits beside the checkout as ../shared/data)")
    return folder
