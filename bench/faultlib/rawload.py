"""Lightweight raw gRPC agents: many in one process, each a real client of the collector's wire
protocol (Register, then one Stream: hello, telemetry batches, acks) without flopwatt's agent
code — the fault suite's cheap way to put hundreds or thousands of agents on a collector.

Each client behaves like an agent with an in-memory spool: it produces one telemetry batch a
second (``--gpus`` devices × ``--hz`` samples, timestamps advancing one second per sequence, so
no two messages share a sample), keeps at most ``--window`` messages unacked on the stream,
reconnects after any error (1 s backoff) and resends from the highest acked sequence. Messages
are rebuilt byte for byte from the sequence number, so a resend is an exact duplicate.

Run as ``python -m bench.faultlib.rawload --target H:P --clients N --status FILE``. Clients
connect spread over ``--ramp`` seconds (0: all at once, a registration storm) and each produces
from when it connects. Production ends ``--ramp`` + ``--duration`` seconds after the start (or
at SIGTERM); then it waits up to ``--drain`` seconds for every client's acks, writes its final
status and exits 0. Status file (atomic, every 0.5 s)::

    {"t_mono": …, "final": bool, "production_over": bool,
     "clients": {"<name>": [epoch, produced, acked, errors]}, "register_errors": …,
     "error_kinds": {"<start of the error text>": count}, "errors": ["the first few", …]}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.faultlib.farm import write_json_atomic
from flopwatt.agent.uplink import UPLINK_WINDOW
from flopwatt.records import DeviceSeries, TelemetryBatch
from flopwatt.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from flopwatt.wire import telemetry_to_proto

STREAM_METHOD = "/flopwatt.v1.AgentService/Stream"
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.use_local_subchannel_pool", 1),
]
TS_SENTINEL = 0x7A7A_7A7A_7A7A_0000
"""Timestamp base of the template body, replaced per message (ns; far in the future, so a
message whose timestamps were not replaced would be rejected, not stored)."""
MAX_ERRORS_KEPT = 20
ERROR_KIND_CHARS = 64
"""Errors are counted by the first this many characters of their text."""


class AckTimeoutError(RuntimeError):
    """No ack progress on a stream for too long: reconnect."""


class StreamEndedError(RuntimeError):
    """A write failed because the collector had ended the stream (the message is its status)."""


class RegisterError(RuntimeError):
    """``Register`` failed (the gRPC error is the cause)."""

    def __init__(self, exc: grpc.aio.AioRpcError) -> None:
        super().__init__(f"Register: {_describe(exc)}")


def _describe(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name} {exc.details()}"


def _ts(base_ns: int, n: int) -> np.ndarray[Any, Any]:
    return base_ns + (1_000_000_000 // n) * np.arange(n, dtype=np.int64)


def template_body(uuids: list[str], samples: int) -> bytes:
    """A serialised ``AgentMessage`` with only its ``telemetry`` field: every GPU, every column,
    timestamps starting at :data:`TS_SENTINEL`."""
    k = np.arange(samples)
    series = []
    for i, uuid in enumerate(uuids):
        columns = {
            "power_instant_w": 300.0 + i + 0.5 * k,
            "power_average_1s_w": np.full(samples, 300.0 + i),
            "energy_j": 1000.0 + 30.0 * k,
            "sm_clock_mhz": np.full(samples, 1980),
            "mem_clock_mhz": np.full(samples, 2619),
            "gpu_temperature_c": np.full(samples, 55.0),
            "memory_temperature_c": np.full(samples, 60.0),
            "gpu_utilization_ratio": np.full(samples, 0.97),
            "memory_utilization_ratio": np.full(samples, 0.4),
            "throttle_reasons": np.zeros(samples),
            "power_limit_w": np.full(samples, 700.0),
            "memory_used_bytes": np.full(samples, 40 << 30),
        }
        series.append(DeviceSeries(uuid, _ts(TS_SENTINEL, samples), columns))
    msg = agent_pb2.AgentMessage(telemetry=telemetry_to_proto(TelemetryBatch(tuple(series))))
    return msg.SerializeToString()


def register_request(name: str, uuids: list[str], epoch: int) -> agent_pb2.RegisterRequest:
    """A ``RegisterRequest`` for simulated H100s (as ``bench/collector_ingest.py`` sends)."""
    return agent_pb2.RegisterRequest(
        node=common_pb2.NodeInfo(hostname=name, agent_version="faults", device_backend="sim"),
        devices=[
            common_pb2.DeviceInfo(
                uuid=u,
                index=i,
                name="NVIDIA H100 80GB HBM3",
                pci_device_id=0x233010DE,
                kind=common_pb2.DEVICE_KIND_GPU,
                power_limit_enforced_w=700.0,
                simulated=True,
                sim_sku="H100-SXM5-80GB",
            )
            for i, u in enumerate(uuids)
        ],
        epoch=epoch,
    )


@dataclass
class Client:
    """One raw agent's identity and ledger (sequences 1..produced; acked = committed through)."""

    name: str
    epoch: int
    gpus: int
    samples: int
    t0_ns: int
    start_at: float = 0.0
    """When this client connects and starts producing (``time.monotonic()`` s)."""
    produced: int = 0
    acked: int = 0
    errors: int = 0
    register_errors: int = 0
    max_ack_gap_s: float = 0.0
    """Longest time with messages in flight and no ack progress (any connection)."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    _template: bytes = b""
    _ts_template: bytes = b""

    @property
    def uuids(self) -> list[str]:
        """Device UUIDs (unique per client)."""
        return [f"GPU-{self.name}-{g}" for g in range(self.gpus)]

    def message(self, seq: int) -> bytes:
        """Message ``seq`` exactly as first sent (same bytes on every resend)."""
        if not self._template:
            self._template = template_body(self.uuids, self.samples)
            self._ts_template = _ts(TS_SENTINEL, self.samples).astype("<i8").tobytes()
        ts = _ts(self.t0_ns + (seq - 1) * 1_000_000_000, self.samples).astype("<i8").tobytes()
        header = agent_pb2.AgentMessage(epoch=self.epoch, sequence=seq).SerializeToString()
        return header + self._template.replace(self._ts_template, ts)


@dataclass
class Run:
    """Shared state of the process's clients."""

    target: str
    window: int
    ack_timeout_s: float
    flood: bool
    over: asyncio.Event = field(default_factory=asyncio.Event)
    drain_deadline: float = float("inf")
    error_texts: list[str] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)
    acks_per_second: dict[int, int] = field(default_factory=dict)
    """Messages acked per whole second of ``time.monotonic()`` (all clients of the process)."""

    def note_acks(self, n: int) -> None:
        """Count ``n`` messages acked now."""
        second = int(time.monotonic())
        self.acks_per_second[second] = self.acks_per_second.get(second, 0) + n

    def error(self, client: Client, text: str, *, register: bool = False) -> None:
        """Count an error of ``client`` by kind (the first few are kept as text)."""
        client.errors += 1
        client.register_errors += register
        kind = text[:ERROR_KIND_CHARS]
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        if len(self.error_texts) < MAX_ERRORS_KEPT:
            self.error_texts.append(f"{client.name}: {text}")


