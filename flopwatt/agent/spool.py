"""The agent's on-disk spool: every message not yet acked by the collector, keyed by
(epoch, sequence), in a SQLite file (WAL) so nothing is lost across network cuts, collector
restarts or agent restarts.

Bounded: when the stored bytes exceed the limit, the oldest *telemetry* messages are replaced by
tombstones (a tiny ``dropped`` message with the same epoch and sequence, carrying how many
samples were lost) and the loss is counted exactly. Job results and job status are never
dropped. A tombstone keeps the sequence contiguous, so the collector records the loss instead
of waiting for a message that will never come.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flopwatt.v1 import agent_pb2

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS spool (
        epoch INTEGER NOT NULL,
        sequence INTEGER NOT NULL,
        kind TEXT NOT NULL,
        payload BLOB NOT NULL,
        samples INTEGER NOT NULL,
        PRIMARY KEY (epoch, sequence)
    )""",
    """CREATE TABLE IF NOT EXISTS counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )""",
)


def _to_db(epoch: int) -> int:
    return epoch - (1 << 64) if epoch >= 1 << 63 else epoch


def _from_db(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


@dataclass(frozen=True)
class SpooledMessage:
    """One unacked message, serialised as it will be sent."""

    epoch: int
    sequence: int
    kind: str
    payload: bytes
    samples: int


@dataclass(frozen=True)
class SpoolStats:
    """Spool size and loss counters."""

    messages: int
    payload_bytes: int
    dropped_samples_total: int
    dropped_messages_total: int


class Spool:
    """The spool file (thread-safe; the sampler writes, the uplink reads and acks).

    Args:
        path: the SQLite file (created if missing).
        max_bytes: payload bytes kept before old telemetry is dropped (0 = unbounded).
        keep_first: per epoch, how many of the oldest unacked messages are never replaced by
            tombstones: the uplink sends in sequence order from the oldest unacked, so these
            may already be at the collector (the uplink's window). A telemetry message the
            collector stores while the spool counts it dropped would make the agent's and the
            collector's drop counts disagree (and its tombstone, resent, a conflict). The
            spool may exceed ``max_bytes`` by these messages.
    """

    def __init__(
        self, path: Path, *, max_bytes: int = 256 * 1024 * 1024, keep_first: int = 0
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.keep_first = keep_first
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: WAL commits survive a process crash; a power loss may lose the last
        # batches, which the collector never acked either, so nothing acked is lost.
        self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            self._db.execute(statement)
        row = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM spool").fetchone()
        self._bytes = int(row[0])

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
            "value = value + excluded.value",
            (name, by),
        )

    def append(self, message: SpooledMessage) -> None:
        """Store a message to send; then enforce the size bound."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO spool VALUES (?, ?, ?, ?, ?)",
                (
                    _to_db(message.epoch),
                    message.sequence,
                    message.kind,
                    message.payload,
                    message.samples,
                ),
            )
            self._bytes += len(message.payload)
            if self.max_bytes and self._bytes > self.max_bytes:
                self._drop_oldest_telemetry()
            self._db.execute("COMMIT")

    def _drop_oldest_telemetry(self) -> None:
        rows = self._db.execute(
            "SELECT epoch, sequence, kind, LENGTH(payload), samples FROM spool "
            "ORDER BY epoch, sequence"
        ).fetchall()
        position: dict[int, int] = {}
        for db_epoch, seq, kind, size, samples in rows:
            if self._bytes <= self.max_bytes:
                break
            position[db_epoch] = position.get(db_epoch, 0) + 1
            if kind != "telemetry" or position[db_epoch] <= self.keep_first:
                continue  # results are never dropped; the oldest may be in flight
            epoch = _from_db(db_epoch)
            tombstone = agent_pb2.AgentMessage(
                epoch=epoch,
                sequence=seq,
                dropped=agent_pb2.Dropped(
                    reason="spool full", samples=samples, original_kind="telemetry"
                ),
            ).SerializeToString()
            self._db.execute(
                "UPDATE spool SET kind = 'dropped', payload = ?, samples = 0 "
                "WHERE epoch = ? AND sequence = ?",
                (tombstone, db_epoch, seq),
            )
            self._bytes += len(tombstone) - size
            self._bump("dropped_samples_total", samples)
            self._bump("dropped_messages_total", 1)

    def ack(self, epoch: int, committed_through: int) -> int:
        """Forget everything of ``epoch`` up to ``committed_through``; return how many."""
        with self._lock:
            db_epoch = _to_db(epoch)
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM spool "
                "WHERE epoch = ? AND sequence <= ?",
                (db_epoch, committed_through),
            ).fetchone()
            self._db.execute(
                "DELETE FROM spool WHERE epoch = ? AND sequence <= ?",
                (db_epoch, committed_through),
            )
            self._bytes -= int(row[1])
            return int(row[0])

    def pending(self, epoch: int, after: int = 0, limit: int = 1000) -> list[SpooledMessage]:
        """Unacked messages of ``epoch`` with sequence > ``after``, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, kind, payload, samples FROM spool WHERE epoch = ? "
                "AND sequence > ? ORDER BY sequence LIMIT ?",
                (_to_db(epoch), after, limit),
            ).fetchall()
        return [SpooledMessage(epoch, s, k, bytes(p), n) for s, k, p, n in rows]

    def epochs(self) -> list[int]:
        """Epochs with unacked messages (oldest first by insertion)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT epoch, MIN(rowid) FROM spool GROUP BY epoch ORDER BY 2"
            ).fetchall()
        return [_from_db(r[0]) for r in rows]

    def iter_all(self) -> Iterator[SpooledMessage]:
        """Every unacked message (for tests and diagnostics)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT epoch, sequence, kind, payload, samples FROM spool ORDER BY rowid"
            ).fetchall()
        for e, s, k, p, n in rows:
            yield SpooledMessage(_from_db(e), s, k, bytes(p), n)

    def stats(self) -> SpoolStats:
        """Size and loss counters."""
        with self._lock:
            count = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return SpoolStats(
            messages=int(count),
            payload_bytes=self._bytes,
            dropped_samples_total=int(counters.get("dropped_samples_total", 0)),
            dropped_messages_total=int(counters.get("dropped_messages_total", 0)),
        )
