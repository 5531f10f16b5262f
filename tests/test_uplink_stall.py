"""The uplink against a collector that accepts a stream and then stops reading it (a wedged
process, or a path that black-holes traffic once HTTP/2 flow control has run out): the agent's
next write would wait forever, and the stream's ack timeout is only checked between writes. The
uplink must give up on such a stream within its ack timeout and reconnect, spool intact.

A real grpc.aio server on loopback whose ``Stream`` handler never reads; the messages are larger
than the stream's flow-control window, so the stall is the transport's own, not a simulation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from flopwatt.agent.spool import Spool, SpooledMessage
from flopwatt.agent.uplink import Uplink
from flopwatt.channel import ClientCredentials
from flopwatt.records import NodeInfo, RegisterRequest
from flopwatt.v1 import agent_pb2, telemetry_pb2

EPOCH = 77
MESSAGES = 8
PAYLOAD_SAMPLES = 400_000  # 3.2 MB of timestamps per message: far beyond a stream window


async def _register(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return agent_pb2.RegisterResponse(agent_id="node-stall").SerializeToString()


async def _never_read(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    await asyncio.sleep(3600)  # accept the stream, read nothing, answer nothing
    yield b""  # pragma: no cover - never reached


@pytest.fixture
async def wedged_collector() -> AsyncIterator[str]:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "flopwatt.v1.AgentService",
        {
            "Register": grpc.unary_unary_rpc_method_handler(_register),
            "Stream": grpc.stream_stream_rpc_method_handler(_never_read),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def _big_message(seq: int) -> bytes:
    series = telemetry_pb2.DeviceSeries(
        device_uuid="GPU-0", timestamp_unix_ns=b"\x01" * (8 * PAYLOAD_SAMPLES)
    )
    return agent_pb2.AgentMessage(
        epoch=EPOCH, sequence=seq, telemetry=telemetry_pb2.TelemetryBatch(series=[series])
    ).SerializeToString()


async def test_a_stream_that_stops_taking_writes_is_abandoned_and_retried(
    tmp_path: Path, wedged_collector: str
) -> None:
    spool = Spool(tmp_path / "spool.db")
    for seq in range(1, MESSAGES + 1):
        spool.append(SpooledMessage(EPOCH, seq, "telemetry", _big_message(seq), PAYLOAD_SAMPLES))
    uplink = Uplink(
        ClientCredentials(wedged_collector),
        spool,
        EPOCH,
        RegisterRequest(NodeInfo("node-stall"), (), EPOCH),
        on_command=lambda _c: None,
        ack_timeout_s=1.0,
        backoff_base_s=0.05,
        backoff_cap_s=0.1,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(uplink.run(stop))
    started = time.monotonic()
    try:
        deadline = started + 30
        while uplink.stats.reconnects < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        took: Any = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert uplink.stats.reconnects >= 2, (
        f"the uplink stayed on a stream that took no writes for {took:.0f} s "
        f"(last error: {uplink.stats.last_error!r})"
    )
    assert "not accepted for sending" in uplink.stats.last_error
    assert uplink.stats.acked_messages == 0
    assert spool.stats().messages == MESSAGES  # nothing was acked, so nothing left the spool
    spool.close()
