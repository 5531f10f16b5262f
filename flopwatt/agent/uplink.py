"""The uplink: registers with the collector and streams spooled messages, resending everything
unacked after any reconnect, so nothing is lost across network cuts or collector restarts.

* ``grpc.aio`` client with keepalive (``grpc.http2.ping_timeout_ms`` set, so a black-holed
  connection is noticed in seconds, not after TCP's ~65 s) and an application-level ack
  timeout: if the oldest message in flight is not acked in time, the stream is torn down.
* At most ``window`` messages in flight; acks delete from the spool.
* Reconnect with full-jitter exponential backoff (1 s base, 30 s cap); after
  ``UNAUTHENTICATED`` / ``PERMISSION_DENIED`` wait at least 60 s (a misconfiguration must not
  hot-loop) — the spool keeps everything meanwhile.
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

from flopwatt.agent.spool import Spool
from flopwatt.channel import ClientCredentials, aio_channel
from flopwatt.records import Command, RegisterRequest
from flopwatt.v1 import agent_pb2, agent_pb2_grpc
from flopwatt.wire import (
    WireError,
    collector_message_from_proto,
    register_request_to_proto,
    register_response_from_proto,
)

log = logging.getLogger(__name__)

AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

UPLINK_WINDOW = 8
"""Messages sent and not yet acked, at most (the spool never drops these: see ``Spool``)."""


class AckTimeoutError(RuntimeError):
    """The collector stopped acking: the connection is presumed dead."""


@dataclass
class UplinkStats:
    """Counters for the agent's self-metrics."""

    connected: bool = False
    reconnects: int = 0
    sent_messages: int = 0
    acked_messages: int = 0
    last_error: str = ""
    last_delay_s: float = 0.0
    delays_s: list[float] = field(default_factory=list)


def backoff_delay(
    attempt: int, rng: random.Random, *, base_s: float = 1.0, cap_s: float = 30.0
) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base·2^attempt)]."""
    return rng.uniform(0.0, min(cap_s, base_s * 2.0**attempt))


class Uplink:
    """Sends the spool to the collector (see module docstring).

    Args:
        creds: where the collector is and how to authenticate.
        spool: the messages to deliver.
        epoch: this run's epoch (older epochs in the spool are delivered first).
        register: what to send in ``Register`` (re-sent on every connection).
        on_command: called (on the event loop) with each command from the collector.
        on_settings: called with the sample interval the collector asks for at registration.
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
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 30.0,
        auth_backoff_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self._creds = creds
        self._spool = spool
        self._epoch = epoch
        self._register = register
        self._on_command = on_command
        self._on_settings = on_settings
        self._window = window
        self._ack_timeout_s = ack_timeout_s
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._auth_backoff_s = auth_backoff_s
        self._rng = rng or random.Random()
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = UplinkStats()

    def wake(self) -> None:
        """Thread-safe: new messages are in the spool."""
        if self._loop is not None and self._wakeup is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set (then return after the current attempt ends)."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        attempt = 0
        while not stop.is_set():
            progressed = False
            try:
                progressed = await self._connection(stop)
                delay = (
                    0.0
                    if stop.is_set()
                    else backoff_delay(
                        0, self._rng, base_s=self._backoff_base_s, cap_s=self._backoff_cap_s
                    )
                )
            except grpc.aio.AioRpcError as exc:
                self.stats.last_error = f"{exc.code().name}: {exc.details()}"
                if exc.code() in AUTH_CODES:
                    log.error(
                        "collector refused our credentials (%s); retrying in ≥ %.0f s; "
                        "the spool keeps everything",
                        self.stats.last_error,
                        self._auth_backoff_s,
                    )
                    delay = max(
                        self._auth_backoff_s,
                        backoff_delay(
                            attempt,
                            self._rng,
                            base_s=self._backoff_base_s,
                            cap_s=self._backoff_cap_s,
                        ),
                    )
                else:
                    log.warning("uplink: %s", self.stats.last_error)
                    delay = backoff_delay(
                        attempt, self._rng, base_s=self._backoff_base_s, cap_s=self._backoff_cap_s
                    )
            except (AckTimeoutError, WireError, OSError) as exc:
                self.stats.last_error = str(exc)
                log.warning("uplink: %s", exc)
                delay = backoff_delay(
                    attempt, self._rng, base_s=self._backoff_base_s, cap_s=self._backoff_cap_s
                )
            self.stats.connected = False
            if stop.is_set():
                break
            attempt = 0 if progressed else attempt + 1
            self.stats.reconnects += 1
            self.stats.last_delay_s = delay
            self.stats.delays_s.append(delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _connection(self, stop: asyncio.Event) -> bool:
        """One connection: register, stream until error or stop. Returns whether any message
        was acked (a healthy connection resets the backoff)."""
        metadata = self._creds.metadata()
        acked_before = self.stats.acked_messages
        async with aio_channel(self._creds) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
            reply = await stub.Register(
                register_request_to_proto(self._register),
                metadata=metadata,
                timeout=max(5.0, 2 * self._ack_timeout_s),
            )
            settings = register_response_from_proto(reply).settings
            if self._on_settings is not None:
                self._on_settings(settings.sample_interval_s)
            call = stub.Stream(metadata=metadata)
            try:
                await self._stream(call, stop)
            finally:
                call.cancel()
        return self.stats.acked_messages > acked_before

    async def _write(
        self, call: grpc.aio.StreamStreamCall, message: agent_pb2.AgentMessage
    ) -> None:
        """Write one message, bounded by the ack timeout.

        Raises:
            AckTimeoutError: the transport did not take the message in time. A collector that
                stops reading its stream (wedged, or behind a path that black-holes traffic)
                leaves a write waiting on HTTP/2 flow control for ever, and the ack timeout is
                only checked between writes.
        """
        try:
            await asyncio.wait_for(call.write(message), self._ack_timeout_s)
        except TimeoutError:
            raise AckTimeoutError(
                f"a message was not accepted for sending within {self._ack_timeout_s:g} s "
                "(the collector is not reading its stream)"
            ) from None

    async def _stream(self, call: grpc.aio.StreamStreamCall, stop: asyncio.Event) -> None:
        assert self._wakeup is not None
        epochs = [e for e in self._spool.epochs() if e != self._epoch]
        await self._write(
            call,
            agent_pb2.AgentMessage(
                hello=agent_pb2.StreamHello(
                    agent_id=self._register.node.hostname, epoch=self._epoch, pending_epochs=epochs
                )
            ),
        )
        self.stats.connected = True
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
                        await self._write(call, agent_pb2.AgentMessage.FromString(m.payload))
                        sent[epoch] = m.sequence
                        in_flight[(epoch, m.sequence)] = time.monotonic()
                        self.stats.sent_messages += 1
                        progressed = True
                if in_flight and time.monotonic() - min(in_flight.values()) > self._ack_timeout_s:
                    raise AckTimeoutError(
                        f"no ack for {len(in_flight)} messages within {self._ack_timeout_s:g} s"
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
