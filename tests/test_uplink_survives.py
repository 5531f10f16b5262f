"""The uplink outlives anything one connection throws.

grpc.aio raises ``asyncio.InvalidStateError`` ("RPC already finished") when a write reaches a
call that ended a moment before — the race a collector killed mid-stream sets up. The uplink
caught gRPC errors, timeouts and OSError but not that: the exception ended its task, and the
agent kept sampling into its spool without ever reconnecting (one agent of 20 in the fault
suite's collector-kill case kept 52 unacked messages). Injected here on the first connection,
against a real collector: the uplink must count it as a failed connection, reconnect, and
deliver everything."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from flopwatt.agent.uplink import Uplink
from tests.collector_helpers import collector
from tests.test_agent_e2e import Produced, assert_exactly_once, make_agent, run_agents, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "fault",
    [
        asyncio.InvalidStateError("RPC already finished."),
        RuntimeError("an unexpected error inside one connection"),
    ],
)
async def test_an_unexpected_error_in_one_connection_is_a_reconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Exception
) -> None:
    real = Uplink._connection
    failures = [0]

    async def failing_once(self: Uplink, *args: Any) -> None:
        if failures[0] == 0:
            failures[0] += 1
            await asyncio.sleep(0.2)  # a connection that ran a little, then broke
            raise fault
        await real(self, *args)

    monkeypatch.setattr(Uplink, "_connection", failing_once)
    async with collector(tmp_path) as c:
        agent = make_agent(tmp_path, "node-survives", c.grpc_address)
        produced = Produced(agent)
        stop, tasks = await run_agents([agent])
        await wait_for(
            lambda: agent.uplink.stats.acked_messages >= 5, 30, "acks after the failed connection"
        )
        assert not tasks[0].done()
        stop.set()
        await asyncio.gather(*tasks)
    assert failures[0] == 1
    assert agent.uplink.stats.reconnects >= 1
    assert type(fault).__name__ in agent.uplink.stats.last_error or agent.uplink.stats.connected
    assert_exactly_once(tmp_path / "collector.db", agent, produced)
