"""The collector's HTTP side — ``/metrics``, ``/healthz``, ``/report`` — in a process of its own.

The collector's main process reads every agent stream and sends every ack on one event loop; a
scrape of thousands of GPUs is tens of megabytes of text and a report is pandas and
matplotlib, each seconds of CPU that held the ingest GIL when they ran there. They run here
instead: a process *spawned* before gRPC starts (never forked: gRPC does not support forking a
process whose gRPC threads run), serving HTTP on its own threads with its own GIL.

It keeps a copy of the collector's :class:`~flopwatt.collector.state.FleetState`: the main
process sends the whole state when the exporter starts (``load``) and then, a few times a
second, the journal of changes since (registrations, newest values, results) with every agent's
liveness, the counters and the store's health (``update``). Nothing reaches the copy that was
not committed. If the exporter dies the main process starts another on the same port and sends
the state again; if the main process dies the pipe closes and the exporter exits.

``/healthz`` answers 200 only while the store commits *and* the main process was heard from
recently (:data:`FEED_STALE_S`): a wedged main process is not healthy either.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import pickle
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from flopwatt.children import become_child, describe_exit, start_child
from flopwatt.collector.gc_policy import tune_gc
from flopwatt.collector.health import HealthView
from flopwatt.collector.state import Counters, FleetSnapshot, FleetState, Liveness, StateEvent

log = logging.getLogger(__name__)

FEED_INTERVAL_S = 0.2
"""How often the main process sends the journal to the exporter (s)."""
FEED_STALE_S = 10.0
"""``/healthz`` fails when the main process has not been heard from for this long (s)."""
READY_TIMEOUT_S = 60.0
"""How long a new exporter process may take to bind its port and say it is ready (s)."""


@dataclass(frozen=True)
class ExporterConfig:
    """What the exporter process needs (picklable)."""

    http_host: str
    http_port: int
    db_path: Path | str
    staleness_s: float = 300.0
    log_level: int = logging.WARNING


@dataclass(frozen=True)
class Update:
    """One message of the feed: the changes since the last one, the current liveness and
    counters, and the store's health."""

    events: Sequence[StateEvent]
    liveness: Liveness
    health: HealthView


class ExporterStartError(RuntimeError):
    """The exporter process did not start (the message says why, e.g. the port is taken)."""


