"""The uplink: registers with the collector and streams spooled messages, resending everything
unacked after any reconnect, so nothing is lost across network cuts or collector restarts.

* ``grpc.aio`` client with keepalive (``grpc.http2.ping_timeout_ms`` set, so a black-holed
  connection is noticed in seconds, not after TCP's ~65 s) and an application-level ack
  timeout: when messages are in flight (or a write waits) and no ack has moved forward for
  that long, the stream is torn down. Acks that keep coming while writes wait are
  backpressure from a busy collector, not a dead path: the agent waits rather than resending
  into the overload.
  Connecting is bounded too (``connect_timeout_s`` for Register), so a path that black-holes
  while the agent reconnects is noticed as fast as one that does so mid-stream.
* At most ``window`` messages in flight (32: a backlog replays as fast as the collector acks,
  several hundred messages a second, while new telemetry queues behind it); acks delete from
  the spool. Messages are written as the bytes the spool holds (no parse and re-serialise).
* Reconnect with full-jitter exponential backoff (1 s base, 10 s cap), reset by every
  connection that got as far as the collector's first ack; never sooner than the collector's
  ``retry-after-ms`` trailer asks. After ``UNAUTHENTICATED`` / ``PERMISSION_DENIED`` wait at
  least 60 s (a misconfiguration must not hot-loop) — the spool keeps everything meanwhile.
* A message larger than the collector's ``max_message_bytes`` would be refused for ever: it is
  replaced in the spool by a tombstone (counted) before it is sent.
* ``Rejection`` s are counted and logged once per reason (a clock far ahead of the collector's
  shows up as ``timestamp_future``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from flopwatt.agent.spool import Spool, SpooledMessage
from flopwatt.channel import ClientCredentials, aio_channel
from flopwatt.records import Command, RegisterRequest, Rejection
from flopwatt.v1 import agent_pb2, agent_pb2_grpc
from flopwatt.wire import (
    WireError,
    collector_message_from_proto,
    register_request_to_proto,
    register_response_from_proto,
)

log = logging.getLogger(__name__)

AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

UPLINK_WINDOW = 32
"""Messages sent and not yet acked, at most (the spool never drops these: see ``Spool``)."""

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""The collector's message limit when it does not say (older collectors)."""

STREAM_METHOD = "/flopwatt.v1.AgentService/Stream"
RETRY_AFTER_METADATA = "retry-after-ms"
"""Trailing metadata in which the collector asks for a delay before the next attempt (ms)."""


class AckTimeoutError(RuntimeError):
    """The collector stopped acking: the connection is presumed dead."""


@dataclass
class UplinkStats:
    """Counters for the agent's self-metrics."""

    connected: bool = False
    collector: str = ""
    """The collector address the current (or next) connection goes to."""
    reconnects: int = 0
    sent_messages: int = 0
    acked_messages: int = 0
    last_error: str = ""
    last_delay_s: float = 0.0
    delays_s: list[float] = field(default_factory=list)
    rejected_messages: int = 0
    """Messages the collector consumed as rejected (see ``Rejection``)."""
    rejected_samples: dict[str, int] = field(default_factory=dict)
    """Samples the collector did not store, by reason."""


