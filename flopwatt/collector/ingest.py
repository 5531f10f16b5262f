"""Ingest: turn received agent messages into store writes, and committed writes into state.

The servicer stays thin: it converts wire → records, then calls :meth:`Ingest.prepare` (which
checks the message belongs to the agent, validates samples and compares results with the
registry and physics), submits the write, and after the commit calls :meth:`Ingest.committed`
to update counters and the fleet state. Nothing reaches the state before it is durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from flopwatt.analysis.comparison import SpecComparison, compare_to_spec
from flopwatt.analysis.registry import GpuSpec, Registry, UnknownSkuError
from flopwatt.collector.state import Counters, DeviceState, FleetState
from flopwatt.collector.validate import DeviceLimits, device_limits
from flopwatt.collector.validate_attribution import AttributionError, check_attribution
from flopwatt.jsonable import from_jsonable
from flopwatt.records import (
    AgentMessage,
    AgentSettings,
    Attribution,
    DeviceInfo,
    DeviceKind,
    Dropped,
    JobResult,
    JobStatus,
    NodeInfo,
    RegisterRequest,
    RegisterResponse,
    TelemetryBatch,
)
from flopwatt.store.attribution import NEWEST_SPANS_SQL, newest_span_sql, span_from_row
from flopwatt.store.base import MessageWrite, Outcome, Registration, Store, WriteOutcome
from flopwatt.store.schema import epoch_from_db

log = logging.getLogger(__name__)


class StructuralError(ValueError):
    """A message that is well-formed protobuf but cannot belong to this agent (for example it
    names a device the agent never registered). Maps to ``INVALID_ARGUMENT``."""


def match_device(registry: Registry, d: DeviceInfo) -> tuple[GpuSpec | None, str]:
    """Registry match for a device: (spec or None, how it matched).

    Simulated devices match by the SKU they simulate ("sim"); the host CPU is "cpu"; real GPUs
    match by PCI device id, then exact name, never by substring.
    """
    if d.simulated and d.sim_sku:
        try:
            return registry.get(d.sim_sku), "sim"
        except UnknownSkuError:
            return None, "unknown"
    if d.kind is DeviceKind.CPU:
        return None, "cpu"
    m = registry.match_device(d.name, d.pci_device_id)
    return m.spec, m.method


def limits_of(d: DeviceState) -> DeviceLimits:
    """What a device's samples are checked against: its registration, with the SKU's TDP as
    the power limit when it registered none."""
    return device_limits(d.info, d.spec.tdp_w if d.spec is not None else None)


class RegistrationWriter:
    """Commits the registrations that arrived while the previous commit ran in one transaction,
    on a thread of its own (registrations never wait behind other blocking work).

    Args:
        store: where registrations are recorded.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.SimpleQueue[
            tuple[Registration, asyncio.Future[None], asyncio.AbstractEventLoop] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="flopwatt-registrations", daemon=True
        )
        self._thread.start()

    async def write(self, registration: Registration) -> None:
        """Record ``registration``; returns once it is committed.

        Raises:
            sqlite3.Error: the commit failed (the store cannot commit now).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.put((registration, fut, loop))
        await fut

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            error: BaseException | None = None
            try:
                self._store.register_agents([r for r, _, _ in batch])
            except Exception as exc:
                error = exc
            for _, fut, loop in batch:
                loop.call_soon_threadsafe(_settle, fut, error)


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
        fut.exception()  # a caller that went away must not make asyncio log it


class Ingest:
    """Per-message ingest logic shared by every stream.

    Args:
        store: the store (register and rebuild go to it directly; messages via the writer).
        state: the fleet state updated after commits.
        registry: the GPU spec registry for matching and comparison.
        settings: what new agents are told to use.
        max_message_bytes: the largest agent message the server accepts (told to agents).
        clock_ns: wall clock, ns since the Unix epoch.
    """

    def __init__(
        self,
        store: Store,
        state: FleetState,
        registry: Registry,
        *,
        settings: AgentSettings | None = None,
        max_message_bytes: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
        shared_store: bool = False,
    ) -> None:
        self.store = store
        self.shared_store = shared_store
        """Several replicas write this store: the state (and so /metrics) holds only the
        agents that register with this replica, each with its devices' stored results."""
        self.state = state
        self.registry = registry
        self.settings = settings or AgentSettings()
        self.max_message_bytes = max_message_bytes
        self._registrations = RegistrationWriter(store)
        self.clock_ns = clock_ns
        self.on_devices: Callable[[str, dict[str, DeviceLimits]], None] | None = None
        """Told each agent's devices and power limits (the writer validates telemetry)."""

    # --- registration --------------------------------------------------------------------

    async def register(self, req: RegisterRequest) -> RegisterResponse:
        """Store and remember an agent's node and devices."""
        now = self.clock_ns()
        states = []
        matches: dict[str, tuple[str | None, str]] = {}
        for d in req.devices:
            spec, how = match_device(self.registry, d)
            matches[d.uuid] = (spec.sku if spec else None, how)
            states.append(DeviceState(info=d, agent_id=req.node.hostname, spec=spec, sku_match=how))
        if not self._unchanged(req):
            # An agent registers again at every reconnect; only a change is written, and
            # changes that arrive together are committed together (a thousand agents starting
            # at once must not queue a thousand commits, each a few fsyncs).
            await self._registrations.write(
                Registration(req.node, req.devices, req.epoch, matches, now)
            )
        first_here = self.state.agent(req.node.hostname) is None
        self.state.register(req.node, req.epoch, states, now)
        if self.shared_store and first_here and states:
            # Its results may have been stored through another replica.
            await asyncio.to_thread(self._load_results, [d.info.uuid for d in states])
        self._announce(req.node.hostname, states)
        return RegisterResponse(req.node.hostname, self.settings, self.max_message_bytes)

    def _unchanged(self, req: RegisterRequest) -> bool:
        """Whether ``req`` repeats what the store already holds for this agent."""
        agent = self.state.agent(req.node.hostname)
        if agent is None or agent.node != req.node or agent.epoch != req.epoch:
            return False
        if agent.device_uuids != tuple(d.uuid for d in req.devices):
            return False
        for d in req.devices:
            known = self.state.device(d.uuid)
            if known is None or known.info != d or known.agent_id != req.node.hostname:
                return False
        return True

    def _announce(self, agent_id: str, devices: list[DeviceState]) -> None:
        if self.on_devices is not None:
            self.on_devices(agent_id, {d.info.uuid: limits_of(d) for d in devices})

    def announce_all(self) -> None:
        """Tell ``on_devices`` about every known agent (after a rebuild)."""
        snap = self.state.snapshot()
        for agent_id, a in snap.agents.items():
            self._announce(agent_id, [snap.devices[u] for u in a.device_uuids if u in snap.devices])

    def close(self) -> None:
        """Stop the registration writer (after the last registration)."""
        self._registrations.close()

    # --- messages ------------------------------------------------------------------------

    def _device_of(self, agent_id: str, uuid: str) -> DeviceState:
        d = self.state.device(uuid)
        if d is None or d.agent_id != agent_id:
            raise StructuralError(f"device {uuid!r} is not registered by agent {agent_id!r}")
        return d

    def prepare(
        self,
        agent_id: str,
        msg: AgentMessage,
        digest: bytes,
        received_unix_ns: int,
    ) -> MessageWrite:
        """Validate and enrich one non-telemetry message into a :class:`MessageWrite`.

        Raises:
            StructuralError: the message cannot belong to this agent.
        """
        base = MessageWrite(agent_id, msg.epoch, msg.sequence, msg.kind, digest, received_unix_ns)
        p = msg.payload
        if isinstance(p, TelemetryBatch):
            raise TypeError("telemetry is prepared by the store writer (telemetry_prep)")
        if isinstance(p, JobResult):
            device = self._device_of(agent_id, p.device_uuid)
            return replace(base, result=p, comparison=self._compare(device, p))
        if isinstance(p, JobStatus):
            return replace(base, job_status=p)
        if isinstance(p, Attribution):
            try:
                check_attribution(
                    p, lambda uuid: self._device_of(agent_id, uuid).info, self.clock_ns()
                )
            except AttributionError as exc:
                raise StructuralError(str(exc)) from None
            return replace(base, attribution=p)
        if isinstance(p, Dropped):
            return replace(base, dropped_samples=p.samples)
        return base

    def _compare(self, device: DeviceState, r: JobResult) -> SpecComparison | None:
        limit = r.conditions.power_limit_w or device.info.power_limit_enforced_w
        if r.gemm is not None:
            g = r.gemm
            return compare_to_spec(
                device.spec,
                g.precision,
                burst_flops_per_s=g.burst_flops_per_s,
                sustained_flops_per_s=g.sustained_flops_per_s,
                energy_per_flop_j=g.energy_per_flop_j,
                mean_power_w=g.mean_power_w,
                power_limit_w=limit,
            )
        if r.model is not None:
            m = r.model
            per_flop = None
            if m.energy_per_inference_j is not None and m.flops > 0:
                per_flop = m.energy_per_inference_j * m.batch / m.flops
            return compare_to_spec(
                device.spec,
                m.precision,
                sustained_flops_per_s=m.delivered_flops_per_s,
                energy_per_flop_j=per_flop,
                mean_power_w=m.mean_power_w,
                power_limit_w=limit,
            )
        return None

    def rejection(
        self,
        agent_id: str,
        epoch: int,
        sequence: int,
        kind: str,
        digest: bytes,
        detail: str,
        received_unix_ns: int,
    ) -> MessageWrite:
        """A write that records a structurally broken message as rejected (consuming its
        sequence, so a resend is a duplicate rather than a stall)."""
        return MessageWrite(
            agent_id, epoch, sequence, kind, digest, received_unix_ns, rejected_detail=detail
        )

    def committed(self, write: MessageWrite, outcome: WriteOutcome) -> None:
        """Update counters and state after ``write`` was committed with ``outcome``."""
        stored = outcome.outcome is Outcome.STORED

        def count(c: Counters) -> None:
            key = (write.kind, outcome.outcome.value)
            c.messages[key] = c.messages.get(key, 0) + 1
            if not stored:
                return
            c.samples_ingested += outcome.samples
            c.samples_dropped_by_agents += write.dropped_samples
            for (_, reason), k in outcome.rejected_samples.items():
                c.samples_rejected[reason] = c.samples_rejected.get(reason, 0) + k

        self.state.count(count)
        if outcome.outcome is Outcome.CONFLICT:
            log.warning(
                "conflict: %s epoch %d sequence %d was resent with a different payload; "
                "the first copy is kept",
                write.agent_id,
                write.epoch,
                write.sequence,
            )
        if not stored:
            return
        if outcome.latest:
            self.state.apply_latest(outcome.latest)
        if write.attribution is not None:
            self.state.apply_attribution(write.attribution)
        r = write.result
        if r is not None:
            if r.gemm is not None:
                self.state.apply_gemm(
                    r.device_uuid,
                    r.gemm,
                    write.comparison,
                    r.finished_unix_ns,
                    r.conditions.sm_clock_mean_mhz,
                )
            elif r.model is not None:
                self.state.apply_model(r.device_uuid, r.model, r.finished_unix_ns)

    # --- start-up ------------------------------------------------------------------------

    def _load_results(self, device_uuids: list[str] | None) -> None:
        """Apply the stored results of ``device_uuids`` (None: of every device), oldest first,
        so that each device ends with its latest."""
        sql = (
            "SELECT r.result_json, c.* FROM job_results r LEFT JOIN comparisons c "
            "USING (agent_id, epoch, sequence)"
        )
        params: tuple[str, ...] = ()
        if device_uuids is not None:
            sql += f" WHERE r.device_uuid IN ({','.join('?' * len(device_uuids))})"
            params = tuple(device_uuids)
        for row in self.store.query(sql + " ORDER BY r.finished_unix_ns", params):
            result = from_jsonable(JobResult, json.loads(row["result_json"]))
            if result.gemm is not None:
                comparison = None
                if row["precision"] is not None:
                    comparison = from_jsonable(
                        SpecComparison, {k: row[k] for k in SpecComparison.__dataclass_fields__}
                    )
                self.state.apply_gemm(
                    result.device_uuid,
                    result.gemm,
                    comparison,
                    result.finished_unix_ns,
                    result.conditions.sm_clock_mean_mhz,
                )
            elif result.model is not None:
                self.state.apply_model(result.device_uuid, result.model, result.finished_unix_ns)
        self._load_attribution(device_uuids)

    def _load_attribution(self, device_uuids: list[str] | None) -> None:
        """Apply each device's newest stored attribution span (its current owners)."""
        if device_uuids is None:
            rows = self.store.query(NEWEST_SPANS_SQL)
        elif device_uuids:
            rows = self.store.query(newest_span_sql(len(device_uuids)), device_uuids)
        else:
            return
        for row in rows:
            span = span_from_row(row, int(row["end_unix_ns"]))
            self.state.apply_attribution(Attribution(span.end_unix_ns, (span.attribution,)))

    def rebuild(self) -> None:
        """Reload agents, devices and the latest results from the store into the state.

        Not with a shared store: there every replica would then export every agent — those
        streaming to other replicas included, with a last-seen time frozen at this replica's
        start (an "agent silent" alert on a live agent). Agents appear as they register here.
        """
        if self.shared_store:
            log.info("shared store: agents appear here as they register with this replica")
            return
        devices_by_agent: dict[str, list[DeviceState]] = {}
        for row in self.store.query("SELECT agent_id, info_json FROM devices"):
            info = from_jsonable(DeviceInfo, json.loads(row["info_json"]))
            spec, how = match_device(self.registry, info)
            devices_by_agent.setdefault(row["agent_id"], []).append(
                DeviceState(info=info, agent_id=row["agent_id"], spec=spec, sku_match=how)
            )
        for row in self.store.query("SELECT node_json, epoch, registered_unix_ns FROM agents"):
            node = from_jsonable(NodeInfo, json.loads(row["node_json"]))
            self.state.register(
                node,
                epoch_from_db(row["epoch"]),
                devices_by_agent.get(node.hostname, []),
                row["registered_unix_ns"],
            )
        self._load_results(None)
        log.info(
            "state rebuilt from store: %d agents",
            len(self.store.query("SELECT agent_id FROM agents")),
        )
