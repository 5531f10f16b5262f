"""Sampling a case over time, on a thread: the collector's ``/healthz``, the size of its WAL file,
whether its process is alive, and every agent's spool backlog and ack counter (from the farm
and raw-load status files). Recovery is computed from this timeline (:mod:`.recovery`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.faultlib.processes import CollectorProcess, FarmProcess, RawLoadProcess

SAMPLE_INTERVAL_S = 0.5


@dataclass(frozen=True)
class AgentSample:
    """One agent at one instant: unacked messages (its backlog), messages acked so far (a
    counter that only grows), the highest sequence produced, whether it is connected, and
    whether it still produces (a raw client stops when its load ends; a farm agent does not)."""

    backlog: int
    acked: int
    produced: int
    connected: bool
    producing: bool = True


@dataclass(frozen=True)
class Sample:
    """The case at one instant (``t``: ``time.monotonic()`` s)."""

    t: float
    health: int | None
    """``/healthz`` status code; None: nothing answered."""
    wal_bytes: int
    collector_alive: bool
    agents: dict[str, AgentSample]


@dataclass
class Monitor:
    """Samples every :data:`SAMPLE_INTERVAL_S` until stopped (see module docstring)."""

    collector: CollectorProcess
    farms: list[FarmProcess] = field(default_factory=list)
    raws: list[RawLoadProcess] = field(default_factory=list)
    interval_s: float = SAMPLE_INTERVAL_S
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="fault-monitor", daemon=True)

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def snapshot(self) -> list[Sample]:
        """The samples so far (a copy)."""
        with self._lock:
            return list(self.samples)

    def latest(self) -> Sample | None:
        """The newest sample."""
        with self._lock:
            return self.samples[-1] if self.samples else None

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            sample = self.take()
            with self._lock:
                self.samples.append(sample)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))

    def take(self) -> Sample:
        """One sample, now."""
        t = time.monotonic()
        health = self.collector.healthz()
        wal = Path(f"{self.collector.db}-wal")
        try:
            wal_bytes = wal.stat().st_size
        except OSError:
            wal_bytes = 0
        agents: dict[str, AgentSample] = {}
        for farm in list(self.farms):
            status = farm.status()
            for name, a in (status or {}).get("agents", {}).items():
                agents[name] = AgentSample(
                    int(a["spool_messages"]),
                    int(a["acked_messages"]),
                    int(a["last_sequence"]),
                    bool(a["connected"]),
                )
        for raw in list(self.raws):
            status = raw.status() or {}
            producing = not status.get("production_over", False)
            for name, (_epoch, produced, acked, _errors) in status.get("clients", {}).items():
                agents[name] = AgentSample(produced - acked, acked, produced, True, producing)
        return Sample(t, health, wal_bytes, self.collector.alive(), agents)


def health_label(code: int | None) -> str:
    """``"200"``, ``"503"`` … or ``"down"`` when nothing answered."""
    return "down" if code is None else str(code)


def health_transitions(
    samples: list[Sample],
    t0: float,
    extra: Sequence[tuple[float, str]] = (),
) -> list[tuple[float, str]]:
    """(seconds since ``t0``, new /healthz state) at every change, starting with the first.

    Args:
        samples: the monitor's samples.
        t0: the origin (``time.monotonic()`` s).
        extra: more observations, (``time.monotonic()`` s, state label), e.g. from a faster
            poll around a fault.
    """
    points = sorted([(s.t, health_label(s.health)) for s in samples] + list(extra))
    out: list[tuple[float, str]] = []
    for t, label in points:
        if not out or out[-1][1] != label:
            out.append((round(t - t0, 2), label))
    return out


def wal_max_bytes(samples: list[Sample]) -> int:
    """The largest WAL file size seen (bytes)."""
    return max((s.wal_bytes for s in samples), default=0)
