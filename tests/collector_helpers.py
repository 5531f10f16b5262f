"""Helpers for collector tests: a real collector on loopback port 0 with a real SQLite file, and
a raw-protobuf agent client (generated stubs only, not flopwatt's own wire adapters)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from flopwatt.collector.server import CollectorConfig, RunningCollector, run_server
from flopwatt.store.sqlite import SQLiteStore
from flopwatt.v1 import agent_pb2, agent_pb2_grpc, common_pb2

H100_NAME = "NVIDIA H100 80GB HBM3"
H100_PCI = 0x233010DE


def device_pb(
    uuid: str = "GPU-0000",
    *,
    name: str = H100_NAME,
    pci_device_id: int = H100_PCI,
    power_limit_w: float | None = 700.0,
    index: int = 0,
    simulated: bool = False,
    sim_sku: str = "",
) -> common_pb2.DeviceInfo:
    d = common_pb2.DeviceInfo(
        uuid=uuid,
        index=index,
        name=name,
        pci_device_id=pci_device_id,
        kind=common_pb2.DEVICE_KIND_GPU,
        simulated=simulated,
        sim_sku=sim_sku,
        capabilities=common_pb2.DeviceCapabilities(
            energy_counter=True, power_instant=True, throttle_reasons=True
        ),
    )
    if power_limit_w is not None:
        d.power_limit_enforced_w = power_limit_w
    return d


def register_pb(
    hostname: str, devices: Sequence[common_pb2.DeviceInfo], epoch: int
) -> agent_pb2.RegisterRequest:
    return agent_pb2.RegisterRequest(
        node=common_pb2.NodeInfo(hostname=hostname, agent_version="test", device_backend="sim"),
        devices=list(devices),
        epoch=epoch,
    )


def hello_pb(agent_id: str, epoch: int, pending: Iterable[int] = ()) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        hello=agent_pb2.StreamHello(agent_id=agent_id, epoch=epoch, pending_epochs=list(pending))
    )


def telemetry_pb(
    epoch: int,
    sequence: int,
    uuid: str = "GPU-0000",
    *,
    n: int = 10,
    t0_ns: int | None = None,
    power_w: Sequence[float] | float = 300.0,
    energy_j: Sequence[float] | None = None,
    throttle: int = 0,
) -> agent_pb2.AgentMessage:
    t0 = time.time_ns() if t0_ns is None else t0_ns
    m = agent_pb2.AgentMessage(epoch=epoch, sequence=sequence)
    s = m.telemetry.series.add(device_uuid=uuid)
    s.timestamp_unix_ns = le([t0 + i * 100_000_000 for i in range(n)], "timestamp_unix_ns")
    powers = [power_w] * n if isinstance(power_w, (int, float)) else list(power_w)
    s.power_instant_w = le(powers, "power_instant_w")
    # Energy is monotonic within an epoch (the collector rejects a decrease): by default it
    # continues from the previous sequence's samples.
    energy = energy_j if energy_j is not None else [float((sequence - 1) * n + i) for i in range(n)]
    s.energy_j = le(energy, "energy_j")
    s.sm_clock_mhz = le([1980] * n, "sm_clock_mhz")
    s.throttle_reasons = le([throttle] * n, "throttle_reasons")
    return m


def le(values: Sequence[float] | Sequence[int], column: str) -> bytes:
    """A column's values as the wire's packed little-endian array."""
    import numpy as np

    from flopwatt.records import COLUMN_DTYPES, TIMESTAMP_DTYPE

    dtype = TIMESTAMP_DTYPE if column == "timestamp_unix_ns" else COLUMN_DTYPES[column]
    return np.asarray(list(values)).astype(dtype).tobytes()


def heartbeat_pb(epoch: int, sequence: int) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        epoch=epoch, sequence=sequence, heartbeat=agent_pb2.Heartbeat(sent_unix_ns=time.time_ns())
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@asynccontextmanager
async def collector(
    tmp_path: Path, *, store: SQLiteStore | None = None, **overrides: Any
) -> AsyncIterator[RunningCollector]:
    """A real collector on loopback, free ports, SQLite file under ``tmp_path`` (or ``store``,
    a store on the configured ``db_path`` with something injected)."""
    settings: dict[str, Any] = {
        "grpc_listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "db_path": tmp_path / "collector.db",
        # The writer thread and in-process HTTP start faster; the child processes have their
        # own tests.
        "writer_process": False,
        "exporter_process": False,
        # Retention runs in a child too (tests/test_collector_retention.py).
        "maintenance": False,
    }
    config = CollectorConfig(**{**settings, **overrides})
    async with run_server(config, store=store) as running:
        yield running


class AgentStream:
    """A raw bidirectional stream: push messages, collect acks, see the final status."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._requests: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue()
        self.acks: dict[int, int] = {}
        self.commands: list[agent_pb2.Command] = []
        self.rejections: list[agent_pb2.Rejection] = []
        self.code: grpc.StatusCode | None = None
        self.details: str = ""
        self.trailers: dict[str, str] = {}
        self._ack_event = asyncio.Event()
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        self._call = stub.Stream(self._iterate(), metadata=tuple(metadata))
        self._reader = asyncio.create_task(self._read())

    async def _iterate(self) -> AsyncIterator[agent_pb2.AgentMessage]:
        while True:
            m = await self._requests.get()
            if m is None:
                return
            yield m

    async def _read(self) -> None:
        try:
            async for resp in self._call:
                if resp.HasField("ack"):
                    self.acks[resp.ack.epoch] = max(
                        self.acks.get(resp.ack.epoch, 0), resp.ack.committed_through
                    )
                    self._ack_event.set()
                elif resp.HasField("command"):
                    self.commands.append(resp.command)
                    self._ack_event.set()
                elif resp.HasField("rejection"):
                    self.rejections.append(resp.rejection)
            self.code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            self.code = exc.code()
            self.details = exc.details() or ""
            self.trailers = {k: str(v) for k, v in exc.trailing_metadata() or ()}
        self._ack_event.set()

    def send(self, *messages: agent_pb2.AgentMessage) -> None:
        for m in messages:
            self._requests.put_nowait(m)

    async def wait_ack(self, epoch: int, sequence: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acks.get(epoch, -1) < sequence:
            if self.code is not None:
                raise AssertionError(f"stream ended with {self.code}: {self.details}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no ack for {epoch}/{sequence}; acks={self.acks}")
            self._ack_event.clear()
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ack_event.wait(), remaining)

    async def wait_command(self, timeout: float = 10.0) -> agent_pb2.Command:
        deadline = time.monotonic() + timeout
        while not self.commands:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.code is not None:
                raise AssertionError(f"no command received ({self.code}: {self.details})")
            self._ack_event.clear()
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ack_event.wait(), remaining)
        return self.commands.pop(0)

    async def wait_end(self, timeout: float = 10.0) -> grpc.StatusCode:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        assert self.code is not None
        return self.code

    async def close(self) -> grpc.StatusCode:
        self._requests.put_nowait(None)
        return await self.wait_end()


async def http_get(url: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(get)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse exposition text → {(sample name, labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def find(
    parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> list[float]:
    """Values of samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return [v for (n, lbls), v in parsed.items() if n == name and want <= lbls]
