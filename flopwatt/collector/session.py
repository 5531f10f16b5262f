"""One agent's open stream: ordered, pipelined ingest with acks only after commit.

A session reads messages, checks each sequence against what is already committed for its epoch,
submits writes to the single writer without waiting (so a reconnecting agent's backlog streams
at full speed), and acks — per epoch, the highest contiguous committed sequence — as commits
land. A message that is an AgentMessage but cannot be used (a payload that does not decode, a
result for a device the agent never registered) is recorded as rejected — its sequence is
consumed and a resend is a duplicate, not a stall — and the agent is told with a ``Rejection``
before the ack that covers it, as it is of samples validation left out; the stream goes on.
Protocol violations end the stream (a gap: ``FAILED_PRECONDITION``; bytes that are not an
AgentMessage, a second hello, a zero epoch or sequence: ``INVALID_ARGUMENT``), and so does a
commit that fails (``UNAVAILABLE`` with a retry delay: nothing after the last ack is acked, the
agent resends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import grpc
from google.protobuf.message import DecodeError

from flopwatt.collector.envelope import AgentEnvelope
from flopwatt.collector.health import RETRY_AFTER_METADATA, RETRY_AFTER_S
from flopwatt.collector.ingest import Ingest, StructuralError
from flopwatt.collector.telemetry_prep import telemetry_digest
from flopwatt.collector.writer import BatchWriter
from flopwatt.records import (
    Ack,
    AgentMessage,
    CollectorPayload,
    Command,
    Rejection,
    SampleRejection,
    StreamHello,
)
from flopwatt.store.base import MessageWrite, Outcome, WriteOutcome
from flopwatt.v1 import agent_pb2
from flopwatt.wire import WireError, agent_message_from_proto

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64
"""Messages one stream may have submitted but not yet committed (backpressure on its agent)."""

MAX_QUEUED = 2000
"""Messages all streams together may have submitted but not yet committed: about two seconds
of the writer's capacity on a small machine. Beyond it the collector stops reading streams, so
HTTP/2 flow control holds the data in the agents' spools and every accepted message is acked
within seconds, however far the offered load exceeds the capacity. (Unbounded, a 2× overload
queued tens of thousands of messages in the collector, and the acks of the last ones came too
late for the agents' ack timeouts.)"""


@dataclass(frozen=True)
class StreamAbort:
    """Ends the stream with a gRPC status (and trailing metadata, e.g. a retry delay)."""

    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str], ...] = ()


def unavailable(details: str, retry_after_s: float = RETRY_AFTER_S) -> StreamAbort:
    """``UNAVAILABLE`` with the documented retry delay (``retry-after-ms`` trailer)."""
    return StreamAbort(
        grpc.StatusCode.UNAVAILABLE,
        f"{details}; retry in {retry_after_s:g} s",
        ((RETRY_AFTER_METADATA, str(round(retry_after_s * 1000))),),
    )


class _End:
    """Ends the stream normally."""


END = _End()
Outbound = CollectorPayload | StreamAbort | _End


def message_digest(raw: agent_pb2.AgentMessage) -> bytes:
    """Digest identifying a message's content (deterministic serialisation, BLAKE2b-128)."""
    return hashlib.blake2b(raw.SerializeToString(deterministic=True), digest_size=16).digest()


_Pending = tuple[MessageWrite, "asyncio.Future[WriteOutcome]"]
"""A submitted write and the future its commit resolves."""


