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
import contextlib
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
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from flopwatt.children import become_child, describe_exit, start_child
from flopwatt.collector.gc_policy import tune_gc
from flopwatt.collector.telemetry_prep import TelemetryPreparer
from flopwatt.collector.validate import DeviceLimits
from flopwatt.records import SeriesBlock
from flopwatt.store import open_store
from flopwatt.store.base import MessageWrite, Outcome, Store, WriteOutcome
from flopwatt.store.latest import latest_block

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceUpdate:
    """Control item: the devices an agent registered (uuid → what its samples are checked
    against), for validation."""

    agent_id: str
    limits: Mapping[str, DeviceLimits]


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
            preparer.update_devices(entry.agent_id, entry.limits)
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
        if o.outcome is Outcome.STORED and (w.has_telemetry or w.rejected_samples):
            # (A message whose every sample was rejected stores no telemetry, but its
            # rejections are counted and reported.)
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


class StoreUnavailableError(RuntimeError):
    """A commit did not happen: the store could not commit, or the writer process was gone.
    Nothing in the failed batch is acked; the agents resend it."""


WAL_LIMIT_BYTES = 64 * 1024 * 1024
"""A WAL file larger than this is checkpointed and truncated by the writer before its next
commit, even if that holds the commit up (see ``SQLiteStore.checkpoint_if_larger``)."""


