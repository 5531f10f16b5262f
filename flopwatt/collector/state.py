"""What the collector currently knows about the fleet, for metrics and the admin API.

Updated only after a commit (so nothing unacked or rejected reaches the metrics) and rebuilt
from the store at start, so it holds nothing the store does not. RPC handlers (event-loop
thread) write it; readers on other threads copy what they need under the same lock, in one
short hold, and work on the copy outside it.

Each device's newest telemetry values live in one table (:class:`FleetState` keeps a row per
device and a column per telemetry column, with a mask of the values present) that a commit's
blocks (:class:`~flopwatt.store.latest.LatestBlock`) update with a few array operations, and
that a ``/metrics`` render copies whole (:meth:`FleetState.scrape_view`). :attr:`DeviceState.latest`
is the {column: value} view of one device's row, for callers that read one device.

A copy of the state in another process (the exporter) is started with :meth:`FleetState.resync`
→ :meth:`FleetState.load` and kept up to date with the journal (:meth:`FleetState.take_journal`
→ :meth:`FleetState.apply_event`) and the liveness (:meth:`FleetState.liveness` →
:meth:`FleetState.apply_liveness`).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from flopwatt.analysis.comparison import SpecComparison
from flopwatt.analysis.registry import GpuSpec
from flopwatt.records import (
    TELEMETRY_COLUMN_NAMES,
    Attribution,
    DeviceAttribution,
    DeviceInfo,
    GemmResult,
    ModelResult,
    NodeInfo,
)
from flopwatt.store.attribution import owner_key
from flopwatt.store.latest import LatestBlock

#: Bucket upper bounds (s) for the commit-latency histogram.
COMMIT_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

VALUE_COLUMNS: tuple[str, ...] = TELEMETRY_COLUMN_NAMES
"""The columns of the newest-values table, in order: the telemetry columns, each in its own unit
(``power_instant_w`` in W, ``sm_clock_mhz`` in MHz, ...), stored as float64. A column a
:class:`LatestBlock` carries that is not one of these is not kept."""
COLUMN_INDEX: Mapping[str, int] = {name: i for i, name in enumerate(VALUE_COLUMNS)}
"""Column name → its index in :data:`VALUE_COLUMNS`."""
_NCOL = len(VALUE_COLUMNS)
_MIN_ROWS = 64


@dataclass
class GemmLatest:
    """The latest GEMM result of one device at one precision."""

    result: GemmResult
    comparison: SpecComparison | None
    finished_unix_ns: int
    sm_clock_mean_mhz: float | None = None
    """The SM clock the GEMM ran at (its conditions), for peaks scaled to another clock."""


@dataclass
class ModelLatest:
    """The latest model result of one device for one (model, batch, precision)."""

    result: ModelResult
    finished_unix_ns: int


class _ValueSource(Protocol):
    def latest_of(self, uuid: str) -> tuple[dict[str, float], int]: ...


@dataclass
class DeviceState:
    """One device: identity, registry match, latest results and (a view of) its newest values.

    ``gemm`` and ``models`` are replaced by the state, never changed in place, so copies may
    share them.
    """

    info: DeviceInfo
    agent_id: str
    spec: GpuSpec | None
    sku_match: str
    gemm: dict[str, GemmLatest] = field(default_factory=dict)
    models: dict[tuple[str, int, str], ModelLatest] = field(default_factory=dict)
    attribution: DeviceAttribution | None = None
    """Who uses the device, as last observed (None: never told)."""
    attribution_unix_ns: int = 0
    """When :attr:`attribution` was observed (ns since the Unix epoch; 0: never)."""
    _values: _ValueSource | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def latest(self) -> dict[str, float]:
        """Column → newest value (see :data:`VALUE_COLUMNS` for names and units); a column the
        device never reported is absent, never zero. For a copy (:meth:`FleetState.snapshot`,
        :meth:`FleetState.device_copy`) as of the copy; for the registered object, read from
        the state now; empty for a device no state holds."""
        return {} if self._values is None else self._values.latest_of(self.info.uuid)[0]

    @property
    def latest_sample_unix_ns(self) -> int:
        """Timestamp (ns since the Unix epoch) of the newest sample applied; 0 before any."""
        return 0 if self._values is None else self._values.latest_of(self.info.uuid)[1]

    @property
    def sku(self) -> str | None:
        """Matched registry SKU id, or None."""
        return self.spec.sku if self.spec is not None else None

    def __getstate__(self) -> dict[str, Any]:
        # A copy pickles with its values; a registered object pickles without (its values are
        # the state's, which does not cross processes this way).
        state = dict(self.__dict__)
        if not isinstance(state.get("_values"), LatestTable):
            state["_values"] = None
        return state


@dataclass(frozen=True)
class LatestTable:
    """A copy of the newest-values table: device ``uuid``'s values are row ``rows[uuid]`` of
    ``values`` (columns :data:`VALUE_COLUMNS`), present where ``present`` is true, from its
    sample at ``stamps_unix_ns`` (ns since the Unix epoch; 0: none yet)."""

    rows: Mapping[str, int]
    values: npt.NDArray[np.float64]
    present: npt.NDArray[np.bool_]
    stamps_unix_ns: npt.NDArray[np.int64]

    def latest_of(self, uuid: str) -> tuple[dict[str, float], int]:
        """Device ``uuid``'s {column: value} and its sample's timestamp (ns); ({}, 0) when the
        table has no row for it."""
        r = self.rows.get(uuid)
        if r is None:
            return {}, 0
        return _row_dict(self.values[r], self.present[r]), int(self.stamps_unix_ns[r])


def _row_dict(values: npt.NDArray[np.float64], present: npt.NDArray[np.bool_]) -> dict[str, float]:
    return {
        n: v for n, v, p in zip(VALUE_COLUMNS, values.tolist(), present.tolist(), strict=True) if p
    }


@dataclass
class AgentState:
    """One agent."""

    node: NodeInfo
    epoch: int
    device_uuids: tuple[str, ...]
    connected: bool = False
    last_seen_unix_ns: int = 0


@dataclass
class Counters:
    """Collector self-metrics (since this collector process started)."""

    samples_ingested: int = 0
    samples_rejected: dict[str, int] = field(default_factory=dict)
    samples_dropped_by_agents: int = 0
    messages: dict[tuple[str, str], int] = field(default_factory=dict)
    commit_latency_buckets: list[int] = field(
        default_factory=lambda: [0] * len(COMMIT_LATENCY_BUCKETS_S)
    )
    commit_latency_count: int = 0
    commit_latency_sum_s: float = 0.0
    streams_active: int = 0
    store_up: bool = True
    store_episodes: int = 0
    store_failed_commits: int = 0
    child_restarts: dict[str, int] = field(default_factory=dict)
    """process ("store_writer", "exporter") → restarts."""
    metrics_scrapes: dict[str, int] = field(default_factory=dict)
    """process that rendered ("exporter", "main") → scrapes."""
    store_maintenance: dict[str, Any] = field(default_factory=dict)
    """The maintenance process's newest totals (``MaintenanceTotals.snapshot``); empty until
    its first pass."""
    store_max_bytes: int | None = None
    """The store's size cap (B); None: no cap."""


