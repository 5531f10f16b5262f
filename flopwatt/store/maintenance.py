"""Store maintenance: compaction, rollups and pruning, in bounded steps, on its own connection.

One :meth:`Maintainer.run_pass` does, in order:

1. **Compact** — per-message telemetry chunks whose samples are older than
   :attr:`MaintenanceConfig.settle_s` are re-packed per device into compact chunks
   (:mod:`flopwatt.store.packing`) and rolled up into every rollup tier
   (:mod:`flopwatt.store.rollup`, merged into the stored windows); the source chunks are
   deleted in the same transaction. Decoding, packing and rolling up happen outside any
   transaction; each transaction holds at most :attr:`MaintenanceConfig.rows_per_step` chunks,
   so the collector's writer (which shares SQLite's single write lock) waits a few
   milliseconds at most. The message rows stay: exactly-once bookkeeping is untouched.
2. **Prune** each tier at its horizon (:class:`~flopwatt.store.retention.Retention`), in
   batches of :attr:`MaintenanceConfig.rows_per_step` rows: compact chunks and stored
   telemetry and attribution messages at the raw horizon (a pruned message is counted in its
   stream's ``pruned`` / ``pruned_through``, so the ledger tells it from a gap and a resend of
   it is a duplicate), rollup windows at their tier's, results, comparisons, jobs,
   tombstones, rejected-sample counts, attribution spans and every other message at the
   results horizon.
3. **Cap the size** — when the store reaches :data:`PRESSURE_HIGH` of ``max_db_bytes``, the
   oldest raw data is pruned early (then the oldest 10 s rollups, then 1 min) until it is back
   under :data:`PRESSURE_LOW`; one warning per episode.
4. SQLite: give free pages beyond a reserve back to the file system (``incremental_vacuum``,
   bounded), where the file was created with ``auto_vacuum=INCREMENTAL``.

On PostgreSQL one replica maintains at a time (a session advisory lock); the others skip their
passes until it is gone. There the raw and rollup tiers live in time partitions
(:mod:`flopwatt.store.partitions`), created before the rows that need them and dropped whole
once all of a partition is past its horizon (data stays at most one partition span, about a
seventh of the horizon, beyond it), and the size cap drops the oldest partitions: a deleted
row's space would stay with PostgreSQL, a dropped partition's goes back to the disk. The
message ledger and the results tier are deleted in batches on both engines.

Errors: a pass that fails (database busy or unreachable) is logged and retried at the next
interval; it never touches what ingest commits.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from flopwatt.records import JobState
from flopwatt.store import rollup
from flopwatt.store.chunks import unpack_chunk
from flopwatt.store.inspect import TierSize, tier_sizes
from flopwatt.store.packing import pack_compact
from flopwatt.store.partitions import (
    PACKED,
    ROLLUP_PARENTS,
    drop_partition,
    ensure_partitions,
    list_partitions,
)
from flopwatt.store.retention import (
    RAW,
    RESULTS,
    ROLLUP_TIERS,
    S_NS,
    Retention,
    partition_span_s,
)
from flopwatt.store.sqlite import write_transaction

log = logging.getLogger(__name__)

MAINTENANCE_LOCK_KEY = 0x666C6F776D61696E  # "flowmain": the maintaining replica's advisory lock
PRESSURE_HIGH = 0.9
"""Share of ``max_db_bytes`` at which early pruning starts."""
PRESSURE_LOW = 0.8
"""Share of ``max_db_bytes`` early pruning brings the store back under."""
VACUUM_RESERVE = 0.1
"""Share of the SQLite file kept as free pages (reused by the next inserts) rather than given
back to the file system."""
VACUUM_PAGES_PER_STEP = 2048


@dataclass(frozen=True)
class MaintenanceConfig:
    """How maintenance runs."""

    retention: Retention = field(default_factory=Retention)
    max_db_bytes: int | None = None
    """Size cap of the store (B); None: no cap."""
    settle_s: float = 60.0
    """Chunks whose newest sample is younger than this are left for a later pass (s): late
    messages of the same minute then join the same compact chunk."""
    rows_per_step: int = 2000
    """Most rows one maintenance transaction touches."""
    interval_s: float = 60.0
    """Time between passes (s)."""
    stats_interval_s: float = 300.0
    """Time between the tier statistics reported as self-metrics (s): they read every table."""


@dataclass
class MaintenanceTotals:
    """Cumulative counts of this maintainer (since it started), for self-metrics."""

    passes: int = 0
    failed_passes: int = 0
    compacted_messages: int = 0
    compacted_chunks: int = 0
    compacted_samples: int = 0
    compacted_source_bytes: int = 0
    compacted_packed_bytes: int = 0
    pruned_rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    pruned_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    early_prune_episodes: int = 0
    early_pruned_rows: int = 0
    vacuumed_pages: int = 0
    dropped_partitions: int = 0
    """PostgreSQL time partitions dropped (at the horizon or under the size cap)."""
    last_pass_s: float = 0.0
    maintaining: bool = False
    """This process holds the maintenance role (always, on SQLite)."""
    store_bytes: int | None = None
    tiers: dict[str, TierSize] = field(default_factory=dict)
    tiers_unix_ns: int | None = None
    """When ``tiers`` was measured."""

    def snapshot(self) -> dict[str, Any]:
        """A plain copy (picklable, for the parent process)."""
        return {
            "passes": self.passes,
            "failed_passes": self.failed_passes,
            "compacted_messages": self.compacted_messages,
            "compacted_chunks": self.compacted_chunks,
            "compacted_samples": self.compacted_samples,
            "compacted_source_bytes": self.compacted_source_bytes,
            "compacted_packed_bytes": self.compacted_packed_bytes,
            "pruned_rows": dict(self.pruned_rows),
            "pruned_bytes": dict(self.pruned_bytes),
            "early_prune_episodes": self.early_prune_episodes,
            "early_pruned_rows": self.early_pruned_rows,
            "vacuumed_pages": self.vacuumed_pages,
            "dropped_partitions": self.dropped_partitions,
            "last_pass_s": self.last_pass_s,
            "maintaining": self.maintaining,
            "store_bytes": self.store_bytes,
            "tiers": {k: vars(v).copy() for k, v in self.tiers.items()},
            "tiers_unix_ns": self.tiers_unix_ns,
        }


class _Db:
    """The maintainer's own connection, with what differs between the engines."""

    def __init__(self, db: Path | str, busy_timeout_s: float) -> None:
        from flopwatt.store.postgres import is_postgres_dsn

        self.postgres = isinstance(db, str) and is_postgres_dsn(db)
        self.rowid = "ctid" if self.postgres else "rowid"
        self._holding = False
        self.path: Path | None = None
        if self.postgres:
            import psycopg
            from psycopg.rows import dict_row

            self.conn: Any = psycopg.connect(
                str(db),
                autocommit=True,
                row_factory=dict_row,
                options=f"-c lock_timeout={int(busy_timeout_s * 1000)}",
            )
        else:
            self.path = Path(db)
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            # A maintenance transaction lost to power loss rolls back whole: its sources are
            # still there for the next pass. NORMAL saves an fsync per step.
            self.conn.execute("PRAGMA synchronous=NORMAL")

    def q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.conn.execute(self.q(sql), params).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.q(sql), params).fetchone()

    @contextmanager
    def transaction(self) -> Iterator[_Db]:
        if self.postgres:
            with self.conn.transaction():
                yield self
            return
        with write_transaction(self.conn):
            yield self

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = self.conn.execute(self.q(sql), params)
        return list(cur.fetchall()) if cur.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            if self.postgres:
                self.conn.cursor().executemany(self.q(sql), rows)
            else:
                self.conn.executemany(sql, rows)

    def try_lock(self) -> bool:
        """PostgreSQL: hold the maintenance role (a session advisory lock kept while this
        connection lives). SQLite: one collector per file, always."""
        if not self.postgres or self._holding:
            return True
        # Taken once: a session lock taken again would only stack, held until disconnect.
        row = self.one("SELECT pg_try_advisory_lock(?) AS ok", (MAINTENANCE_LOCK_KEY,))
        self._holding = bool(row["ok"])
        return self._holding

    def size_bytes(self) -> int:
        """Bytes the store occupies (SQLite: pages in use, free pages excluded; PostgreSQL:
        the database)."""
        if self.postgres:
            return int(self.one("SELECT pg_database_size(current_database()) AS b")["b"])
        page = int(self.conn.execute("PRAGMA page_size").fetchone()[0])
        count = int(self.conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
        return page * (count - free)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


@dataclass
class _DeviceRun:
    """Consecutive chunks of one device with the same columns."""

    names: tuple[str, ...]
    timestamps: list[npt.NDArray[np.int64]] = field(default_factory=list)
    columns: dict[str, list[npt.NDArray[Any]]] = field(default_factory=dict)


PACK_TARGET_BYTES = 2000
"""Compact chunks between this and :data:`PACK_SPLIT_BELOW_BYTES` are split into pieces of
about this size. A SQLite row is kept whole in its 8 KiB page unless it is larger than the
page: chunks of 4–8 KB left half of every page empty (measured: 13.9 B/sample on disk for
6.7 B/sample of data); ~2 KB pieces fill pages to ~85 % for a few per cent more data."""
PACK_SPLIT_BELOW_BYTES = 16_000
"""Larger chunks go to overflow pages, which they fill: kept whole."""


def _packs(
    ts: npt.NDArray[np.int64],
    cols: dict[str, npt.NDArray[Any]],
    bytes_per_sample: float | None = None,
) -> list[tuple[int, int, bytes]]:
    """(first index, end index, blob) of the compact chunks for one device's run.

    ``bytes_per_sample``: what recent runs packed to; where it says the run's blob falls in
    the split range, the pieces are packed straight away rather than the whole run first
    (packing is most of compaction's time). Without it, or when the estimate was wrong, the
    whole run is packed and measured."""
    n = int(ts.shape[0])

    def pieces(count: int) -> list[tuple[int, int, bytes]]:
        bounds = np.linspace(0, n, count + 1).astype(int).tolist()
        return [
            (lo, hi, pack_compact(ts[lo:hi], {k: v[lo:hi] for k, v in cols.items()}))
            for lo, hi in itertools.pairwise(bounds)
            if hi > lo
        ]

    if bytes_per_sample is not None:
        guess = n * bytes_per_sample
        if 1.5 * PACK_TARGET_BYTES < guess < 0.8 * PACK_SPLIT_BELOW_BYTES:
            return pieces(-(-int(guess) // PACK_TARGET_BYTES))
    blob = pack_compact(ts, cols)
    if not PACK_TARGET_BYTES < len(blob) < PACK_SPLIT_BELOW_BYTES:
        return [(0, n, blob)]
    return pieces(-(-len(blob) // PACK_TARGET_BYTES))


class Maintainer:
    """Compaction, rollups and pruning of one store (see module docstring).

    Args:
        db: a SQLite path or a PostgreSQL DSN.
        config: horizons, size cap, step sizes.
        clock_ns: wall clock (ns since the Unix epoch); tests inject one to age data.
        busy_timeout_s: how long a step waits for the write lock.

    Raises:
        sqlite3.Error, psycopg.Error: the store cannot be opened.
    """

    def __init__(
        self,
        db: Path | str,
        config: MaintenanceConfig,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.config = config
        self._clock = clock_ns
        self._db = _Db(db, busy_timeout_s)
        self.totals = MaintenanceTotals()
        self._under_pressure = False
        self._cap_unreachable = False
        self._bytes_per_sample: float | None = None
        """What the last device run packed to (B/sample): sizes the next run's pieces."""

    def close(self) -> None:
        self._db.close()

    # --- the pass ------------------------------------------------------------------------

    def run_pass(self, *, measure_tiers: bool = False) -> MaintenanceTotals:
        """One pass (see module docstring); ``measure_tiers`` also refreshes the tier sizes.

        Raises:
            sqlite3.Error, psycopg.Error: a step failed (the pass stops there; what committed
                stays committed).
        """
        started = time.monotonic()
        t = self.totals
        t.maintaining = self._db.try_lock()
        if not t.maintaining:
            return t
        now = self._clock()
        try:
            self.compact(now)
            self.prune(now)
            self.cap_size(now)
            self.vacuum()
            if measure_tiers:
                t.tiers = tier_sizes(self._db.conn, postgres=self._db.postgres)
                t.tiers_unix_ns = now
            t.store_bytes = self._db.size_bytes()
        except Exception:
            t.failed_passes += 1
            raise
        finally:
            t.passes += 1
            t.last_pass_s = time.monotonic() - started
        return t

    # --- compaction ----------------------------------------------------------------------

    def compact(self, now_unix_ns: int) -> int:
        """Re-pack and roll up every settled chunk; returns the chunks compacted. A message's
        chunks are always compacted together (in one transaction)."""
        cutoff = now_unix_ns - int(self.config.settle_s * S_NS)
        limit = self.config.rows_per_step
        done = 0
        batch: list[Any] = []
        agents = [r["agent_id"] for r in self._db.rows("SELECT agent_id FROM agents")]
        select = (
            "SELECT agent_id, epoch, sequence, chunk_index, device_uuid, t_first_unix_ns, "
            "t_last_unix_ns, n_samples, data FROM telemetry_chunks WHERE agent_id = ? "
            "AND t_last_unix_ns < ? AND (epoch > ? OR (epoch = ? AND sequence > ?)) "
            "ORDER BY epoch, sequence, chunk_index LIMIT ?"
        )
        for agent_id in agents:
            after = (-(2**63), 0)
            while True:
                rows = self._db.rows(
                    select, (agent_id, cutoff, after[0], after[0], after[1], limit)
                )
                if not rows:
                    break
                full = len(rows) == limit
                last = (int(rows[-1]["epoch"]), int(rows[-1]["sequence"]))
                if full:
                    whole = [r for r in rows if (int(r["epoch"]), int(r["sequence"])) != last]
                    if whole:
                        rows = whole  # the last message may continue past the limit
                    else:  # one message larger than a step: take all of it
                        rows = self._db.rows(
                            select.replace(
                                "(epoch > ? OR (epoch = ? AND sequence > ?))",
                                "epoch = ? AND sequence = ?",
                            ).replace(" LIMIT ?", ""),
                            (agent_id, cutoff, *last),
                        )
                after = (int(rows[-1]["epoch"]), int(rows[-1]["sequence"]))
                batch.extend(rows)
                if len(batch) >= limit:
                    done += self._compact_rows(batch)
                    batch = []
                if not full:
                    break
        if batch:
            done += self._compact_rows(batch)
        return done

    def _compact_rows(self, rows: list[Any]) -> int:
        by_device: dict[str, list[Any]] = defaultdict(list)
        for r in rows:
            by_device[r["device_uuid"]].append(r)
        tails = self._tails(list(by_device))
        packed: list[tuple[Any, ...]] = []
        windows: dict[tuple[str, str, int], rollup.Arrays] = {}
        new_tails: list[tuple[Any, ...]] = []
        source_bytes = 0
        samples = 0
        for uuid, device_rows in by_device.items():
            device_rows.sort(key=lambda r: (int(r["t_first_unix_ns"]), int(r["t_last_unix_ns"])))
            runs: list[_DeviceRun] = []
            for r in device_rows:
                blob = bytes(r["data"])
                source_bytes += len(blob)
                ts, cols = unpack_chunk(blob)
                names = tuple(sorted(cols))
                if not runs or runs[-1].names != names:
                    runs.append(_DeviceRun(names, [], {n: [] for n in names}))
                runs[-1].timestamps.append(ts)
                for n in names:
                    runs[-1].columns[n].append(cols[n])
            previous = tails.get(uuid)
            entries: list[rollup.Arrays] = []
            for run in runs:
                ts = np.concatenate(run.timestamps)
                cols = {n: np.concatenate(v) for n, v in run.columns.items()}
                order = np.argsort(ts, kind="stable")
                if not np.array_equal(order, np.arange(ts.shape[0])):
                    ts = ts[order]
                    cols = {n: v[order] for n, v in cols.items()}
                made = _packs(ts, cols, self._bytes_per_sample)
                for lo, hi, blob in made:
                    packed.append((uuid, int(ts[lo]), int(ts[hi - 1]), hi - lo, blob))
                self._bytes_per_sample = sum(len(b) for _, _, b in made) / max(len(ts), 1)
                samples += int(ts.shape[0])
                entries.append(rollup.sample_entries(ts, cols, previous))
                energy = cols.get(rollup.ENERGY)
                last_energy = float(energy[-1]) if energy is not None else None
                if last_energy is not None and not np.isfinite(last_energy):
                    last_energy = None
                previous = rollup.Previous(int(ts[-1]), last_energy)
            if previous is not None:
                new_tails.append((uuid, previous.t_unix_ns, previous.energy_j))
            all_entries = rollup.concat(entries) if len(entries) > 1 else entries[0]
            for tier in rollup.TIERS:
                for start, arrays in rollup.rollup(tier, all_entries).items():
                    windows[(tier.name, uuid, start)] = arrays
        stored = self._stored_windows(list(windows))
        upserts = []
        for key, arrays in windows.items():
            old = stored.get(key)
            merged = arrays if old is None else rollup.merge(old, arrays)
            upserts.append(
                (
                    *key,
                    int(merged["t_first"].min()),
                    int(merged["t_last"].max()),
                    int(merged["samples"].sum()),
                    rollup.encode(merged),
                )
            )
        messages = {(r["agent_id"], int(r["epoch"]), int(r["sequence"])) for r in rows}
        if self._db.postgres:
            self._ensure_partitions(packed, upserts)
        with self._db.transaction() as db:
            db.executemany(
                "INSERT INTO telemetry_packed (device_uuid, t_first_unix_ns, t_last_unix_ns, "
                "n_samples, data) VALUES (?,?,?,?,?)",
                packed,
            )
            db.executemany(
                "INSERT INTO telemetry_rollups (tier, device_uuid, window_start_unix_ns, "
                "t_first_unix_ns, t_last_unix_ns, n_samples, data) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT (tier, device_uuid, window_start_unix_ns) DO UPDATE SET "
                "t_first_unix_ns = excluded.t_first_unix_ns, "
                "t_last_unix_ns = excluded.t_last_unix_ns, n_samples = excluded.n_samples, "
                "data = excluded.data",
                upserts,
            )
            db.executemany(
                "INSERT INTO telemetry_tails (device_uuid, t_unix_ns, energy_j) VALUES (?,?,?) "
                "ON CONFLICT (device_uuid) DO UPDATE SET t_unix_ns = excluded.t_unix_ns, "
                "energy_j = excluded.energy_j",
                new_tails,
            )
            db.executemany(
                "DELETE FROM telemetry_chunks WHERE agent_id = ? AND epoch = ? AND sequence = ? "
                "AND chunk_index = ?",
                [(r["agent_id"], r["epoch"], r["sequence"], r["chunk_index"]) for r in rows],
            )
        t = self.totals
        t.compacted_chunks += len(rows)
        t.compacted_messages += len(messages)
        t.compacted_samples += samples
        t.compacted_source_bytes += source_bytes
        t.compacted_packed_bytes += sum(len(p[4]) for p in packed)
        return len(rows)

    def _ensure_partitions(
        self, packed: list[tuple[Any, ...]], upserts: list[tuple[Any, ...]]
    ) -> None:
        """PostgreSQL: the time partitions the rows about to be written need."""
        r = self.config.retention
        conn = self._db.conn
        ensure_partitions(
            conn, PACKED, [int(p[2]) for p in packed], partition_span_s(r.horizon_s(RAW))
        )
        for name, parent in ROLLUP_PARENTS.items():
            keys = [int(u[2]) for u in upserts if u[0] == name]
            ensure_partitions(conn, parent, keys, partition_span_s(r.horizon_s(name)))

    def _tails(self, uuids: list[str]) -> dict[str, rollup.Previous]:
        out: dict[str, rollup.Previous] = {}
        for uuid in uuids:
            row = self._db.one(
                "SELECT t_unix_ns, energy_j FROM telemetry_tails WHERE device_uuid = ?", (uuid,)
            )
            if row is not None:
                energy = row["energy_j"]
                out[uuid] = rollup.Previous(
                    int(row["t_unix_ns"]), float(energy) if energy is not None else None
                )
        return out

    def _stored_windows(
        self, keys: list[tuple[str, str, int]]
    ) -> dict[tuple[str, str, int], rollup.Arrays]:
        # Only this maintainer writes rollups (one per store: the advisory lock on PostgreSQL),
        # so what is read here is still what is stored when the transaction writes the merge.
        out = {}
        for key in keys:
            row = self._db.one(
                "SELECT data FROM telemetry_rollups WHERE tier = ? AND device_uuid = ? "
                "AND window_start_unix_ns = ?",
                key,
            )
            if row is not None:
                out[key] = rollup.decode(bytes(row["data"]))
        return out

    # --- pruning -------------------------------------------------------------------------

    def prune(self, now_unix_ns: int) -> None:
        """Delete what is older than each tier's horizon (see module docstring)."""
        r = self.config.retention
        raw_cutoff = now_unix_ns - r.horizon_s(RAW) * S_NS
        results_cutoff = now_unix_ns - r.horizon_s(RESULTS) * S_NS
        if self._db.postgres:
            self._drop_partitions(PACKED, raw_cutoff, RAW)
        else:
            self._prune_packed(raw_cutoff, RAW)
        self._prune_messages(raw_cutoff, results_cutoff)
        for name in ROLLUP_TIERS:
            tier = rollup.TIER_BY_NAME[name]
            # A window goes once all of it is past the horizon.
            cutoff = now_unix_ns - r.horizon_s(name) * S_NS - tier.window_ns
            if self._db.postgres:
                self._drop_partitions(ROLLUP_PARENTS[name], cutoff, name)
            else:
                self._prune_rollups(name, cutoff, name)
        self._prune_results(results_cutoff)

    def _drop_partitions(self, parent: str, cutoff: int, tier: str) -> int:
        """PostgreSQL: drop every leaf of ``parent`` whose keys are all below ``cutoff``."""
        dropped = 0
        for p in list_partitions(self._db.conn, parent):
            if p.hi is None or p.hi > cutoff:
                continue
            rows, data_bytes = drop_partition(self._db.conn, p)
            self.totals.pruned_rows[tier] += rows
            self.totals.pruned_bytes[tier] += data_bytes
            self.totals.dropped_partitions += 1
            dropped += 1
            log.info("dropped partition %s (%d rows, %d bytes of data)", p.name, rows, data_bytes)
        return dropped

    def _delete_batches(self, sql: str, params: Sequence[Any], tier: str) -> list[Any]:
        """Run a ``DELETE … RETURNING`` of at most ``rows_per_step`` rows until it deletes
        fewer; returns every returned row. ``sql`` ends in ``LIMIT ?`` (given here)."""
        limit = self.config.rows_per_step
        gone: list[Any] = []
        while True:
            with self._db.transaction() as db:
                rows = db.execute(sql, (*params, limit))
            gone.extend(rows)
            self.totals.pruned_rows[tier] += len(rows)
            if len(rows) < limit:
                return gone

    def _prune_packed(self, cutoff: int, tier: str) -> int:
        rid = self._db.rowid
        rows = self._delete_batches(
            f"DELETE FROM telemetry_packed WHERE {rid} IN (SELECT {rid} FROM telemetry_packed "
            f"WHERE t_last_unix_ns < ? ORDER BY t_last_unix_ns LIMIT ?) "
            "RETURNING length(data) AS b",
            (cutoff,),
            tier,
        )
        self.totals.pruned_bytes[tier] += sum(int(r["b"]) for r in rows)
        return len(rows)

    def _prune_rollups(self, name: str, cutoff: int, tier: str) -> int:
        rid = self._db.rowid
        rows = self._delete_batches(
            f"DELETE FROM telemetry_rollups WHERE {rid} IN (SELECT {rid} FROM telemetry_rollups "
            "WHERE tier = ? AND window_start_unix_ns < ? ORDER BY window_start_unix_ns LIMIT ?) "
            "RETURNING length(data) AS b",
            (name, cutoff),
            tier,
        )
        self.totals.pruned_bytes[tier] += sum(int(r["b"]) for r in rows)
        return len(rows)

    def _prune_messages(self, raw_cutoff: int, results_cutoff: int) -> None:
        """Stored telemetry and attribution messages at the raw horizon (an attribution's
        content lives on in its span), every other message at the results horizon; never one
        whose chunks are still waiting to be compacted. Each stream counts
        what it lost in ``pruned`` and ``pruned_through``."""
        rid = self._db.rowid
        limit = self.config.rows_per_step
        while True:
            with self._db.transaction() as db:
                rows = db.execute(
                    f"DELETE FROM messages WHERE {rid} IN (SELECT m.{rid} FROM messages m "
                    "WHERE m.received_unix_ns < ? AND (m.received_unix_ns < ? OR "
                    "(m.kind IN ('telemetry', 'attribution') AND m.status = 'stored')) "
                    "AND NOT EXISTS "
                    "(SELECT 1 FROM telemetry_chunks t WHERE t.agent_id = m.agent_id AND "
                    "t.epoch = m.epoch AND t.sequence = m.sequence) "
                    "ORDER BY m.received_unix_ns LIMIT ?) "
                    "RETURNING agent_id, epoch, sequence, kind",
                    (raw_cutoff, results_cutoff, limit),
                )
                streams: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
                for r in rows:
                    s = streams[(r["agent_id"], int(r["epoch"]))]
                    s[0] += 1
                    s[1] = max(s[1], int(r["sequence"]))
                db.executemany(
                    "UPDATE stream_progress SET pruned = pruned + ?, pruned_through = CASE "
                    "WHEN pruned_through < ? THEN ? ELSE pruned_through END "
                    "WHERE agent_id = ? AND epoch = ?",
                    [(n, top, top, a, e) for (a, e), (n, top) in streams.items()],
                )
            for r in rows:
                tier = RAW if r["kind"] == "telemetry" else RESULTS
                self.totals.pruned_rows[tier] += 1
            if len(rows) < limit:
                return

    def _prune_results(self, cutoff: int) -> None:
        rid = self._db.rowid
        gone = self._delete_batches(
            f"DELETE FROM job_results WHERE {rid} IN (SELECT {rid} FROM job_results "
            "WHERE finished_unix_ns < ? LIMIT ?) RETURNING agent_id, epoch, sequence",
            (cutoff,),
            RESULTS,
        )
        keys = [(r["agent_id"], r["epoch"], r["sequence"]) for r in gone]
        for i in range(0, len(keys), self.config.rows_per_step):
            with self._db.transaction() as db:
                db.executemany(
                    "DELETE FROM comparisons WHERE agent_id = ? AND epoch = ? AND sequence = ?",
                    keys[i : i + self.config.rows_per_step],
                )
        self._delete_batches(
            f"DELETE FROM rejected_samples WHERE {rid} IN (SELECT {rid} FROM rejected_samples "
            "WHERE received_unix_ns > 0 AND received_unix_ns < ? LIMIT ?) RETURNING samples",
            (cutoff,),
            RESULTS,
        )
        self._delete_batches(
            f"DELETE FROM gpu_attribution WHERE {rid} IN (SELECT {rid} FROM gpu_attribution "
            "WHERE end_unix_ns < ? LIMIT ?) RETURNING device_uuid",
            (cutoff,),
            RESULTS,
        )
        finals = "(" + ", ".join(str(int(s)) for s in JobState if s.final) + ")"
        jobs = self._delete_batches(
            f"DELETE FROM jobs WHERE {rid} IN (SELECT j.{rid} FROM jobs j WHERE "
            "j.requested_unix_ns < ? AND NOT EXISTS (SELECT 1 FROM job_targets t WHERE "
            f"t.job_id = j.job_id AND t.state NOT IN {finals}) LIMIT ?) RETURNING job_id",
            (cutoff,),
            RESULTS,
        )
        ids = [(r["job_id"],) for r in jobs]
        for i in range(0, len(ids), self.config.rows_per_step):
            with self._db.transaction() as db:
                db.executemany(
                    "DELETE FROM job_targets WHERE job_id = ?",
                    ids[i : i + self.config.rows_per_step],
                )

    # --- the size cap --------------------------------------------------------------------

    def cap_size(self, now_unix_ns: int) -> None:
        """Prune the oldest data early while the store is over :data:`PRESSURE_HIGH` of the
        cap (see module docstring)."""
        cap = self.config.max_db_bytes
        if cap is None:
            return
        size = self._db.size_bytes()
        if size < PRESSURE_HIGH * cap:
            if self._under_pressure and size < PRESSURE_LOW * cap:
                self._under_pressure = False
                self._cap_unreachable = False
            return
        if not self._under_pressure:
            self._under_pressure = True
            self.totals.early_prune_episodes += 1
            log.warning(
                "store at %.1f MiB of its %.1f MiB cap (--max-db-bytes): pruning the oldest raw "
                "telemetry early (then rollups) until under %.0f %%; raw data then reaches back "
                "less than its horizon",
                size / 2**20,
                cap / 2**20,
                PRESSURE_LOW * 100,
            )
        target = PRESSURE_LOW * cap
        if self._db.postgres:
            self._cap_by_partitions(size, target, now_unix_ns)
            return
        rid = self._db.rowid
        limit = self.config.rows_per_step
        steps: list[tuple[str, str, tuple[Any, ...]]] = [
            (
                RAW,
                f"DELETE FROM telemetry_packed WHERE {rid} IN (SELECT {rid} FROM "
                "telemetry_packed ORDER BY t_last_unix_ns LIMIT ?) "
                "RETURNING length(data) AS b, t_last_unix_ns AS t",
                (),
            ),
            *(
                (
                    name,
                    f"DELETE FROM telemetry_rollups WHERE {rid} IN (SELECT {rid} FROM "
                    "telemetry_rollups WHERE tier = ? ORDER BY window_start_unix_ns LIMIT ?) "
                    "RETURNING length(data) AS b, t_last_unix_ns AS t",
                    (name,),
                )
                for name in ROLLUP_TIERS
            ),
        ]
        for tier, sql, params in steps:
            while size >= target:
                with self._db.transaction() as db:
                    rows = db.execute(sql, (*params, limit))
                if not rows:
                    break
                self.totals.early_pruned_rows += len(rows)
                self.totals.pruned_rows[tier] += len(rows)
                self.totals.pruned_bytes[tier] += sum(int(r["b"]) for r in rows)
                if tier == RAW:
                    # The telemetry messages of what went are no longer needed either.
                    newest = max(int(r["t"]) for r in rows)
                    results_s = self.config.retention.horizon_s(RESULTS)
                    self._prune_messages(newest, now_unix_ns - results_s * S_NS)
                size = self._db.size_bytes()
            if size < target:
                return

    def _cap_by_partitions(self, size: int, target: float, now_unix_ns: int) -> None:
        """PostgreSQL: drop the oldest leaves — raw, then 10 s, then 1 min rollups — while the
        database is over ``target``; each tier keeps its newest leaf (deleting rows would not
        shrink the database: only dropping a leaf gives its space back)."""
        results_s = self.config.retention.horizon_s(RESULTS)
        for tier, parent in ((RAW, PACKED), *ROLLUP_PARENTS.items()):
            leaves = list_partitions(self._db.conn, parent)
            for p in leaves[:-1]:
                if size < target:
                    return
                rows, data_bytes = drop_partition(self._db.conn, p)
                self.totals.early_pruned_rows += rows
                self.totals.pruned_rows[tier] += rows
                self.totals.pruned_bytes[tier] += data_bytes
                self.totals.dropped_partitions += 1
                if tier == RAW and p.hi is not None:
                    # The telemetry messages of what went are no longer needed either.
                    self._prune_messages(p.hi, now_unix_ns - results_s * S_NS)
                size = self._db.size_bytes()
        if size >= target and not self._cap_unreachable:
            self._cap_unreachable = True
            log.warning(
                "store still at %.1f MiB with only each tier's newest partition left: the "
                "--max-db-bytes cap is too small for this fleet",
                size / 2**20,
            )

    # --- SQLite free pages ---------------------------------------------------------------

    def vacuum(self) -> None:
        """Give free pages beyond :data:`VACUUM_RESERVE` back to the file system (SQLite
        created with ``auto_vacuum=INCREMENTAL``; a no-op otherwise), bounded per call."""
        if self._db.postgres:
            return
        conn = self._db.conn
        if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
            return
        count = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        excess = free - int(VACUUM_RESERVE * count)
        if excess <= 0:
            return
        pages = min(excess, VACUUM_PAGES_PER_STEP)
        conn.execute(f"PRAGMA incremental_vacuum({pages})").fetchall()
        self.totals.vacuumed_pages += pages


def free_bytes(path: Path) -> int:
    """Free space for an unprivileged writer on the file system holding ``path`` (B)."""
    st = os.statvfs(path if path.is_dir() else path.parent)
    return st.f_bavail * st.f_frsize
