"""Shared fixtures. Real parts only: the packaged registry, the real CLI, real files."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from flopwatt.analysis.registry import Registry, load_registry

TINY = 1e-6
"""``pytest.approx``'s default absolute tolerance is 1e-12: for expected values this small (J per
FLOP is ~1e-12) it can exceed the value itself, so 0 or twice the value would pass."""


def _magnitudes(expected: Any) -> Iterator[float]:
    if isinstance(expected, Mapping):
        for v in expected.values():
            yield from _magnitudes(v)
    elif isinstance(expected, (list, tuple, set, frozenset)):
        for v in expected:
            yield from _magnitudes(v)
    elif isinstance(expected, (int, float)) and not isinstance(expected, bool):
        yield abs(float(expected))
    else:
        try:  # numpy arrays and scalars
            for v in expected.ravel().tolist():
                yield abs(float(v))
        except (AttributeError, TypeError, ValueError):
            return


@pytest.fixture(autouse=True, scope="session")
def _approx_needs_abs_for_tiny_values() -> Iterator[None]:
    """Every ``pytest.approx`` of a value below :data:`TINY` must state ``abs=`` (normally
    ``abs=0``): without it the check may be vacuous (issue 11 found one that passed for 0)."""
    original = pytest.approx

    def approx(expected: Any, rel: Any = None, abs: Any = None, nan_ok: bool = False) -> Any:
        if abs is None and any(0 < m < TINY for m in _magnitudes(expected) if math.isfinite(m)):
            raise AssertionError(
                f"pytest.approx({expected!r}) without abs=: the default absolute tolerance "
                f"(1e-12) may exceed a value below {TINY:g}; pass abs=0 (and rel=)"
            )
        return original(expected, rel=rel, abs=abs, nan_ok=nan_ok)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pytest, "approx", approx)
        yield


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The registry shipped with the package."""
    return load_registry()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL cluster for the session (see :mod:`tests.postgres_server`); skips with
    the reason where the server binaries are absent (``.ci/run`` installs them)."""
    from tests.postgres_server import SKIP_REASON, postgres_bin_dir, run_postgres

    if postgres_bin_dir() is None:
        pytest.skip(SKIP_REASON)
    with run_postgres() as server:
        yield server


_databases = [0]


@pytest.fixture(params=("sqlite", "postgresql"))
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of each engine, as ``--db`` names it: a SQLite file, and a new
    database on the session's PostgreSQL server (the store contract and retention suites)."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    server = request.getfixturevalue("postgres")
    _databases[0] += 1
    return str(server.create_database(f"store_{_databases[0]}"))


@pytest.fixture
def store(db: str) -> Iterator[Any]:
    """A store opened on :func:`db` (closed after the test)."""
    from flopwatt.store import open_store

    s = open_store(db, busy_timeout_s=5.0)
    try:
        yield s
    finally:
        s.close()
