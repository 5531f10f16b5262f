"""The delivery ledger: what every agent produced (its own spool ledger, or a raw client's
counters) against what the collector's SQLite store holds, per (agent, epoch, sequence).

Run after the agents and then the collector have stopped. For every agent and epoch:

* **missing** — sequences in 1..last that are neither stored nor still held by the agent. The
  agent deletes a message only when the collector acks it, so a missing message was acked and
  is not in the store: an *ack without a commit*.
* **unacked left** — still held by the agent (its spool), for the next run to deliver.
* **progress** — ``stream_progress.committed_through`` must equal the highest sequence up to
  which every message is stored (anything else wedges or skips the agent's acks).
* **duplicates** — the same (device, timestamp) stored twice across telemetry chunks (decoded),
  plus messages recorded with status ``conflict``.
* **drops** — tombstones (``kind = 'dropped'``) in the store with their samples, against the
  agent's ``dropped_samples_total + killed_samples_total`` (minus tombstones it still holds).

The store is opened read-only; its signed 64-bit epochs are converted back with the store's own
``epoch_from_db`` (the inverse of ``epoch_to_db``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flopwatt.agent.spool import Spool
from flopwatt.store.chunks import unpack_chunk
from flopwatt.store.packing import unpack_compact
from flopwatt.store.schema import epoch_from_db
from flopwatt.v1 import agent_pb2

MAX_EXAMPLES = 10


@dataclass(frozen=True)
class Expected:
    """One agent's own account of what it produced."""

    agent_id: str
    produced: dict[int, int]
    """Epoch → highest sequence emitted (sequences are 1..N, contiguous)."""
    held: frozenset[tuple[int, int]]
    """(epoch, sequence) still unacked at the agent."""
    dropped_samples: int = 0
    """Samples the agent counted as lost (spool full + killed while holding samples)."""
    held_tombstone_samples: int = 0
    """Of those, samples whose tombstones the agent still holds (not yet delivered)."""
    decode_chunks: bool = True
    """Decode every telemetry chunk for duplicates (else only chunks whose time spans overlap
    another chunk of the same device: exact for duplicates across chunks, and cheap for
    thousands of raw clients)."""


def expected_from_spool(path: Path, agent_id: str) -> Expected:
    """An agent's ledger from its spool file (open it only after the agent has exited)."""
    spool = Spool(path)
    try:
        produced = spool.produced()
        stats = spool.stats()
        held = set()
        tomb = 0
        for m in spool.iter_all():
            held.add((m.epoch, m.sequence))
            if m.kind == "dropped":
                tomb += agent_pb2.AgentMessage.FromString(m.payload).dropped.samples
    finally:
        spool.close()
    return Expected(
        agent_id,
        produced,
        frozenset(held),
        stats.dropped_samples_total + stats.killed_samples_total,
        tomb,
    )


def expected_from_raw(status: dict[str, Any]) -> list[Expected]:
    """Raw clients' ledgers from a raw-load final status file."""
    out = []
    for name, (epoch, produced, acked, _errors) in status.get("clients", {}).items():
        held = frozenset((int(epoch), s) for s in range(int(acked) + 1, int(produced) + 1))
        out.append(Expected(name, {int(epoch): int(produced)}, held, decode_chunks=False))
    return out


@dataclass
class Ledger:
    """The ledger over every agent checked (see module docstring)."""

    agents: int = 0
    streams: int = 0
    produced: int = 0
    stored: int = 0
    rejected: int = 0
    missing: int = 0
    unacked_left: int = 0
    progress_bad: int = 0
    duplicate_samples: int = 0
    conflicts: int = 0
    unexpected: int = 0
    """Stored messages of an epoch or sequence the agent never produced."""
    drops_agent_samples: int = 0
    drops_collector_samples: int = 0
    drops_held_samples: int = 0
    tombstones: int = 0
    samples_stored: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def drops_match(self) -> bool:
        """Every sample an agent counted lost is a tombstone in the store (or still held)."""
        return self.drops_agent_samples == self.drops_collector_samples + self.drops_held_samples

    @property
    def ok(self) -> bool:
        """No loss, no duplicate, consistent progress, drops only as counted tombstones."""
        return (
            self.missing == 0
            and self.duplicate_samples == 0
            and self.conflicts == 0
            and self.progress_bad == 0
            and self.unexpected == 0
            and self.drops_match
        )

    def note(self, text: str) -> None:
        """Keep an example of a problem (the first few)."""
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(text)


def _contiguous(sequences: set[int]) -> int:
    c = 0
    while c + 1 in sequences:
        c += 1
    return c


_SOURCES = {
    # table → (how its rows of one agent are selected, how a blob is decoded)
    "telemetry_chunks": ("agent_id = ?", unpack_chunk),
    # Compact chunks (store maintenance) are per device: the agent's through the devices table.
    "telemetry_packed": (
        "device_uuid IN (SELECT device_uuid FROM devices WHERE agent_id = ?)",
        unpack_compact,
    ),
}


def _tables(conn: sqlite3.Connection) -> list[str]:
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return [t for t in _SOURCES if t in present]


