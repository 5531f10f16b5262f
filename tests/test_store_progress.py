"""Stream progress survives any failed commit: the store never stores a message whose predecessor
is not stored, a stream wedged by an older version is repaired on open, and a message already
stored at the next sequence moves progress forward.

Progress (``committed_through``) is what acks report: the highest sequence up to which every
message of the epoch is stored. Before this was kept through failures, a commit that failed
while the next one went through left messages stored above progress that never moved it, and
the agent's acks stopped for good (the outside report in issue 11).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from flopwatt.store.base import MessageWrite, Outcome
from flopwatt.store.schema import epoch_to_db
from flopwatt.store.sqlite import SQLiteStore

AGENT, EPOCH = "node-a", 2**64 - 5  # an epoch that does not fit a signed 64-bit integer


def heartbeat(sequence: int, *, resend: bool = False) -> MessageWrite:
    return MessageWrite(
        AGENT, EPOCH, sequence, "heartbeat", bytes([sequence]) * 16, 1, resend=resend
    )


def stored_sequences(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT sequence FROM messages WHERE agent_id=? AND epoch=? ORDER BY sequence",
            (AGENT, epoch_to_db(EPOCH)),
        ).fetchall()
    return [r[0] for r in rows]


class WriteLock:
    """Another process's connection holding the database's write lock (``BEGIN IMMEDIATE``)."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def __enter__(self) -> WriteLock:
        self._conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.execute("ROLLBACK")
        self._conn.close()


def test_a_failed_commit_never_lets_a_later_one_store_past_it(tmp_path: Path) -> None:
    """Message 2's commit fails (the write lock is held elsewhere past the busy timeout) while
    message 3's goes through afterwards: 3 is answered OUT_OF_ORDER and not stored, so there is
    never a stored message above a missing one; once 2 arrives again both are stored and
    progress reaches 3."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path, busy_timeout_s=0.05)
    try:
        assert store.apply([heartbeat(1)])[0].committed_through == 1
        with WriteLock(path), pytest.raises(sqlite3.OperationalError):
            store.apply([heartbeat(2)])
        later = store.apply([heartbeat(3)])[0]
        assert (later.outcome, later.committed_through) == (Outcome.OUT_OF_ORDER, 1)
        # The stream's digest-only copy of 2 (a resend within the stream) cannot store it.
        resend = store.apply([heartbeat(2, resend=True)])[0]
        assert (resend.outcome, resend.committed_through) == (Outcome.OUT_OF_ORDER, 1)
        assert stored_sequences(path) == [1]
        outcomes = store.apply([heartbeat(2), heartbeat(3)])
        assert [(o.outcome, o.committed_through) for o in outcomes] == [
            (Outcome.STORED, 2),
            (Outcome.STORED, 3),
        ]
        assert store.committed_through(AGENT, EPOCH) == 3
    finally:
        store.close()


def test_a_batch_that_fails_at_commit_leaves_the_connection_usable(tmp_path: Path) -> None:
    """The lock is taken by another process between the statements and the COMMIT's fsync is
    where it fails: the transaction is rolled back and the next batch commits."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path, busy_timeout_s=0.05)
    try:
        for attempt in range(3):
            with WriteLock(path), pytest.raises(sqlite3.OperationalError):
                store.apply([heartbeat(1)])
            assert not store._conn.in_transaction, attempt
        assert store.apply([heartbeat(1)])[0].outcome is Outcome.STORED
    finally:
        store.close()


def _wedge(path: Path, stored: list[int], progress: int) -> None:
    """Write what an older version left behind: messages stored above a lagging progress."""
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (AGENT, epoch_to_db(EPOCH), s, "heartbeat", bytes([s]) * 16, 1, "stored", "", 0)
                for s in stored
            ],
        )
        conn.execute(
            "INSERT INTO stream_progress (agent_id, epoch, committed_through) VALUES (?,?,?)",
            (AGENT, epoch_to_db(EPOCH), progress),
        )


def test_a_database_wedged_by_an_older_version_is_repaired_on_open(tmp_path: Path) -> None:
    """As reported: progress 6 with 1–14 stored. Opening the store walks progress over every
    contiguous stored sequence, so the agent's next hello is acked up to 14."""
    path = tmp_path / "s.db"
    _wedge(path, list(range(1, 15)), 6)
    store = SQLiteStore(path)
    try:
        assert store.repaired_streams == 1
        assert store.committed_through(AGENT, EPOCH) == 14
    finally:
        store.close()
    again = SQLiteStore(path)  # nothing left to repair
    assert again.repaired_streams == 0
    again.close()


def test_a_message_found_stored_at_the_next_sequence_moves_progress(tmp_path: Path) -> None:
    """A hole left by an older version (1–5 and 7–10 stored, progress 3): opening repairs to 5;
    when 6 finally arrives, progress walks over 7–10 too, and a resend of 8 is a duplicate."""
    path = tmp_path / "s.db"
    _wedge(path, [1, 2, 3, 4, 5, 7, 8, 9, 10], 3)
    store = SQLiteStore(path)
    try:
        assert store.committed_through(AGENT, EPOCH) == 5
        six = store.apply([heartbeat(6)])[0]
        assert (six.outcome, six.committed_through) == (Outcome.STORED, 10)
        eight = store.apply([heartbeat(8, resend=True)])[0]
        assert (eight.outcome, eight.committed_through) == (Outcome.DUPLICATE, 10)
        assert store.committed_through(AGENT, EPOCH) == 10
    finally:
        store.close()


def test_resend_in_the_same_batch_as_its_first_copy_is_a_duplicate(tmp_path: Path) -> None:
    """A stream's digest-only resend that lands in the same commit as the message itself (the
    fast path inserts runs of messages together) is a duplicate, not an out-of-order miss."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        outcomes = store.apply([heartbeat(1), heartbeat(2), heartbeat(1, resend=True)])
        assert [o.outcome for o in outcomes] == [
            Outcome.STORED,
            Outcome.STORED,
            Outcome.DUPLICATE,
        ]
        assert outcomes[-1].committed_through == 2
    finally:
        store.close()


def test_probe_fails_while_the_lock_is_held_and_passes_after(tmp_path: Path) -> None:
    """The health probe commits a small transaction: it fails while another process holds the
    write lock and passes once it is released."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path, busy_timeout_s=0.05)
    try:
        with WriteLock(path), pytest.raises(sqlite3.OperationalError):
            store.probe()
        store.probe()
        with pytest.raises(OSError, match="free"):
            store.probe(free_bytes=1 << 62)  # more free space than any disk has
    finally:
        store.close()


def test_apply_is_serialised_with_other_threads(tmp_path: Path) -> None:
    """Writes from several threads (the writer thread and registrations) never interleave."""
    store = SQLiteStore(tmp_path / "s.db")
    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            for _ in range(20):
                store.probe(size_bytes=1024, free_bytes=0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    outcomes = [store.apply([heartbeat(s)])[0] for s in range(1, 41)]
    for t in threads:
        t.join()
    store.close()
    assert not errors
    assert [o.committed_through for o in outcomes] == list(range(1, 41))
