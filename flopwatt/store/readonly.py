"""A read-only connection to a store, whichever engine: what the report and ``flopwatt store``
read with. It answers ``execute(sql, params)`` written with ``?`` placeholders with rows indexed
by column name, on a SQLite file (opened read-only: a running collector keeps writing) and on a
PostgreSQL database (a read-only session) alike."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flopwatt.store import describe_db, is_postgres
from flopwatt.store.schema import SCHEMA_VERSION


class StoreUnreadableError(RuntimeError):
    """Not a flopwatt store, a newer schema, or a server that cannot be reached (the message
    says which)."""


class _PostgresReader:
    """A read-only PostgreSQL connection that answers ``execute(sql, params)`` with ``?``
    placeholders and rows by column name, as the SQLite connection does."""

    def __init__(self, dsn: str) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self._con: Any = psycopg.connect(dsn, row_factory=dict_row, connect_timeout=10)
        self._con.read_only = True
        # One snapshot for everything this reader reads (it never commits): a report reads
        # tiers that maintenance moves data between, and must see each sample exactly once.
        self._con.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._con.execute(sql.replace("?", "%s"), tuple(params))

    def close(self) -> None:
        self._con.close()


def connect_read_only(db_path: Path | str) -> Any:
    """A read-only connection to the store ``db_path`` names — a SQLite file, or a PostgreSQL
    DSN — answering ``execute(sql, params)`` (``?`` placeholders) with rows by column name.

    Raises:
        FileNotFoundError: no such file.
        StoreUnreadableError: not a flopwatt store, written by a newer flopwatt, or a PostgreSQL
            server that cannot be reached.
    """
    if is_postgres(db_path):
        import psycopg

        try:
            reader = _PostgresReader(str(db_path))
        except psycopg.Error as exc:
            raise StoreUnreadableError(
                f"cannot read {describe_db(db_path)}: {str(exc).strip()}"
            ) from None
        try:
            row = reader.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
        except psycopg.Error as exc:
            reader.close()
            raise StoreUnreadableError(
                f"{describe_db(db_path)} is not a flopwatt database: {str(exc).strip()}"
            ) from None
        return _checked_version(reader, row, describe_db(db_path))
    path = Path(db_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no flopwatt database at {path}")
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=10000")
    try:
        row = conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreUnreadableError(f"{path} is not a flopwatt database: {exc}") from None
    return _checked_version(conn, row, str(path))


@contextmanager
def read_snapshot(conn: Any) -> Iterator[Any]:
    """Read ``conn`` (from :func:`connect_read_only`) from one snapshot while inside: store
    maintenance moving samples between tables (compaction: per-message chunks → compact chunks
    and rollups, in one transaction) is then seen wholly before or wholly after. A PostgreSQL
    reader is one REPEATABLE READ transaction already."""
    if not isinstance(conn, sqlite3.Connection):
        yield conn
        return
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")


def _checked_version(conn: Any, row: Any, where: str) -> Any:
    version = row["v"] if row is not None else None
    if version is None or int(version) > SCHEMA_VERSION:
        conn.close()
        raise StoreUnreadableError(
            f"{where} has schema version {version}; this flopwatt reads up to {SCHEMA_VERSION}"
        )
    return conn