async def _write(call: grpc.aio.StreamStreamCall, data: bytes, timeout_s: float) -> None:
    """Write one message, bounded like the agent's uplink write.

    Raises:
        AckTimeoutError: not accepted within ``timeout_s`` (the collector is not reading).
        StreamEndedError: the collector had ended the stream (with the status it sent).
    """
    try:
        await asyncio.wait_for(call.write(data), timeout_s)
    except TimeoutError:
        raise AckTimeoutError(
            f"a write was not accepted within {timeout_s:g} s (the collector is not reading)"
        ) from None
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
        # Writing to a stream the server has ended fails with a local error ("INTERNAL:
        # Internal error from Core"); what matters is the status the server ended it with.
        try:
            code = await asyncio.wait_for(call.code(), 2.0)
            details = await call.details()
        except (TimeoutError, grpc.aio.AioRpcError):
            raise exc from None
        raise StreamEndedError(f"stream ended by the collector: {code.name} {details}") from exc


async def _session(c: Client, run: Run) -> None:
    """One connection: register, stream until an error, an ack timeout, or everything acked
    after production ended."""
    async with grpc.aio.insecure_channel(run.target, options=CHANNEL_OPTIONS) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)  # type: ignore[no-untyped-call]
        try:
            await stub.Register(register_request(c.name, c.uuids, c.epoch), timeout=60)
        except grpc.aio.AioRpcError as exc:
            raise RegisterError(exc) from exc
        call = ch.stream_stream(
            STREAM_METHOD,
            request_serializer=lambda b: b,
            response_deserializer=agent_pb2.CollectorMessage.FromString,
        )()
        hello = agent_pb2.AgentMessage(hello=agent_pb2.StreamHello(agent_id=c.name, epoch=c.epoch))
        await _write(call, hello.SerializeToString(), run.ack_timeout_s)
        last_progress = [time.monotonic()]

        async def read() -> None:
            async for msg in call:
                if msg.HasField("ack") and msg.ack.epoch == c.epoch:
                    if msg.ack.committed_through > c.acked:
                        run.note_acks(msg.ack.committed_through - c.acked)
                        c.acked = msg.ack.committed_through
                        last_progress[0] = time.monotonic()
                    c.wake.set()

        reader = asyncio.create_task(read())
        try:
            sent = c.acked
            while True:
                if reader.done():
                    reader.result()
                    return
                if run.over.is_set() and c.acked >= c.produced:
                    return
                if time.monotonic() > run.drain_deadline:
                    return
                if run.flood and not run.over.is_set():
                    c.produced = max(c.produced, c.acked + run.window)
                sent = max(sent, c.acked)
                while sent < c.produced and sent - c.acked < run.window:
                    if sent == c.acked:
                        last_progress[0] = time.monotonic()
                    await _write(call, c.message(sent + 1), run.ack_timeout_s)
                    sent += 1
                if sent > c.acked:
                    c.max_ack_gap_s = max(c.max_ack_gap_s, time.monotonic() - last_progress[0])
                if sent > c.acked and time.monotonic() - last_progress[0] > run.ack_timeout_s:
                    phase = "after the load ended" if run.over.is_set() else "during the load"
                    raise AckTimeoutError(
                        f"no ack for {run.ack_timeout_s:g} s {phase} ({sent - c.acked} in flight)"
                    )
                c.wake.clear()
                # Once production is over its event is set for good: waiting on it again would
                # spin every client hot and starve the process's gRPC reads of CPU.
                events = [c.wake] if run.over.is_set() else [c.wake, run.over]
                waiters = [asyncio.ensure_future(e.wait()) for e in events]
                await asyncio.wait([*waiters, reader], timeout=1.0, return_when="FIRST_COMPLETED")
                for w in waiters:
                    w.cancel()
        finally:
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)  # retrieves its error
            call.cancel()


