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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flopwatt.store.schema import epoch_from_db

TABLES: tuple[str, ...] = (
    "messages",
    "telemetry_chunks",
    "telemetry_packed",
    "telemetry_rollups",
    "telemetry_tails",
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
    pruned: int = 0
    """Telemetry messages removed at the raw horizon (not gaps: they were stored)."""


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
    # Schema 5 began pruning at the retention horizons, counting what each stream lost.
    pruned = "pruned, pruned_through" if version >= 5 else "0 AS pruned, 0 AS pruned_through"
    progress = {
        (r["agent_id"], _int(r["epoch"])): r
        for r in conn.execute(
            f"SELECT agent_id, epoch, committed_through, {counts}, {pruned} FROM stream_progress"
        ).fetchall()
    }
    rejected_samples = {
        (r["agent_id"], _int(r["epoch"])): _int(r["n"])
        for r in conn.execute(
            "SELECT agent_id, epoch, SUM(samples) AS n FROM rejected_samples "
            "GROUP BY agent_id, epoch"
        ).fetchall()
    }
    stored = {
        (r["agent_id"], _int(r["epoch"])): dict(r)
        for r in conn.execute(
            "SELECT agent_id, epoch, COUNT(*) AS n, MAX(sequence) AS top, "
            "SUM(CASE WHEN status = 'rejected' THEN 1 ELSE 0 END) AS rejected, "
            "SUM(CASE WHEN kind = 'dropped' THEN 1 ELSE 0 END) AS tombstones, "
            "SUM(CASE WHEN kind = 'dropped' THEN samples ELSE 0 END) AS tombstoned "
            "FROM messages GROUP BY agent_id, epoch"
        ).fetchall()
    }
    # An epoch whose messages were all pruned is still in the ledger (from its progress row).
    pruned_epochs = {k for k, p in progress.items() if _int(p["pruned"])}
    epochs = []
    for key in sorted(stored.keys() | pruned_epochs):
        r = stored.get(key, {})
        p = progress.get(key)
        lost = _int(p["pruned"]) if p is not None else 0
        lost_through = _int(p["pruned_through"]) if p is not None else 0
        n, top = _int(r.get("n")), max(_int(r.get("top")), lost_through)
        gaps = top - n - lost  # sequences are unique and start at 1
        first: tuple[int, ...] = ()
        contiguous = top
        if gaps:
            present = {
                _int(x["sequence"])
                for x in conn.execute(
                    "SELECT sequence FROM messages WHERE agent_id = ? AND epoch = ?", key
                ).fetchall()
            }
            # Below pruned_through a missing sequence may have been pruned: gaps are listed
            # above it (the count above is exact either way).
            missing = [s for s in range(lost_through + 1, top + 1) if s not in present]
            first = tuple(missing[:max_listed_gaps])
            contiguous = missing[0] - 1 if missing else top
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
                rejected_messages=_int(r.get("rejected")),
                rejected_samples=rejected_samples.get(key, 0),
                tombstones=_int(r.get("tombstones")),
                tombstoned_samples=_int(r.get("tombstoned")),
                pruned=lost,
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


@dataclass
class TierSize:
    """What one retention tier holds (see :func:`tier_sizes`)."""

    bytes: int = 0
    rows: int = 0
    samples: int = 0
    """Raw samples: stored (``raw``) or summarised (a rollup tier); 0 for ``results``."""
    oldest_unix_ns: int | None = None
    newest_unix_ns: int | None = None

    def as_json(self, now_unix_ns: int) -> dict[str, Any]:
        """``flopwatt store stats --json``'s ``tiers.<name>``: bytes, rows, samples,
        bytes_per_sample, oldest_age_s, newest_age_s (ages from ``now_unix_ns``; null where
        the tier is empty)."""
        return {
            "bytes": self.bytes,
            "rows": self.rows,
            "samples": self.samples,
            "bytes_per_sample": self.bytes / self.samples if self.samples else None,
            "oldest_age_s": (now_unix_ns - self.oldest_unix_ns) / 1e9
            if self.oldest_unix_ns is not None
            else None,
            "newest_age_s": (now_unix_ns - self.newest_unix_ns) / 1e9
            if self.newest_unix_ns is not None
            else None,
        }


@dataclass(frozen=True)
class StoreStats:
    """Sizes of the store (see the module docstring)."""

    engine: str
    database: str
    tables: tuple[TableStats, ...]
    total_bytes: int | None
    telemetry_samples: int
    """Raw samples stored (fresh and compact chunks)."""
    oldest_sample_unix_ns: int | None
    newest_sample_unix_ns: int | None
    tiers: dict[str, TierSize] = field(default_factory=dict)
    """Per retention tier: raw, 10s, 1m, results."""
    measured_unix_ns: int = 0

    @property
    def bytes_per_sample(self) -> float | None:
        """All of the database ÷ raw telemetry samples stored (B)."""
        if not self.telemetry_samples or self.total_bytes is None:
            return None
        return self.total_bytes / self.telemetry_samples

    @property
    def telemetry_bytes_per_sample(self) -> float | None:
        """The raw tier (fresh and compact chunks, the message ledger, their indexes) ÷ raw
        samples stored (B)."""
        raw = self.tiers.get(RAW)
        if raw is None or not raw.samples or not raw.bytes:
            return None
        return raw.bytes / raw.samples


RAW, RESULTS, ROLLUP_TIERS = "raw", "results", ("10s", "1m")
RAW_TABLES = ("telemetry_chunks", "telemetry_packed", "messages", "telemetry_tails")
"""Tables of the raw tier (what is pruned at the raw horizon, and its ledger)."""
RESULTS_TABLES = (
    "job_results",
    "comparisons",
    "rejected_samples",
    "jobs",
    "job_targets",
    "agents",
    "devices",
    "stream_progress",
)


def _sqlite_table_bytes(conn: Any) -> dict[str, int] | None:
    try:
        pages = conn.execute(
            "SELECT COALESCE(s.tbl_name, d.name) AS tbl, SUM(d.pgsize) AS bytes FROM dbstat d "
            "LEFT JOIN sqlite_schema s ON s.name = d.name GROUP BY tbl"
        ).fetchall()
    except Exception:
        return None
    return {str(r["tbl"]): _int(r["bytes"]) for r in pages}


def _tables(conn: Any) -> tuple[str, ...]:
    if schema_version(conn) >= RETENTION_SCHEMA:
        return TABLES
    return tuple(t for t in TABLES if t not in RETENTION_TABLES)


def table_bytes(conn: Any, *, postgres: bool) -> dict[str, int] | None:
    """Bytes on disk per table with its indexes (SQLite: its pages, from ``dbstat``, None
    where the build lacks it; PostgreSQL: ``pg_total_relation_size``, summed over a
    partitioned table's partitions)."""
    if not postgres:
        return _sqlite_table_bytes(conn)
    out = {}
    for t in _tables(conn):
        # A partitioned table has no storage of its own: its size is its partitions' (the
        # tree of a plain table is empty).
        row = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass) + COALESCE((SELECT "
            "SUM(pg_total_relation_size(relid)) FROM pg_partition_tree(%s::regclass) "
            "WHERE relid <> %s::regclass), 0) AS b",
            (t, t, t),
        ).fetchone()
        out[t] = _int(row["b"])
    return out


RETENTION_SCHEMA = 5
"""The schema version that added the compact and rollup tables."""
ATTRIBUTION_SCHEMA = 7
"""The schema version that stores attribution spans (``gpu_attribution``)."""
RETENTION_TABLES = ("telemetry_packed", "telemetry_rollups", "telemetry_tails")


def schema_version(conn: Any) -> int:
    """The schema version of the store behind ``conn``."""
    return _int(conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()["v"])


def tier_sizes(
    conn: Any, *, postgres: bool, sizes: dict[str, int] | None = None
) -> dict[str, TierSize]:
    """Per tier: bytes (tables with their indexes; the rollup tiers share one table, split in
    proportion to their data), rows, samples, oldest and newest sample time. Reads every
    table: seconds on a large store. ``sizes``: :func:`table_bytes`, if already read."""

    def one(sql: str, params: Sequence[Any] = ()) -> Any:
        return conn.execute(sql.replace("?", "%s") if postgres else sql, params).fetchone()

    if sizes is None:
        sizes = table_bytes(conn, postgres=postgres) or {}
    out: dict[str, TierSize] = {}
    if schema_version(conn) < RETENTION_SCHEMA:  # read-only: an older store, not migrated
        return {name: TierSize() for name in (RAW, *ROLLUP_TIERS, RESULTS)}
    fresh = one(
        "SELECT COUNT(*) AS r, COALESCE(SUM(n_samples), 0) AS n, MIN(t_first_unix_ns) AS lo, "
        "MAX(t_last_unix_ns) AS hi FROM telemetry_chunks"
    )
    packed = one(
        "SELECT COUNT(*) AS r, COALESCE(SUM(n_samples), 0) AS n, MIN(t_first_unix_ns) AS lo, "
        "MAX(t_last_unix_ns) AS hi FROM telemetry_packed"
    )
    messages = one("SELECT COUNT(*) AS r FROM messages")
    lows = [_int(x) for x in (fresh["lo"], packed["lo"]) if x is not None]
    highs = [_int(x) for x in (fresh["hi"], packed["hi"]) if x is not None]
    out[RAW] = TierSize(
        bytes=sum(sizes.get(t, 0) for t in RAW_TABLES),
        rows=_int(fresh["r"]) + _int(packed["r"]) + _int(messages["r"]),
        samples=_int(fresh["n"]) + _int(packed["n"]),
        oldest_unix_ns=min(lows) if lows else None,
        newest_unix_ns=max(highs) if highs else None,
    )
    by_tier = {
        r["tier"]: r
        for r in conn.execute(
            "SELECT tier, COUNT(*) AS r, COALESCE(SUM(n_samples), 0) AS n, "
            "COALESCE(SUM(length(data)), 0) AS b, MIN(t_first_unix_ns) AS lo, "
            "MAX(t_last_unix_ns) AS hi FROM telemetry_rollups GROUP BY tier"
        ).fetchall()
    }
    rollup_bytes = sizes.get("telemetry_rollups", 0)
    all_data = sum(_int(r["b"]) for r in by_tier.values()) or 1
    for name in ROLLUP_TIERS:
        r = by_tier.get(name)
        out[name] = (
            TierSize(
                bytes=round(rollup_bytes * _int(r["b"]) / all_data),
                rows=_int(r["r"]),
                samples=_int(r["n"]),
                oldest_unix_ns=_int(r["lo"]),
                newest_unix_ns=_int(r["hi"]),
            )
            if r is not None
            else TierSize()
        )
    results = one(
        "SELECT MIN(finished_unix_ns) AS lo, MAX(finished_unix_ns) AS hi FROM job_results"
    )
    out[RESULTS] = TierSize(
        bytes=sum(sizes.get(t, 0) for t in RESULTS_TABLES),
        rows=sum(_int(one(f"SELECT COUNT(*) AS r FROM {t}")["r"]) for t in RESULTS_TABLES),
        oldest_unix_ns=_int(results["lo"]) if results["lo"] is not None else None,
        newest_unix_ns=_int(results["hi"]) if results["hi"] is not None else None,
    )
    return out


def store_stats(conn: Any, *, engine: str, database: str, now_unix_ns: int) -> StoreStats:
    """Rows, bytes and samples per table and per retention tier of the store behind
    ``conn``."""
    postgres = engine != "sqlite"
    sizes = table_bytes(conn, postgres=postgres)
    if postgres:
        total: int | None = _int(
            conn.execute("SELECT pg_database_size(current_database()) AS b").fetchone()["b"]
        )
    else:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        count = conn.execute("PRAGMA page_count").fetchone()[0]
        total = int(page) * int(count)
    tiers = tier_sizes(conn, postgres=postgres, sizes=sizes or {})
    raw = tiers[RAW]
    fresh = _int(
        conn.execute("SELECT COALESCE(SUM(n_samples), 0) AS n FROM telemetry_chunks").fetchone()[
            "n"
        ]
    )
    per_table = {
        "telemetry_chunks": fresh,
        "telemetry_packed": raw.samples - fresh,
        "telemetry_rollups": sum(tiers[t].samples for t in ROLLUP_TIERS),
        "rejected_samples": _int(
            conn.execute("SELECT COALESCE(SUM(samples), 0) AS n FROM rejected_samples").fetchone()[
                "n"
            ]
        ),
    }
    tables = []
    for t in _tables(conn):
        n = _int(conn.execute(f"SELECT COUNT(*) AS n FROM {t}").fetchone()["n"])
        size = sizes.get(t) if sizes is not None else None
        tables.append(TableStats(t, n, size, per_table.get(t)))
    return StoreStats(
        engine=engine,
        database=database,
        tables=tuple(tables),
        total_bytes=total,
        telemetry_samples=raw.samples,
        oldest_sample_unix_ns=raw.oldest_unix_ns,
        newest_sample_unix_ns=raw.newest_unix_ns,
        tiers=tiers,
        measured_unix_ns=now_unix_ns,
    )
