"""Shared fixtures. Real parts only: the packaged registry, the real CLI, real files."""

from __future__ import annotations

import pytest

from flopwatt.analysis.registry import Registry, load_registry


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The registry shipped with the package."""
    return load_registry()
