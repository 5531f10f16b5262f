"""The store on PostgreSQL: the shared store of several stateless collector replicas.

Same semantics as the SQLite engine (:mod:`flopwatt.store.sqlite`), checked by one contract
suite run against both: a message is stored exactly once per (agent, epoch, sequence), only
when it is the next of its epoch; a resend is a duplicate (same digest) or a conflict; a
rejected message is recorded and consumed; progress is the highest contiguous stored sequence.

What differs, and why:

* **No state in the process.** A stream's progress is read from ``stream_progress`` in the
  transaction that writes it, with the row locked (``SELECT … FOR UPDATE``): two replicas that
  both hold a stream of one agent (a half-open connection to a replica that was partitioned)
  serialise on that row, and the second sees what the first stored — its copy is a duplicate,
  or out of order, never a second store or a skipped sequence. Rows are locked in key order, so
  two batches that share streams cannot deadlock.
* **Types.** The schema is the SQLite one with PostgreSQL's types (``BIGINT``, ``DOUBLE
  PRECISION``, ``BYTEA``), from the same migration list (:mod:`flopwatt.store.schema`), applied
  under an advisory lock so that replicas starting together migrate once.
* **Driver.** psycopg 3, chosen by measurement (``bench/pg_driver.py``): telemetry chunks go in
  by binary ``COPY`` and the other rows by ``executemany`` (pipeline mode: one round trip per
  batch, not per row); see the README.

Errors: ``psycopg.OperationalError`` when the server is unreachable (the collector's store
health turns NOT_SERVING and agents get ``UNAVAILABLE``); nothing is acked that did not commit.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from flopwatt.records import DeviceInfo, JobResult, JobState, NodeInfo
from flopwatt.store.attribution import store_attribution
from flopwatt.store.base import (
    COMPARISON_FIELDS,
    PROBE_BYTES,
    JobRow,
    MessageWrite,
    Outcome,
    Registration,
    WriteOutcome,
    read_job_rows,
)
from flopwatt.store.chunks import pack_block_chunks
from flopwatt.store.schema import MIGRATIONS, SCHEMA_VERSION, epoch_to_db

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x666C6F7077617474  # "flopwatt": one advisory lock for schema changes
_CHUNK_COPY = (
    "COPY telemetry_chunks (agent_id, epoch, sequence, chunk_index, device_uuid, "
    "t_first_unix_ns, t_last_unix_ns, n_samples, data) FROM STDIN (FORMAT BINARY)"
)
_CHUNK_TYPES = ["text", "int8", "int8", "int8", "text", "int8", "int8", "int8", "bytea"]
JOBS_CHANNEL = "flopwatt_jobs"
"""The ``NOTIFY`` channel on which a new job's id is announced to every replica."""

_TYPES = ((r"\bINTEGER\b", "BIGINT"), (r"\bREAL\b", "DOUBLE PRECISION"), (r"\bBLOB\b", "BYTEA"))


def postgres_ddl(statement: str) -> str:
    """A migration statement written for SQLite, with PostgreSQL's types."""
    for pattern, replacement in _TYPES:
        statement = re.sub(pattern, replacement, statement)
    return statement


