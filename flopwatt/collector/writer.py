"""The single writer: one thread that applies message writes to the store in batched commits.

Stream handlers submit :class:`MessageWrite` items and await a future per item; the writer
drains whatever has queued up (up to ``max_batch`` items, waiting at most ``max_delay_s`` for
more), applies them in one transaction and resolves the futures only after the commit — so an
ack is never sent for anything not durable. Batching across streams is what lets one SQLite file
take tens of thousands of samples per second with ``synchronous=FULL``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flopwatt.collector.store import MessageWrite, Store, WriteOutcome

log = logging.getLogger(__name__)


@dataclass
class _Item:
    write: MessageWrite
    future: asyncio.Future[WriteOutcome]
    loop: asyncio.AbstractEventLoop
    enqueued_ns: int


class WriterClosedError(RuntimeError):
    """The writer has been closed; nothing more can be submitted."""


class StoreWriter:
    """Batches :class:`MessageWrite` items into transactions on a dedicated thread.

    Args:
        store: where to write.
        max_batch: most items per transaction.
        max_delay_s: how long to wait for more items once one has arrived.
        on_commit: called on the writer thread after each commit with (items, seconds from the
            oldest item's submission to the commit) — used for commit-latency metrics.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 2000,
        max_delay_s: float = 0.01,
        on_commit: Callable[[int, list[float]], None] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._on_commit = on_commit
        self._clock_ns = clock_ns
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="flopwatt-store-writer", daemon=True)
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

    def close(self, timeout_s: float = 10.0) -> None:
        """Commit everything queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self._max_delay_s
            while len(batch) < self._max_batch:
                timeout = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=max(timeout, 0))
                        if timeout > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        try:
            outcomes = self._store.apply([i.write for i in batch])
        except Exception as exc:  # the whole transaction rolled back: fail every item in it
            log.exception("store commit of %d messages failed", len(batch))
            for item in batch:
                item.loop.call_soon_threadsafe(_set_exception, item.future, exc)
            return
        now = self._clock_ns()
        if self._on_commit is not None:
            self._on_commit(len(batch), [(now - i.enqueued_ns) / 1e9 for i in batch])
        for item, outcome in zip(batch, outcomes, strict=True):
            item.loop.call_soon_threadsafe(_set_result, item.future, outcome)


def _set_result(fut: asyncio.Future[WriteOutcome], value: WriteOutcome) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[WriteOutcome], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