async def run_client(c: Client, run: Run) -> None:
    """Deliver ``c``'s messages across reconnects until production is over and all are acked
    (or the drain deadline passes)."""
    await asyncio.sleep(max(0.0, c.start_at - time.monotonic()))
    while not (run.over.is_set() and c.acked >= c.produced):
        if time.monotonic() > run.drain_deadline:
            return
        try:
            await _session(c, run)
            continue
        except RegisterError as exc:
            run.error(c, str(exc), register=True)
        except grpc.aio.AioRpcError as exc:
            run.error(c, _describe(exc))
        except (AckTimeoutError, StreamEndedError, asyncio.InvalidStateError, OSError) as exc:
            run.error(c, f"{type(exc).__name__} {exc}")
        await asyncio.sleep(0.5 + 0.5 * (hash((c.name, c.errors)) % 100) / 100)


def status(clients: list[Client], run: Run, *, final: bool) -> dict[str, Any]:
    """The status file's content."""
    return {
        "pid": os.getpid(),
        "t_mono": time.monotonic(),
        "final": final,
        "production_over": run.over.is_set(),
        "clients": {c.name: [c.epoch, c.produced, c.acked, c.errors] for c in clients},
        "register_errors": sum(c.register_errors for c in clients),
        "max_ack_gaps_s": sorted(round(c.max_ack_gap_s, 2) for c in clients),
        "acks_per_second": sorted(run.acks_per_second.items()),
        "error_kinds": dict(run.error_kinds),
        "errors": list(run.error_texts),
    }


