"""Fleet jobs: request a benchmark on selected agents, deliver it, follow its state.

A job is stored with one target per selected agent (QUEUED). Connected agents get the command
at once (DELIVERED, with the epoch it was delivered to); agents that connect later get it after
their hello. An agent that restarts (new epoch) while a job it had been given was unfinished
cannot finish it: that target becomes FAILED with the reason. Agents report RUNNING, SUCCEEDED,
FAILED or UNAVAILABLE through sequenced job-status messages.

With several replicas on one store, a job may be requested on any of them: agents are selected
from the store (every replica's registrations), the creating replica delivers to its own
agents, and the store announces the job to the others (PostgreSQL ``NOTIFY``), which deliver to
theirs. A target is claimed QUEUED → DELIVERED in the store, so exactly one replica sends it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from flopwatt.collector.session import SessionRegistry
from flopwatt.collector.state import FleetState
from flopwatt.jsonable import dumps, from_jsonable
from flopwatt.records import Command, JobSpec, JobState, RunJob
from flopwatt.store.base import JobRow, Store


class NoAgentsMatchedError(LookupError):
    """The selector matched no registered agent."""


class BadSelectorError(ValueError):
    """The selector is empty (refused so nothing runs fleet-wide by accident)."""


@dataclass(frozen=True)
class Selector:
    """Which agents a job goes to (hostnames, SKUs, or ``all``)."""

    hostnames: tuple[str, ...] = ()
    skus: tuple[str, ...] = ()
    all: bool = False


class JobService:
    """Creates, delivers and reports jobs (see module docstring)."""

    def __init__(
        self,
        store: Store,
        state: FleetState,
        sessions: SessionRegistry,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self._state = state
        self._sessions = sessions
        self._clock_ns = clock_ns

    def select(self, selector: Selector) -> list[str]:
        """Agent ids matching ``selector`` (sorted), from the store: every agent registered
        with any replica on it.

        Raises:
            BadSelectorError: the selector names nothing and ``all`` is not set.
            NoAgentsMatchedError: nothing matched.
        """
        if not (selector.hostnames or selector.skus or selector.all):
            raise BadSelectorError("select agents by hostname or SKU, or pass all")
        skus_by_agent: dict[str, set[str]] = {}
        for row in self._store.query(
            "SELECT a.agent_id, d.sku FROM agents a LEFT JOIN devices d ON d.agent_id = a.agent_id"
        ):
            skus_by_agent.setdefault(row["agent_id"], set()).add((row["sku"] or "").casefold())
        hosts = set(selector.hostnames)
        skus = {s.casefold() for s in selector.skus}
        chosen = []
        for agent_id, agent_skus in skus_by_agent.items():
            if selector.all:
                chosen.append(agent_id)
                continue
            if hosts and agent_id not in hosts:
                continue
            if skus and not skus & agent_skus:
                continue
            chosen.append(agent_id)
        if not chosen:
            raise NoAgentsMatchedError("no registered agent matches the selector")
        return sorted(chosen)

    async def create(self, selector: Selector, spec: JobSpec) -> tuple[str, list[str]]:
        """Store a job for the selected agents and deliver it to those connected.

        Raises:
            BadSelectorError, NoAgentsMatchedError: see :meth:`select`.
            ValueError: the spec names no job kind.
        """
        if spec.kind is None:
            raise ValueError("job spec names no job kind (gemm or model)")
        agents = await asyncio.to_thread(self.select, selector)
        job_id = uuid.uuid4().hex[:16]
        await asyncio.to_thread(
            self._store.create_job,
            job_id,
            spec.kind.value,
            dumps(spec),
            dumps(selector),
            agents,
            self._clock_ns(),
        )
        for agent_id in agents:
            await self._deliver(job_id, agent_id, spec)
        return job_id, agents

    async def _deliver(self, job_id: str, agent_id: str, spec: JobSpec) -> None:
        """Send the job to ``agent_id`` if it streams to this collector and nobody (no other
        replica, no earlier call) delivered it yet."""
        session = self._sessions.get(agent_id)
        if session is None:
            return
        claimed = await asyncio.to_thread(
            self._store.claim_delivery, job_id, agent_id, session.hello.epoch, self._clock_ns()
        )
        if claimed:
            session.send_command(Command(f"run-{job_id}", RunJob(job_id, spec)))

    async def on_job_announced(self, job_id: str) -> None:
        """A replica on the same store created ``job_id``: deliver it to the agents of its
        targets that stream to this collector."""
        job = await asyncio.to_thread(self._store.get_job, job_id)
        if job is None:
            return
        spec = from_jsonable(JobSpec, json.loads(job.spec_json))
        for t in job.targets:
            if t.state is JobState.QUEUED and self._sessions.get(t.agent_id) is not None:
                await self._deliver(job_id, t.agent_id, spec)

    async def on_hello(self, agent_id: str, epoch: int) -> None:
        """Deliver queued jobs to a (re)connected agent; fail those a restart orphaned."""
        for job in await asyncio.to_thread(self._store.pending_jobs, agent_id):
            spec = from_jsonable(JobSpec, json.loads(job.spec_json))
            for t in job.targets:
                if t.agent_id != agent_id:
                    continue
                if t.state is JobState.QUEUED:
                    await self._deliver(job.job_id, agent_id, spec)
                elif t.delivered_epoch and t.delivered_epoch != epoch:
                    await asyncio.to_thread(
                        self._store.set_target_state,
                        job.job_id,
                        agent_id,
                        JobState.FAILED,
                        "agent restarted (new epoch) before the job finished",
                        self._clock_ns(),
                    )

    async def get(self, job_id: str) -> JobRow | None:
        """The job with its targets, or None."""
        return await asyncio.to_thread(self._store.get_job, job_id)
