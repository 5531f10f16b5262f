"""The agent's on-disk spool: every message not yet acked by the collector, keyed by
(epoch, sequence), in a SQLite file (WAL) so nothing is lost across network cuts, collector
restarts or agent restarts.

Bounded: when the stored bytes exceed the limit, the oldest *telemetry* messages are replaced by
tombstones (a tiny ``dropped`` message with the same epoch and sequence, carrying how many
samples were lost) and the loss is counted exactly. Job results and job status are never
dropped. A tombstone keeps the sequence contiguous, so the collector records the loss instead
of waiting for a message that will never come.

The spool also keeps a small ledger per epoch (``epochs``): the highest sequence emitted, and,
updated at every sampling tick, how many samples are held in memory and not yet in a batch.
An agent killed with SIGKILL loses those samples; at its next start :meth:`Spool.recover`
turns that count into a tombstone in the old epoch (``reason="agent stopped"``), so the loss is
counted at the collector instead of being silent. The ledger is also what a fault test checks
the collector's store against (:meth:`Spool.produced`).
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
    # BIGINT, not INTEGER: an INTEGER PRIMARY KEY would be the rowid, which must stay the
    # insertion order (the newest epochs are the ones kept).
    """CREATE TABLE IF NOT EXISTS epochs (
        epoch BIGINT PRIMARY KEY,
        last_sequence INTEGER NOT NULL DEFAULT 0,
        pending_samples INTEGER NOT NULL DEFAULT 0,
        sampled_through_unix_ns INTEGER NOT NULL DEFAULT 0,
        closed INTEGER NOT NULL DEFAULT 0
    )""",
)

TOO_LARGE_REASON = "too large"
"""``Dropped.reason`` of the tombstone for a message larger than the collector accepts."""
KILLED_REASON = "agent stopped"
"""``Dropped.reason`` of the tombstone for samples an agent held in memory when it was killed."""

KEEP_CLOSED_EPOCHS = 64
"""Closed epochs whose ledger row is kept (older ones, fully acked, are forgotten)."""


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
    """Telemetry samples replaced by tombstones because the spool was full."""
    dropped_messages_total: int
    killed_samples_total: int = 0
    """Samples a previous run held in memory when it was killed (see :meth:`Spool.recover`)."""
    oversized_messages_total: int = 0
    """Messages replaced by tombstones because they exceeded the collector's message limit."""
    oversized_samples_total: int = 0
    """Telemetry samples lost with those messages."""


