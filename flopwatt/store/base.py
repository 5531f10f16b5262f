"""The store's interface and what every engine shares: the message write and its outcome,
registrations and job rows (dataclasses), the :class:`Store` protocol, and the rows both
engines write for results and registrations (so the two cannot drift apart).

Engines: :mod:`flopwatt.store.sqlite` (one file, the default) and
:mod:`flopwatt.store.postgres` (shared by collector replicas); :func:`flopwatt.store.open_store`
picks one from ``--db``.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from flopwatt.analysis.comparison import SpecComparison
from flopwatt.jsonable import dumps
from flopwatt.records import (
    Attribution,
    DeviceInfo,
    JobResult,
    JobState,
    JobStatus,
    NodeInfo,
    SeriesBlock,
)
from flopwatt.store.chunks import ChunkRow
from flopwatt.store.latest import LatestBlock
from flopwatt.store.schema import epoch_from_db, epoch_to_db


class Outcome(StrEnum):
    """What happened to one agent message."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    """Not stored: a newer stream of the agent holds the epoch (another collector replica took
    it over); this stream ends."""
    OUT_OF_ORDER = "out_of_order"
    """Not stored: an earlier sequence of the epoch is not stored yet (its commit failed); the
    agent resends this one after it."""


PROBE_BYTES = 1024 * 1024
"""What a health probe writes (and removes) to find out whether the store can commit (B)."""


@dataclass(frozen=True)
class MessageWrite:
    """Everything one agent message adds to the store, prepared (validated) by ingest."""

    agent_id: str
    epoch: int
    sequence: int
    kind: str
    digest: bytes
    received_unix_ns: int
    rejected_detail: str = ""
    """Non-empty: the message was structurally broken; it is recorded as rejected."""
    reject_code: str = ""
    """For a rejection: "invalid_argument" or "resource_exhausted" (the stream's status)."""
    blocks: tuple[SeriesBlock, ...] = ()
    """Validated telemetry (bad samples already removed), one row per device when stored."""
    rejected_samples: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(device_uuid, reason) → samples rejected by validation."""
    result: JobResult | None = None
    comparison: SpecComparison | None = None
    job_status: JobStatus | None = None
    attribution: Attribution | None = None
    """Validated attribution (its devices all registered by ``agent_id``)."""
    dropped_samples: int = 0
    """For a tombstone: telemetry samples the agent dropped from its spool."""
    telemetry_wire: bytes | None = None
    """Telemetry exactly as received (a serialised ``TelemetryBatch``), not yet decoded or
    validated: the writer prepares it (``telemetry_prep``) just before the commit."""
    chunks: tuple[ChunkRow, ...] | None = None
    """The validated telemetry already packed as stored chunks, one per series in message
    order (the writer packs them straight from the wire bytes); None: the store packs
    ``blocks`` itself."""
    resend: bool = False
    """A resend of a message this stream already submitted: it carries only its digest (to
    tell a duplicate from a conflict), never its payload, so it is never stored."""
    stream_owner: str = ""
    """The token of the stream that sent it (see :meth:`Store.claim_stream`); empty: not
    fenced."""

    @property
    def samples(self) -> int:
        """Telemetry samples this message stores."""
        if self.chunks is not None:
            return sum(c[3] for c in self.chunks)
        return sum(len(b) for b in self.blocks)

    @property
    def has_telemetry(self) -> bool:
        """Whether this message stores telemetry (as blocks or as packed chunks)."""
        return bool(self.blocks) or bool(self.chunks)

    def __reduce__(self) -> tuple[Any, ...]:
        # Positional and flat: cheaper to pickle across to a writer process.
        return (MessageWrite, _MESSAGE_WRITE_FIELDS(self))


@dataclass(frozen=True)
class WriteOutcome:
    """The result of applying one :class:`MessageWrite`.

    The writer fills the telemetry fields after preparing telemetry on its side (the stream
    handler never saw the decoded samples).
    """

    outcome: Outcome
    committed_through: int
    samples: int = 0
    """Telemetry samples stored."""
    rejected_samples: Mapping[tuple[str, str], int] = field(default_factory=dict)
    rejected_detail: str = ""
    reject_code: str = ""
    latest: tuple[LatestBlock, ...] = ()
    """The newest values of the devices in this commit's stored telemetry (on the commit's last
    stored telemetry outcome; empty elsewhere)."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Positional and flat, like MessageWrite: one comes back from the writer process per
        # message.
        return (WriteOutcome, _WRITE_OUTCOME_FIELDS(self))