class BatchWriter:
    """Queue, batching thread and future resolution; subclasses say how a batch is applied.

    Args:
        max_batch: most items per transaction.
        max_delay_s: how long to wait for more items when a batch would hold only one (s).
        on_commit: called after each commit with (items, seconds from each item's submission
            to the commit) — used for commit-latency metrics.
        on_failure: called with (reason, messages) for every batch that did not commit (the
            collector's :class:`~flopwatt.collector.health.StoreHealth` logs once per
            episode); without it each failure is logged.
        on_success: called after every commit that went through.
        clock_ns: monotonic clock for the latencies.
    """

    def __init__(
        self,
        *,
        max_batch: int = 2000,
        max_delay_s: float = 0.01,
        on_commit: Callable[[int, list[float]], None] | None = None,
        on_failure: Callable[[str, int], None] | None = None,
        on_success: Callable[[], None] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._on_commit = on_commit
        self._on_failure = on_failure
        self._on_success = on_success
        self._clock_ns = clock_ns
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="flopwatt-store-writer", daemon=True)

    def _start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether batches can be applied now (the process writer: its child is running)."""
        return not self._closed

    def submit(self, write: MessageWrite) -> asyncio.Future[WriteOutcome]:
        """Queue ``write``; the returned future resolves after it is committed, or fails with
        :class:`StoreUnavailableError` when its batch did not commit.

        Raises:
            WriterClosedError: the writer is closed.
        """
        if self._closed:
            raise WriterClosedError("store writer is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[WriteOutcome] = loop.create_future()
        self._queue.put(_Item(write, fut, loop, self._clock_ns()))
        return fut

    def update_devices(self, agent_id: str, limits: Mapping[str, DeviceLimits]) -> None:
        """Tell the writer which devices ``agent_id`` registered (applied in submission order,
        so telemetry submitted afterwards is checked against them)."""
        if self._closed:
            raise WriterClosedError("store writer is closed")
        self._queue.put(_Item(DeviceUpdate(agent_id, dict(limits)), None, None, 0))

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
            self._fail(batch, StoreUnavailableError(f"{type(exc).__name__}: {exc}"))
            return
        self._resolve(batch, outcomes)

    def _fail(self, batch: list[_Item], exc: BaseException) -> None:
        waiting = [i for i in batch if i.future is not None]
        if self._on_failure is not None:
            self._on_failure(str(exc), len(waiting))
        else:
            log.error("store commit of %d messages failed: %s", len(waiting), exc)
        for item in waiting:
            assert item.loop is not None and item.future is not None
            item.loop.call_soon_threadsafe(_set_exception, item.future, exc)

    def _resolve(self, batch: list[_Item], outcomes: list[WriteOutcome]) -> None:
        waiting = [i for i in batch if i.future is not None]
        if self._on_success is not None and waiting:
            self._on_success()
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
    """Applies batches on a thread of this process (simple; used by tests and small fleets).

    Args:
        store: where to write.
        **kwargs: see :class:`BatchWriter`.
    """

    def __init__(self, store: Store, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store = store
        self._preparer = TelemetryPreparer()
        self._start()

    def _apply(self, entries: Sequence[BatchEntry]) -> list[WriteOutcome]:
        return apply_batch(self._store, self._preparer, entries)


READY_TIMEOUT_S = 60.0
"""How long a new writer process may take to open the store and say it is ready (s)."""

RESTART_DELAYS_S = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
"""Waits before each attempt to start a new writer process after one ended; when every
attempt fails the collector gives up (``on_fatal``) so that its supervisor restarts it."""


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

    If the child dies (killed, crashed), every batch in flight fails — nothing it held is acked
    — and a new child is started within seconds, told every agent's devices again, and takes
    over; batches submitted meanwhile fail at once (their agents retry). When no new child can
    be started (:data:`RESTART_DELAYS_S`), ``on_fatal`` is called with the reason.

    Args:
        db_path: the SQLite file.
        max_in_flight: batches sent and not yet answered, at most.
        on_fatal: called (from a writer thread) when the writer cannot be restarted.
        busy_timeout_s: how long a commit waits for another process's write lock (s).
        **kwargs: see :class:`BatchWriter`.

    Raises (from the constructor):
        RuntimeError: the first child could not open the store.
    """

    def __init__(
        self,
        db_path: Path | str,
        *,
        max_in_flight: int = 2,
        on_fatal: Callable[[str], None] | None = None,
        busy_timeout_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._db_path = db_path
        self._busy_timeout_s = busy_timeout_s
        self._on_fatal = on_fatal
        self._in_flight: deque[list[_Item]] = deque()
        self._in_flight_lock = threading.Lock()
        self._slots = threading.Semaphore(max_in_flight)
        self._broken: BaseException | None = None
        self._closing = False
        self._devices: dict[str, DeviceUpdate] = {}
        """Every agent's latest device update, replayed to a restarted child."""
        self.restarts = 0
        """Children started after the first one ended."""
        self._proc, self._conn = self._spawn()
        self._replies = threading.Thread(
            target=self._read_replies, name="flopwatt-store-replies", daemon=True
        )
        self._replies.start()
        self._start()

    @property
    def alive(self) -> bool:
        return not self._closed and self._broken is None

    @property
    def pid(self) -> int | None:
        """The current child's process id."""
        return self._proc.pid

    def _spawn(self) -> tuple[BaseProcess, Connection]:
        ctx = mp.get_context("spawn")
        conn, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=_child_main,
            args=(child, str(self._db_path), self._busy_timeout_s),
            name="flopwatt-store-writer",
            daemon=True,
        )
        start_child(proc)
        child.close()
        ready: Any = None
        if conn.poll(READY_TIMEOUT_S):
            with contextlib.suppress(EOFError, OSError):
                ready = conn.recv()
        if ready != "ready":
            conn.close()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            detail = ready if isinstance(ready, str) else describe_exit(proc.exitcode)
            raise RuntimeError(f"store writer process failed to start: {detail}")
        return proc, conn

    def update_devices(self, agent_id: str, limits: Mapping[str, DeviceLimits]) -> None:
        update = DeviceUpdate(agent_id, dict(limits))
        with self._in_flight_lock:
            self._devices[agent_id] = update
        super().update_devices(agent_id, limits)

    def _ready_for_batch(self) -> None:
        self._slots.acquire()  # released when the batch's reply comes back

    def _commit(self, batch: list[_Item]) -> None:
        data = pickle.dumps([i.entry for i in batch], protocol=pickle.HIGHEST_PROTOCOL)
        with self._in_flight_lock:
            broken = self._broken
            if broken is None:
                self._in_flight.append(batch)
                conn = self._conn
        if broken is not None:
            self._slots.release()
            self._fail(batch, broken)
            return
        with contextlib.suppress(OSError, ValueError):
            # On failure the reply thread sees the closed pipe too and fails everything in
            # flight, this batch included.
            conn.send_bytes(data)

    def _read_replies(self) -> None:
        while True:
            conn = self._conn
            try:
                reply = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                if self._closing:
                    return
                self._proc.join(1)
                reason = f"store writer process ended ({describe_exit(self._proc.exitcode)})"
                self._break(StoreUnavailableError(reason))
                if not self._restart(reason):
                    return
                continue
            with self._in_flight_lock:
                batch = self._in_flight.popleft()
            self._slots.release()
            if isinstance(reply, BaseException):
                self._fail(batch, StoreUnavailableError(str(reply)))
            else:
                self._resolve(batch, reply)

    def _break(self, exc: BaseException) -> None:
        with self._in_flight_lock:
            self._broken = exc
            batches = list(self._in_flight)
            self._in_flight.clear()
        if not batches and self._on_failure is not None:
            self._on_failure(str(exc), 0)  # nothing in flight, but the writer is gone
        for batch in batches:
            self._fail(batch, exc)
            self._slots.release()

    def _restart(self, reason: str) -> bool:
        """Start a new child after ``reason``; False (and ``on_fatal``) when none will start."""
        last = ""
        for delay in RESTART_DELAYS_S:
            time.sleep(delay)
            if self._closing:
                return False
            try:
                proc, conn = self._spawn()
            except (RuntimeError, OSError) as exc:
                last = str(exc)
                log.warning("could not start a new store writer process: %s", exc)
                continue
            with self._in_flight_lock:
                self._conn.close()
                self._proc, self._conn = proc, conn
                replay = list(self._devices.values())
                if replay:
                    # Its reply resolves nothing; it keeps replies and batches in step.
                    self._in_flight.append([])
                    conn.send_bytes(pickle.dumps(replay, protocol=pickle.HIGHEST_PROTOCOL))
                self._broken = None
            if replay:
                self._slots.acquire()
            self.restarts += 1
            log.warning("started a new store writer process (pid %s) after: %s", proc.pid, reason)
            return True
        message = f"{reason}; no new store writer process could be started: {last}"
        log.error("%s", message)
        if self._on_fatal is not None:
            self._on_fatal(message)
        return False

    def _shutdown(self) -> None:
        # Every batch has been sent (the batching thread has ended); wait for their commits.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self._in_flight_lock:
                if not self._in_flight or self._broken is not None:
                    break
            time.sleep(0.005)
        self._closing = True
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


def _child_main(
    conn: Connection, db_path: str, busy_timeout_s: float
) -> None:  # pragma: no cover - child process
    """The writer process: prepare telemetry, apply batches, reply with outcomes."""
    become_child()
    tune_gc()
    try:
        store = open_store(
            db_path, checkpoint_interval_s=CHECKPOINT_INTERVAL_S, busy_timeout_s=busy_timeout_s
        )
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
            store.checkpoint_if_larger(WAL_LIMIT_BYTES)
            reply: Any = apply_batch(store, preparer, entries)
        except Exception as exc:  # reported to the parent, which fails the batch's futures
            reply = RuntimeError(f"store commit failed: {type(exc).__name__}: {exc}")
        try:
            conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        except (OSError, ValueError):
            break  # the parent is gone
    store.close()


def _set_results(results: list[tuple[asyncio.Future[WriteOutcome], WriteOutcome]]) -> None:
    for fut, value in results:
        if not fut.done():
            fut.set_result(value)


def _set_exception(fut: asyncio.Future[WriteOutcome], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        # Marked as retrieved: a stream that ended before awaiting it would otherwise have
        # asyncio log "exception was never retrieved" for every message of a failed batch
        # (the failure is reported once, by the store's health).
        fut.exception()