def _q(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s``."""
    return sql.replace("?", "%s")


def is_postgres_dsn(db: str) -> bool:
    """Whether ``db`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return db.startswith(("postgresql://", "postgres://"))


class PostgresStore:
    """:class:`~flopwatt.store.base.Store` on a PostgreSQL database (schema created if
    missing).

    Args:
        dsn: ``postgresql://user[:password]@host[:port]/database[?options]``.
        clock: wall clock (ns since the Unix epoch).
        busy_timeout_s: how long a write waits for a lock another replica holds before it fails
            (``lock_timeout``) — as the SQLite engine's busy timeout.
        connect_timeout_s: how long opening a connection may take.

    Raises:
        psycopg.OperationalError: the server is unreachable or refused the connection.
        RuntimeError: the database's schema is newer than this flopwatt.
    """

    engine = "postgresql"

    def __init__(
        self,
        dsn: str,
        *,
        clock: Callable[[], int] = time.time_ns,
        busy_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self._psycopg = psycopg
        self.dsn = dsn
        self._clock = clock
        self._options = (
            f"-c lock_timeout={int(busy_timeout_s * 1000)} "
            f"-c idle_in_transaction_session_timeout=60000"
        )
        self._connect_timeout_s = connect_timeout_s
        self._dict_row = dict_row
        self._lock = threading.Lock()
        self._write: Any = self._connect(autocommit=False)
        self._read_lock = threading.Lock()
        self._read: Any = self._connect(autocommit=True)
        self._migrate()

    def _connect(self, *, autocommit: bool) -> Any:
        return self._psycopg.connect(
            self.dsn,
            autocommit=autocommit,
            row_factory=self._dict_row,
            connect_timeout=max(1, int(self._connect_timeout_s)),
            options=self._options,
        )

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """The write connection inside one transaction (committed, or rolled back on error);
        a broken connection is replaced for the next call."""
        with self._lock:
            if self._write.closed or self._write.broken:
                self._write = self._connect(autocommit=False)
            c = self._write
            try:
                with c.transaction():
                    yield c
            except self._psycopg.OperationalError:
                if c.broken:
                    c.close()
                raise

    def _reader(self) -> Any:
        if self._read.closed or self._read.broken:
            self._read = self._connect(autocommit=True)
        return self._read

    # --- schema ----------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._transaction() as c:
            c.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            row = c.execute("SELECT max(version) AS v FROM schema_version").fetchone()
            current = int(row["v"]) if row and row["v"] is not None else 0
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"database schema version {current} is newer than this flopwatt "
                    f"({SCHEMA_VERSION}); upgrade flopwatt"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    c.execute(postgres_ddl(statement))
                c.execute("INSERT INTO schema_version VALUES (%s)", (version,))

    def schema_version(self) -> int:
        """The schema version the database is at."""
        row = self._query_one("SELECT max(version) AS v FROM schema_version")
        return int(row["v"]) if row and row["v"] is not None else 0

    def probe(self, size_bytes: int = PROBE_BYTES) -> None:
        """Raise unless the database takes a write now: ``size_bytes`` of incompressible data
        committed into a probe table (then truncated, which gives the space back at once). A
        ``SELECT 1`` would pass on a full disk and turn the collector SERVING too early.

        Raises:
            psycopg.Error: it cannot (the message says why: unreachable, disk full…).
        """
        with self._transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS store_probe (data BYTEA NOT NULL)")
            c.execute("INSERT INTO store_probe VALUES (%s)", (os.urandom(size_bytes),))
        with self._transaction() as c:
            c.execute("TRUNCATE store_probe")

    def checkpoint_if_larger(self, limit_bytes: int) -> bool:
        """PostgreSQL checkpoints by itself: nothing to do."""
        return False

    def close(self) -> None:
        """Close both connections."""
        for con in (self._write, self._read):
            try:
                con.close()
            except Exception:
                log.debug("closing a PostgreSQL connection failed", exc_info=True)

    # --- messages ------------------------------------------------------------------------

    def apply(self, writes: Sequence[MessageWrite]) -> list[WriteOutcome]:
        """Apply ``writes`` in one transaction, in order; one outcome each (see module)."""
        if not writes:
            return []
        with self._transaction() as c:
            progress, owners = self._lock_progress(c, writes)
            messages: list[tuple[Any, ...]] = []
            chunks: list[tuple[Any, ...]] = []
            dirty: set[tuple[str, int]] = set()
            outcomes: list[WriteOutcome] = []
            for w in writes:
                owner = owners.get((w.agent_id, epoch_to_db(w.epoch)), "")
                if w.stream_owner and owner and owner != w.stream_owner:
                    # A newer stream of this agent (on another replica) holds the epoch.
                    key = (w.agent_id, epoch_to_db(w.epoch))
                    outcomes.append(WriteOutcome(Outcome.SUPERSEDED, progress[key]))
                    continue
                outcomes.append(self._apply_one(c, w, progress, messages, chunks, dirty))
            if messages:
                c.cursor().executemany(
                    "INSERT INTO messages (agent_id, epoch, sequence, kind, digest, "
                    "received_unix_ns, status, detail, samples) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    messages,
                )
            if chunks:
                # Binary COPY: a quarter of executemany's client CPU and half its server CPU
                # per commit (bench/pg_driver.py), and the chunks are most of a commit.
                with c.cursor().copy(_CHUNK_COPY) as copy:
                    copy.set_types(_CHUNK_TYPES)
                    for row in chunks:
                        copy.write_row(row)
            if dirty:
                c.cursor().executemany(
                    "UPDATE stream_progress SET committed_through = %s "
                    "WHERE agent_id = %s AND epoch = %s",
                    [(progress[k], *k) for k in sorted(dirty)],
                )
        return outcomes

    @staticmethod
    def _lock_progress(
        c: Any, writes: Sequence[MessageWrite]
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], str]]:
        """Every stream of the batch: its progress row, created if missing and locked for the
        transaction, in key order (no deadlock between replicas)."""
        keys = sorted({(w.agent_id, epoch_to_db(w.epoch)) for w in writes})
        c.cursor().executemany(
            "INSERT INTO stream_progress (agent_id, epoch, committed_through) "
            "VALUES (%s, %s, 0) ON CONFLICT (agent_id, epoch) DO NOTHING",
            keys,
        )
        progress: dict[tuple[str, int], int] = {}
        owners: dict[tuple[str, int], str] = {}
        agents = [k[0] for k in keys]
        epochs = [k[1] for k in keys]
        rows = c.execute(
            "SELECT p.agent_id, p.epoch, p.committed_through, p.owner FROM stream_progress p "
            "JOIN unnest(%s::text[], %s::bigint[]) AS k(agent_id, epoch) "
            "ON p.agent_id = k.agent_id AND p.epoch = k.epoch "
            "ORDER BY p.agent_id, p.epoch FOR UPDATE OF p",
            (agents, epochs),
        ).fetchall()
        for row in rows:
            key = (row["agent_id"], int(row["epoch"]))
            progress[key] = int(row["committed_through"])
            owners[key] = row["owner"]
        return progress, owners

    def _apply_one(
        self,
        c: Any,
        w: MessageWrite,
        progress: dict[tuple[str, int], int],
        messages: list[tuple[Any, ...]],
        chunks: list[tuple[Any, ...]],
        dirty: set[tuple[str, int]],
    ) -> WriteOutcome:
        db_epoch = epoch_to_db(w.epoch)
        key = (w.agent_id, db_epoch)
        committed = progress[key]
        if w.sequence > committed + 1:
            # Its predecessor is not stored (that commit failed): storing it would leave a hole.
            return WriteOutcome(Outcome.OUT_OF_ORDER, committed)
        if w.sequence <= committed:
            # Stored already (progress only passes stored messages): a duplicate or a conflict.
            row = c.execute(
                "SELECT digest FROM messages WHERE agent_id=%s AND epoch=%s AND sequence=%s",
                (w.agent_id, db_epoch, w.sequence),
            ).fetchone()
            # No row: retention pruned it (its digest is gone with it). It was stored, so the
            # copy is a duplicate, never stored a second time.
            same = row is None or bytes(row["digest"]) == w.digest
            c.execute(
                f"UPDATE stream_progress SET {'duplicates' if same else 'conflicts'} = "
                f"{'duplicates' if same else 'conflicts'} + 1 WHERE agent_id=%s AND epoch=%s",
                key,
            )
            return WriteOutcome(Outcome.DUPLICATE if same else Outcome.CONFLICT, committed)
        if w.resend:
            # The next sequence, but this copy carries no payload (the stream's first copy was
            # in a commit that failed): the agent sends it again in full after a reconnect.
            return WriteOutcome(Outcome.OUT_OF_ORDER, committed)
        status = Outcome.REJECTED if w.rejected_detail else Outcome.STORED
        samples = w.dropped_samples if w.kind == "dropped" else w.samples
        messages.append(
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
            )
        )
        if status is Outcome.STORED:
            self._store_payload(c, w, chunks)
        progress[key] = w.sequence
        dirty.add(key)
        return WriteOutcome(status, w.sequence)

    def _store_payload(self, c: Any, w: MessageWrite, chunk_rows: list[tuple[Any, ...]]) -> None:
        key = (w.agent_id, epoch_to_db(w.epoch), w.sequence)
        packed = w.chunks
        if packed is None and w.blocks:
            packed = tuple(ch for block in w.blocks for ch in pack_block_chunks(block) if ch)
        for index, chunk in enumerate(packed or ()):
            chunk_rows.append((*key, index, *chunk))
        if w.rejected_samples:
            c.cursor().executemany(
                "INSERT INTO rejected_samples VALUES (%s,%s,%s,%s,%s,%s,%s)",
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
                    f"VALUES ({','.join(['%s'] * (3 + len(values)))})",
                    (*key, *values),
                )
        if w.job_status is not None:
            js = w.job_status
            c.execute(
                "UPDATE job_targets SET state=%s, message=%s, updated_unix_ns=%s "
                "WHERE job_id=%s AND agent_id=%s",
                (int(js.state), js.message, w.received_unix_ns, js.job_id, w.agent_id),
            )
        if w.attribution is not None:

            def execute(sql: str, params: tuple[Any, ...]) -> list[Any]:
                cur = c.execute(_q(sql), params)
                return list(cur.fetchall()) if cur.description is not None else []

            store_attribution(execute, w.agent_id, w.attribution)

    @staticmethod
    def _store_result(c: Any, key: tuple[str, int, int], r: JobResult) -> None:
        from flopwatt.store.base import job_result_row

        row = job_result_row(key, r)
        c.execute(f"INSERT INTO job_results VALUES ({','.join(['%s'] * len(row))})", row)

    def committed_through(self, agent_id: str, epoch: int) -> int:
        """Highest contiguous committed sequence for (agent, epoch); 0 when none."""
        row = self._query_one(
            "SELECT committed_through FROM stream_progress WHERE agent_id=%s AND epoch=%s",
            (agent_id, epoch_to_db(epoch)),
        )
        return int(row["committed_through"]) if row else 0

    # --- agents and jobs -------------------------------------------------------------------

    def register_agent(
        self,
        node: NodeInfo,
        devices: Sequence[DeviceInfo],
        epoch: int,
        matches: Mapping[str, tuple[str | None, str]],
        now_unix_ns: int,
    ) -> None:
        """Record (or refresh) an agent and its devices."""
        self.register_agents([Registration(node, devices, epoch, matches, now_unix_ns)])

    def register_agents(self, registrations: Sequence[Registration]) -> None:
        """Record several registrations in one transaction."""
        from flopwatt.store.base import AGENT_UPSERT, DEVICE_UPSERT, agent_row, device_rows

        with self._transaction() as c:
            for r in registrations:
                c.execute(_q(AGENT_UPSERT), agent_row(r))
                rows = device_rows(r)
                if rows:
                    c.cursor().executemany(_q(DEVICE_UPSERT), rows)

    def create_job(
        self,
        job_id: str,
        kind: str,
        spec_json: str,
        selector_json: str,
        agent_ids: Sequence[str],
        now_unix_ns: int,
    ) -> None:
        """Record a job and its targets (all QUEUED)."""
        with self._transaction() as c:
            c.execute(
                "INSERT INTO jobs VALUES (%s,%s,%s,%s,%s)",
                (job_id, kind, spec_json, selector_json, now_unix_ns),
            )
            if agent_ids:
                c.cursor().executemany(
                    "INSERT INTO job_targets VALUES (%s,%s,%s,%s,%s,%s)",
                    [(job_id, a, int(JobState.QUEUED), "", now_unix_ns, 0) for a in agent_ids],
                )
            # Every replica listening hears of it on commit (and delivers to its own agents).
            c.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, job_id))

    def set_target_state(
        self,
        job_id: str,
        agent_id: str,
        state: JobState,
        message: str,
        now_unix_ns: int,
        delivered_epoch: int | None = None,
    ) -> None:
        """Update one target of a job."""
        with self._transaction() as c:
            if delivered_epoch is None:
                c.execute(
                    "UPDATE job_targets SET state=%s, message=%s, updated_unix_ns=%s "
                    "WHERE job_id=%s AND agent_id=%s",
                    (int(state), message, now_unix_ns, job_id, agent_id),
                )
            else:
                c.execute(
                    "UPDATE job_targets SET state=%s, message=%s, updated_unix_ns=%s, "
                    "delivered_epoch=%s WHERE job_id=%s AND agent_id=%s",
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
        """The newest stream of an agent holds its epochs; commits of older ones are refused."""
        with self._transaction() as c:
            c.cursor().executemany(
                "INSERT INTO stream_progress (agent_id, epoch, committed_through, owner) "
                "VALUES (%s, %s, 0, %s) ON CONFLICT (agent_id, epoch) DO UPDATE SET "
                "owner = excluded.owner",
                [(agent_id, epoch_to_db(e), owner) for e in sorted(epochs)],
            )

    def claim_delivery(self, job_id: str, agent_id: str, epoch: int, now_unix_ns: int) -> bool:
        """Mark a QUEUED target DELIVERED (once, whichever replica asks first)."""
        with self._transaction() as c:
            cur = c.execute(
                "UPDATE job_targets SET state=%s, message='', updated_unix_ns=%s, "
                "delivered_epoch=%s WHERE job_id=%s AND agent_id=%s AND state=%s",
                (
                    int(JobState.DELIVERED),
                    now_unix_ns,
                    epoch_to_db(epoch),
                    job_id,
                    agent_id,
                    int(JobState.QUEUED),
                ),
            )
            return bool(cur.rowcount == 1)

    def listen_jobs(self, on_job: Callable[[str], None]) -> Callable[[], None]:
        """``LISTEN`` on :data:`JOBS_CHANNEL` in a thread with its own connection; every job
        any replica creates is announced there on commit. Reconnects after a lost connection
        (jobs created meanwhile reach their agents at their next hello)."""
        stopping = threading.Event()

        def loop() -> None:
            while not stopping.is_set():
                try:
                    with self._psycopg.connect(
                        self.dsn, autocommit=True, connect_timeout=10
                    ) as con:
                        con.execute(f"LISTEN {JOBS_CHANNEL}")
                        while not stopping.is_set():
                            for note in con.notifies(timeout=0.5):
                                on_job(note.payload)
                except self._psycopg.Error as exc:
                    if not stopping.is_set():
                        log.warning("job notifications: %s; listening again in 1 s", exc)
                        stopping.wait(1.0)

        thread = threading.Thread(target=loop, name="flopwatt-job-listener", daemon=True)
        thread.start()

        def stop() -> None:
            stopping.set()
            thread.join(5)

        return stop

    def _job_rows(self, where: str, params: Sequence[Any]) -> list[JobRow]:
        return read_job_rows(self.query, where, params)

    def get_job(self, job_id: str) -> JobRow | None:
        """A job with its targets, or None."""
        rows = self._job_rows("job_id = ?", (job_id,))
        return rows[0] if rows else None

    def pending_jobs(self, agent_id: str) -> list[JobRow]:
        """Jobs with a target for ``agent_id`` not yet in a final state."""
        finals = ",".join(str(int(s)) for s in JobState if s.final)
        return self._job_rows(
            f"job_id IN (SELECT job_id FROM job_targets WHERE agent_id = ? "
            f"AND state NOT IN ({finals}))",
            (agent_id,),
        )

    # --- reads -----------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """A read-only query written with ``?`` placeholders; rows as dicts."""
        with self._read_lock:
            return list(self._reader().execute(_q(sql), tuple(params)).fetchall())

    def _query_one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        with self._read_lock:
            row = self._reader().execute(sql, tuple(params)).fetchone()
        return dict(row) if row is not None else None
