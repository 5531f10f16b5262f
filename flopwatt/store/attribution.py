"""Attribution spans: while one workload held a GPU (table ``gpu_attribution``, schema 7).

A span is one device's run of attribution messages with the same owners (pod, whether the
processes are known, and the set of (pid, name)): ``start_unix_ns`` is the first observation,
``end_unix_ns`` the newest. The newest processes (memory, utilisation) are kept in the span, so
the collector rebuilds each device's current attribution from the store alone. An attribution
message updates the newest span of each device it names (same owners) or opens a new one, in the
commit that stores the message; the ledger's exactly-once keeps a resend from applying twice.

A span covers ``[start, min(end + SPAN_GRACE_NS, next span's start)]`` for readers: the owners
were last seen at ``end`` and the agent re-sends at least every minute while they hold.

Both engines use this module; only the placeholder differs (``?`` or ``%s``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flopwatt.records import Attribution, DeviceAttribution, GpuProcess, PodRef

SPAN_GRACE_NS = 60_000_000_000
"""How long after its last observation a span is taken to last (ns): the agent's refresh."""

SPAN_COLUMNS: tuple[str, ...] = (
    "device_uuid",
    "start_unix_ns",
    "end_unix_ns",
    "agent_id",
    "namespace",
    "pod",
    "container",
    "job",
    "processes_known",
    "owner_key",
    "processes_json",
)

Execute = Callable[[str, tuple[Any, ...]], Sequence[Mapping[str, Any]]]
"""Runs one statement with ``?`` placeholders (the engine translates them) and returns its
rows (empty for a write)."""


def owner_key(d: DeviceAttribution) -> str:
    """What must stay equal for two observations to be one span."""
    pod = [d.pod.namespace, d.pod.pod, d.pod.container] if d.pod is not None else None
    procs = sorted([p.pid, p.name] for p in d.processes)
    return json.dumps([pod, d.processes_known, procs], separators=(",", ":"))


def processes_json(processes: Sequence[GpuProcess]) -> str:
    """The processes as stored (absent values as null)."""
    return json.dumps(
        [[p.pid, p.name, p.used_memory_bytes, p.sm_utilization_ratio] for p in processes],
        separators=(",", ":"),
    )


def processes_from_json(text: str) -> tuple[GpuProcess, ...]:
    """Inverse of :func:`processes_json`."""
    return tuple(GpuProcess(int(p[0]), str(p[1]), p[2], p[3]) for p in json.loads(text))


def store_attribution(execute: Execute, agent_id: str, a: Attribution) -> None:
    """Extend or open each named device's span (inside the caller's transaction)."""
    for d in a.devices:
        key = owner_key(d)
        newest = execute(
            "SELECT start_unix_ns, end_unix_ns, owner_key FROM gpu_attribution "
            "WHERE device_uuid=? ORDER BY start_unix_ns DESC LIMIT 1",
            (d.device_uuid,),
        )
        procs = processes_json(d.processes)
        if (
            newest
            and newest[0]["owner_key"] == key
            and a.observed_unix_ns >= newest[0]["start_unix_ns"]
        ):
            # Never backwards, whichever of two writers (replicas on one PostgreSQL store, an
            # old and a new agent epoch) commits last: both sides of SET read the old row.
            obs = a.observed_unix_ns
            execute(
                "UPDATE gpu_attribution SET "
                "processes_json = CASE WHEN end_unix_ns <= ? THEN ? ELSE processes_json END, "
                "agent_id = CASE WHEN end_unix_ns <= ? THEN ? ELSE agent_id END, "
                "end_unix_ns = CASE WHEN end_unix_ns < ? THEN ? ELSE end_unix_ns END "
                "WHERE device_uuid=? AND start_unix_ns=?",
                (obs, procs, obs, agent_id, obs, obs, d.device_uuid, newest[0]["start_unix_ns"]),
            )
            continue
        if newest and a.observed_unix_ns <= newest[0]["start_unix_ns"]:
            # Older than the newest span (an agent's clock stepped back, or a spool replayed
            # late): history is not rewritten; the newest span stands.
            continue
        pod = d.pod or PodRef("", "", "")
        execute(
            f"INSERT INTO gpu_attribution ({', '.join(SPAN_COLUMNS)}) "
            f"VALUES ({','.join('?' * len(SPAN_COLUMNS))})",
            (
                d.device_uuid,
                a.observed_unix_ns,
                a.observed_unix_ns,
                agent_id,
                pod.namespace,
                pod.pod,
                pod.container,
                d.job,
                int(d.processes_known),
                key,
                procs,
            ),
        )


@dataclass(frozen=True)
class AttributionSpan:
    """One stored span (see module docstring); ``until_unix_ns`` is where it stops counting."""

    device_uuid: str
    start_unix_ns: int
    end_unix_ns: int
    until_unix_ns: int
    agent_id: str
    attribution: DeviceAttribution

    @property
    def job(self) -> str:
        """The workload's name (see :attr:`DeviceAttribution.job`)."""
        return self.attribution.job


def span_from_row(row: Mapping[str, Any], until_unix_ns: int) -> AttributionSpan:
    """A stored row as a span ending its coverage at ``until_unix_ns``."""
    pod = None
    if row["pod"]:
        pod = PodRef(row["namespace"], row["pod"], row["container"])
    d = DeviceAttribution(
        row["device_uuid"],
        processes_from_json(row["processes_json"]),
        bool(row["processes_known"]),
        pod,
    )
    return AttributionSpan(
        row["device_uuid"],
        int(row["start_unix_ns"]),
        int(row["end_unix_ns"]),
        until_unix_ns,
        row["agent_id"],
        d,
    )


def spans_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[AttributionSpan]:
    """Rows ordered by (device, start) → spans, each covering up to its grace or the next
    span of the same device, whichever comes first."""
    out = []
    for i, row in enumerate(rows):
        until = int(row["end_unix_ns"]) + SPAN_GRACE_NS
        if i + 1 < len(rows) and rows[i + 1]["device_uuid"] == row["device_uuid"]:
            until = min(until, int(rows[i + 1]["start_unix_ns"]))
        out.append(span_from_row(row, until))
    return out


SPANS_IN_WINDOW_SQL = (
    "SELECT * FROM gpu_attribution WHERE end_unix_ns >= ? AND start_unix_ns <= ? "
    "ORDER BY device_uuid, start_unix_ns"
)
"""The spans that may overlap [start - grace, end] (params: start - grace, end)."""

NEWEST_SPANS_SQL = (
    "SELECT a.* FROM gpu_attribution a JOIN (SELECT device_uuid, MAX(start_unix_ns) AS s "
    "FROM gpu_attribution GROUP BY device_uuid) n "
    "ON a.device_uuid = n.device_uuid AND a.start_unix_ns = n.s"
)
"""Each device's newest span (its current attribution)."""


def newest_span_sql(devices: int) -> str:
    """The newest span of each of ``devices`` devices (params: their UUIDs): one indexed
    lookup per device (the primary key), for an agent registering with a replica."""
    return " UNION ALL ".join(
        [
            "SELECT * FROM (SELECT * FROM gpu_attribution WHERE device_uuid = ? "
            "ORDER BY start_unix_ns DESC LIMIT 1) AS d" + str(i)
            for i in range(devices)
        ]
    )