class ExporterProcess:
    """The exporter child and its feed, owned by the collector's main process.

    Args:
        config: where to listen and what to serve.
        state: the main process's state (with a journal) to mirror.
        health: the store's health now.
        before_feed: called before each update is taken (the main process brings the
            counters it keeps elsewhere into the state).

    Raises (from :meth:`start`):
        ExporterStartError: the first exporter could not start (port taken, ...).
    """

    def __init__(
        self,
        config: ExporterConfig,
        state: FleetState,
        health: Callable[[], HealthView],
        before_feed: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._state = state
        self._health = health
        self._before_feed = before_feed
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.port = config.http_port
        self.restarts = 0
        """Exporter processes started after one ended."""

    @property
    def pid(self) -> int | None:
        """The exporter process's id."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the exporter (blocking until it serves) and the feed thread."""
        self._proc, self._conn, self.port = self._spawn(self._config)
        self._send_load()
        self._thread = threading.Thread(target=self._feed, name="flopwatt-exporter-feed")
        self._thread.daemon = True
        self._thread.start()

    def poke(self) -> None:
        """Send the next update now (health changed)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the feed and the exporter process (idempotent)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        conn, proc = self._conn, self._proc
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send_bytes(b"")
        if proc is not None:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        if conn is not None:
            conn.close()

    # --- internals ----------------------------------------------------------------------

    def _spawn(self, config: ExporterConfig) -> tuple[BaseProcess, Connection, int]:
        ctx = mp.get_context("spawn")
        conn, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=_exporter_main, args=(child, config), name="flopwatt-exporter", daemon=True
        )
        start_child(proc)
        child.close()
        reply: Any = None
        if conn.poll(READY_TIMEOUT_S):
            try:
                reply = conn.recv()
            except (EOFError, OSError):
                reply = None
        if not (isinstance(reply, tuple) and reply[0] == "ready"):
            conn.close()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            detail = reply[1] if isinstance(reply, tuple) else describe_exit(proc.exitcode)
            raise ExporterStartError(f"the HTTP exporter process did not start: {detail}")
        return proc, conn, int(reply[1])

    def _send(self, message: tuple[Any, ...]) -> None:
        assert self._conn is not None
        self._conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def _send_load(self) -> None:
        snapshot = self._state.resync()
        self._send(("load", snapshot, self._update([])))

    def _update(self, events: Sequence[StateEvent]) -> Update:
        self._before_feed()
        return Update(events, self._state.liveness(), self._health())

    def _feed(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(FEED_INTERVAL_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._send(("update", self._update(self._state.take_journal())))
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                self._restart()

    def _restart(self) -> None:
        proc = self._proc
        assert proc is not None
        proc.join(1)
        reason = describe_exit(proc.exitcode)
        log.warning("the HTTP exporter process ended (%s); starting a new one", reason)
        if self._conn is not None:
            self._conn.close()
        delay = 0.5
        while not self._stop.is_set():
            try:
                config = ExporterConfig(
                    self._config.http_host,
                    self.port,
                    self._config.db_path,
                    self._config.staleness_s,
                    self._config.log_level,
                )
                self._proc, self._conn, self.port = self._spawn(config)
                self._send_load()
                self.restarts += 1
                return
            except (ExporterStartError, OSError) as exc:
                log.warning("could not start a new HTTP exporter process: %s", exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)


# --- the child ----------------------------------------------------------------------------


class _Mirror:
    """The exporter's copy of the state and what ``/healthz`` needs."""

    def __init__(self, mono: Callable[[], float] = time.monotonic) -> None:
        self.state = FleetState()
        self.health = HealthView(True, "", 0, 0, 0)
        self.scrapes = 0
        self.heard = mono()
        self._mono = mono

    def apply(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "load":
            snapshot: FleetSnapshot = message[1]
            self.state.load(snapshot)
            update: Update = message[2]
        else:
            update = message[1]
        for event in update.events:
            self.state.apply_event(event)
        self.state.apply_liveness(update.liveness)
        self.health = update.health
        self.heard = self._mono()
        self._count_scrapes()

    def scraped(self) -> None:
        """One more ``/metrics`` scrape served here."""
        self.scrapes += 1
        self._count_scrapes()

    def _count_scrapes(self) -> None:
        def put(c: Counters) -> None:
            c.metrics_scrapes = {"exporter": self.scrapes}

        self.state.count(put)

    def healthz(self, _query: Mapping[str, str]) -> tuple[int, str, bytes]:
        if self._mono() - self.heard > FEED_STALE_S:
            return 503, "text/plain", b"not serving: the collector's main process is silent\n"
        if not self.health.serving:
            reason = self.health.reason or "the store cannot commit"
            return 503, "text/plain", f"not serving: {reason}\n".encode()
        return 200, "text/plain", b"ok\n"


def _exporter_main(conn: Connection, config: ExporterConfig) -> None:  # pragma: no cover
    """The exporter process (coverage is not collected in spawned children)."""
    become_child()
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from flopwatt.collector.metrics import FleetMetrics
    from flopwatt.collector.report_route import report_route
    from flopwatt.http_server import HttpServer
    from flopwatt.store import is_postgres

    mirror = _Mirror()
    exporter = FleetMetrics(
        mirror.state, staleness_s=config.staleness_s, connected_only=is_postgres(config.db_path)
    )

    def metrics() -> bytes:
        mirror.scraped()
        return exporter.render_bytes()

    try:
        http = HttpServer(config.http_host, config.http_port, metrics, lambda: True)
    except OSError as exc:
        conn.send(("error", f"cannot listen on {config.http_host}:{config.http_port}: {exc}"))
        return
    http.routes["/healthz"] = mirror.healthz
    http.routes["/report"] = report_route(config.db_path)
    tune_gc()
    http.start()
    conn.send(("ready", http.port))
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                break  # the collector is gone
            if not data:
                break  # asked to stop
            message = pickle.loads(data)
            mirror.apply(message)
            if message[0] == "load":
                exporter.warm()  # the kept series text of every device, before the first scrape
    finally:
        http.stop()