async def main_async(args: argparse.Namespace) -> None:
    """Run the clients (see module docstring)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    run = Run(args.target, args.window, args.ack_timeout, args.flood)
    # Past timestamps for a flood (it produces faster than real time; the collector rejects
    # timestamps more than 10 minutes ahead).
    t0 = time.time_ns() - (7200 * 10**9 if args.flood else 0)
    samples = max(1, round(args.hz))
    clients = [
        Client(
            f"{args.prefix}-{args.index_base + i:05d}", args.epoch_base + i, args.gpus, samples, t0
        )
        for i in range(args.clients)
    ]
    for c in clients:
        c.message(1)  # build each template now, not on the event loop during the load
    if args.start_at:
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
    started = time.monotonic()
    for i, c in enumerate(clients):
        c.start_at = started + args.ramp * i / max(1, len(clients))
    tasks = [asyncio.create_task(run_client(c, run)) for c in clients]

    async def produce() -> None:
        tick = started
        while not run.over.is_set():
            if not run.flood:
                for c in clients:
                    if c.start_at <= tick:
                        c.produced += 1
                        c.wake.set()
            tick += 1.0
            if args.duration and tick > started + args.ramp + args.duration:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, tick - time.monotonic()))
            if stop.is_set():
                break
        run.drain_deadline = time.monotonic() + args.drain
        run.over.set()

    async def report() -> None:
        while True:
            write_json_atomic(args.status, status(clients, run, final=False))
            await asyncio.sleep(0.5)

    producer = asyncio.create_task(produce())
    reporter = asyncio.create_task(report())
    await producer
    _done, pending = await asyncio.wait(tasks, timeout=args.drain + 5)
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    reporter.cancel()
    await asyncio.gather(reporter, return_exceptions=True)
    write_json_atomic(args.status, status(clients, run, final=True))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--target", required=True, help="collector HOST:PORT")
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--prefix", default="raw")
    ap.add_argument("--index-base", type=int, default=0, help="first client's number")
    ap.add_argument("--epoch-base", type=int, default=1_000_000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--hz", type=float, default=10.0, help="samples per second per GPU")
    ap.add_argument(
        "--window",
        type=int,
        default=UPLINK_WINDOW,
        help="unacked messages per stream, at most (default: the agent's uplink window)",
    )
    ap.add_argument(
        "--ack-timeout", type=float, default=15.0, help="s without ack progress (the agent's)"
    )
    ap.add_argument("--duration", type=float, default=0.0, help="s of production (0: until TERM)")
    ap.add_argument("--drain", type=float, default=60.0, help="s to wait for acks afterwards")
    ap.add_argument("--flood", action="store_true", help="produce as fast as acks allow")
    ap.add_argument("--start-at", type=float, default=0.0, help="wall-clock start (Unix s)")
    ap.add_argument("--ramp", type=float, default=0.0, help="s over which clients connect")
    ap.add_argument("--status", type=Path, required=True)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit status."""
    asyncio.run(main_async(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
