"""The sampler: reads every device at a fixed interval (default 100 ms), batches the samples
column by column about once a second, and puts each batch in the spool — it never blocks on the
network. It also records measurement windows for jobs: energy, mean power, clocks, temperature
and throttle reasons over exactly the job's own time span.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from flopwatt.agent.devices.base import Device, DeviceError, DeviceLost, Snapshot
from flopwatt.records import (
    COLUMN_DTYPES,
    TELEMETRY_COLUMN_NAMES,
    Conditions,
    DeviceSeries,
    TelemetryBatch,
)

log = logging.getLogger(__name__)


@dataclass
class _Window:
    """Snapshots of some devices between a job's start and end."""

    uuids: frozenset[str]
    snapshots: dict[str, list[Snapshot]] = field(default_factory=dict)


class Sampler:
    """Samples ``devices`` on its own thread.

    Args:
        devices: what to sample (lost devices are dropped and reported).
        emit: called with each telemetry batch (on the sampler thread; must not block long —
            the agent appends to the on-disk spool).
        interval_s: sampling period.
        batch_interval_s: how often a batch is emitted.
        wall_ns / mono_ns: clocks (injectable).
        on_lost: called when a device is lost (with the reason).
        on_tick: called after every tick with (samples held and not yet emitted, wall time of
            the tick in ns) — the agent records it in its spool, so samples lost to a kill are
            counted at the next start.
    """

    def __init__(
        self,
        devices: Sequence[Device],
        emit: Callable[[TelemetryBatch], None],
        *,
        interval_s: float = 0.1,
        batch_interval_s: float = 1.0,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        on_lost: Callable[[Device, str], None] | None = None,
        on_tick: Callable[[int, int], None] | None = None,
    ) -> None:
        self._devices = list(devices)
        self._emit = emit
        self._interval_s = interval_s
        self._batch_interval_s = batch_interval_s
        self._wall_ns = wall_ns
        self._mono_ns = mono_ns
        self._on_lost = on_lost
        self._on_tick = on_tick
        self._lock = threading.Lock()
        self._buffer: dict[str, list[Snapshot]] = {d.info.uuid: [] for d in self._devices}
        self._windows: list[_Window] = []
        self._missed = 0
        self.missed_ticks_total = 0
        self.lost: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tick_seconds: list[float] = []
        """Wall time each tick spent reading devices (kept for the overhead benchmark)."""

    def live_devices(self) -> list[Device]:
        """Devices still sampled (lost ones removed)."""
        return list(self._devices)

    @property
    def interval_s(self) -> float:
        """Current sampling period (s)."""
        return self._interval_s

    def set_interval(self, interval_s: float) -> None:
        """Change the sampling period (collector command).

        Raises:
            ValueError: not a positive number of seconds.
        """
        if not interval_s > 0:
            raise ValueError(f"sample interval must be > 0 s, got {interval_s}")
        self._interval_s = interval_s

    # --- loop ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sampling thread."""
        self._thread = threading.Thread(target=self._run, name="flopwatt-sampler", daemon=True)
        self._thread.start()

    def stop(self, flush: bool = True) -> None:
        """Stop sampling (and emit what is buffered)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if flush:
            self.flush()

    def _run(self) -> None:
        next_tick = self._mono_ns()
        next_batch = next_tick + int(self._batch_interval_s * 1e9)
        while not self._stop.is_set():
            self.tick()
            now = self._mono_ns()
            if now >= next_batch:
                self.flush()
                next_batch = now + int(self._batch_interval_s * 1e9)
            step = int(self._interval_s * 1e9)
            next_tick += step
            if now > next_tick:  # fell behind: skip the ticks we missed, count them
                missed = (now - next_tick) // step + 1
                self._missed += int(missed)
                self.missed_ticks_total += int(missed)
                next_tick += missed * step
            self._stop.wait(max(0.0, (next_tick - self._mono_ns()) / 1e9))

    def tick(self) -> None:
        """Take one snapshot of every live device (public so tests can drive it)."""
        t0 = time.perf_counter()
        now = self._wall_ns()
        for device in list(self._devices):
            uuid = device.info.uuid
            try:
                snap = device.snapshot(now)
            except DeviceLost as exc:
                self._devices.remove(device)
                self.lost[uuid] = str(exc)
                log.warning("device %s (%s) lost: %s", device.info.index, uuid, exc)
                if self._on_lost is not None:
                    self._on_lost(device, str(exc))
                continue
            except DeviceError as exc:
                log.debug("device %s: %s", uuid, exc)
                continue
            with self._lock:
                self._buffer.setdefault(uuid, []).append(snap)
                for w in self._windows:
                    if uuid in w.uuids:
                        w.snapshots.setdefault(uuid, []).append(snap)
        if self._on_tick is not None:
            with self._lock:
                held = sum(map(len, self._buffer.values()))
            self._on_tick(held, now)
        self.tick_seconds.append(time.perf_counter() - t0)
        if len(self.tick_seconds) > 10_000:
            del self.tick_seconds[:5_000]

    def flush(self) -> None:
        """Emit buffered samples as one batch (no-op when empty)."""
        with self._lock:
            buffered, self._buffer = self._buffer, {u: [] for u in self._buffer}
            missed, self._missed = self._missed, 0
        series = [s for uuid, snaps in buffered.items() for s in to_series(uuid, snaps)]
        if series:
            self._emit(TelemetryBatch(tuple(series), missed))

    # --- job windows ---------------------------------------------------------------------

    def begin_window(self, uuids: Sequence[str]) -> _Window:
        """Start recording snapshots of ``uuids`` for a job."""
        w = _Window(frozenset(uuids))
        with self._lock:
            self._windows.append(w)
        return w

    def window_conditions(
        self, window: _Window, start_unix_ns: int, end_unix_ns: int
    ) -> dict[str, Conditions]:
        """Conditions between two instants of a window that is still recording (a job with
        several sub-runs asks once per sub-run)."""
        with self._lock:
            snaps = {u: list(v) for u, v in window.snapshots.items()}
        return {
            uuid: window_conditions(
                [
                    s
                    for s in snaps.get(uuid, [])
                    if start_unix_ns <= s.timestamp_unix_ns <= end_unix_ns
                ],
                (end_unix_ns - start_unix_ns) / 1e9,
            )
            for uuid in window.uuids
        }

    def end_window(
        self,
        window: _Window,
        start_unix_ns: int,
        end_unix_ns: int,
    ) -> dict[str, Conditions]:
        """Stop recording; the conditions each device ran under between the two instants."""
        result = self.window_conditions(window, start_unix_ns, end_unix_ns)
        with self._lock:
            if window in self._windows:
                self._windows.remove(window)
        return result


def to_series(uuid: str, snapshots: Sequence[Snapshot]) -> list[DeviceSeries]:
    """Columnar series from consecutive snapshots; a new series starts whenever the set of
    available readings changes (so an absent reading is an absent column, never a zero)."""
    out: list[DeviceSeries] = []
    run: list[Snapshot] = []
    for snap in snapshots:
        if run and snap.available() != run[-1].available():
            out.append(_series(uuid, run))
            run = []
        run.append(snap)
    if run:
        out.append(_series(uuid, run))
    return out


def _series(uuid: str, run: Sequence[Snapshot]) -> DeviceSeries:
    names = run[0].available()
    columns = {
        name: np.array([getattr(s, name) for s in run], dtype=COLUMN_DTYPES[name])
        for name in TELEMETRY_COLUMN_NAMES
        if name in names
    }
    ts = np.array([s.timestamp_unix_ns for s in run], dtype=np.int64)
    return DeviceSeries(uuid, ts, columns)


def window_conditions(snaps: Sequence[Snapshot], window_s: float) -> Conditions:
    """Conditions over a window from its snapshots.

    Energy comes from the energy counter (difference between the first and last reading) when
    the device has one, else from the trapezoid integral of power (flagged: less accurate).
    Mean power = energy ÷ the window's covered seconds.
    """
    if not snaps:
        return Conditions(window_s=window_s)

    def values(name: str) -> list[float]:
        return [float(v) for s in snaps if (v := getattr(s, name)) is not None]

    energy: float | None = None
    from_counter = False
    covered_s = (snaps[-1].timestamp_unix_ns - snaps[0].timestamp_unix_ns) / 1e9
    counters = [(s.timestamp_unix_ns, s.energy_j) for s in snaps if s.energy_j is not None]
    if len(counters) >= 2 and counters[-1][0] > counters[0][0]:
        energy = counters[-1][1] - counters[0][1]
        from_counter = True
    else:
        power = [
            (
                s.timestamp_unix_ns,
                s.power_average_1s_w if s.power_instant_w is None else s.power_instant_w,
            )
            for s in snaps
        ]
        pts = [(t, p) for t, p in power if p is not None]
        if len(pts) >= 2:
            energy = sum(
                0.5 * (p0 + p1) * (t1 - t0) / 1e9 for (t0, p0), (t1, p1) in itertools.pairwise(pts)
            )
    sm = values("sm_clock_mhz")
    mem = values("mem_clock_mhz")
    temps = values("gpu_temperature_c")
    limits = values("power_limit_w")
    throttle = 0
    for s in snaps:
        throttle |= s.throttle_reasons or 0
    return Conditions(
        sm_clock_min_mhz=min(sm) if sm else None,
        sm_clock_mean_mhz=sum(sm) / len(sm) if sm else None,
        mem_clock_mean_mhz=sum(mem) / len(mem) if mem else None,
        power_limit_w=min(limits) if limits else None,
        temperature_max_c=max(temps) if temps else None,
        temperature_mean_c=sum(temps) / len(temps) if temps else None,
        throttle_reasons_seen=throttle,
        energy_j=energy,
        mean_power_w=energy / covered_s if energy is not None and covered_s > 0 else None,
        energy_from_counter=from_counter,
        window_s=covered_s if covered_s > 0 else window_s,
    )
