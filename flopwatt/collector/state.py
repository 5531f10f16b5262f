"""What the collector currently knows about the fleet, for metrics and the admin API.

Updated only after a commit (so nothing unacked or rejected reaches the metrics) and rebuilt
from the store at start, so it holds nothing the store does not. RPC handlers (event-loop
thread) write it; readers on other threads take a snapshot under the same lock, and
``/metrics`` reads it in a child forked with that lock held.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from flopwatt.analysis.comparison import SpecComparison
from flopwatt.analysis.registry import GpuSpec
from flopwatt.collector.latest import LatestBlock
from flopwatt.records import (
    DeviceInfo,
    GemmResult,
    ModelResult,
    NodeInfo,
)

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


@dataclass
class GemmLatest:
    """The latest GEMM result of one device at one precision."""

    result: GemmResult
    comparison: SpecComparison | None
    finished_unix_ns: int


@dataclass
class ModelLatest:
    """The latest model result of one device for one (model, batch, precision)."""

    result: ModelResult
    finished_unix_ns: int


@dataclass
class DeviceState:
    """One device: identity, registry match, latest sample values and latest results."""

    info: DeviceInfo
    agent_id: str
    spec: GpuSpec | None
    sku_match: str
    latest: dict[str, float] = field(default_factory=dict)
    """Column name → last valid value (absent columns are absent); see :meth:`fold_latest`."""
    latest_sample_unix_ns: int = 0
    pending_latest: tuple[LatestBlock, int] | None = None
    """The newest values not yet folded into ``latest``: (block, row). Folding waits for a
    reader, because devices report every second and scrapes come every few seconds."""
    gemm: dict[str, GemmLatest] = field(default_factory=dict)
    models: dict[tuple[str, int, str], ModelLatest] = field(default_factory=dict)

    def fold_latest(self) -> None:
        """Fold the pending newest values into ``latest`` (call under the state's lock)."""
        if self.pending_latest is not None:
            block, row = self.pending_latest
            self.latest.update(block.row(row))
            self.pending_latest = None

    @property
    def sku(self) -> str | None:
        """Matched registry SKU id, or None."""
        return self.spec.sku if self.spec is not None else None


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


@dataclass(frozen=True)
class FleetSnapshot:
    """A consistent copy of the state for one scrape or one admin answer."""

    agents: Mapping[str, AgentState]
    devices: Mapping[str, DeviceState]
    counters: Counters

    def device(self, uuid: str) -> DeviceState | None:
        """The device's copy, if it is known."""
        return self.devices.get(uuid)


class LiveView:
    """Agents and counters copied when the view is taken; each device copied when it is asked
    for, one short hold of the state's lock at a time. A scrape of thousands of devices walks
    them in slices between other work instead of holding the lock (and the event loop) for a
    copy of all of them; devices are as of when each is read."""

    def __init__(
        self, state: FleetState, agents: Mapping[str, AgentState], counters: Counters
    ) -> None:
        self._state = state
        self.agents = agents
        self.counters = counters

    def device(self, uuid: str) -> DeviceState | None:
        """A copy of the device as it is now, if it is known."""
        return self._state.device_copy(uuid)


class FleetState:
    """The collector's in-memory view of the fleet (see module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._agents: dict[str, AgentState] = {}
        self._devices: dict[str, DeviceState] = {}
        self._counters = Counters()

    @contextlib.contextmanager
    def quiescent(self) -> Iterator[None]:
        """Hold the state's lock: while inside, no other thread is in the middle of changing
        or copying the state (what a fork needs, so the child finds the lock free and the
        state whole)."""
        with self._lock:
            yield

    # --- writers (event loop) ------------------------------------------------------------

    def register(
        self, node: NodeInfo, epoch: int, devices: Iterable[DeviceState], now_unix_ns: int
    ) -> None:
        """Record an agent and its devices (replacing a previous registration)."""
        devs = list(devices)
        with self._lock:
            old = self._agents.get(node.hostname)
            self._agents[node.hostname] = AgentState(
                node=node,
                epoch=epoch,
                device_uuids=tuple(d.info.uuid for d in devs),
                connected=old.connected if old else False,
                last_seen_unix_ns=now_unix_ns,
            )
            for d in devs:
                prev = self._devices.get(d.info.uuid)
                if prev is not None:  # keep results and last values across re-registration
                    d.latest, d.latest_sample_unix_ns = prev.latest, prev.latest_sample_unix_ns
                    d.pending_latest = prev.pending_latest
                    d.gemm, d.models = prev.gemm, prev.models
                self._devices[d.info.uuid] = d

    def device(self, uuid: str) -> DeviceState | None:
        """The device with ``uuid`` (the live object; read-only use from the event loop)."""
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
        """Take each device's newest committed values (from the writer); a row older than what
        the device already has is ignored."""
        with self._lock:
            for block in blocks:
                stamps = block.stamps_unix_ns.tolist()
                for row, (uuid, stamp) in enumerate(zip(block.device_uuids, stamps, strict=True)):
                    dev = self._devices.get(uuid)
                    if dev is None or stamp < dev.latest_sample_unix_ns:
                        continue  # unknown, or an older resent sample: keep the newer values
                    dev.latest_sample_unix_ns = stamp
                    pending = dev.pending_latest
                    if pending is not None and pending[0].names != block.names:
                        dev.fold_latest()  # other columns: keep the ones this row lacks
                    dev.pending_latest = (block, row)

    def apply_gemm(
        self,
        uuid: str,
        result: GemmResult,
        comparison: SpecComparison | None,
        finished_unix_ns: int,
    ) -> None:
        """Record a committed GEMM result (the newest per precision wins)."""
        with self._lock:
            d = self._devices.get(uuid)
            if d is None:
                return
            prev = d.gemm.get(result.precision)
            if prev is None or prev.finished_unix_ns <= finished_unix_ns:
                d.gemm[result.precision] = GemmLatest(result, comparison, finished_unix_ns)

    def apply_model(self, uuid: str, result: ModelResult, finished_unix_ns: int) -> None:
        """Record a committed model result (the newest per model/batch/precision wins)."""
        with self._lock:
            d = self._devices.get(uuid)
            if d is None:
                return
            key = (result.model, result.batch, result.precision)
            prev = d.models.get(key)
            if prev is None or prev.finished_unix_ns <= finished_unix_ns:
                d.models[key] = ModelLatest(result, finished_unix_ns)

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
        """A consistent copy for one scrape (shallow per device; results are immutable)."""
        with self._lock:
            agents = {k: copy.copy(v) for k, v in self._agents.items()}
            devices = {k: self._copy_device(d) for k, d in self._devices.items()}
            counters = copy.deepcopy(self._counters)
        return FleetSnapshot(agents, devices, counters)

    def live_view(self) -> LiveView:
        """Agents and counters now, devices when read (see :class:`LiveView`)."""
        with self._lock:
            agents = {k: copy.copy(v) for k, v in self._agents.items()}
            counters = copy.deepcopy(self._counters)
        return LiveView(self, agents, counters)

    def device_copy(self, uuid: str) -> DeviceState | None:
        """A copy of one device (its pending values folded in), or None when unknown."""
        with self._lock:
            d = self._devices.get(uuid)
            return None if d is None else self._copy_device(d)

    @staticmethod
    def _copy_device(d: DeviceState) -> DeviceState:
        # Under the lock. Shallow: results are immutable; the dicts are copied. (Built field
        # by field: copy.copy's generic path was a third of a scrape of thousands of devices.)
        d.fold_latest()
        c = object.__new__(DeviceState)
        c.__dict__.update(d.__dict__)
        c.latest = dict(d.latest)
        c.gemm = dict(d.gemm)
        c.models = dict(d.models)
        return c