def _duplicate_samples(conn: sqlite3.Connection, agent_id: str, decode_all: bool) -> int:
    """Samples stored more than once: the same device and timestamp in two chunks (fresh
    per-message chunks and compact ones alike)."""
    stamps: dict[str, list[np.ndarray[Any, Any]]] = defaultdict(list)
    tables = _tables(conn)
    if decode_all:
        for table in tables:
            where, decode = _SOURCES[table]
            for uuid, blob in conn.execute(
                f"SELECT device_uuid, data FROM {table} WHERE {where}", (agent_id,)
            ):
                stamps[uuid].append(decode(bytes(blob))[0])
    else:
        spans: dict[str, list[tuple[int, int, str, int]]] = defaultdict(list)
        for table in tables:
            where, _ = _SOURCES[table]
            for rowid, uuid, t0, t1 in conn.execute(
                f"SELECT rowid, device_uuid, t_first_unix_ns, t_last_unix_ns FROM {table} "
                f"WHERE {where}",
                (agent_id,),
            ):
                spans[uuid].append((t0, t1, table, rowid))
        for uuid, rows in spans.items():
            rows.sort()
            # Only chunks whose [first, last] overlaps an earlier one can share a timestamp.
            overlap: set[tuple[str, int]] = set()
            reach: int | None = None
            reach_row = ("", -1)
            for t0, t1, table, rowid in rows:
                if reach is not None and t0 <= reach:
                    overlap.update((reach_row, (table, rowid)))
                if reach is None or t1 > reach:
                    reach, reach_row = t1, (table, rowid)
            for table, rowid in sorted(overlap):
                (blob,) = conn.execute(
                    f"SELECT data FROM {table} WHERE rowid = ?", (rowid,)
                ).fetchone()
                stamps[uuid].append(_SOURCES[table][1](bytes(blob))[0])
    duplicates = 0
    for arrays in stamps.values():
        all_ts = np.concatenate(arrays)
        duplicates += int(all_ts.size - np.unique(all_ts).size)
    return duplicates


def check(db: Path, expected: Iterable[Expected]) -> Ledger:
    """Check every agent in ``expected`` against the store at ``db`` (read-only)."""
    ledger = Ledger()
    uri = f"file:{db}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        for exp in expected:
            _check_agent(conn, exp, ledger)
    return ledger


def _check_agent(conn: sqlite3.Connection, exp: Expected, ledger: Ledger) -> None:
    ledger.agents += 1
    rows: dict[int, dict[int, tuple[str, str, int]]] = defaultdict(dict)
    for db_epoch, seq, status, kind, samples in conn.execute(
        "SELECT epoch, sequence, status, kind, samples FROM messages WHERE agent_id = ?",
        (exp.agent_id,),
    ):
        rows[epoch_from_db(db_epoch)][int(seq)] = (status, kind, int(samples))
    progress = {
        epoch_from_db(e): int(c)
        for e, c in conn.execute(
            "SELECT epoch, committed_through FROM stream_progress WHERE agent_id = ?",
            (exp.agent_id,),
        )
    }
    for epoch in rows.keys() - exp.produced.keys():
        ledger.unexpected += len(rows[epoch])
        ledger.note(f"{exp.agent_id}: {len(rows[epoch])} stored in unknown epoch {epoch}")
    for epoch, last in exp.produced.items():
        ledger.streams += 1
        ledger.produced += last
        stored = rows.get(epoch, {})
        seqs = set(stored)
        held = {s for e, s in exp.held if e == epoch}
        ledger.unacked_left += len(held)
        beyond = [s for s in seqs if s > last]
        if beyond:
            ledger.unexpected += len(beyond)
            ledger.note(f"{exp.agent_id}/{epoch}: stored beyond last {last}: {sorted(beyond)[:5]}")
        missing = [s for s in range(1, last + 1) if s not in seqs and s not in held]
        if missing:
            ledger.missing += len(missing)
            ledger.note(f"{exp.agent_id}/{epoch}: missing {len(missing)}: {missing[:8]}")
        for status, kind, samples in stored.values():
            if status == "rejected":
                ledger.rejected += 1
            elif status == "conflict":
                ledger.conflicts += 1
            else:
                ledger.stored += 1
            if kind == "dropped":
                ledger.tombstones += 1
                ledger.drops_collector_samples += samples
            elif kind == "telemetry":
                ledger.samples_stored += samples
        contiguous = _contiguous(seqs)
        committed = progress.get(epoch, 0)
        if committed != contiguous:
            ledger.progress_bad += 1
            ledger.note(
                f"{exp.agent_id}/{epoch}: committed_through {committed}, "
                f"stored contiguously through {contiguous}"
            )
    ledger.drops_agent_samples += exp.dropped_samples
    ledger.drops_held_samples += exp.held_tombstone_samples
    dup = _duplicate_samples(conn, exp.agent_id, exp.decode_chunks)
    if dup:
        ledger.duplicate_samples += dup
        ledger.note(f"{exp.agent_id}: {dup} duplicate samples")