_MESSAGE_WRITE_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(MessageWrite)))
_WRITE_OUTCOME_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(WriteOutcome)))


@dataclass(frozen=True)
class Registration:
    """One agent's registration as the store records it."""

    node: NodeInfo
    devices: Sequence[DeviceInfo]
    epoch: int
    matches: Mapping[str, tuple[str | None, str]]
    """uuid → (matched SKU or None, how it matched)."""
    now_unix_ns: int


@dataclass(frozen=True)
class JobTargetRow:
    """One agent's part of a job."""

    job_id: str
    agent_id: str
    state: JobState
    message: str
    updated_unix_ns: int
    delivered_epoch: int
    results: int


@dataclass(frozen=True)
class JobRow:
    """A job as stored."""

    job_id: str
    kind: str
    spec_json: str
    selector_json: str
    requested_unix_ns: int
    targets: tuple[JobTargetRow, ...]


class Store(Protocol):
    """What the collector needs from a store. Implementations must be safe to call from several
    threads; writes are serialised."""

    def apply(self, writes: Sequence[MessageWrite]) -> list[WriteOutcome]:
        """Apply message writes in one transaction, in order; return one outcome each."""
        ...

    def committed_through(self, agent_id: str, epoch: int) -> int:
        """Highest contiguous committed sequence for (agent, epoch); 0 when none."""
        ...

    def register_agent(
        self,
        node: NodeInfo,
        devices: Sequence[DeviceInfo],
        epoch: int,
        matches: Mapping[str, tuple[str | None, str]],
        now_unix_ns: int,
    ) -> None:
        """Record (or refresh) an agent and its devices; ``matches`` maps uuid → (sku, how)."""
        ...

    def register_agents(self, registrations: Sequence[Registration]) -> None:
        """Record several registrations in one transaction (a reconnect storm)."""
        ...

    def create_job(
        self,
        job_id: str,
        kind: str,
        spec_json: str,
        selector_json: str,
        agent_ids: Sequence[str],
        now_unix_ns: int,
    ) -> None:
        """Record a job and its targets (all QUEUED)."""
        ...

    def set_target_state(
        self,
        job_id: str,
        agent_id: str,
        state: JobState,
        message: str,
        now_unix_ns: int,
        delivered_epoch: int | None = None,
    ) -> None:
        """Update one target of a job."""
        ...

    def claim_stream(self, agent_id: str, epochs: Sequence[int], owner: str) -> None:
        """Record ``owner`` (a new stream's token) as the holder of ``agent_id``'s ``epochs``:
        the newest hello wins, and writes from an older stream of those epochs are refused
        (:attr:`Outcome.SUPERSEDED`) where several collectors share the store."""
        ...

    def claim_delivery(self, job_id: str, agent_id: str, epoch: int, now_unix_ns: int) -> bool:
        """Mark a QUEUED target DELIVERED to ``epoch``; False when it was not QUEUED (another
        replica, or an earlier call, delivered it). Makes delivery happen once."""
        ...

    def listen_jobs(self, on_job: Callable[[str], None]) -> Callable[[], None]:
        """Call ``on_job(job_id)`` (from another thread) whenever any replica on this store
        creates a job; returns a function that stops listening. A store only one collector
        uses may never call it (that collector delivers its own jobs)."""
        ...

    def get_job(self, job_id: str) -> JobRow | None:
        """A job with its targets, or None."""
        ...

    def pending_jobs(self, agent_id: str) -> list[JobRow]:
        """Jobs with a target for ``agent_id`` not yet in a final state."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any]:
        """Run a read-only query written with ``?`` placeholders (reports, state rebuild);
        each row is indexed by column name (``row["agent_id"]``)."""
        ...

    def probe(self) -> None:
        """Raise unless the store can commit now (the collector's health probe)."""
        ...

    def checkpoint_if_larger(self, limit_bytes: int) -> bool:
        """Fold a write-ahead log larger than ``limit_bytes`` into the database (SQLite);
        whether it did. Engines that manage their own log do nothing."""
        ...

    def close(self) -> None:
        """Close every connection."""
        ...


COMPARISON_FIELDS = (
    "sku",
    "precision",
    "datapath",
    "spec_peak_flops_per_s",
    "spec_tdp_w",
    "burst_over_spec_ratio",
    "sustained_over_spec_ratio",
    "mean_power_over_tdp_ratio",
    "mean_power_over_limit_ratio",
    "measured_energy_per_flop_j",
    "physics_energy_per_flop_j",
    "ceiling_energy_per_flop_j",
    "measured_over_physics_ratio",
    "measured_over_ceiling_ratio",
    "physics_tdp_w",
    "physics_power_at_measured_w",
)


AGENT_UPSERT = (
    "INSERT INTO agents VALUES (?,?,?,?,?,?,?) ON CONFLICT (agent_id) DO UPDATE SET "
    "agent_version=excluded.agent_version, device_backend=excluded.device_backend, "
    "node_json=excluded.node_json, epoch=excluded.epoch, "
    "registered_unix_ns=excluded.registered_unix_ns"
)
DEVICE_UPSERT = (
    "INSERT INTO devices VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (device_uuid) DO UPDATE SET agent_id=excluded.agent_id, "
    "device_index=excluded.device_index, name=excluded.name, "
    "kind=excluded.kind, pci_bus_id=excluded.pci_bus_id, "
    "pci_device_id=excluded.pci_device_id, sku=excluded.sku, "
    "sku_match=excluded.sku_match, simulated=excluded.simulated, "
    "power_limit_enforced_w=excluded.power_limit_enforced_w, "
    "info_json=excluded.info_json, registered_unix_ns=excluded.registered_unix_ns"
)


def agent_row(r: Registration) -> tuple[Any, ...]:
    """The ``agents`` row of a registration (for :data:`AGENT_UPSERT`)."""
    node = r.node
    return (
        node.hostname,
        node.hostname,
        node.agent_version,
        node.device_backend,
        dumps(node),
        epoch_to_db(r.epoch),
        r.now_unix_ns,
    )


def device_rows(r: Registration) -> list[tuple[Any, ...]]:
    """The ``devices`` rows of a registration (for :data:`DEVICE_UPSERT`)."""
    rows = []
    for d in r.devices:
        sku, how = r.matches.get(d.uuid, (None, "unknown"))
        rows.append(
            (
                d.uuid,
                r.node.hostname,
                d.index,
                d.name,
                d.kind.value,
                d.pci_bus_id,
                d.pci_device_id,
                sku,
                how,
                int(d.simulated),
                d.power_limit_enforced_w,
                dumps(d),
                r.now_unix_ns,
            )
        )
    return rows


def job_result_row(key: tuple[str, int, int], r: JobResult) -> tuple[Any, ...]:
    """The ``job_results`` row of a result stored under ``key`` (agent, db epoch, sequence)."""
    cond = r.conditions
    g, m = r.gemm, r.model
    precision = g.precision if g is not None else (m.precision if m is not None else "")
    return (
        *key,
        r.job_id,
        r.device_uuid,
        r.kind.value if r.kind else "",
        precision,
        m.model if m is not None else None,
        m.batch if m is not None else None,
        r.started_unix_ns,
        r.finished_unix_ns,
        int(cond.simulated),
        g.burst_flops_per_s if g is not None else None,
        g.sustained_flops_per_s if g is not None else None,
        g.energy_per_flop_j if g is not None else None,
        (g.mean_power_w if g is not None else m.mean_power_w if m is not None else None),
        m.delivered_flops_per_s if m is not None else None,
        m.latency_p50_s if m is not None else None,
        m.efficiency_ratio if m is not None else None,
        m.spec_efficiency_ratio if m is not None else None,
        cond.throttle_reasons_seen,
        cond.power_limit_w,
        cond.sm_clock_mean_mhz,
        cond.temperature_max_c,
        dumps(r),
    )


def read_job_rows(
    query: Callable[[str, Sequence[Any]], Sequence[Any]], where: str, params: Sequence[Any]
) -> list[JobRow]:
    """Jobs matching ``where`` (``?`` placeholders) with their targets, through a store's
    read-only ``query``: the same SQL on every engine."""
    jobs = query(f"SELECT * FROM jobs WHERE {where} ORDER BY requested_unix_ns", params)
    out = []
    for j in jobs:
        targets = query(
            "SELECT t.*, (SELECT COUNT(*) FROM job_results jr WHERE jr.job_id = t.job_id "
            "AND jr.agent_id = t.agent_id) AS results FROM job_targets t WHERE job_id=? "
            "ORDER BY agent_id",
            (j["job_id"],),
        )
        out.append(
            JobRow(
                j["job_id"],
                j["kind"],
                j["spec_json"],
                j["selector_json"],
                int(j["requested_unix_ns"]),
                tuple(
                    JobTargetRow(
                        t["job_id"],
                        t["agent_id"],
                        JobState(int(t["state"])),
                        t["message"],
                        int(t["updated_unix_ns"]),
                        epoch_from_db(int(t["delivered_epoch"])),
                        int(t["results"]),
                    )
                    for t in targets
                ),
            )
        )
    return out