@dataclass(frozen=True)
class RecoveredLoss:
    """Samples an earlier run of the agent held in memory when it ended without flushing."""

    epoch: int
    sequence: int
    """Sequence of the tombstone that now carries the loss."""
    samples: int


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

    def append(self, message: SpooledMessage, *, pending_samples: int | None = None) -> None:
        """Store a message to send; then enforce the size bound.

        Args:
            message: the message, serialised.
            pending_samples: when given, the samples still held in memory after this message
                (0 after a telemetry batch took them all): see :meth:`note_pending`.
        """
        with self._lock:
            self._db.execute("BEGIN")
            db_epoch = _to_db(message.epoch)
            self._db.execute(
                "INSERT INTO spool VALUES (?, ?, ?, ?, ?)",
                (db_epoch, message.sequence, message.kind, message.payload, message.samples),
            )
            self._db.execute(
                "INSERT INTO epochs (epoch, last_sequence) VALUES (?, ?) ON CONFLICT (epoch) "
                "DO UPDATE SET last_sequence = MAX(last_sequence, excluded.last_sequence)",
                (db_epoch, message.sequence),
            )
            if pending_samples is not None:
                self._db.execute(
                    "UPDATE epochs SET pending_samples = ? WHERE epoch = ?",
                    (pending_samples, db_epoch),
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

    def note_pending(self, epoch: int, pending_samples: int, sampled_through_unix_ns: int) -> None:
        """Record that ``pending_samples`` samples, the newest taken at
        ``sampled_through_unix_ns``, are held in memory and not yet in a spooled batch (called
        at every sampling tick; one small write, no fsync)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO epochs (epoch, pending_samples, sampled_through_unix_ns) "
                "VALUES (?, ?, ?) ON CONFLICT (epoch) DO UPDATE SET "
                "pending_samples = excluded.pending_samples, "
                "sampled_through_unix_ns = excluded.sampled_through_unix_ns",
                (_to_db(epoch), pending_samples, sampled_through_unix_ns),
            )

    def close_epoch(self, epoch: int) -> None:
        """Mark ``epoch`` as ended cleanly (everything sampled was spooled)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO epochs (epoch, closed) VALUES (?, 1) ON CONFLICT (epoch) "
                "DO UPDATE SET closed = 1, pending_samples = 0",
                (_to_db(epoch),),
            )

    def recover(self, current_epoch: int) -> list[RecoveredLoss]:
        """Close every earlier epoch; where an earlier run was killed holding samples in memory,
        append a tombstone for them in its epoch (the next sequence) and count them.

        Returns:
            the losses turned into tombstones (empty after a clean stop).
        """
        losses: list[RecoveredLoss] = []
        current = _to_db(current_epoch)
        with self._lock:
            self._db.execute("BEGIN")
            rows = self._db.execute(
                "SELECT epoch, last_sequence, pending_samples FROM epochs "
                "WHERE closed = 0 AND epoch != ?",
                (current,),
            ).fetchall()
            for db_epoch, last, pending in rows:
                if pending > 0:
                    epoch, seq = _from_db(db_epoch), last + 1
                    tombstone = agent_pb2.AgentMessage(
                        epoch=epoch,
                        sequence=seq,
                        dropped=agent_pb2.Dropped(
                            reason=KILLED_REASON, samples=pending, original_kind="telemetry"
                        ),
                    ).SerializeToString()
                    self._db.execute(
                        "INSERT INTO spool VALUES (?, ?, 'dropped', ?, 0)",
                        (db_epoch, seq, tombstone),
                    )
                    self._bytes += len(tombstone)
                    self._bump("killed_samples_total", pending)
                    losses.append(RecoveredLoss(epoch, seq, pending))
                    last = seq
                self._db.execute(
                    "UPDATE epochs SET closed = 1, pending_samples = 0, last_sequence = ? "
                    "WHERE epoch = ?",
                    (last, db_epoch),
                )
            # Forget old, fully delivered epochs (one row per agent start otherwise).
            self._db.execute(
                "DELETE FROM epochs WHERE closed = 1 AND epoch NOT IN "
                "(SELECT DISTINCT epoch FROM spool) AND epoch NOT IN "
                "(SELECT epoch FROM epochs ORDER BY rowid DESC LIMIT ?)",
                (KEEP_CLOSED_EPOCHS,),
            )
            self._db.execute("COMMIT")
        return losses

    def replace_too_large(self, message: SpooledMessage) -> SpooledMessage:
        """Replace ``message`` (larger than the collector accepts: it would be refused for
        ever) by a tombstone with its epoch and sequence; count it. Returns the tombstone."""
        tombstone = agent_pb2.AgentMessage(
            epoch=message.epoch,
            sequence=message.sequence,
            dropped=agent_pb2.Dropped(
                reason=TOO_LARGE_REASON, samples=message.samples, original_kind=message.kind
            ),
        ).SerializeToString()
        with self._lock:
            self._db.execute("BEGIN")
            cur = self._db.execute(
                "UPDATE spool SET kind = 'dropped', payload = ?, samples = 0 "
                "WHERE epoch = ? AND sequence = ?",
                (tombstone, _to_db(message.epoch), message.sequence),
            )
            if cur.rowcount:
                self._bytes += len(tombstone) - len(message.payload)
                self._bump("oversized_messages_total", 1)
                self._bump("oversized_samples_total", message.samples)
            self._db.execute("COMMIT")
        return SpooledMessage(message.epoch, message.sequence, "dropped", tombstone, 0)

    def produced(self) -> dict[int, int]:
        """The highest sequence emitted per epoch this spool has seen (the agent's ledger)."""
        with self._lock:
            rows = self._db.execute("SELECT epoch, last_sequence FROM epochs").fetchall()
        return {_from_db(e): int(n) for e, n in rows}

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
            killed_samples_total=int(counters.get("killed_samples_total", 0)),
            oversized_messages_total=int(counters.get("oversized_messages_total", 0)),
            oversized_samples_total=int(counters.get("oversized_samples_total", 0)),
        )
