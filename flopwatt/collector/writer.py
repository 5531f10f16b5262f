"""The single writer: applies message writes to the store in batched commits.

Stream handlers submit :class:`MessageWrite` items and await a future per item; the writer
drains whatever has queued up (up to ``max_batch`` items; when only one has, it first waits
``max_delay_s`` for more), applies them in one transaction and resolves the futures only after
the commit — so an ack is never sent for anything not durable. Batching across streams is what
lets one SQLite file take tens of thousands of samples per second with ``synchronous=FULL``.

Two implementations share the batching:

* :class:`StoreWriter` applies batches on a thread of the collector process (simple; used by
  tests and small fleets);
* :class:`ProcessStoreWriter` ships batches to a child process that owns the bulk write
  connection, so packing and SQLite run on another core, outside the event loop's GIL.
  Telemetry crosses as the message's own wire bytes and is decoded and validated in the child
  (``telemetry_prep``), which keeps that work off the event loop altogether.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import pickle
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from flopwatt.collector.gc_policy import tune_gc
from flopwatt.collector.latest import latest_block
from flopwatt.collector.store import MessageWrite, Outcome, SQLiteStore, Store, WriteOutcome
from flopwatt.collector.telemetry_prep import TelemetryPreparer
from flopwatt.records import SeriesBlock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceUpdate:
    """Control item: the devices an agent registered (uuid → power limit W), for validation."""

    agent_id: str
    power_limits_w: Mapping[str, float | None]


BatchEntry = MessageWrite | DeviceUpdate

CHECKPOINT_INTERVAL_S = 0.5
"""How often the writer process checkpoints the WAL, off the commit path (seconds)."""


@dataclass
class _Item:
    entry: BatchEntry
    future: asyncio.Future[WriteOutcome] | None
    loop: asyncio.AbstractEventLoop | None
    enqueued_ns: int


def apply_batch(
    store: Store, preparer: TelemetryPreparer, entries: Sequence[BatchEntry]
) -> list[WriteOutcome]:
    """Prepare telemetry, apply the writes in one transaction, and return one outcome per
    :class:`MessageWrite` (control entries update the preparer in order and return nothing).

    Telemetry is prepared a run of writes at a time (between device updates, which apply in
    order) so the array work is done once per run rather than once per message. The newest
    values of the devices in the stored telemetry ride, as :class:`LatestBlock` matrices, on
    the batch's last stored telemetry outcome (the metrics show the newest values only).
    """
    writes: list[MessageWrite] = []
    joined: list[tuple[SeriesBlock, list[int]]] = []
    run: list[MessageWrite] = []

    def flush() -> None:
        prepared, blocks = preparer.prepare_batch(run)
        base = len(writes)
        joined.extend((block, [base + i if i >= 0 else -1 for i in rows]) for block, rows in blocks)
        writes.extend(prepared)
        run.clear()

    for entry in entries:
        if isinstance(entry, DeviceUpdate):
            flush()
            preparer.update_devices(entry.agent_id, entry.power_limits_w)
        else:
            run.append(entry)
    flush()
    outcomes = store.apply(writes)
    stored = [
        o.outcome is Outcome.STORED and w.has_telemetry
        for w, o in zip(writes, outcomes, strict=True)
    ]
    newest: list[SeriesBlock] = []
    for block, rows in joined:
        counted = [i >= 0 and stored[i] for i in rows]
        if all(counted):
            newest.append(block)
        elif any(counted):  # a resend raced in, or a message was prepared on its own
            newest.append(block.take(np.repeat(counted, np.diff(block.offsets))))
    # Messages prepared on their own carry their validated blocks.
    newest.extend(
        b for i, w in enumerate(writes) if stored[i] and w.chunks is None for b in w.blocks
    )
    latest = tuple(lb for b in newest if (lb := latest_block(b)) is not None)
    last = max((i for i, s in enumerate(stored) if s), default=-1)
    result = []
    for i, (w, o) in enumerate(zip(writes, outcomes, strict=True)):
        if o.outcome is Outcome.STORED and w.has_telemetry:
            o = WriteOutcome(
                o.outcome,
                o.committed_through,
                w.samples,
                w.rejected_samples,
                latest=latest if i == last else (),
            )
        elif o.outcome is Outcome.REJECTED and w.reject_code:
            o = WriteOutcome(
                o.outcome,
                o.committed_through,
                rejected_detail=w.rejected_detail,
                reject_code=w.reject_code,
            )
        result.append(o)
    return result


class WriterClosedError(RuntimeError):
    """The writer has been closed; nothing more can be submitted."""


class BatchWriter:
    """Queue, batching thread and future resolution; subclasses say how a batch is applied."""

    def __init__(
        self,
        *,
        max_batch: int = 2000,
        max_delay_s: float = 0.01,
        on_commit: Callable[[int, list[float]], None] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._on_commit = on_commit
        self._clock_ns = clock_ns
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="flopwatt-store-writer", daemon=True)

    def _start(self) -> None:
        self._thread.start()

    def submit(self, write: MessageWrite) -> asyncio.Future[WriteOutcome]:
        """Queue ``write``; the returned future resolves after it is committed.

        Raises:
            WriterClosedError: the writer is closed.
        """
        if self._closed:
            raise WriterClosedError("store writer is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[WriteOutcome] = loop.create_future()
        self._queue.put(_Item(write, fut, loop, self._clock_ns()))
        return fut

    def update_devices(self, agent_id: str, power_limits_w: Mapping[str, float | None]) -> None:
        """Tell the writer which devices ``agent_id`` registered (applied in submission order,
        so telemetry submitted afterwards is checked against them)."""
        if self._closed:
            raise WriterClosedError("store writer is closed")
        self._queue.put(_Item(DeviceUpdate(agent_id, dict(power_limits_w)), None, None, 0))

    def close(self, timeout_s: float = 10.0) -> None:
        """Commit everything queued, then stop."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._shutdown()

    def _shutdown(self) -> None:
        """Release what the subclass holds (after the last batch)."""

    def _apply(self, entries: Sequence[BatchEntry]) -> list[WriteOutcome]:
        raise NotImplementedError  # pragma: no cover - subclasses implement

    def _ready_for_batch(self) -> None:
        """Block until the next batch may be sent (the process writer bounds its pipeline)."""

    def _run(self) -> None:
        stopping = False
        while not stopping:
            # Form the batch only once it can go: what queued meanwhile joins it.
            self._ready_for_batch()
            first = self._queue.get()
            if first is None:
                break
            if self._queue.empty() and self._max_delay_s > 0:
                # Let the batch gather: this thread wakes once per batch, not once per write.
                time.sleep(self._max_delay_s)
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        try:
            outcomes = self._apply([i.entry for i in batch])
        except Exception as exc:  # the whole transaction rolled back: fail every item in it
            self._fail(batch, exc)
            return
        self._resolve(batch, outcomes)

    @staticmethod
    def _fail(batch: list[_Item], exc: BaseException) -> None:
        waiting = [i for i in batch if i.future is not None]
        log.error("store commit of %d messages failed: %s", len(waiting), exc)
        for item in waiting:
            assert item.loop is not None and item.future is not None
            item.loop.call_soon_threadsafe(_set_exception, item.future, exc)

    def _resolve(self, batch: list[_Item], outcomes: list[WriteOutcome]) -> None:
        waiting = [i for i in batch if i.future is not None]
        now = self._clock_ns()
        if self._on_commit is not None and waiting:
            self._on_commit(len(waiting), [(now - i.enqueued_ns) / 1e9 for i in waiting])
        # One wake-up per event loop per commit, not one per message.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, WriteOutcome]]] = {}
        for item, outcome in zip(waiting, outcomes, strict=True):
            assert item.loop is not None
            by_loop.setdefault(item.loop, []).append((item.future, outcome))
        for loop, results in by_loop.items():
            loop.call_soon_threadsafe(_set_results, results)