@dataclass(frozen=True)
class FleetSnapshot:
    """A consistent copy of the state for one admin answer, or to start a copy elsewhere
    (:meth:`FleetState.load`). Each device's :attr:`DeviceState.latest` reads ``table``."""

    agents: Mapping[str, AgentState]
    devices: Mapping[str, DeviceState]
    counters: Counters
    table: LatestTable | None = None
    """Every device's newest values (None: take each device's ``latest``)."""

    def device(self, uuid: str) -> DeviceState | None:
        """The device's copy, if it is known."""
        return self.devices.get(uuid)


@dataclass(frozen=True)
class ScrapeView:
    """What one ``/metrics`` render reads, copied in one short hold of the state's lock
    (:meth:`FleetState.scrape_view`)."""

    version: int
    """Changes whenever a registration (or a :meth:`FleetState.load`) changes ``agents`` or
    ``devices``; a renderer may keep what it derives from them while it stays the same."""
    agents: Mapping[str, AgentState]
    """The registered agents (the state's objects: read ``node`` and ``device_uuids`` only)."""
    liveness: Mapping[str, tuple[bool, int]]
    """Agent id → (connected, last seen in ns since the Unix epoch), as of the copy."""
    devices: Mapping[str, DeviceState]
    """The registered devices (the state's objects: read identity and registry match only)."""
    rows: Mapping[str, int]
    """Device uuid → its row of ``values``."""
    values: npt.NDArray[np.float64]
    """Newest values, shape (rows, :data:`VALUE_COLUMNS`), in each column's unit."""
    present: npt.NDArray[np.bool_]
    """Where ``values`` holds a value (elsewhere: never reported; the value is meaningless)."""
    results: Sequence[
        tuple[str, Mapping[str, GemmLatest], Mapping[tuple[str, int, str], ModelLatest]]
    ]
    """(uuid, GEMM results by precision, model results by (model, batch, precision)) of every
    device that has a result."""
    counters: Counters
    attributions: Mapping[str, tuple[DeviceAttribution, int]] = field(default_factory=dict)
    """uuid → (its newest attribution, when it was observed in ns since the Unix epoch), for
    every device that has one."""


