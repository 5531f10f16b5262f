"""The collector's store: one interface, two engines.

* :mod:`.base` — the interface (:class:`~.base.Store`), the message write and its outcome,
  and the rows every engine writes the same way;
* :mod:`.sqlite` — one SQLite file: the default, for one machine and the demo;
* :mod:`.postgres` — a PostgreSQL database shared by several stateless collector replicas;
* :mod:`.schema` — the versioned migrations both engines apply; :mod:`.chunks` — the telemetry
  chunk format; :mod:`.latest` — each device's newest values, handed from commits to the state.

:func:`open_store` picks the engine from what ``--db`` (or ``FLOPWATT_DB``) names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flopwatt.store.base import Store

DB_ENV = "FLOPWATT_DB"
"""Environment variable read where ``--db`` is not given."""


def is_postgres(db: str | Path) -> bool:
    """Whether ``db`` names a PostgreSQL database (``postgresql://…`` or ``postgres://…``)."""
    return str(db).startswith(("postgresql://", "postgres://"))


def open_store(db: str | Path, **options: Any) -> Store:
    """The store ``db`` names: a PostgreSQL DSN, or a SQLite file path (created if missing).

    ``options`` go to the engine (``busy_timeout_s``, ``clock``; SQLite also takes
    ``checkpoint_interval_s``).

    Raises:
        psycopg.OperationalError: a PostgreSQL server that cannot be reached.
        sqlite3.OperationalError: a SQLite file that cannot be opened.
        RuntimeError: a database whose schema is newer than this flopwatt.
    """
    if is_postgres(db):
        from flopwatt.store.postgres import PostgresStore

        options.pop("checkpoint_interval_s", None)
        return PostgresStore(str(db), **options)
    from flopwatt.store.sqlite import SQLiteStore

    return SQLiteStore(Path(db), **options)


def describe_db(db: str | Path) -> str:
    """``db`` for logs and errors: a DSN without its password."""
    text = str(db)
    if not is_postgres(text):
        return text
    scheme, _, rest = text.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return text
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
