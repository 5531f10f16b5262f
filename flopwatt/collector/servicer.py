"""gRPC servicers: thin — authenticate, convert (``flopwatt.wire``), call ingest / jobs."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import grpc

from flopwatt.collector.auth import AuthConfig, Identity, identify
from flopwatt.collector.envelope import AgentEnvelope, read_envelope
from flopwatt.collector.health import StoreHealth
from flopwatt.collector.ingest import Ingest
from flopwatt.collector.jobs import (
    BadSelectorError,
    JobService,
    NoAgentsMatchedError,
    Selector,
)
from flopwatt.collector.session import END, Session, SessionRegistry, StreamAbort, unavailable
from flopwatt.collector.writer import BatchWriter
from flopwatt.jsonable import from_jsonable
from flopwatt.records import JobSpec, StreamHello
from flopwatt.store.base import JobRow
from flopwatt.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, jobs_pb2
from flopwatt.wire import (
    WireError,
    agent_message_from_proto,
    collector_message_to_proto,
    device_to_proto,
    job_spec_from_proto,
    job_spec_to_proto,
    node_to_proto,
    register_request_from_proto,
    register_response_to_proto,
)

log = logging.getLogger(__name__)


async def _identity(auth: AuthConfig, context: grpc.aio.ServicerContext) -> Identity:
    ident = identify(auth, context.invocation_metadata(), context.auth_context())
    if ident is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown credentials")
    assert ident is not None
    return ident


async def _check_hostname(
    ident: Identity, hostname: str, context: grpc.aio.ServicerContext
) -> None:
    if ident.admin:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED, "admin credentials cannot write as an agent"
        )
    if ident.hostname is not None and ident.hostname != hostname:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"credentials are for {ident.hostname!r}, not {hostname!r}",
        )


async def _abort(context: grpc.aio.ServicerContext, abort: StreamAbort) -> None:
    """End the call with ``abort``'s status and trailing metadata (raises)."""
    if abort.trailers:
        context.set_trailing_metadata(abort.trailers)
    await context.abort(abort.code, abort.details)


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """``flopwatt.v1.AgentService``."""

    def __init__(
        self,
        ingest: Ingest,
        writer: BatchWriter,
        sessions: SessionRegistry,
        jobs: JobService,
        auth: AuthConfig,
        health: StoreHealth,
    ) -> None:
        self._ingest = ingest
        self._writer = writer
        self._sessions = sessions
        self._jobs = jobs
        self._auth = auth
        self._health = health

    async def _refuse_unless_serving(self, context: grpc.aio.ServicerContext) -> None:
        """While the store cannot commit, turn agents away with UNAVAILABLE and a retry delay
        (their spools keep everything)."""
        if not self._health.serving:
            reason = self._health.view().reason
            await _abort(context, unavailable(f"the collector cannot commit now ({reason})"))

    async def Register(
        self,
        request: agent_pb2.RegisterRequest,
        context: grpc.aio.ServicerContext,
    ) -> agent_pb2.RegisterResponse:
        ident = await _identity(self._auth, context)
        try:
            req = register_request_from_proto(request)
        except WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises
        await _check_hostname(ident, req.node.hostname, context)
        await self._refuse_unless_serving(context)
        try:
            response = await self._ingest.register(req)
        except sqlite3.Error as exc:
            # The store the registration goes to cannot commit (disk full, locked): a state the
            # agent waits out, not an internal error.
            self._health.failed(f"{type(exc).__name__}: {exc}")
            await _abort(context, unavailable(f"the collector cannot commit now ({exc})"))
            raise  # unreachable: abort raises
        log.info(
            "registered %s (%d devices, epoch %d)", req.node.hostname, len(req.devices), req.epoch
        )
        return register_response_to_proto(response)

    async def Stream(
        self,
        request_iterator: AsyncIterator[AgentEnvelope],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[agent_pb2.CollectorMessage]:
        """The agent stream. Requests arrive as :class:`AgentEnvelope` (see
        :func:`agent_service_handler`), so telemetry is never parsed on the event loop."""
        ident = await _identity(self._auth, context)
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            return
        if first.kind == "malformed":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, first.error)
            return
        try:
            hello = agent_message_from_proto(first.message()).payload
        except WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        if not isinstance(hello, StreamHello):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first stream message must be hello"
            )
            return
        await _check_hostname(ident, hello.agent_id, context)
        await self._refuse_unless_serving(context)
        if self._ingest.state.agent(hello.agent_id) is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"agent {hello.agent_id!r} must Register first"
            )
            return
        session = Session(
            hello.agent_id,
            hello,
            self._ingest,
            self._writer,
            intake=self._sessions.intake,
            clock_ns=self._ingest.clock_ns,
        )
        self._sessions.open(session)
        state = self._ingest.state
        state.set_connected(hello.agent_id, True, self._ingest.clock_ns())
        try:
            await self._jobs.on_hello(hello.agent_id, hello.epoch)
            async for item in session.run(request_iterator):
                if isinstance(item, StreamAbort):
                    await _abort(context, item)
                    return
                if item is END:
                    return
                yield collector_message_to_proto(item)  # type: ignore[arg-type]
        finally:
            self._sessions.close(session)
            state.set_connected(hello.agent_id, False, self._ingest.clock_ns())


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """``flopwatt.v1.AdminService`` (the interceptor has already checked the admin token)."""

    def __init__(self, ingest: Ingest, jobs: JobService, *, watch_poll_s: float = 0.25) -> None:
        self._ingest = ingest
        self._jobs = jobs
        self._watch_poll_s = watch_poll_s

    async def ListAgents(
        self,
        request: admin_pb2.ListAgentsRequest,
        context: grpc.aio.ServicerContext,
    ) -> admin_pb2.ListAgentsResponse:
        snap = self._ingest.state.snapshot()
        agents = []
        for agent_id, a in sorted(snap.agents.items()):
            devices = [
                admin_pb2.AgentDevice(
                    device=device_to_proto(snap.devices[u].info),
                    sku=snap.devices[u].sku or "",
                    sku_match=snap.devices[u].sku_match,
                )
                for u in a.device_uuids
                if u in snap.devices
            ]
            agents.append(
                admin_pb2.AgentSummary(
                    agent_id=agent_id,
                    node=node_to_proto(a.node),
                    devices=devices,
                    connected=a.connected,
                    last_seen_unix_ns=a.last_seen_unix_ns,
                    epoch=a.epoch,
                )
            )
        return admin_pb2.ListAgentsResponse(agents=agents)

    async def RunJob(
        self,
        request: admin_pb2.RunJobRequest,
        context: grpc.aio.ServicerContext,
    ) -> admin_pb2.RunJobResponse:
        sel = request.selector
        selector = Selector(tuple(sel.hostnames), tuple(sel.skus), sel.all)
        try:
            spec = job_spec_from_proto(request.spec)
            job_id, agents = await self._jobs.create(selector, spec)
        except NoAgentsMatchedError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise
        except (BadSelectorError, WireError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        return admin_pb2.RunJobResponse(job_id=job_id, agent_ids=agents)

    async def GetJob(
        self,
        request: admin_pb2.GetJobRequest,
        context: grpc.aio.ServicerContext,
    ) -> admin_pb2.JobInfo:
        job = await self._jobs.get(request.job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
            raise LookupError(request.job_id)
        return job_info_to_proto(job)

    async def WatchJob(
        self,
        request: admin_pb2.GetJobRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[admin_pb2.JobInfo]:
        last: Any = None
        while True:
            job = await self._jobs.get(request.job_id)
            if job is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
                return
            info = job_info_to_proto(job)
            if info != last:
                yield info
                last = info
            if info.finished:
                return
            await asyncio.sleep(self._watch_poll_s)


def job_info_to_proto(job: JobRow) -> admin_pb2.JobInfo:
    """A stored job as the admin API's ``JobInfo``."""
    spec = from_jsonable(JobSpec, json.loads(job.spec_json))
    targets = [
        admin_pb2.JobTarget(
            agent_id=t.agent_id,
            state=jobs_pb2.JobState.Name(int(t.state)),
            message=t.message,
            updated_unix_ns=t.updated_unix_ns,
            results=t.results,
        )
        for t in job.targets
    ]
    return admin_pb2.JobInfo(
        job_id=job.job_id,
        spec=job_spec_to_proto(spec),
        requested_unix_ns=job.requested_unix_ns,
        targets=targets,
        finished=bool(job.targets) and all(t.state.final for t in job.targets),
    )


def agent_service_handler(servicer: AgentServicer) -> grpc.GenericRpcHandler:
    """``flopwatt.v1.AgentService`` as the generated code registers it, except that ``Stream``
    requests are read with :func:`~flopwatt.collector.envelope.read_envelope` instead of being
    parsed into ``AgentMessage`` objects."""
    handlers = {
        "Register": grpc.unary_unary_rpc_method_handler(
            servicer.Register,
            request_deserializer=agent_pb2.RegisterRequest.FromString,
            response_serializer=agent_pb2.RegisterResponse.SerializeToString,
        ),
        "Stream": grpc.stream_stream_rpc_method_handler(
            servicer.Stream,
            request_deserializer=read_envelope,
            response_serializer=agent_pb2.CollectorMessage.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler("flopwatt.v1.AgentService", handlers)
