"""The package's shape: its public API resolves, and it imports nothing from the layers above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import jresnet.data

DATA_PACKAGE = Path(jresnet.data.__file__).parent
FORBIDDEN = ("jresnet.train", "jresnet.models", "jresnet.cli")


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, absolute, including ``from jresnet import models`` forms."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted(DATA_PACKAGE.glob("*.py")), ids=lambda path: path.name)
def test_data_imports_nothing_from_train_models_or_cli(path: Path) -> None:
    offending = [
        name
        for name in imported_modules(path)
        if any(name == f or name.startswith(f"{f}.") for f in FORBIDDEN)
    ]
    assert offending == [], f"{path.name} imports {offending}; jresnet.data sits below train/ and cli"


def test_every_public_name_resolves() -> None:
    missing = [name for name in jresnet.data.__all__ if not hasattr(jresnet.data, name)]
    assert missing == []
    assert len(set(jresnet.data.__all__)) == len(jresnet.data.__all__)
