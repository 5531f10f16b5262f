"""What ``flopwatt store check`` and ``flopwatt store stats`` read from a store, either engine.

**check** — the store's own ledger, per (agent, epoch): messages stored, the highest sequence,
the **gaps** below it (sequences never stored: the exactly-once promise broken, exit 1), the
stream's recorded progress and whether it equals the highest contiguous stored sequence,
resends counted as duplicates and conflicts, rejected messages and rejected samples, tombstones
and the samples they stand for. Plus integrity: SQLite's ``quick_check`` (PostgreSQL checks its
own pages), and telemetry chunks without their message.

**stats** — per table: rows, bytes on disk (SQLite: the pages of the table and its indexes;
PostgreSQL: ``pg_total_relation_size``) and samples; the oldest and newest telemetry sample;
bytes per stored sample (all of the database, and the telemetry table alone).

Pure reads through :func:`flopwatt.store.readonly.connect_read_only`; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flopwatt.store.schema import epoch_from_db

TABLES: tuple[str, ...] = (
    "messages",
    "telemetry_chunks",
    "stream_progress",
    "rejected_samples",
    "job_results",
    "comparisons",
    "agents",
    "devices",
    "jobs",
    "job_targets",
)


@dataclass(frozen=True)
class EpochLedger:
    """One (agent, epoch): what the store holds of it."""

    agent_id: str
    epoch: int
    messages: int
    highest_sequence: int
    gaps: int
    """Sequences below the highest that were never stored."""
    first_gaps: tuple[int, ...]
    """The first few missing sequences (for the operator to look up)."""
    committed_through: int
    progress_consistent: bool
    """Recorded progress equals the highest contiguous stored sequence."""
    duplicates: int
    conflicts: int
    rejected_messages: int
    rejected_samples: int
    tombstones: int
    tombstoned_samples: int


@dataclass(frozen=True)
class StoreCheck:
    """The whole check: a ledger line per epoch, integrity findings, and the verdict."""

    engine: str
    database: str
    epochs: tuple[EpochLedger, ...]
    integrity: tuple[str, ...]
    """Problems found by the engine's own check ("ok" findings are left out)."""
    orphan_chunks: int

    @property
    def gaps(self) -> int:
        """Missing sequences over every epoch."""
        return sum(e.gaps for e in self.epochs)

    @property
    def ok(self) -> bool:
        """No gap, consistent progress everywhere, no integrity finding, no orphan."""
        return (
            self.gaps == 0
            and all(e.progress_consistent for e in self.epochs)
            and not self.integrity
            and self.orphan_chunks == 0
        )


def _int(v: Any) -> int:
    return int(v) if v is not None else 0


def check_store(conn: Any, *, engine: str, database: str, max_listed_gaps: int = 10) -> StoreCheck:
    """The ledger and integrity of the store behind ``conn`` (see the module docstring)."""
    version = _int(conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()["v"])
    # Schema 3 began counting resends; an older store (read-only here) has no such counts.
    counts = "duplicates, conflicts" if version >= 3 else "0 AS duplicates, 0 AS conflicts"
    progress = {
        (r["agent_id"], _int(r["epoch"])): r
        for r in conn.execute(
            f"SELECT agent_id, epoch, committed_through, {counts} FROM stream_progress"
        ).fetchall()
    }
    rejected_samples = {
        (r["agent_id"], _int(r["epoch"])): _int(r["n"])
        for r in conn.execute(
            "SELECT agent_id, epoch, SUM(samples) AS n FROM rejected_samples "
            "GROUP BY agent_id, epoch"
        ).fetchall()
    }
    rows = conn.execute(
        "SELECT agent_id, epoch, COUNT(*) AS n, MAX(sequence) AS top, "
        "SUM(CASE WHEN status = 'rejected' THEN 1 ELSE 0 END) AS rejected, "
        "SUM(CASE WHEN kind = 'dropped' THEN 1 ELSE 0 END) AS tombstones, "
        "SUM(CASE WHEN kind = 'dropped' THEN samples ELSE 0 END) AS tombstoned "
        "FROM messages GROUP BY agent_id, epoch ORDER BY agent_id, epoch"
    ).fetchall()
    epochs = []
    for r in rows:
        key = (r["agent_id"], _int(r["epoch"]))
        n, top = _int(r["n"]), _int(r["top"])
        gaps = top - n  # sequences are unique and start at 1
        first: tuple[int, ...] = ()
        contiguous = top
        if gaps:
            present = {
                _int(x["sequence"])
                for x in conn.execute(
                    "SELECT sequence FROM messages WHERE agent_id = ? AND epoch = ?", key
                ).fetchall()
            }
            missing = [s for s in range(1, top + 1) if s not in present]
            first = tuple(missing[:max_listed_gaps])
            contiguous = missing[0] - 1
        p = progress.get(key)
        committed = _int(p["committed_through"]) if p is not None else 0
        epochs.append(
            EpochLedger(
                agent_id=key[0],
                epoch=epoch_from_db(key[1]),
                messages=n,
                highest_sequence=top,
                gaps=gaps,
                first_gaps=first,
                committed_through=committed,
                progress_consistent=committed == contiguous,
                duplicates=_int(p["duplicates"]) if p is not None else 0,
                conflicts=_int(p["conflicts"]) if p is not None else 0,
                rejected_messages=_int(r["rejected"]),
                rejected_samples=rejected_samples.get(key, 0),
                tombstones=_int(r["tombstones"]),
                tombstoned_samples=_int(r["tombstoned"]),
            )
        )
    integrity: list[str] = []
    if engine == "sqlite":
        findings = [str(x[0]) for x in conn.execute("PRAGMA quick_check").fetchall()]
        integrity = [f for f in findings if f != "ok"]
    orphans = conn.execute(
        "SELECT COUNT(*) AS n FROM telemetry_chunks t WHERE NOT EXISTS (SELECT 1 FROM messages m "
        "WHERE m.agent_id = t.agent_id AND m.epoch = t.epoch AND m.sequence = t.sequence)"
    ).fetchone()
    return StoreCheck(
        engine=engine,
        database=database,
        epochs=tuple(epochs),
        integrity=tuple(integrity),
        orphan_chunks=_int(orphans["n"]),
    )


