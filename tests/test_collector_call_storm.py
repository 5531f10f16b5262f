"""A storm of calls while the collector's event loop is busy: every call is served.

gRPC holds calls that arrived and are not yet taken up by the event loop; past 1,000 of them
(its default) it cancels new ones at random before any handler runs, so a thousand agents
reconnecting to a busy collector lost a third of their Register calls (CANCELLED). The
collector raises that limit (``server_options``). Here 1,500 Register calls arrive at once
from another process while the collector's loop spends most of its time busy.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from tests.collector_helpers import collector

pytestmark = pytest.mark.slow

CLIENT = r"""
import asyncio, json, sys, grpc
from flopwatt.v1 import agent_pb2, agent_pb2_grpc, common_pb2

async def main(target, n):
    channels = [grpc.aio.insecure_channel(target) for _ in range(15)]
    codes = {}

    async def one(i):
        stub = agent_pb2_grpc.AgentServiceStub(channels[i % len(channels)])
        request = agent_pb2.RegisterRequest(
            node=common_pb2.NodeInfo(hostname=f"storm-{i:04d}", agent_version="t",
                                     device_backend="sim"),
            devices=[common_pb2.DeviceInfo(uuid=f"GPU-storm-{i:04d}", name="NVIDIA H100 80GB HBM3",
                                           kind=common_pb2.DEVICE_KIND_GPU)],
            epoch=1 + i)
        try:
            await stub.Register(request, timeout=60)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        codes[code] = codes.get(code, 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    for ch in channels:
        await ch.close()
    print(json.dumps(codes))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def _busy_loop(stop: asyncio.Event) -> None:
    """Keeps the event loop ~90 % busy: 9 ms of work, then a turn for everything else."""
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < 0.009:
            pass
        await asyncio.sleep(0.001)


async def test_a_call_storm_on_a_busy_collector_is_served_not_cancelled(tmp_path: Path) -> None:
    async with collector(tmp_path) as c:
        stop = asyncio.Event()
        burner = asyncio.create_task(_busy_loop(stop))
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CLIENT,
                c.grpc_address,
                "1500",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            stop.set()
            await burner
        assert proc.returncode == 0, err.decode()
        codes = json.loads(out.decode().strip().splitlines()[-1])
        assert codes == {"OK": 1500}
        assert len(c.store.query("SELECT agent_id FROM agents")) == 1500