def backoff_delay(
    attempt: int, rng: random.Random, *, base_s: float = 1.0, cap_s: float = 10.0
) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base·2^attempt)]."""
    return rng.uniform(0.0, min(cap_s, base_s * 2.0**attempt))


def retry_after_s(exc: grpc.aio.AioRpcError) -> float:
    """The delay the collector asked for in the ``retry-after-ms`` trailer (0 when none)."""
    for key, value in exc.trailing_metadata() or ():
        if key == RETRY_AFTER_METADATA:
            try:
                return max(0.0, int(value) / 1000)
            except (TypeError, ValueError):
                return 0.0
    return 0.0


class Uplink:
    """Sends the spool to the collector (see module docstring).

    Args:
        creds: where the collector is and how to authenticate.
        spool: the messages to deliver.
        epoch: this run's epoch (older epochs in the spool are delivered first).
        register: what to send in ``Register`` (re-sent on every connection).
        on_command: called (on the event loop) with each command from the collector.
        on_settings: called with the sample interval the collector asks for at registration.
        window: messages in flight, at most.
        ack_timeout_s: the oldest message in flight must be acked within this (s), and every
            write must be taken by the transport within it.
        connect_timeout_s: deadline of ``Register`` (s); bounds how long a dead path goes
            unnoticed while connecting.
        backoff_base_s, backoff_cap_s: reconnect backoff (s).
        auth_backoff_s: the least wait after the collector refused the credentials (s).
        rng: jitter source.
    """

    def __init__(
        self,
        creds: ClientCredentials,
        spool: Spool,
        epoch: int,
        register: RegisterRequest,
        on_command: Callable[[Command], None],
        *,
        on_settings: Callable[[float], None] | None = None,
        window: int = UPLINK_WINDOW,
        ack_timeout_s: float = 15.0,
        connect_timeout_s: float = 10.0,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 10.0,
        auth_backoff_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self._creds = creds
        self._targets = creds.targets
        self._target = 0
        """Index of the collector address the next connection goes to."""
        self._spool = spool
        self._epoch = epoch
        self._register = register
        self._on_command = on_command
        self._on_settings = on_settings
        self._window = window
        self._ack_timeout_s = ack_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._auth_backoff_s = auth_backoff_s
        self._rng = rng or random.Random()
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        self._logged_reasons: set[str] = set()
        self.stats = UplinkStats(collector=self._targets[0])

    def wake(self) -> None:
        """Thread-safe: new messages are in the spool."""
        if self._loop is not None and self._wakeup is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    def _failed_backoff(self, established: bool, attempt: int) -> float:
        """The wait after a failed connection: short after one that worked; otherwise growing
        with every round of failed attempts over all the collector addresses (the next replica
        is tried without waiting for the first one's backoff to grow)."""
        return self._backoff(0 if established else attempt // len(self._targets))

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(
            attempt, self._rng, base_s=self._backoff_base_s, cap_s=self._backoff_cap_s
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set (then return after the current attempt ends)."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        attempt = 0
        while not stop.is_set():
            established = [False]
            try:
                await self._connection(stop, established)
                delay = 0.0 if stop.is_set() else self._backoff(0)
            except grpc.aio.AioRpcError as exc:
                self.stats.last_error = f"{exc.code().name}: {exc.details()}"
                asked = retry_after_s(exc)
                if exc.code() in AUTH_CODES:
                    log.error(
                        "collector refused our credentials (%s); retrying in ≥ %.0f s; "
                        "the spool keeps everything",
                        self.stats.last_error,
                        self._auth_backoff_s,
                    )
                    delay = max(self._auth_backoff_s, self._backoff(attempt))
                else:
                    log.warning("uplink: %s", self.stats.last_error)
                    delay = self._failed_backoff(established[0], attempt)
                if asked > 0:
                    # Never sooner than asked; spread by up to half again so that the agents
                    # a collector turned away together do not all come back at once.
                    delay = max(delay, asked * self._rng.uniform(1.0, 1.5))
            except (AckTimeoutError, WireError, OSError) as exc:
                self.stats.last_error = str(exc)
                log.warning("uplink: %s", exc)
                delay = self._failed_backoff(established[0], attempt)
            except Exception as exc:
                # grpc.aio raises asyncio.InvalidStateError for a write to a call that ended a
                # moment before (a collector killed mid-stream). Whatever one connection
                # throws, ending this task would leave the agent spooling for ever without
                # reconnecting: count it as a failed connection and try again.
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("uplink: connection failed (%s); reconnecting", self.stats.last_error)
                delay = self._failed_backoff(established[0], attempt)
            self.stats.connected = False
            if stop.is_set():
                break
            # A connection that got as far as the collector's first ack resets the backoff.
            attempt = 0 if established[0] else attempt + 1
            if len(self._targets) > 1:
                # Replicas share one store: the next one continues this epoch exactly once.
                self._target = (self._target + 1) % len(self._targets)
                self.stats.collector = self._targets[self._target]
                log.info("uplink: trying collector %s next", self.stats.collector)
            self.stats.reconnects += 1
            self.stats.last_delay_s = delay
            self.stats.delays_s.append(delay)
            if len(self.stats.delays_s) > 1000:
                del self.stats.delays_s[:500]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _connection(self, stop: asyncio.Event, established: list[bool]) -> None:
        """One connection: register, stream until error or stop. Sets ``established[0]`` once
        the collector acked the hello."""
        metadata = self._creds.metadata()
        async with aio_channel(self._creds, target=self._targets[self._target]) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
            reply = await stub.Register(
                register_request_to_proto(self._register),
                metadata=metadata,
                timeout=self._connect_timeout_s,
            )
            response = register_response_from_proto(reply)
            self._max_message_bytes = response.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
            if self._on_settings is not None:
                self._on_settings(response.settings.sample_interval_s)
            # Spooled messages are already serialised: written as they are.
            call = channel.stream_stream(
                STREAM_METHOD,
                request_serializer=_identity,
                response_deserializer=agent_pb2.CollectorMessage.FromString,
            )(metadata=metadata)
            try:
                await self._stream(call, stop, established)
            finally:
                call.cancel()

    async def _write(
        self, call: grpc.aio.StreamStreamCall, message: bytes, progress: _Progress
    ) -> None:
        """Write one serialised message; give up when the collector shows no progress.

        A write that waits on HTTP/2 flow control while acks keep arriving is backpressure
        (the collector is busy and reads as fast as it commits): it waits. One that waits
        with no ack for the ack timeout — a collector that stopped reading its stream, or a
        path that black-holes traffic — ends the connection; the ack timeout would otherwise
        only be checked between writes.

        Raises:
            AckTimeoutError: no progress for the ack timeout while the write waited.
        """
        write = asyncio.ensure_future(call.write(message))
        while True:
            remaining = progress.deadline(self._ack_timeout_s) - time.monotonic()
            if remaining <= 0:
                write.cancel()
                raise AckTimeoutError(
                    f"a message was not accepted for sending within {self._ack_timeout_s:g} s "
                    "without any ack meanwhile (the collector is not reading its stream)"
                )
            done, _ = await asyncio.wait({write}, timeout=remaining)
            if done:
                write.result()
                return

    def _on_rejection(self, r: Rejection) -> None:
        if r.message_rejected:
            self.stats.rejected_messages += 1
            log.warning(
                "collector rejected message %d/%d (consumed, not stored): %s",
                r.epoch,
                r.sequence,
                r.detail,
            )
            return
        for s in r.samples:
            self.stats.rejected_samples[s.reason] = (
                self.stats.rejected_samples.get(s.reason, 0) + s.samples
            )
            if s.reason in self._logged_reasons:
                continue
            self._logged_reasons.add(s.reason)
            hint = (
                ": this node's clock is more than 10 minutes ahead of the collector's (check NTP)"
                if s.reason == "timestamp_future"
                else ""
            )
            log.warning(
                "collector rejected %d samples of %s as %s%s (logged once per reason; the "
                "agent's self-metrics count them all)",
                s.samples,
                s.device_uuid,
                s.reason,
                hint,
            )

    async def _too_large(self, m: SpooledMessage) -> SpooledMessage:
        """``m``, or the tombstone that replaces it when it exceeds the collector's limit."""
        if len(m.payload) <= self._max_message_bytes:
            return m
        tombstone = await asyncio.to_thread(self._spool.replace_too_large, m)
        log.error(
            "message %d/%d (%s, %d bytes) exceeds the collector's limit of %d bytes; replaced "
            "by a tombstone (%d samples counted as dropped)",
            m.epoch,
            m.sequence,
            m.kind,
            len(m.payload),
            self._max_message_bytes,
            m.samples,
        )
        return tombstone

    async def _stream(
        self, call: grpc.aio.StreamStreamCall, stop: asyncio.Event, established: list[bool]
    ) -> None:
        assert self._wakeup is not None
        epochs = [e for e in self._spool.epochs() if e != self._epoch]
        progress = _Progress(time.monotonic())
        await self._write(
            call,
            agent_pb2.AgentMessage(
                hello=agent_pb2.StreamHello(
                    agent_id=self._register.node.hostname, epoch=self._epoch, pending_epochs=epochs
                )
            ).SerializeToString(),
            progress,
        )
        acked: dict[int, int] = {}
        sent: dict[int, int] = {}
        in_flight: dict[tuple[int, int], float] = {}
        ready = asyncio.Event()

        async def read() -> None:
            async for raw in call:
                msg = collector_message_from_proto(raw)
                if isinstance(msg, Command):
                    self._on_command(msg)
                    continue
                if isinstance(msg, Rejection):
                    self._on_rejection(msg)
                    continue
                if not established[0]:
                    established[0] = True
                    self.stats.connected = True
                if msg.committed_through > acked.get(msg.epoch, -1):
                    progress.at = time.monotonic()
                acked[msg.epoch] = max(acked.get(msg.epoch, 0), msg.committed_through)
                done = await asyncio.to_thread(self._spool.ack, msg.epoch, msg.committed_through)
                self.stats.acked_messages += done
                for key in [
                    k for k in in_flight if k[0] == msg.epoch and k[1] <= msg.committed_through
                ]:
                    del in_flight[key]
                ready.set()
                self._wakeup.set() if self._wakeup is not None else None

        reader = asyncio.create_task(read())
        order = [*epochs, self._epoch]
        try:
            while not stop.is_set():
                if reader.done():
                    reader.result()  # raises the stream's error, if any
                    return  # the collector ended the stream normally: reconnect
                progressed = False
                for epoch in order:
                    if epoch not in acked and epoch != self._epoch:
                        continue  # wait for the hello's ack of this epoch before resending
                    cursor = max(sent.get(epoch, 0), acked.get(epoch, 0))
                    room = self._window - len(in_flight)
                    if room <= 0:
                        break
                    batch = await asyncio.to_thread(self._spool.pending, epoch, cursor, room)
                    for m in batch:
                        m = await self._too_large(m)
                        if not in_flight:  # nothing was waiting for an ack: a fresh start
                            progress.at = time.monotonic()
                        await self._write(call, m.payload, progress)
                        sent[epoch] = m.sequence
                        in_flight[(epoch, m.sequence)] = time.monotonic()
                        self.stats.sent_messages += 1
                        progressed = True
                if not established[0] and time.monotonic() > progress.deadline(self._ack_timeout_s):
                    raise AckTimeoutError(
                        f"the collector did not answer the hello within {self._ack_timeout_s:g} s"
                    )
                if in_flight and time.monotonic() > progress.deadline(self._ack_timeout_s):
                    raise AckTimeoutError(
                        f"no ack within {self._ack_timeout_s:g} s with {len(in_flight)} "
                        "messages in flight"
                    )
                if not progressed:
                    self._wakeup.clear()
                    ready.clear()
                    waiters = [
                        asyncio.ensure_future(self._wakeup.wait()),
                        asyncio.ensure_future(stop.wait()),
                        reader,
                    ]
                    await asyncio.wait(waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                    for w in waiters[:2]:
                        w.cancel()
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)


def _identity(message: bytes) -> bytes:
    return message


class _Progress:
    """When the collector last showed progress on this stream (monotonic s): the hello, an ack
    that moved forward, or a first message sent with nothing else awaiting an ack."""

    def __init__(self, at: float) -> None:
        self.at = at

    def deadline(self, timeout_s: float) -> float:
        """When waiting without progress becomes a dead connection."""
        return self.at + timeout_s