@dataclass(frozen=True)
class TableStats:
    """One table: rows, bytes on disk (with its indexes), telemetry samples where it has any."""

    table: str
    rows: int
    bytes: int | None
    """Absent where the engine cannot say (a SQLite build without ``dbstat``)."""
    samples: int | None


@dataclass(frozen=True)
class StoreStats:
    """Sizes of the store (see the module docstring)."""

    engine: str
    database: str
    tables: tuple[TableStats, ...]
    total_bytes: int | None
    telemetry_samples: int
    oldest_sample_unix_ns: int | None
    newest_sample_unix_ns: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes_per_sample(self) -> float | None:
        """All of the database ÷ telemetry samples stored (B)."""
        if not self.telemetry_samples or self.total_bytes is None:
            return None
        return self.total_bytes / self.telemetry_samples

    @property
    def telemetry_bytes_per_sample(self) -> float | None:
        """The telemetry table (and its index) ÷ telemetry samples stored (B)."""
        chunks = next((t for t in self.tables if t.table == "telemetry_chunks"), None)
        if chunks is None or chunks.bytes is None or not self.telemetry_samples:
            return None
        return chunks.bytes / self.telemetry_samples


def _sqlite_table_bytes(conn: Any) -> dict[str, int] | None:
    try:
        pages = conn.execute(
            "SELECT COALESCE(s.tbl_name, d.name) AS tbl, SUM(d.pgsize) AS bytes FROM dbstat d "
            "LEFT JOIN sqlite_schema s ON s.name = d.name GROUP BY tbl"
        ).fetchall()
    except Exception:
        return None
    return {str(r["tbl"]): _int(r["bytes"]) for r in pages}


def store_stats(conn: Any, *, engine: str, database: str) -> StoreStats:
    """Rows, bytes and samples per table of the store behind ``conn``."""
    if engine == "sqlite":
        sizes = _sqlite_table_bytes(conn)
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        count = conn.execute("PRAGMA page_count").fetchone()[0]
        total: int | None = int(page) * int(count)
    else:
        sizes = {
            t: _int(
                conn.execute("SELECT pg_total_relation_size(?::regclass) AS b", (t,)).fetchone()[
                    "b"
                ]
            )
            for t in TABLES
        }
        total = _int(
            conn.execute("SELECT pg_database_size(current_database()) AS b").fetchone()["b"]
        )
    telemetry = conn.execute(
        "SELECT COALESCE(SUM(n_samples), 0) AS n, MIN(t_first_unix_ns) AS oldest, "
        "MAX(t_last_unix_ns) AS newest FROM telemetry_chunks"
    ).fetchone()
    samples = _int(telemetry["n"])
    rejected = _int(
        conn.execute("SELECT COALESCE(SUM(samples), 0) AS n FROM rejected_samples").fetchone()["n"]
    )
    tables = []
    for t in TABLES:
        n = _int(conn.execute(f"SELECT COUNT(*) AS n FROM {t}").fetchone()["n"])
        per = {"telemetry_chunks": samples, "rejected_samples": rejected}.get(t)
        tables.append(TableStats(t, n, sizes.get(t) if sizes is not None else None, per))
    return StoreStats(
        engine=engine,
        database=database,
        tables=tuple(tables),
        total_bytes=total,
        telemetry_samples=samples,
        oldest_sample_unix_ns=_int(telemetry["oldest"]) if telemetry["oldest"] else None,
        newest_sample_unix_ns=_int(telemetry["newest"]) if telemetry["newest"] else None,
    )