class Session:
    """The collector side of one agent stream (see module docstring)."""

    def __init__(
        self,
        agent_id: str,
        hello: StreamHello,
        ingest: Ingest,
        writer: BatchWriter,
        *,
        intake: asyncio.Semaphore | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.agent_id = agent_id
        self.hello = hello
        self._ingest = ingest
        self._writer = writer
        self._clock_ns = clock_ns
        self._outbound: asyncio.Queue[Outbound] = asyncio.Queue()
        self._pending: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._intake = intake or asyncio.Semaphore(MAX_QUEUED)
        """Shared by every stream of the collector (see :data:`MAX_QUEUED`)."""
        self._expected: dict[int, int] = {}
        self._acked: dict[int, int] = {}
        self._reader: asyncio.Task[None] | None = None
        self._acker: asyncio.Task[None] | None = None
        self._closing = False
        self.token = uuid.uuid4().hex
        """This stream's token: it holds the agent's epochs in the store from its hello on
        (collector replicas fence an older stream of the agent with it)."""

    # --- public --------------------------------------------------------------------------

    def send(self, payload: CollectorPayload) -> None:
        """Queue a message (an ack or a command) to the agent."""
        self._outbound.put_nowait(payload)

    def send_command(self, command: Command) -> None:
        """Queue a command to the agent."""
        self.send(command)

    def end(self, abort: StreamAbort | None = None) -> None:
        """End the stream now (normally, or with a status) without draining."""
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
        self._outbound.put_nowait(abort or END)

    async def drain(self) -> None:
        """Stop reading, wait until every submitted message is committed and acked, then end
        the stream normally (graceful shutdown)."""
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._pending.put(None)
        if self._acker is not None:
            await asyncio.gather(self._acker, return_exceptions=True)
        self._outbound.put_nowait(END)

    async def run(self, requests: AsyncIterator[AgentEnvelope]) -> AsyncIterator[Outbound]:
        """Drive the stream: yields what to send until the stream should end."""
        epochs = {self.hello.epoch, *self.hello.pending_epochs}
        await asyncio.to_thread(
            self._ingest.store.claim_stream, self.agent_id, sorted(epochs), self.token
        )
        for epoch in sorted(epochs):
            committed = await asyncio.to_thread(
                self._ingest.store.committed_through, self.agent_id, epoch
            )
            self._expected[epoch] = committed + 1
            self._acked[epoch] = committed
            yield Ack(epoch, committed)
        self._reader = asyncio.create_task(self._read(requests), name=f"read-{self.agent_id}")
        self._acker = asyncio.create_task(self._ack_loop(), name=f"ack-{self.agent_id}")
        try:
            while True:
                item = await self._outbound.get()
                yield item
                if isinstance(item, (StreamAbort, _End)):
                    return
        finally:
            for task in (self._reader, self._acker):
                if task is not None and not task.done():
                    task.cancel()

    # --- reading -------------------------------------------------------------------------

    async def _read(self, requests: AsyncIterator[AgentEnvelope]) -> None:
        try:
            async for raw in requests:
                received = self._clock_ns()
                self._ingest.state.seen(self.agent_id, received)
                abort = await self._handle(raw, received)
                if abort is not None:
                    await self._pending.put(None)
                    if self._acker is not None:
                        await asyncio.gather(self._acker, return_exceptions=True)
                    self._outbound.put_nowait(abort)
                    return
            # The agent half-closed: finish acking what it sent, then end normally.
            await self._pending.put(None)
            if self._acker is not None:
                await asyncio.gather(self._acker, return_exceptions=True)
            self._outbound.put_nowait(END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a transport error: the agent will reconnect and resend
            log.info("stream from %s ended: %s", self.agent_id, exc)
            self._outbound.put_nowait(END)

    async def _handle(self, env: AgentEnvelope, received: int) -> StreamAbort | None:
        epoch, seq, kind = env.epoch, env.sequence, env.kind
        if kind == "malformed":
            return StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, env.error)
        if kind == "hello":
            return StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, "hello sent twice on one stream")
        if epoch == 0 or seq == 0:
            return StreamAbort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{kind} message needs a non-zero epoch and sequence",
            )
        expected = self._expected.get(epoch)
        if expected is None:
            committed = await asyncio.to_thread(
                self._ingest.store.committed_through, self.agent_id, epoch
            )
            expected = self._expected[epoch] = committed + 1
            self._acked.setdefault(epoch, committed)
        if seq > expected:
            return StreamAbort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"sequence gap in epoch {epoch}: expected {expected}, got {seq}; reconnect and "
                f"resend from the acked sequence + 1",
            )
        if kind == "telemetry":
            # Telemetry goes to the writer as the bytes it arrived as; the writer digests,
            # decodes and validates it. A resend is digested here (the store compares digests).
            if seq < expected:
                digest = telemetry_digest(env.payload)
                await self._submit(
                    MessageWrite(self.agent_id, epoch, seq, kind, digest, received, resend=True)
                )
                return None
            self._expected[epoch] = expected + 1
            await self._submit(
                MessageWrite(
                    self.agent_id, epoch, seq, kind, b"", received, telemetry_wire=env.payload
                )
            )
            return None
        try:
            raw = env.message()
        except DecodeError as exc:  # the envelope was fine, the payload inside is not
            digest = hashlib.blake2b(env.raw, digest_size=16).digest()
            base = MessageWrite(self.agent_id, epoch, seq, kind, digest, received)
            if seq < expected:
                await self._submit(replace(base, resend=True))
                return None
            self._expected[epoch] = expected + 1
            await self._reject(base, f"{kind} is not a valid message: {exc}")
            return None
        base = MessageWrite(self.agent_id, epoch, seq, kind, message_digest(raw), received)
        if seq < expected:
            # A resend: the store tells duplicate from conflict.
            await self._submit(replace(base, resend=True))
            return None
        self._expected[epoch] = expected + 1
        try:
            msg: AgentMessage = agent_message_from_proto(raw)
            write = self._ingest.prepare(self.agent_id, msg, base.digest, received)
        except (WireError, StructuralError) as exc:
            await self._reject(base, str(exc))
            return None
        await self._submit(write)
        return None

    async def _reject(self, base: MessageWrite, detail: str) -> None:
        """Record ``base`` as rejected (its sequence is consumed; the ack loop tells the agent
        with a ``Rejection``); the stream goes on."""
        await self._submit(
            self._ingest.rejection(
                self.agent_id,
                base.epoch,
                base.sequence,
                base.kind,
                base.digest,
                detail,
                base.received_unix_ns,
            )
        )

    async def _submit(self, write: MessageWrite) -> asyncio.Future[WriteOutcome]:
        write = replace(write, stream_owner=self.token)
        await self._slots.acquire()
        await self._intake.acquire()
        try:
            fut = self._writer.submit(write)
        except BaseException:
            self._slots.release()
            self._intake.release()
            raise
        # Released when the commit resolves, whether or not this stream is still there to
        # read the outcome (a stream that ended must not keep the collector's intake).
        fut.add_done_callback(self._release)
        await self._pending.put((write, fut))
        return fut

    def _release(self, _fut: object) -> None:
        self._slots.release()
        self._intake.release()

    # --- acking --------------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        # Acks are coalesced over the writes one commit resolved together, and sent as soon as
        # the next write in line is not committed yet. (Waiting for nothing to be in flight
        # starved an agent that sends faster than commits land of acks altogether.)
        dirty: set[int] = set()
        ahead: list[_Pending | None] = []  # at most one item, taken early to look at it
        while True:
            item = ahead.pop() if ahead else await self._pending.get()
            if item is None:
                self._flush_acks(dirty)
                return
            write, fut = item
            try:
                outcome = await fut
            except Exception as exc:
                # Nothing of this message (or after it) is acked; the agent resends it. The
                # store's health logs the episode once, not each stream.
                log.debug("store write for %s failed: %s", self.agent_id, exc)
                self._flush_acks(dirty)
                self._outbound.put_nowait(unavailable(f"the collector could not commit: {exc}"))
                if self._reader is not None:
                    self._reader.cancel()
                return
            if outcome.outcome is Outcome.SUPERSEDED:
                self._flush_acks(dirty)
                self._outbound.put_nowait(
                    StreamAbort(
                        grpc.StatusCode.ABORTED,
                        "superseded by a newer stream of this agent (on another collector "
                        "replica); this stream's messages from here on were not stored",
                    )
                )
                if self._reader is not None:
                    self._reader.cancel()
                return
            if outcome.outcome is Outcome.OUT_OF_ORDER:
                # An earlier message of this epoch did not commit (that failure ended this
                # stream already, or another stream's did): resend from the last ack.
                self._flush_acks(dirty)
                self._outbound.put_nowait(
                    unavailable(
                        f"epoch {write.epoch} sequence {write.sequence} was not stored: "
                        f"an earlier sequence is not committed; resend from "
                        f"{outcome.committed_through + 1}"
                    )
                )
                if self._reader is not None:
                    self._reader.cancel()
                return
            self._ingest.committed(write, outcome)
            if outcome.committed_through > self._acked.get(write.epoch, 0):
                self._acked[write.epoch] = outcome.committed_through
                dirty.add(write.epoch)
            rejection = _rejection(write, outcome)
            if rejection is not None:
                # Before the ack that covers it (acks are flushed after this).
                self._outbound.put_nowait(rejection)
                if rejection.message_rejected:
                    log.warning(
                        "rejected %s message %d/%d from %s: %s",
                        write.kind,
                        write.epoch,
                        write.sequence,
                        self.agent_id,
                        rejection.detail,
                    )
            with contextlib.suppress(asyncio.QueueEmpty):
                ahead.append(self._pending.get_nowait())
            if not ahead or ahead[0] is None or not ahead[0][1].done():
                self._flush_acks(dirty)

    def _flush_acks(self, dirty: set[int]) -> None:
        for epoch in sorted(dirty):
            self._outbound.put_nowait(Ack(epoch, self._acked[epoch]))
        dirty.clear()


