"""The collector's store: the :class:`Store` interface and its SQLite implementation.

SQLite runs in WAL mode with ``synchronous=FULL`` (an acked message survives power loss), one
write connection behind a lock (the collector's single writer) and one read connection per
thread. Telemetry is stored in chunks — one row per device series per message, each column a
packed little-endian array — and results, comparisons and jobs as rows. The primary key
(agent, epoch, sequence) of ``messages`` makes storage exactly-once: a resent message is a
duplicate; the same key with a different payload keeps the first copy and counts a conflict.

Stream progress (``stream_progress.committed_through``, what acks report) is the highest
sequence up to which every message of the epoch is stored, and the store keeps it so whatever
fails: a message is stored only when it is the next of its epoch (sequence = progress + 1);
one whose predecessor is not stored — because the commit holding the predecessor failed while
a later commit went through — is not stored but answered :attr:`Outcome.OUT_OF_ORDER`, and the
agent resends it after the predecessor. A message found already stored at progress + 1 (a
database written by an older version that stored such messages) moves progress forward over
every contiguous stored sequence; opening a database repairs any such stream at once.

The schema is versioned from the first release; :data:`MIGRATIONS` brings any older file up to
date on open. The SQL is plain enough to run on PostgreSQL (BLOB ↔ BYTEA) behind the same
interface.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flopwatt.records import (
    DeviceInfo,
    JobResult,
    JobState,
    NodeInfo,
)
from flopwatt.store.attribution import store_attribution
from flopwatt.store.base import (
    AGENT_UPSERT,
    COMPARISON_FIELDS,
    DEVICE_UPSERT,
    PROBE_BYTES,
    JobRow,
    MessageWrite,
    Outcome,
    Registration,
    WriteOutcome,
    agent_row,
    device_rows,
    job_result_row,
    read_job_rows,
)
from flopwatt.store.chunks import pack_block_chunks
from flopwatt.store.schema import MIGRATIONS, SCHEMA_VERSION, PostgresOnly, epoch_to_db

log = logging.getLogger(__name__)


PAGE_SIZE_BYTES = 8192
"""SQLite page size of a new database: a telemetry chunk is about 1 KB, and with 8 KiB pages a
commit's inserts touch fewer pages (about a fifth less CPU per message than 4 KiB, measured on
the ingest micro-benchmark). An existing database keeps the page size it was created with."""

BUSY_TIMEOUT_MS = 10_000
"""How long a write waits for another connection's write lock before it fails, by default
(ms)."""
WAL_KEEP_BYTES = 16 * 1024 * 1024
"""WAL file size kept after a checkpoint resets it (larger is truncated to this)."""
PROBE_FREE_BYTES = 4 * 1024 * 1024
"""Free space a health probe waits for on the database's file system before it writes."""


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` on ``conn`` (autocommit mode), rolled back on any
    error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # Also after a failed COMMIT: SQLite keeps the transaction open after some failures
        # (SQLITE_BUSY) and rolls it back itself after others (SQLITE_FULL, I/O errors), and
        # the connection must be usable for the next one either way.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


class SQLiteStore:
    """:class:`Store` on one SQLite file (created if missing).

    Args:
        path: the database file.
        clock: wall clock (ns since the Unix epoch).
        checkpoint_interval_s: when set, this store's commits never checkpoint the WAL
            themselves; a background thread with its own connection does, every this many
            seconds (PASSIVE: it never blocks a commit). Without it SQLite checkpoints inside
            whichever commit crosses 1,000 WAL pages, copying megabytes and syncing the database
            file on the committing (and acking) path. Used by the collector's writer process.
        busy_timeout_s: how long a write waits for another connection's (or process's) write
            lock before it fails.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], int] = time.time_ns,
        checkpoint_interval_s: float | None = None,
        busy_timeout_s: float = BUSY_TIMEOUT_MS / 1000,
    ) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = round(busy_timeout_s * 1000)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._conn = self._connect()
        self._migrate()
        self._ragged: set[tuple[str, int]] = set()
        """(agent, db epoch) with messages stored above a hole (left by an older version)."""
        self.repaired_streams = self._repair_progress()
        """Streams whose progress lagged behind what was stored (fixed on open)."""
        self._checkpoint_stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if checkpoint_interval_s is not None:
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop,
                args=(checkpoint_interval_s,),
                name="sqlite-checkpoint",
                daemon=True,
            )
            self._checkpointer.start()
        # committed_through per (agent, db epoch) as of the last commit; only apply() writes
        # stream_progress, so this cache stays exact and saves a lookup per stream per batch.
        self._progress: dict[tuple[str, int], int] = {}

    # --- connections ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        # Only take effect while the file is still empty (before WAL mode writes its header).
        conn.execute(f"PRAGMA page_size={PAGE_SIZE_BYTES}")
        # Retention frees pages; maintenance gives those beyond a reserve back to the file
        # system (flopwatt.store.maintenance.Maintainer.vacuum).
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed (and therefore acked) transaction survives power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        # After a checkpoint resets the WAL, keep at most this much of the file.
        conn.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock, self._transaction_unlocked() as c:
            yield c

    @contextmanager
    def _transaction_unlocked(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the write connection (the caller holds the write lock)."""
        with write_transaction(self._conn) as c:
            yield c

    def _migrate(self) -> None:
        with self._transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
            current = row["v"] or 0
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {current}, newer than this flopwatt "
                    f"({SCHEMA_VERSION}); upgrade flopwatt"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    if not isinstance(statement, PostgresOnly):
                        c.execute(statement)
                c.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def _repair_progress(self) -> int:
        """Move every stream's progress forward over messages already stored right after it,
        and note the streams that still have messages stored above a hole.

        Before stream progress was kept through failed commits, a commit that failed while the
        next one went through left messages stored beyond progress that never moved it (their
        resends counted as duplicates), wedging the agent's acks for good. One indexed lookup
        per stream; returns how many streams were repaired (logged). Streams with messages
        above a hole (:attr:`_ragged`) take the one-by-one path until the hole is filled.
        """
        repaired = 0
        with self._transaction() as c:
            rows = c.execute(
                "SELECT agent_id, epoch, committed_through FROM stream_progress"
            ).fetchall()
            for row in rows:
                key = (row["agent_id"], row["epoch"])
                before = int(row["committed_through"])
                after, above = self._walk(c, key[0], key[1], before)
                if above:
                    self._ragged.add(key)
                if after > before:
                    c.execute(
                        "UPDATE stream_progress SET committed_through=? WHERE agent_id=? "
                        "AND epoch=?",
                        (after, *key),
                    )
                    repaired += 1
        if repaired:
            log.warning(
                "repaired the progress of %d agent streams that lagged behind stored messages "
                "(left by a failed commit in an earlier version)",
                repaired,
            )
        return repaired

    @staticmethod
    def _walk(
        c: sqlite3.Connection, agent_id: str, db_epoch: int, committed: int
    ) -> tuple[int, bool]:
        """(the highest sequence up to which every message after ``committed`` is stored,
        whether messages are stored above a hole after it)."""
        for (sequence,) in c.execute(
            "SELECT sequence FROM messages WHERE agent_id=? AND epoch=? AND sequence>? "
            "ORDER BY sequence",
            (agent_id, db_epoch, committed),
        ):
            if sequence != committed + 1:
                return committed, True
            committed = sequence
        return committed, False

    def schema_version(self) -> int:
        """The schema version of the open file."""
        row = self._reader().execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
        return int(row["v"])

    def checkpoint_if_larger(self, limit_bytes: int) -> bool:
        """Checkpoint the WAL and truncate it when the file is larger than ``limit_bytes``
        (returns whether it did). The background checkpointer is PASSIVE and can fall behind
        a steady stream of commits (with slow fsync it never caught up and the WAL grew by
        hundreds of megabytes); this one waits for readers and holds the next commit up, which
        throttles intake instead. Errors (readers that will not let go) are left to the next
        call."""
        try:
            size = self.path.with_name(self.path.name + "-wal").stat().st_size
        except OSError:
            return False
        if size <= limit_bytes:
            return False
        with self._write_lock:
            try:
                self._conn.execute("PRAGMA busy_timeout=2000")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                log.debug("WAL truncation skipped: %s", exc)
                return False
            finally:
                self._conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        return True

    def probe(self, size_bytes: int = PROBE_BYTES, free_bytes: int = PROBE_FREE_BYTES) -> None:
        """Check that the store can commit now: the database's file system has ``free_bytes``
        free, and a transaction writing ``size_bytes`` commits (it is removed again). Used
        while the collector cannot commit, to find out when it can again.

        Raises:
            sqlite3.Error, OSError: it cannot (the message says why).
        """
        stat = os.statvfs(self.path.parent)
        free = stat.f_bavail * stat.f_frsize
        if free < free_bytes:
            raise OSError(
                errno.ENOSPC, f"{free / 2**20:.1f} MiB free, waiting for {free_bytes / 2**20:.0f}"
            )
        with self._write_lock:
            self._conn.execute("PRAGMA busy_timeout=1000")
            try:
                with self._transaction_unlocked() as c:
                    c.execute("CREATE TABLE IF NOT EXISTS store_probe (data BLOB NOT NULL)")
                    c.execute("INSERT INTO store_probe VALUES (zeroblob(?))", (size_bytes,))
                with self._transaction_unlocked() as c:
                    c.execute("DELETE FROM store_probe")
            finally:
                self._conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")

    def _checkpoint_loop(self, interval_s: float) -> None:
        conn = self._connect()
        try:
            while not self._checkpoint_stop.wait(interval_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.OperationalError as exc:  # busy or locked: the next round
                    log.debug("WAL checkpoint skipped: %s", exc)
        finally:
            conn.close()

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpoint_stop.set()
            self._checkpointer.join()
            self._checkpointer = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._write_lock:
            self._conn.close()

    # --- messages ------------------------------------------------------------------------

    def apply(self, writes: Sequence[MessageWrite]) -> list[WriteOutcome]:
        progress = dict(self._progress)
        with self._transaction() as c:
            c.execute("SAVEPOINT fast")
            try:
                outcomes = self._apply_fast(c, writes, progress)
            except sqlite3.IntegrityError:
                # A message believed new was already stored (two streams of one agent raced):
                # redo the batch one message at a time, with duplicate detection for each.
                c.execute("ROLLBACK TO fast")
                progress = dict(self._progress)
                outcomes = [self._apply_one(c, w, progress) for w in writes]
            c.execute("RELEASE fast")
        self._progress = progress  # only after the commit succeeded
        return outcomes

    def _apply_fast(
        self,
        c: sqlite3.Connection,
        writes: Sequence[MessageWrite],
        progress: dict[tuple[str, int], int],
    ) -> list[WriteOutcome]:
        """Apply a batch with one ``executemany`` per table for runs of messages that are next
        in sequence (the steady state); resends, rejections and anything out of order take
        :meth:`_apply_one`, after the run before them is inserted (it looks at what is
        stored)."""
        dirty: set[tuple[str, int]] = set()
        outcomes: list[WriteOutcome] = []
        message_rows: list[tuple[Any, ...]] = []
        chunk_rows: list[tuple[Any, ...]] = []

        def flush() -> None:
            c.executemany(
                "INSERT INTO messages (agent_id, epoch, sequence, kind, digest, "
                "received_unix_ns, status, detail, samples) VALUES (?,?,?,?,?,?,?,?,?)",
                message_rows,
            )
            self._insert_chunks(c, chunk_rows)
            c.executemany(
                "INSERT INTO stream_progress (agent_id, epoch, committed_through) VALUES (?,?,?) "
                "ON CONFLICT (agent_id, epoch) DO UPDATE SET committed_through = "
                "excluded.committed_through",
                [(agent, epoch, progress[(agent, epoch)]) for agent, epoch in dirty],
            )
            message_rows.clear()
            chunk_rows.clear()
            dirty.clear()

        for w in writes:
            db_epoch = epoch_to_db(w.epoch)
            committed = self._committed(c, w.agent_id, db_epoch, progress)
            if (
                w.sequence != committed + 1
                or w.rejected_detail
                or w.resend
                or (self._ragged and (w.agent_id, db_epoch) in self._ragged)
            ):
                if message_rows:
                    flush()
                outcomes.append(self._apply_one(c, w, progress))
                continue
            samples = w.dropped_samples if w.kind == "dropped" else w.samples
            message_rows.append(
                (
                    w.agent_id,
                    db_epoch,
                    w.sequence,
                    w.kind,
                    w.digest,
                    w.received_unix_ns,
                    Outcome.STORED.value,
                    "",
                    samples,
                )
            )
            self._store_payload(c, w, chunk_rows)
            progress[(w.agent_id, db_epoch)] = w.sequence
            dirty.add((w.agent_id, db_epoch))
            outcomes.append(WriteOutcome(Outcome.STORED, w.sequence))
        if message_rows:
            flush()
        return outcomes

    @staticmethod
    def _insert_chunks(c: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            c.executemany(
                "INSERT INTO telemetry_chunks (agent_id, epoch, sequence, chunk_index, "
                "device_uuid, t_first_unix_ns, t_last_unix_ns, n_samples, data) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )

    def _committed(
        self, c: sqlite3.Connection, agent_id: str, epoch: int, progress: dict[tuple[str, int], int]
    ) -> int:
        key = (agent_id, epoch)
        if key not in progress:
            row = c.execute(
                "SELECT committed_through FROM stream_progress WHERE agent_id=? AND epoch=?",
                key,
            ).fetchone()
            progress[key] = int(row["committed_through"]) if row else 0
        return progress[key]

    def _apply_one(
        self, c: sqlite3.Connection, w: MessageWrite, progress: dict[tuple[str, int], int]
    ) -> WriteOutcome:
        status = Outcome.REJECTED if w.rejected_detail else Outcome.STORED
        samples = w.dropped_samples if w.kind == "dropped" else w.samples
        db_epoch = epoch_to_db(w.epoch)
        key = (w.agent_id, db_epoch)
        committed = self._committed(c, w.agent_id, db_epoch, progress)
        if w.sequence > committed + 1:
            # Its predecessor is not stored (that commit failed): storing this one now would
            # leave a hole below it that progress could never pass.
            return WriteOutcome(Outcome.OUT_OF_ORDER, committed)
        row = c.execute(
            "SELECT digest FROM messages WHERE agent_id=? AND epoch=? AND sequence=?",
            (w.agent_id, db_epoch, w.sequence),
        ).fetchone()
        if row is not None or w.sequence <= committed:
            # Stored already. Without its row, retention pruned it (and its digest): the copy
            # is counted a duplicate, never stored a second time.
            same = row is None or bytes(row["digest"]) == w.digest
            if w.sequence == committed + 1:
                committed = self._advance(c, key, committed, progress)
            column = "duplicates" if same else "conflicts"
            c.execute(
                f"UPDATE stream_progress SET {column} = {column} + 1 WHERE agent_id=? AND epoch=?",
                key,
            )
            return WriteOutcome(Outcome.DUPLICATE if same else Outcome.CONFLICT, committed)
        if w.resend:
            # Not stored, and this copy carries no payload: the stream's first copy was in a
            # commit that failed; the agent sends it again in full after a reconnect.
            return WriteOutcome(Outcome.OUT_OF_ORDER, committed)
        c.execute(
            "INSERT INTO messages (agent_id, epoch, sequence, kind, digest, received_unix_ns, "
            "status, detail, samples) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                w.agent_id,
                db_epoch,
                w.sequence,
                w.kind,
                w.digest,
                w.received_unix_ns,
                status.value,
                w.rejected_detail,
                samples,
            ),
        )
        if status is Outcome.STORED:
            rows: list[tuple[Any, ...]] = []
            self._store_payload(c, w, rows)
            self._insert_chunks(c, rows)
        committed = self._advance(c, key, committed, progress)
        return WriteOutcome(status, committed)

    def _advance(
        self,
        c: sqlite3.Connection,
        key: tuple[str, int],
        committed: int,
        progress: dict[tuple[str, int], int],
    ) -> int:
        """Move ``key``'s progress over every contiguous stored message after ``committed``
        (the one just stored, and any an older version stored ahead of its predecessor)."""
        after, above = self._walk(c, key[0], key[1], committed)
        if not above:
            self._ragged.discard(key)
        if after != committed:
            progress[key] = after
            c.execute(
                "INSERT INTO stream_progress (agent_id, epoch, committed_through) VALUES (?,?,?) "
                "ON CONFLICT (agent_id, epoch) DO UPDATE SET committed_through = "
                "excluded.committed_through",
                (*key, after),
            )
        return after

    def _store_payload(
        self, c: sqlite3.Connection, w: MessageWrite, rows: list[tuple[Any, ...]]
    ) -> None:
        """Store a message's payload; telemetry rows are appended to ``rows`` for the caller
        to insert (in one ``executemany`` per batch)."""
        key = (w.agent_id, epoch_to_db(w.epoch), w.sequence)
        chunks = w.chunks
        if chunks is None and w.blocks:
            chunks = tuple(c for block in w.blocks for c in pack_block_chunks(block) if c)
        for index, chunk in enumerate(chunks or ()):
            rows.append((*key, index, *chunk))
        if w.rejected_samples:
            c.executemany(
                "INSERT INTO rejected_samples VALUES (?,?,?,?,?,?,?)",
                [
                    (*key, dev, reason, n, w.received_unix_ns)
                    for (dev, reason), n in w.rejected_samples.items()
                ],
            )
        if w.result is not None:
            self._store_result(c, key, w.result)
            if w.comparison is not None:
                values = [getattr(w.comparison, f) for f in COMPARISON_FIELDS]
                c.execute(
                    f"INSERT INTO comparisons (agent_id, epoch, sequence, "
                    f"{', '.join(COMPARISON_FIELDS)}) "
                    f"VALUES ({','.join('?' * (3 + len(values)))})",
                    (*key, *values),
                )
        if w.job_status is not None:
            js = w.job_status
            c.execute(
                "UPDATE job_targets SET state=?, message=?, updated_unix_ns=? "
                "WHERE job_id=? AND agent_id=?",
                (int(js.state), js.message, w.received_unix_ns, js.job_id, w.agent_id),
            )
        if w.attribution is not None:

            def execute(sql: str, params: tuple[Any, ...]) -> list[Any]:
                return c.execute(sql, params).fetchall()

            store_attribution(execute, w.agent_id, w.attribution)

    def _store_result(self, c: sqlite3.Connection, key: tuple[str, int, int], r: JobResult) -> None:
        row = job_result_row(key, r)
        c.execute(f"INSERT INTO job_results VALUES ({','.join('?' * len(row))})", row)

    def committed_through(self, agent_id: str, epoch: int) -> int:
        row = (
            self._reader()
            .execute(
                "SELECT committed_through FROM stream_progress WHERE agent_id=? AND epoch=?",
                (agent_id, epoch_to_db(epoch)),
            )
            .fetchone()
        )
        return int(row["committed_through"]) if row else 0

    # --- agents and jobs -----------------------------------------------------------------

    def register_agent(
        self,
        node: NodeInfo,
        devices: Sequence[DeviceInfo],
        epoch: int,
        matches: Mapping[str, tuple[str | None, str]],
        now_unix_ns: int,
    ) -> None:
        self.register_agents([Registration(node, devices, epoch, matches, now_unix_ns)])

    def register_agents(self, registrations: Sequence[Registration]) -> None:
        with self._transaction() as c:
            for r in registrations:
                self._register(c, r)

    @staticmethod
    def _register(c: sqlite3.Connection, r: Registration) -> None:
        c.execute(AGENT_UPSERT, agent_row(r))
        c.executemany(DEVICE_UPSERT, device_rows(r))

    def create_job(
        self,
        job_id: str,
        kind: str,
        spec_json: str,
        selector_json: str,
        agent_ids: Sequence[str],
        now_unix_ns: int,
    ) -> None:
        with self._transaction() as c:
            c.execute(
                "INSERT INTO jobs VALUES (?,?,?,?,?)",
                (job_id, kind, spec_json, selector_json, now_unix_ns),
            )
            c.executemany(
                "INSERT INTO job_targets VALUES (?,?,?,?,?,?)",
                [(job_id, a, int(JobState.QUEUED), "", now_unix_ns, 0) for a in agent_ids],
            )

    def set_target_state(
        self,
        job_id: str,
        agent_id: str,
        state: JobState,
        message: str,
        now_unix_ns: int,
        delivered_epoch: int | None = None,
    ) -> None:
        with self._transaction() as c:
            if delivered_epoch is None:
                c.execute(
                    "UPDATE job_targets SET state=?, message=?, updated_unix_ns=? "
                    "WHERE job_id=? AND agent_id=?",
                    (int(state), message, now_unix_ns, job_id, agent_id),
                )
            else:
                c.execute(
                    "UPDATE job_targets SET state=?, message=?, updated_unix_ns=?, "
                    "delivered_epoch=? WHERE job_id=? AND agent_id=?",
                    (
                        int(state),
                        message,
                        now_unix_ns,
                        epoch_to_db(delivered_epoch),
                        job_id,
                        agent_id,
                    ),
                )

    def claim_stream(self, agent_id: str, epochs: Sequence[int], owner: str) -> None:
        """Nothing to record: one collector per SQLite file, whose session registry already
        ends an agent's older stream when a newer one says hello (and a commit per hello would
        cost a thousand agents reconnecting at once a thousand fsyncs)."""
        del agent_id, epochs, owner

    def claim_delivery(self, job_id: str, agent_id: str, epoch: int, now_unix_ns: int) -> bool:
        with self._transaction() as c:
            cur = c.execute(
                "UPDATE job_targets SET state=?, message='', updated_unix_ns=?, delivered_epoch=? "
                "WHERE job_id=? AND agent_id=? AND state=?",
                (
                    int(JobState.DELIVERED),
                    now_unix_ns,
                    epoch_to_db(epoch),
                    job_id,
                    agent_id,
                    int(JobState.QUEUED),
                ),
            )
            return cur.rowcount == 1

    def listen_jobs(self, on_job: Callable[[str], None]) -> Callable[[], None]:
        """One collector per SQLite file: it delivers its own jobs, so there is nothing to
        hear."""
        del on_job
        return lambda: None

    def _job_rows(self, where: str, params: Sequence[Any]) -> list[JobRow]:
        return read_job_rows(self.query, where, params)

    def get_job(self, job_id: str) -> JobRow | None:
        rows = self._job_rows("job_id = ?", (job_id,))
        return rows[0] if rows else None

    def pending_jobs(self, agent_id: str) -> list[JobRow]:
        finals = ",".join(str(int(s)) for s in JobState if s.final)
        return self._job_rows(
            f"job_id IN (SELECT job_id FROM job_targets WHERE agent_id = ? "
            f"AND state NOT IN ({finals}))",
            (agent_id,),
        )

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A read-only query; rows are ``sqlite3.Row`` (mappings by column name)."""
        return self._reader().execute(sql, params).fetchall()