StateEvent = tuple[Any, ...]
"""One change to a :class:`FleetState`, as journalled for another process: ("register", node,
epoch, devices, now_unix_ns), ("latest", blocks), ("gemm", uuid, result, comparison,
finished_unix_ns, sm_clock_mean_mhz) or ("model", uuid, result, finished_unix_ns)."""


@dataclass(frozen=True)
class Liveness:
    """What changes too often to journal: every agent's (connected, last seen ns), and the
    counters. Sent whole, periodically (see :meth:`FleetState.liveness`)."""

    agents: Mapping[str, tuple[bool, int]]
    counters: Counters


class FleetState:
    """The collector's in-memory view of the fleet (see module docstring).

    Args:
        journal: keep a journal of changes (:meth:`take_journal`) so that a copy of this state
            in another process (the exporter) can be kept up to date.
    """

    def __init__(self, *, journal: bool = False) -> None:
        self._lock = threading.Lock()
        self._agents: dict[str, AgentState] = {}
        self._devices: dict[str, DeviceState] = {}
        self._with_results: set[str] = set()
        self._with_attribution: set[str] = set()
        self._counters = Counters()
        self._journal: list[StateEvent] | None = [] if journal else None
        self._version = 0
        # The newest-values table: row per device (never reused), column per VALUE_COLUMNS.
        self._rows: dict[str, int] = {}
        self._values = np.zeros((_MIN_ROWS, _NCOL), dtype=np.float64)
        self._present = np.zeros((_MIN_ROWS, _NCOL), dtype=np.bool_)
        self._stamps = np.zeros(_MIN_ROWS, dtype=np.int64)
        self._columns_of: dict[tuple[str, ...], tuple[Any, Any]] = {}

    # --- journal (for a copy in another process) -----------------------------------------

    def take_journal(self) -> list[StateEvent]:
        """The changes since the last call (empty when the state keeps no journal)."""
        with self._lock:
            if not self._journal:
                return []
            events, self._journal = self._journal, []
        return events

    def liveness(self) -> Liveness:
        """Every agent's (connected, last seen) and a copy of the counters."""
        with self._lock:
            agents = {k: (a.connected, a.last_seen_unix_ns) for k, a in self._agents.items()}
            counters = copy.deepcopy(self._counters)
        return Liveness(agents, counters)

    def resync(self) -> FleetSnapshot:
        """A snapshot to start a copy from, and the journal emptied, in one hold of the lock:
        the copy passes it to :meth:`load`, then applies the events :meth:`take_journal`
        returns from now on (none of which the snapshot already holds)."""
        with self._lock:
            snap = self._snapshot_locked()
            if self._journal is not None:
                self._journal = []
        return snap

    def load(self, snapshot: FleetSnapshot) -> None:
        """Replace this state's content (agents, devices, results, newest values, counters)
        with ``snapshot``'s: the copy's side of :meth:`resync`. A journal this state keeps is
        emptied (a copy of *this* state must resync too)."""
        agents = {k: _copy_agent(a) for k, a in snapshot.agents.items()}
        devices: dict[str, DeviceState] = {}
        for uuid, d in snapshot.devices.items():
            c = DeviceState(
                d.info,
                d.agent_id,
                d.spec,
                d.sku_match,
                d.gemm,
                d.models,
                d.attribution,
                d.attribution_unix_ns,
            )
            c._values = self
            devices[uuid] = c
        uuids = list(devices)
        n = max(_MIN_ROWS, len(uuids))
        values = np.zeros((n, _NCOL), dtype=np.float64)
        present = np.zeros((n, _NCOL), dtype=np.bool_)
        stamps = np.zeros(n, dtype=np.int64)
        table = snapshot.table
        if table is not None:
            src = np.array([table.rows.get(u, -1) for u in uuids], dtype=np.intp)
            have = src >= 0
            dst = np.flatnonzero(have)
            values[dst] = table.values[src[have]]
            present[dst] = table.present[src[have]]
            stamps[dst] = table.stamps_unix_ns[src[have]]
        else:
            for r, u in enumerate(uuids):
                d = snapshot.devices[u]
                for column, v in d.latest.items():
                    i = COLUMN_INDEX.get(column)
                    if i is not None:
                        values[r, i], present[r, i] = v, True
                stamps[r] = d.latest_sample_unix_ns
        with self._lock:
            self._agents = agents
            self._devices = devices
            self._with_results = {u for u, d in devices.items() if d.gemm or d.models}
            self._with_attribution = {u for u, d in devices.items() if d.attribution is not None}
            self._counters = copy.deepcopy(snapshot.counters)
            self._rows = {u: r for r, u in enumerate(uuids)}
            self._values, self._present, self._stamps = values, present, stamps
            self._version += 1
            if self._journal is not None:
                self._journal = []

    def apply_event(self, event: StateEvent) -> None:
        """Apply one journalled change (in the process that keeps the copy)."""
        kind, *args = event
        if kind == "register":
            self.register(*args)
        elif kind == "latest":
            self.apply_latest(*args)
        elif kind == "gemm":
            self.apply_gemm(*args)
        elif kind == "model":
            self.apply_model(*args)
        elif kind == "attribution":
            self.apply_attribution(*args)
        else:
            raise ValueError(f"unknown state event {kind!r}")

    def apply_liveness(self, liveness: Liveness) -> None:
        """Take agents' liveness and the counters from the process that owns them."""
        with self._lock:
            for agent_id, (connected, last_seen) in liveness.agents.items():
                a = self._agents.get(agent_id)
                if a is not None:
                    a.connected = connected
                    a.last_seen_unix_ns = max(a.last_seen_unix_ns, last_seen)
            self._counters = liveness.counters

    # --- writers (event loop) ------------------------------------------------------------

    def register(
        self, node: NodeInfo, epoch: int, devices: Iterable[DeviceState], now_unix_ns: int
    ) -> None:
        """Record an agent and its devices (replacing a previous registration; a device keeps
        its results and newest values, whichever agent registered it before)."""
        devs = list(devices)
        with self._lock:
            if self._journal is not None:
                self._journal.append(
                    ("register", node, epoch, [_registration_copy(d) for d in devs], now_unix_ns)
                )
            old = self._agents.get(node.hostname)
            self._agents[node.hostname] = AgentState(
                node=node,
                epoch=epoch,
                device_uuids=tuple(d.info.uuid for d in devs),
                connected=old.connected if old else False,
                last_seen_unix_ns=now_unix_ns,
            )
            for d in devs:
                uuid = d.info.uuid
                prev = self._devices.get(uuid)
                if prev is not None:  # keep results across re-registration
                    d.gemm, d.models = prev.gemm, prev.models
                    d.attribution, d.attribution_unix_ns = (
                        prev.attribution,
                        prev.attribution_unix_ns,
                    )
                    if d.attribution is not None:
                        self._with_attribution.add(uuid)
                if uuid not in self._rows:
                    self._add_row(uuid)
                d._values = self
                self._devices[uuid] = d
            self._version += 1

    def device(self, uuid: str) -> DeviceState | None:
        """The device with ``uuid`` (the registered object; read-only use)."""
        with self._lock:
            return self._devices.get(uuid)

    def agent(self, agent_id: str) -> AgentState | None:
        """The agent (live object; read-only use from the event loop)."""
        with self._lock:
            return self._agents.get(agent_id)

    def set_connected(self, agent_id: str, connected: bool, now_unix_ns: int) -> None:
        """Mark an agent's stream open or closed."""
        with self._lock:
            a = self._agents.get(agent_id)
            if a is not None:
                a.connected = connected
                a.last_seen_unix_ns = max(a.last_seen_unix_ns, now_unix_ns)
            self._counters.streams_active += 1 if connected else -1

    def seen(self, agent_id: str, now_unix_ns: int) -> None:
        """The agent was just heard from."""
        with self._lock:
            a = self._agents.get(agent_id)
            if a is not None:
                a.last_seen_unix_ns = max(a.last_seen_unix_ns, now_unix_ns)

    def apply_latest(self, blocks: Iterable[LatestBlock]) -> None:
        """Take each device's newest committed values (from the writer): a row replaces the
        columns it has and keeps the others; a row older than what the device already has is
        ignored, as is a row of a device that is not registered."""
        with self._lock:
            if self._journal is not None:
                blocks = list(blocks)
                self._journal.append(("latest", blocks))
            for block in blocks:
                if len(block):
                    self._scatter(block)

    def apply_gemm(
        self,
        uuid: str,
        result: GemmResult,
        comparison: SpecComparison | None,
        finished_unix_ns: int,
        sm_clock_mean_mhz: float | None = None,
    ) -> None:
        """Record a committed GEMM result (the newest per precision wins)."""
        with self._lock:
            if self._journal is not None:
                self._journal.append(
                    ("gemm", uuid, result, comparison, finished_unix_ns, sm_clock_mean_mhz)
                )
            d = self._devices.get(uuid)
            if d is None:
                return
            prev = d.gemm.get(result.precision)
            if prev is None or prev.finished_unix_ns <= finished_unix_ns:
                latest = GemmLatest(result, comparison, finished_unix_ns, sm_clock_mean_mhz)
                d.gemm = {**d.gemm, result.precision: latest}
                self._with_results.add(uuid)

    def apply_model(self, uuid: str, result: ModelResult, finished_unix_ns: int) -> None:
        """Record a committed model result (the newest per model/batch/precision wins)."""
        with self._lock:
            if self._journal is not None:
                self._journal.append(("model", uuid, result, finished_unix_ns))
            d = self._devices.get(uuid)
            if d is None:
                return
            key = (result.model, result.batch, result.precision)
            prev = d.models.get(key)
            if prev is None or prev.finished_unix_ns <= finished_unix_ns:
                d.models = {**d.models, key: ModelLatest(result, finished_unix_ns)}
                self._with_results.add(uuid)

    def apply_attribution(self, attribution: Attribution) -> None:
        """Record a committed attribution: each device it names takes it unless the device
        already holds a newer one; devices not registered are skipped."""
        with self._lock:
            if self._journal is not None:
                self._journal.append(("attribution", attribution))
            at = attribution.observed_unix_ns
            for a in attribution.devices:
                d = self._devices.get(a.device_uuid)
                if d is not None and d.attribution_unix_ns <= at:
                    if d.attribution is None or owner_key(d.attribution) != owner_key(a):
                        self._version += 1  # the labels a render caches by version changed
                    d.attribution, d.attribution_unix_ns = a, at
                    self._with_attribution.add(a.device_uuid)

    def count(self, mutate: Callable[[Counters], Any]) -> None:
        """Update counters under the lock: ``state.count(lambda c: ...)``."""
        with self._lock:
            mutate(self._counters)

    def observe_commit_latencies(self, latencies_s: Iterable[float]) -> None:
        """Add commit latencies (s) to the histogram."""
        with self._lock:
            c = self._counters
            for v in latencies_s:
                c.commit_latency_count += 1
                c.commit_latency_sum_s += v
                for i, bound in enumerate(COMMIT_LATENCY_BUCKETS_S):
                    if v <= bound:
                        c.commit_latency_buckets[i] += 1
                        break

    # --- readers (any thread) ------------------------------------------------------------

    def snapshot(self) -> FleetSnapshot:
        """A consistent copy (devices shallow: results are immutable; values in a table)."""
        with self._lock:
            return self._snapshot_locked()

    def device_copy(self, uuid: str) -> DeviceState | None:
        """A copy of one device with its values as of now, or None when unknown."""
        with self._lock:
            d = self._devices.get(uuid)
            if d is None:
                return None
            r = self._rows[uuid]
            table = LatestTable(
                {uuid: 0},
                self._values[r : r + 1].copy(),
                self._present[r : r + 1].copy(),
                self._stamps[r : r + 1].copy(),
            )
        return _copy_device(d, table)

    def latest_of(self, uuid: str) -> tuple[dict[str, float], int]:
        """Device ``uuid``'s newest {column: value} and its sample's timestamp (ns since the
        Unix epoch); ({}, 0) when unknown (see :attr:`DeviceState.latest`)."""
        with self._lock:
            r = self._rows.get(uuid)
            if r is None:
                return {}, 0
            values, present = self._values[r].copy(), self._present[r].copy()
            stamp = int(self._stamps[r])
        return _row_dict(values, present), stamp

    def scrape_view(self) -> ScrapeView:
        """What a ``/metrics`` render reads (see :class:`ScrapeView`), copied in one short
        hold of the lock: the values as two arrays, no per-device copies."""
        with self._lock:
            n = len(self._rows)
            devices = self._devices
            return ScrapeView(
                version=self._version,
                agents=dict(self._agents),
                liveness={k: (a.connected, a.last_seen_unix_ns) for k, a in self._agents.items()},
                devices=dict(devices),
                rows=dict(self._rows),
                values=self._values[:n].copy(),
                present=self._present[:n].copy(),
                results=[(u, devices[u].gemm, devices[u].models) for u in self._with_results],
                counters=copy.deepcopy(self._counters),
                attributions={
                    u: (a, devices[u].attribution_unix_ns)
                    for u in self._with_attribution
                    if (a := devices[u].attribution) is not None
                },
            )

    # --- internals (under the lock) ------------------------------------------------------

    def _snapshot_locked(self) -> FleetSnapshot:
        n = len(self._rows)
        table = LatestTable(
            dict(self._rows),
            self._values[:n].copy(),
            self._present[:n].copy(),
            self._stamps[:n].copy(),
        )
        agents = {k: _copy_agent(v) for k, v in self._agents.items()}
        devices = {k: _copy_device(d, table) for k, d in self._devices.items()}
        return FleetSnapshot(agents, devices, copy.deepcopy(self._counters), table)

    def _add_row(self, uuid: str) -> None:
        r = len(self._rows)
        if r == len(self._stamps):
            grow = r * 2
            values = np.zeros((grow, _NCOL), dtype=np.float64)
            present = np.zeros((grow, _NCOL), dtype=np.bool_)
            stamps = np.zeros(grow, dtype=np.int64)
            values[:r], present[:r], stamps[:r] = self._values, self._present, self._stamps
            self._values, self._present, self._stamps = values, present, stamps
        self._rows[uuid] = r

    def _columns(self, names: tuple[str, ...]) -> tuple[Any, Any]:
        """(which of a block's columns to keep: None for all, their table columns)."""
        found = self._columns_of.get(names)
        if found is None:
            keep = [i for i, n in enumerate(names) if n in COLUMN_INDEX]
            cols = [COLUMN_INDEX[names[i]] for i in keep]
            if cols == list(range(_NCOL)):
                found = (None, slice(None))
            else:
                take = None if len(keep) == len(names) else np.array(keep, dtype=np.intp)
                found = (take, np.array(cols, dtype=np.intp))
            self._columns_of[names] = found
        return found

    def _scatter(self, block: LatestBlock) -> None:
        get = self._rows.get
        row_list = [get(u, -1) for u in block.device_uuids]
        take, cols = self._columns(block.names)
        src = block.values if take is None else block.values[:, take]
        if len(set(row_list)) == len(row_list):
            # Each device once (the usual case): one scatter for the whole block.
            rows = np.array(row_list, dtype=np.intp)
            stamps = block.stamps_unix_ns
            ok = (rows >= 0) & (stamps >= self._stamps[rows])
            if not ok.all():
                rows, stamps, src = rows[ok], stamps[ok], src[ok]
            self._stamps[rows] = stamps
            if isinstance(cols, slice):
                self._values[rows] = src
                self._present[rows] = True
            else:
                index = np.ix_(rows, cols)
                self._values[index] = src
                self._present[index] = True
            return
        # A device with several rows (or several unknown ones): in order, newer or equal wins.
        stamp_list = block.stamps_unix_ns.tolist()
        for i, (r, stamp) in enumerate(zip(row_list, stamp_list, strict=True)):
            if r < 0 or stamp < self._stamps[r]:
                continue
            self._stamps[r] = stamp
            self._values[r, cols] = src[i]
            self._present[r, cols] = True


def _copy_agent(a: AgentState) -> AgentState:
    c = object.__new__(AgentState)
    c.__dict__.update(a.__dict__)
    return c


def _copy_device(d: DeviceState, values: LatestTable) -> DeviceState:
    # Shallow: results are immutable and their dicts are replaced, never changed. (Built
    # field by field: copy.copy's generic path is several times slower.)
    c = object.__new__(DeviceState)
    c.__dict__.update(d.__dict__)
    c._values = values
    return c


def _registration_copy(d: DeviceState) -> DeviceState:
    """What a registration carries: identity and match, without values or results (those
    follow as their own events, or are already in the copy)."""
    return DeviceState(info=d.info, agent_id=d.agent_id, spec=d.spec, sku_match=d.sku_match)