def _rejection(write: MessageWrite, outcome: WriteOutcome) -> Rejection | None:
    """What to tell the agent about a consumed message that was not stored whole."""
    if outcome.outcome is Outcome.REJECTED:
        detail = outcome.rejected_detail or write.rejected_detail or "rejected"
        return Rejection(write.epoch, write.sequence, message_rejected=True, detail=detail)
    if outcome.outcome is Outcome.STORED and outcome.rejected_samples:
        return Rejection(
            write.epoch,
            write.sequence,
            samples=tuple(
                SampleRejection(uuid, reason, n)
                for (uuid, reason), n in sorted(outcome.rejected_samples.items())
            ),
        )
    return None


class SessionRegistry:
    """Open sessions by agent id; a new stream from an agent replaces its old one. Holds the
    intake limit all of them share (:data:`MAX_QUEUED`)."""

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self._sessions: dict[str, Session] = {}
        self.intake = asyncio.Semaphore(max_queued)

    def open(self, session: Session) -> None:
        """Register ``session``, ending any previous stream of the same agent."""
        old = self._sessions.get(session.agent_id)
        if old is not None:
            old.end(StreamAbort(grpc.StatusCode.ABORTED, "superseded by a newer stream"))
        self._sessions[session.agent_id] = session

    def close(self, session: Session) -> None:
        """Forget ``session`` if it is still the agent's current one."""
        if self._sessions.get(session.agent_id) is session:
            del self._sessions[session.agent_id]

    def get(self, agent_id: str) -> Session | None:
        """The agent's open session, if any."""
        return self._sessions.get(agent_id)

    def all(self) -> list[Session]:
        """Every open session."""
        return list(self._sessions.values())