class StoreWriter(BatchWriter):
    """Applies batches on a thread of this process.

    Args:
        store: where to write.
        max_batch: most items per transaction.
        max_delay_s: how long to wait for more items when a batch would hold only one.
        on_commit: called after each commit with (items, seconds from each item's submission
            to the commit) — used for commit-latency metrics.
    """

    def __init__(self, store: Store, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store = store
        self._preparer = TelemetryPreparer()
        self._start()

    def _apply(self, entries: Sequence[BatchEntry]) -> list[WriteOutcome]:
        return apply_batch(self._store, self._preparer, entries)


class ProcessStoreWriter(BatchWriter):
    """Applies batches in a child process that owns the bulk write connection to ``db_path``.

    The parent keeps its own store for reads and rare writes (registrations, jobs); SQLite's
    locking serialises the two writers, and the child is the only one that writes messages and
    stream progress.

    Batches are pipelined: the batching thread pickles and sends the next batch while the child
    commits the previous one, and a reply thread resolves each batch's futures as its commit
    comes back (in order: the child commits batches one after another). At most
    ``max_in_flight`` batches are sent and unanswered; meanwhile new writes queue up and form
    the next, larger batch. Without the pipeline the parent's and the child's work per message
    add up instead of overlapping, and a busy collector's commit queue grew to seconds.

    Raises (from the constructor):
        RuntimeError: the child could not open the store.
    """

    def __init__(self, db_path: Path, *, max_in_flight: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._in_flight: deque[list[_Item]] = deque()
        self._in_flight_lock = threading.Lock()
        self._slots = threading.Semaphore(max_in_flight)
        self._broken: BaseException | None = None
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_child_main,
            args=(child, str(db_path)),
            name="flopwatt-store-writer",
            daemon=True,
        )
        self._proc.start()
        child.close()
        ready = self._conn.recv()
        if ready != "ready":
            self._proc.join(5)
            raise RuntimeError(f"store writer process failed to start: {ready}")
        self._replies = threading.Thread(
            target=self._read_replies, name="flopwatt-store-replies", daemon=True
        )
        self._replies.start()
        self._start()

    def _ready_for_batch(self) -> None:
        self._slots.acquire()  # released when the batch's reply comes back

    def _commit(self, batch: list[_Item]) -> None:
        data = pickle.dumps([i.entry for i in batch], protocol=pickle.HIGHEST_PROTOCOL)
        with self._in_flight_lock:
            broken = self._broken
            if broken is None:
                self._in_flight.append(batch)
        if broken is not None:
            self._slots.release()
            self._fail(batch, broken)
            return
        try:
            self._conn.send_bytes(data)
        except (OSError, ValueError) as exc:
            # The reply thread sees the closed pipe too and fails everything in flight,
            # this batch included.
            log.error("store writer process unreachable: %s", exc)

    def _read_replies(self) -> None:
        while True:
            try:
                reply = pickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError) as exc:
                self._break(RuntimeError(f"store writer process ended: {exc or 'pipe closed'}"))
                return
            with self._in_flight_lock:
                batch = self._in_flight.popleft()
            self._slots.release()
            if isinstance(reply, BaseException):
                self._fail(batch, reply)
            else:
                self._resolve(batch, reply)

    def _break(self, exc: BaseException) -> None:
        with self._in_flight_lock:
            self._broken = exc
            batches = list(self._in_flight)
            self._in_flight.clear()
        for batch in batches:
            self._fail(batch, exc)
            self._slots.release()

    def _shutdown(self) -> None:
        # Every batch has been sent (the batching thread has ended); wait for their commits.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self._in_flight_lock:
                if not self._in_flight:
                    break
            time.sleep(0.005)
        try:
            self._conn.send_bytes(b"")
            self._proc.join(10)
        except (OSError, EOFError):
            pass
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()
        self._replies.join(5)


def _child_main(conn: Connection, db_path: str) -> None:  # pragma: no cover - child process
    """The writer process: prepare telemetry, apply batches, reply with outcomes."""
    tune_gc()
    try:
        store = SQLiteStore(db_path, checkpoint_interval_s=CHECKPOINT_INTERVAL_S)
    except Exception as exc:
        conn.send(f"{type(exc).__name__}: {exc}")
        return
    preparer = TelemetryPreparer()
    conn.send("ready")
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            break
        if not data:
            break
        entries: list[BatchEntry] = pickle.loads(data)
        try:
            reply: Any = apply_batch(store, preparer, entries)
        except Exception as exc:  # reported to the parent, which fails the batch's futures
            reply = RuntimeError(f"store commit failed: {type(exc).__name__}: {exc}")
        conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    store.close()


def _set_results(results: list[tuple[asyncio.Future[WriteOutcome], WriteOutcome]]) -> None:
    for fut, value in results:
        if not fut.done():
            fut.set_result(value)


def _set_exception(fut: asyncio.Future[WriteOutcome], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
