"""PostgreSQL time partitions of the raw and rollup tiers: created ahead of the rows that need
them, dropped whole once past their tier's horizon.

Three partitioned tables hold time-ranged leaves (schema version 6): ``telemetry_packed`` by
``t_last_unix_ns`` (the raw tier's compact chunks), and ``telemetry_rollups_10s`` /
``telemetry_rollups_1m`` (the ``telemetry_rollups`` list partitions of each tier) by
``window_start_unix_ns``. A leaf spans :func:`~flopwatt.store.retention.partition_span_s` of
its tier's horizon, aligned to multiples of the span (clipped where an existing leaf — one made
under another horizon, or the migration's ``legacy`` leaf — already covers part of it), and is
named after its start in UTC (``telemetry_packed_p20261206t0000``).

Only the maintaining replica writes these tables (the maintenance advisory lock), so the
partition list it reads from the catalog stays true while it works. Creating or dropping a
partition waits at most :data:`DDL_LOCK_TIMEOUT_MS` for readers (a report's snapshot holds its
tables until it ends). Dropping a leaf frees its
disk space at once; a ``DELETE`` would leave it to ``VACUUM``, which does not give it back to
the file system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flopwatt.store.retention import S_NS

PACKED = "telemetry_packed"
ROLLUP_PARENTS: dict[str, str] = {"10s": "telemetry_rollups_10s", "1m": "telemetry_rollups_1m"}
"""The range-partitioned table of each rollup tier."""

_BOUND = re.compile(r"FROM \((.+?)\) TO \((.+?)\)")
DDL_LOCK_TIMEOUT_MS = 2000
"""How long creating or dropping a partition waits for its lock: the DDL needs the parent
exclusively, a long report holds it shared, and every reader that comes after queues behind a
waiting DDL — so it gives up soon (the pass fails, logged; the next pass tries again) rather
than stall readers."""


@dataclass(frozen=True)
class Partition:
    """One leaf: rows with the partition key in ``[lo, hi)`` (None: unbounded) (ns)."""

    name: str
    lo: int | None
    hi: int | None

    def holds(self, t: int) -> bool:
        return (self.lo is None or self.lo <= t) and (self.hi is None or t < self.hi)


def _bound(text: str) -> int | None:
    text = text.strip().strip("'")
    return None if text in ("MINVALUE", "MAXVALUE") else int(text)


def list_partitions(conn: Any, parent: str) -> list[Partition]:
    """The leaves of ``parent``, oldest first (``conn.execute`` with ``%s`` placeholders)."""
    rows = conn.execute(
        "SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass",
        (parent,),
    ).fetchall()
    out = []
    for r in rows:
        m = _BOUND.search(r["bound"] or "")
        if m is None:  # a DEFAULT partition: not ours
            continue
        out.append(Partition(r["name"], _bound(m.group(1)), _bound(m.group(2))))
    return sorted(out, key=lambda p: (p.lo is not None, p.lo or 0))


def _stamp(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns // S_NS, tz=UTC).strftime("%Y%m%dt%H%M")


def new_partition(existing: list[Partition], parent: str, t: int, span_s: int) -> Partition:
    """The leaf to create for key ``t`` (not held by any of ``existing``): ``[start, start +
    span)`` aligned to the span, clipped to the neighbours."""
    span = span_s * S_NS
    lo = (t // span) * span
    hi = lo + span
    for p in existing:
        if p.hi is not None and p.hi <= t:
            lo = max(lo, p.hi)
        if p.lo is not None and p.lo > t:
            hi = min(hi, p.lo)
    return Partition(f"{parent}_p{_stamp(lo)}", lo, hi)


def ensure_partitions(conn: Any, parent: str, keys: list[int], span_s: int) -> list[Partition]:
    """Create the leaves of ``parent`` that rows with partition keys ``keys`` (ns) need, each
    in its own short transaction (``conn`` in autocommit); returns the leaves created."""
    existing = list_partitions(conn, parent)
    created = []
    for t in sorted(set(keys)):
        if any(p.holds(t) for p in existing):
            continue
        p = new_partition(existing, parent, t, span_s)
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT_MS}ms'")
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{p.name}" PARTITION OF "{parent}" '
                f"FOR VALUES FROM ({p.lo}) TO ({p.hi})"
            )
        existing.append(p)
        created.append(p)
    return created


def drop_partition(conn: Any, p: Partition) -> tuple[int, int]:
    """Drop leaf ``p``; returns its rows and data bytes (counted first, for the totals)."""
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT_MS}ms'")
        row = conn.execute(
            f'SELECT COUNT(*) AS n, COALESCE(SUM(octet_length(data)), 0) AS b FROM "{p.name}"'
        ).fetchone()
        conn.execute(f'DROP TABLE "{p.name}"')
    return int(row["n"]), int(row["b"])
