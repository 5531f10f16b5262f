"""The collector's maintenance child: retention (compaction, rollups, pruning, the size cap)
in a process of its own, so that its CPU (zstd, rollups) never sits on the ingest path.

It opens its own connection to the store and runs a :class:`~flopwatt.store.maintenance.
Maintainer` pass every ``interval_s``; after each pass it sends its totals (a plain dict) to
the parent, which keeps the newest for ``/metrics``. A pass that fails (disk full, database
locked or unreachable) is logged once per run of failures and retried at the next interval. A
child that dies is started again (counted in ``flopwatt_collector_child_restarts_total``
with ``process="maintenance"``); the parent stops it by closing the pipe.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from flopwatt.children import become_child, describe_exit, start_child
from flopwatt.store.maintenance import Maintainer, MaintenanceConfig

log = logging.getLogger(__name__)

RESTART_DELAY_S = 5.0
STOP_TIMEOUT_S = 10.0


class MaintenanceProcess:
    """Runs maintenance passes in a spawned child (see module docstring).

    Args:
        db: the store (SQLite path or PostgreSQL DSN).
        config: retention, size cap, intervals.
        on_totals: called (from a reader thread) with each pass's totals.
        busy_timeout_s: how long a step waits for the write lock (s).
        first_pass_s: delay before the first pass (s); default the interval.
    """

    def __init__(
        self,
        db: Path | str,
        config: MaintenanceConfig,
        on_totals: Callable[[dict[str, Any]], None],
        *,
        busy_timeout_s: float = 10.0,
        first_pass_s: float | None = None,
    ) -> None:
        self._db = str(db)
        self._config = config
        self._on_totals = on_totals
        self._busy_timeout_s = busy_timeout_s
        self._first_pass_s = config.interval_s if first_pass_s is None else first_pass_s
        self._stopping = threading.Event()
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> None:
        """Spawn the child (call from the main thread: see :mod:`flopwatt.children`)."""
        self._proc, self._conn = self._spawn(self._first_pass_s)
        self._thread = threading.Thread(target=self._read, name="flopwatt-maintenance", daemon=True)
        self._thread.start()

    def _spawn(self, first_pass_s: float) -> tuple[BaseProcess, Connection]:
        ctx = mp.get_context("spawn")
        conn, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=_child_main,
            args=(
                child,
                self._db,
                self._config,
                self._busy_timeout_s,
                first_pass_s,
                logging.getLogger().getEffectiveLevel(),
            ),
            name="flopwatt-maintenance",
            daemon=True,
        )
        start_child(proc)
        child.close()
        return proc, conn

    def _read(self) -> None:
        while not self._stopping.is_set():
            conn, proc = self._conn, self._proc
            assert conn is not None and proc is not None
            try:
                totals = conn.recv()
            except (EOFError, OSError):
                if self._stopping.is_set():
                    return
                proc.join(5)
                log.warning(
                    "the store maintenance process ended (%s); starting it again in %.0f s",
                    describe_exit(proc.exitcode),
                    RESTART_DELAY_S,
                )
                if self._stopping.wait(RESTART_DELAY_S):
                    return
                with contextlib.suppress(Exception):
                    conn.close()
                self._proc, self._conn = self._spawn(RESTART_DELAY_S)
                self.restarts += 1
                continue
            if isinstance(totals, dict):
                self._on_totals(totals)

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it started)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def stop(self) -> None:
        """Stop the child (it finishes the step it is in; waits up to ``STOP_TIMEOUT_S``)."""
        self._stopping.set()
        conn, proc = self._conn, self._proc
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.send("stop")
        if proc is not None:
            proc.join(STOP_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        if self._thread is not None:
            self._thread.join(5)


def _child_main(
    conn: Connection,
    db: str,
    config: MaintenanceConfig,
    busy_timeout_s: float,
    first_pass_s: float,
    log_level: int,
) -> None:  # pragma: no cover - child process
    become_child()
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    maintainer: Maintainer | None = None
    failing = False
    next_stats = 0.0
    wait_s = first_pass_s
    try:
        while True:
            if conn.poll(wait_s):
                return  # "stop", or the parent is gone (EOF)
            started = time.monotonic()
            try:
                if maintainer is None:
                    maintainer = Maintainer(db, config, busy_timeout_s=busy_timeout_s)
                measure = started >= next_stats
                maintainer.run_pass(measure_tiers=measure)
                if measure:
                    next_stats = started + config.stats_interval_s
                if failing:
                    log.info("store maintenance works again")
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning(
                        "store maintenance failed (retried every %.0f s; logged once until it "
                        "works again): %s",
                        config.interval_s,
                        exc,
                    )
                failing = True
                if maintainer is not None and _connection_lost(exc):
                    maintainer.close()
                    maintainer = None
            if maintainer is not None:
                try:
                    conn.send(maintainer.totals.snapshot())
                except (OSError, EOFError):
                    return
            wait_s = max(0.0, config.interval_s - (time.monotonic() - started))
    finally:
        if maintainer is not None:
            maintainer.close()


def _connection_lost(exc: Exception) -> bool:
    """Whether the maintainer's connection must be opened again (PostgreSQL went away)."""
    return type(exc).__module__.startswith("psycopg") and "Operational" in type(exc).__name__
