#!/usr/bin/env python3
"""Collector ingest benchmark: N concurrent agent streams × G GPUs × R Hz against a real collector
(its own process, SQLite file), then the same load against a bare grpc.aio echo server.

Prints, per run: samples/s committed and acked, ack latency p50/p99 (send → covering ack),
collector CPU (% of one core) and RSS, loss (sent vs stored, counted per (agent, epoch,
sequence) in the database), and the /metrics render time for every registered GPU.

Target on a 2-core machine: 1,000 streams × 8 GPUs × 10 Hz (80,000 samples/s), zero loss,
ack p99 ≤ 1 s; /metrics for 8,000 GPUs in ≤ 1 s.

Usage:
    python bench/collector_ingest.py                       # the target load, 30 s
    python bench/collector_ingest.py --streams 200 --duration 10
    python bench/collector_ingest.py --ceiling             # step the load up until it fails
    python bench/collector_ingest.py --scrape-interval 10  # with Prometheus-like scrapes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from flopwatt.records import DeviceSeries, TelemetryBatch
from flopwatt.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from flopwatt.wire import telemetry_to_proto

STREAM_METHOD = "/flopwatt.v1.AgentService/Stream"


# --- load generator (runs in worker processes) -------------------------------------------------


def telemetry_bytes(uuids: list[str], samples_per_batch: int, t0_ns: int) -> bytes:
    """A pre-serialised ``AgentMessage.telemetry`` field: one batch of every GPU, all columns."""
    n = samples_per_batch
    k = np.arange(n)
    step = 1_000_000_000 // max(n, 1)
    series = []
    for i, uuid in enumerate(uuids):
        columns = {
            "power_instant_w": 300.0 + i + 0.5 * k,
            "power_average_1s_w": np.full(n, 300.0 + i),
            # Flat: every message reuses this body, and energy must not decrease in an epoch.
            "energy_j": np.full(n, 1000.0),
            "sm_clock_mhz": np.full(n, 1980),
            "mem_clock_mhz": np.full(n, 2619),
            "gpu_temperature_c": np.full(n, 55.0),
            "memory_temperature_c": np.full(n, 60.0),
            "gpu_utilization_ratio": np.full(n, 0.97),
            "memory_utilization_ratio": np.full(n, 0.4),
            "throttle_reasons": np.zeros(n),
            "power_limit_w": np.full(n, 700.0),
            "memory_used_bytes": np.full(n, 40 << 30),
        }
        series.append(DeviceSeries(uuid, t0_ns + step * k, columns))
    msg = agent_pb2.AgentMessage(telemetry=telemetry_to_proto(TelemetryBatch(tuple(series))))
    return msg.SerializeToString()


@dataclass
class WorkerResult:
    sent_messages: int
    sent_samples: int
    acked_messages: int
    latencies_s: list[float]
    sent_s: list[float]  # time.monotonic() of each send, parallel to latencies_s
    errors: list[str]
    agents: list[tuple[str, int, int]]  # (agent, epoch, last sequence sent)


async def _agent(
    ch: grpc.aio.Channel,
    name: str,
    epoch: int,
    gpus: int,
    hz: float,
    duration_s: float,
    gate: Callable[[], Awaitable[float]],
    register: bool,
    out: WorkerResult,
) -> None:
    """One simulated agent: register, open the stream, say hello, pass ``gate`` (which returns
    when to start, once every agent of the run is connected), then send one batch a second."""
    uuids = [f"GPU-{name}-{g}" for g in range(gpus)]
    samples_per_batch = max(1, round(hz))  # one batch per second per agent
    if True:  # the channel belongs to the caller (shared by several agents when asked)
        if register:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            await stub.Register(
                agent_pb2.RegisterRequest(
                    node=common_pb2.NodeInfo(
                        hostname=name, agent_version="bench", device_backend="sim"
                    ),
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
                ),
                timeout=60,
            )
        call = ch.stream_stream(
            STREAM_METHOD,
            request_serializer=lambda b: b,
            response_deserializer=agent_pb2.CollectorMessage.FromString,
        )()
        hello = agent_pb2.AgentMessage(hello=agent_pb2.StreamHello(agent_id=name, epoch=epoch))
        await call.write(hello.SerializeToString())
        sent_at: dict[int, float] = {}
        acked = [0]
        last_seq = [0]
        done = asyncio.Event()

        async def read() -> None:
            try:
                async for msg in call:
                    if msg.HasField("ack"):
                        now = time.monotonic()
                        for seq in range(acked[0] + 1, msg.ack.committed_through + 1):
                            t = sent_at.pop(seq, None)
                            if t is not None:
                                out.latencies_s.append(now - t)
                                out.sent_s.append(t)
                        acked[0] = max(acked[0], msg.ack.committed_through)
                        if acked[0] >= last_seq[0] > 0 and done.is_set():
                            return
            except grpc.aio.AioRpcError as exc:
                out.errors.append(f"{name}: {exc.code().name} {exc.details()}")

        reader = asyncio.create_task(read())
        # Built before the start: building a thousand bodies in the first second of the load
        # kept the generator's own event loop from reading acks, which showed up as ack latency.
        body = telemetry_bytes(uuids, samples_per_batch, time.time_ns())
        start_at = await gate()
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        seq = 0
        t_end = time.monotonic() + duration_s
        next_send = time.monotonic()
        while next_send < t_end:
            seq += 1
            header = agent_pb2.AgentMessage(epoch=epoch, sequence=seq).SerializeToString()
            sent_at[seq] = time.monotonic()
            try:
                await call.write(header + body)
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                # The server ended the stream: say how, and stop sending on it.
                sent_at.pop(seq)
                seq -= 1
                code = await call.code()
                out.errors.append(
                    f"{name}: stream ended by the server after {seq} messages: "
                    f"{code.name} {await call.details()}"
                )
                break
            out.sent_messages += 1
            out.sent_samples += gpus * samples_per_batch
            next_send += 1.0
            await asyncio.sleep(max(0.0, next_send - time.monotonic()))
        last_seq[0] = seq
        done.set()
        deadline = time.monotonic() + 30
        while acked[0] < seq and time.monotonic() < deadline and not reader.done():
            await asyncio.sleep(0.05)
        if acked[0] < seq:
            out.errors.append(f"{name}: {seq - acked[0]} messages unacked after 30 s")
        reader.cancel()
        call.cancel()  # the run is over; nothing else is read or written on this stream
        out.acked_messages += acked[0]
        out.agents.append((name, epoch, seq))


def _worker(
    args: tuple[str, list[tuple[str, int]], int, float, float, bool, int],
    queue: Any,
    ready: Any,
    go: Any,
) -> None:
    target, agents, gpus, hz, duration_s, register, per_conn = args
    res = WorkerResult(0, 0, 0, [], [], [], [])

    async def main() -> None:
        arrived = [0]
        all_here = asyncio.Event()
        started = asyncio.Event()
        start_at = [0.0]

        def arrive() -> None:
            arrived[0] += 1
            if arrived[0] == len(agents):
                all_here.set()

        def gate(stagger: float) -> Callable[[], Awaitable[float]]:
            async def wait() -> float:
                arrive()
                await started.wait()
                return start_at[0] + stagger

            return wait

        async def guarded(i: int, name: str, epoch: int) -> None:
            # An agent that fails before the gate still counts as arrived, so one refused
            # stream is an error in the figures rather than a run that waits forever.
            passed = [False]
            inner = gate((i % 100) * 0.01)

            async def wait() -> float:
                passed[0] = True
                return await inner()

            try:
                await _agent(
                    channels[i // per_conn], name, epoch, gpus, hz, duration_s, wait, register, res
                )
            except grpc.aio.AioRpcError as exc:
                res.errors.append(f"{name}: {exc.code().name} {exc.details()}")
                if not passed[0]:
                    arrive()

        async def starter() -> None:
            await all_here.wait()
            ready.put(os.getpid())
            wall = await asyncio.to_thread(go.get)
            start_at[0] = time.monotonic() + (wall - time.time())
            started.set()

        start_task = asyncio.create_task(starter())
        options = [
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        channels = [
            grpc.aio.insecure_channel(target, options=options)
            for _ in range(-(-len(agents) // per_conn))
        ]
        await asyncio.gather(*(guarded(i, name, epoch) for i, (name, epoch) in enumerate(agents)))
        start_task.cancel()

        for ch in channels:
            await ch.close()

    asyncio.run(main())
    queue.put(res)


def run_load(
    target: str,
    streams: int,
    gpus: int,
    hz: float,
    duration_s: float,
    workers: int,
    register: bool,
    per_conn: int = 1,
    started: threading.Event | None = None,
) -> tuple[WorkerResult, float]:
    """Run the load; returns (results, seconds to connect, register and say hello for every
    agent). The measured load starts one second after the last agent is connected, so the
    figures are N concurrent streams, not a connection storm (that time is reported apart)."""
    agents = [(f"bench-{i:05d}", 1000 + i) for i in range(streams)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    ready = ctx.Queue()
    gos = [ctx.Queue() for _ in range(workers)]
    procs = []
    t0 = time.monotonic()
    targets = target.split(",")  # replicas: the workers' agents are spread over them
    for w in range(workers):
        part = agents[w::workers]
        p = ctx.Process(
            target=_worker,
            args=(
                (targets[w % len(targets)], part, gpus, hz, duration_s, register, per_conn),
                queue,
                ready,
                gos[w],
            ),
        )
        p.start()
        procs.append(p)
    for _ in procs:
        ready.get(timeout=600)
    connect_s = time.monotonic() - t0
    start_wall = time.time() + 1.0
    for go in gos:
        go.put(start_wall)
    if started is not None:
        started.set()
    total = WorkerResult(0, 0, 0, [], [], [], [])
    for _ in procs:
        r: WorkerResult = queue.get(timeout=duration_s + 300)
        total.sent_messages += r.sent_messages
        total.sent_samples += r.sent_samples
        total.acked_messages += r.acked_messages
        total.latencies_s.extend(r.latencies_s)
        total.sent_s.extend(r.sent_s)
        total.errors.extend(r.errors)
        total.agents.extend(r.agents)
    for p in procs:
        p.join(30)
    return total, connect_s


# --- servers -----------------------------------------------------------------------------------

STORED_MESSAGES_SQL = (
    "SELECT p.agent_id, p.epoch, p.pruned + (SELECT COUNT(*) FROM messages m "
    "WHERE m.agent_id = p.agent_id AND m.epoch = p.epoch) FROM stream_progress p"
)
"""Messages stored per (agent, epoch): those still there and those retention pruned."""
COMMITTED_SAMPLES_SQL = (
    "SELECT COALESCE((SELECT SUM(n_samples) FROM telemetry_chunks), 0) + "
    "COALESCE((SELECT SUM(n_samples) FROM telemetry_rollups WHERE tier = '10s'), 0)"
)
"""Samples committed: in fresh chunks, or compacted (every compacted sample is in the 10 s
rollups, which the runs here never prune)."""


def start_collector(
    tmp: Path, db: str | None = None, name: str = "collector", extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    ready = tmp / f"{name}-ready.json"
    with open(tmp / f"{name}.log", "w") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flopwatt",
                "collector",
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--db",
                db or str(tmp / "bench.db"),
                "--ready-file",
                str(ready),
                "--log-level",
                "warning",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
    while not ready.exists():
        if proc.poll() is not None:
            raise SystemExit(f"collector failed: {(tmp / f'{name}.log').read_text()}")
        time.sleep(0.05)
    addr = json.loads(ready.read_text())
    return proc, addr["grpc"], addr["http"]


_ECHO_SERVER = r"""
import asyncio, sys, grpc
from flopwatt.v1 import agent_pb2

async def stream(request_iterator, context):
    async for raw in request_iterator:
        m = agent_pb2.AgentMessage.FromString(raw)
        if m.sequence:
            yield agent_pb2.CollectorMessage(ack=agent_pb2.Ack(epoch=m.epoch,
                committed_through=m.sequence)).SerializeToString()

async def register(raw, context):
    return agent_pb2.RegisterResponse(agent_id="x").SerializeToString()

async def main():
    # The collector's transport settings: without them the clients' 10-s keepalive pings, sent
    # while 1,000 agents connect, count as abuse and the server answers GOAWAY (too_many_pings).
    server = grpc.aio.server(options=[
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.server.max_pending_requests", 20_000),
        ("grpc.server.max_pending_requests_hard_limit", 20_000),
    ])
    handler = grpc.method_handlers_generic_handler("flopwatt.v1.AgentService", {
        "Stream": grpc.stream_stream_rpc_method_handler(stream),
        "Register": grpc.unary_unary_rpc_method_handler(register),
    })
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def start_echo() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"127.0.0.1:{port}"


# --- measurement -------------------------------------------------------------------------------


@dataclass
class RunReport:
    label: str
    streams: int
    gpus: int
    hz: float
    duration_s: float
    sent_samples: int
    acked_samples_per_s: float
    committed_samples_per_s: float | None
    ack_p50_s: float | None
    ack_p99_s: float | None
    cpu_pct_of_one_core: float
    loadgen_cpu_pct_of_one_core: float
    main_cpu_pct_of_one_core: float
    steal_pct_of_one_core: float
    """CPU time the hypervisor gave to other guests while this VM wanted it (noise)."""
    """The server's own process alone (the rest is its children: the store writer)."""
    rss_mb: float
    lost_messages: int | None
    errors: int
    live_scrapes_s: list[float]
    """Durations of the /metrics scrapes made during the load."""
    exporter_cpu_pct_of_one_core: float | None = None
    """CPU of the collector's HTTP exporter child (the one listening on the /metrics port)."""
    postgres_cpu_pct_of_one_core: float | None = None
    """CPU of the PostgreSQL server's processes (when the store is PostgreSQL)."""
    replicas: int = 1
    ack_p99_during_scrapes_s: float | None = None
    """Ack p99 of the messages sent while a scrape was in progress (or within 1 s after)."""
    ack_p99_outside_scrapes_s: float | None = None
    """Ack p99 of the other messages of the same run."""

    @property
    def passed(self) -> bool:
        return (
            self.lost_messages in (0, None)
            and self.errors == 0
            and self.ack_p99_s is not None
            and self.ack_p99_s <= 1.0
        )


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _listener(procs: list[psutil.Process], addr: str | None) -> psutil.Process | None:
    """The process among ``procs`` listening on ``addr`` ("host:port"), if any."""
    if addr is None:
        return None
    port = int(addr.rsplit(":", 1)[1])
    for p in procs:
        try:
            conns = p.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
            return p
    return None


def _postgres_processes() -> list[psutil.Process]:
    """The PostgreSQL server processes of this machine (postmaster and backends)."""
    out = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in ("postgres", "postmaster"):
            out.append(p)
    return out


def _cpu(p: psutil.Process) -> float:
    """CPU seconds of ``p`` and of its children that have ended."""
    try:
        t = p.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + t.children_user + t.children_system)


def measure(
    label: str,
    target: str,
    pid: int | list[int],
    streams: int,
    gpus: int,
    hz: float,
    duration_s: float,
    workers: int,
    db: Path | None,
    per_conn: int = 1,
    timeline: bool = False,
    http: str | None = None,
    scrape_interval_s: float = 0.0,
    pg_dsn: str | None = None,
) -> RunReport:
    pids = pid if isinstance(pid, list) else [pid]
    server = psutil.Process(pids[0])
    res_holder: dict[str, Any] = {}
    cpu0: list[float] = []
    live_scrapes: list[float] = []
    scrape_windows: list[tuple[float, float]] = []  # (start, end), time.monotonic()

    started = threading.Event()
    load_done = threading.Event()

    def load() -> None:
        res_holder["res"] = run_load(
            target,
            streams,
            gpus,
            hz,
            duration_s,
            workers,
            register=True,
            per_conn=per_conn,
            started=started,
        )

    def scrape() -> None:
        # Prometheus scraping while the collector ingests, as in production: the render takes
        # the collector's CPU and GIL in the middle of the load, and the ack latency shows it.
        started.wait()
        next_at = time.monotonic() + 5.0
        while not load_done.wait(max(0.0, next_at - time.monotonic())):
            t0 = time.perf_counter()
            m0 = time.monotonic()
            request = urllib.request.Request(
                f"http://{http}/metrics",
                headers={"Accept-Encoding": "gzip"},  # as Prometheus
            )
            with urllib.request.urlopen(request, timeout=60) as r:
                r.read()
            live_scrapes.append(time.perf_counter() - t0)
            scrape_windows.append((m0, time.monotonic()))
            next_at += scrape_interval_s

    t = threading.Thread(target=load)
    t.start()
    scraper = None
    if http is not None and scrape_interval_s > 0:
        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
    # Sample the server's CPU over the steady window only (after connect/register).
    started.wait()
    time.sleep(3.0)
    # The server is its process tree (the collector's writer process included), every replica's,
    # and the PostgreSQL server's processes where the store is PostgreSQL.
    servers = [q for p in pids for q in (psutil.Process(p), *psutil.Process(p).children(True))]
    pg = _postgres_processes() if pg_dsn else []
    w0 = time.monotonic()
    cpu0.append(sum(_cpu(p) for p in servers))
    pg0 = sum(_cpu(p) for p in pg)
    main0 = _cpu(server)
    exporter = _listener(servers[1:], http)
    exporter0 = _cpu(exporter) if exporter is not None else 0.0
    steal0 = getattr(psutil.cpu_times(), "steal", 0.0)
    me = psutil.Process()
    gens = [
        p
        for p in me.children(recursive=True)
        if p.pid not in {s.pid for s in servers} | {q.pid for q in pg}
    ]
    g0 = sum(_cpu(p) for p in gens)
    rss_peak = 0.0
    while t.is_alive() and time.monotonic() - w0 < duration_s - 3:
        rss_peak = max(rss_peak, server.memory_info().rss / 2**20)
        time.sleep(0.5)
    w1 = time.monotonic()
    cpu_pct = 100 * (sum(_cpu(p) for p in servers) - cpu0[0]) / (w1 - w0)
    gen_pct = 100 * (sum(_cpu(p) for p in gens) - g0) / (w1 - w0)
    main_pct = 100 * (_cpu(server) - main0) / (w1 - w0)
    pg_pct = 100 * (sum(_cpu(p) for p in pg) - pg0) / (w1 - w0) if pg else None
    exporter_pct = 100 * (_cpu(exporter) - exporter0) / (w1 - w0) if exporter is not None else None
    steal_pct = 100 * (getattr(psutil.cpu_times(), "steal", 0.0) - steal0) / (w1 - w0)
    t.join()
    load_done.set()
    if scraper is not None:
        scraper.join(120)
    res, connect_s = res_holder["res"]
    print(f"    {streams} agents connected, registered and said hello in {connect_s:.1f} s")
    for err in res.errors[:5]:
        print(f"    error: {err}")
    if timeline and res.sent_s:
        # Ack latency p99 per 5-s window of send time: startup transients vs steady state.
        t0 = min(res.sent_s)
        windows: dict[int, list[float]] = {}
        for sent, lat in zip(res.sent_s, res.latencies_s, strict=True):
            windows.setdefault(int((sent - t0) // 5), []).append(lat)
        cells = [f"{5 * k}s:{_pct(v, 0.99):.2f}" for k, v in sorted(windows.items())]
        print("    ack p99 per 5 s of send time: " + " ".join(cells))
    during: list[float] = []
    outside: list[float] = []
    if scrape_windows:
        # time.monotonic() is one clock for every process of the machine (CLOCK_MONOTONIC).
        for sent, lat in zip(res.sent_s, res.latencies_s, strict=True):
            hit = any(a <= sent <= b + 1.0 for a, b in scrape_windows)
            (during if hit else outside).append(lat)
    acked_samples = res.acked_messages * gpus * max(1, round(hz))
    lost = None
    committed_rate = None
    if pg_dsn:
        import psycopg

        with psycopg.connect(pg_dsn) as pconn:
            stored_pg = {(a, e): n for a, e, n in pconn.execute(STORED_MESSAGES_SQL).fetchall()}
            lost = sum(last - stored_pg.get((name, epoch), 0) for name, epoch, last in res.agents)
            row = pconn.execute(COMMITTED_SAMPLES_SQL).fetchone()
            committed_rate = float((row[0] if row else 0) or 0) / duration_s
    elif db is not None:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        lost = 0
        stored = dict(((a, e), n) for a, e, n in conn.execute(STORED_MESSAGES_SQL))
        for name, epoch, last in res.agents:
            lost += last - stored.get((name, epoch), 0)
        committed = conn.execute(COMMITTED_SAMPLES_SQL).fetchone()[0]
        committed_rate = (committed or 0) / duration_s
        conn.close()
    return RunReport(
        label=label,
        streams=streams,
        gpus=gpus,
        hz=hz,
        duration_s=duration_s,
        sent_samples=res.sent_samples,
        acked_samples_per_s=acked_samples / duration_s,
        committed_samples_per_s=committed_rate,
        ack_p50_s=_pct(res.latencies_s, 0.50),
        ack_p99_s=_pct(res.latencies_s, 0.99),
        cpu_pct_of_one_core=cpu_pct,
        loadgen_cpu_pct_of_one_core=gen_pct,
        main_cpu_pct_of_one_core=main_pct,
        exporter_cpu_pct_of_one_core=exporter_pct,
        postgres_cpu_pct_of_one_core=pg_pct,
        replicas=len(pids),
        steal_pct_of_one_core=steal_pct,
        rss_mb=rss_peak,
        lost_messages=lost,
        errors=len(res.errors),
        live_scrapes_s=live_scrapes,
        ack_p99_during_scrapes_s=_pct(during, 0.99),
        ack_p99_outside_scrapes_s=_pct(outside, 0.99),
    )


def commit_latency_text(body: bytes) -> str:
    """The collector's own commit-latency histogram (submission to the writer → commit) from a
    scrape, as "mean, p50 ≤ bound, p99 ≤ bound": the part of the ack latency spent in the
    store writer, the rest being gRPC and the event loop."""
    name = b"flopwatt_collector_commit_latency_seconds"
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in body.splitlines():
        if not line.startswith(name):
            continue
        value = float(line.rsplit(b" ", 1)[1])
        if line.startswith(name + b"_bucket"):
            le = line.split(b'le="', 1)[1].split(b'"', 1)[0].decode()
            buckets.append((float(le), value))
        elif line.startswith(name + b"_sum"):
            total = value
        elif line.startswith(name + b"_count"):
            count = value
    if not count:
        return "no commits observed"

    def bound(q: float) -> str:
        return next(f"{le:g} s" for le, n in buckets if n >= q * count)

    return f"mean {total / count:.3f} s, p50 ≤ {bound(0.5)}, p99 ≤ {bound(0.99)}"


def time_metrics(http: str, repeats: int = 5) -> tuple[float, float, int, int, bytes]:
    """(median s, max s, bytes, GPU count, last body) for GET /metrics."""
    times, size, body = [], 0, b""
    for _ in range(repeats):
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://{http}/metrics", timeout=60) as r:
            body = r.read()
        times.append(time.perf_counter() - t0)
        size = len(body)
    gpus = body.count(b"flopwatt_gpu_info{")
    return statistics.median(times), max(times), size, gpus, body


def print_report(r: RunReport) -> None:
    def fmt(v: float | None, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    print(
        f"  {r.label}: {r.streams} streams × {r.gpus} GPUs × {r.hz:g} Hz "
        f"({r.streams * r.gpus * r.hz:,.0f} samples/s offered) for {r.duration_s:g} s"
    )
    print(
        f"    acked      {r.acked_samples_per_s:10,.0f} samples/s   committed "
        f"{fmt(r.committed_samples_per_s, '10,.0f')} samples/s"
    )
    print(f"    ack latency p50 {fmt(r.ack_p50_s, '.3f')} s   p99 {fmt(r.ack_p99_s, '.3f')} s")
    print(
        f"    server CPU {r.cpu_pct_of_one_core:5.0f} % of one core   RSS {r.rss_mb:6.0f} MB   "
        f"(load generator {r.loadgen_cpu_pct_of_one_core:.0f} %, "
        f"stolen by the hypervisor {r.steal_pct_of_one_core:.0f} %)"
    )
    if r.postgres_cpu_pct_of_one_core is not None:
        print(
            f"      {r.replicas} collector replica(s) {r.cpu_pct_of_one_core:.0f} % together; "
            f"PostgreSQL server {r.postgres_cpu_pct_of_one_core:.0f} % "
            f"(together {r.cpu_pct_of_one_core + r.postgres_cpu_pct_of_one_core:.0f} %)"
        )
    if r.replicas == 1 and r.cpu_pct_of_one_core - r.main_cpu_pct_of_one_core >= 1:
        exporter = r.exporter_cpu_pct_of_one_core or 0.0
        writer = r.cpu_pct_of_one_core - r.main_cpu_pct_of_one_core - exporter
        print(
            f"      of which gRPC process {r.main_cpu_pct_of_one_core:.0f} %, "
            f"store writer process {writer:.0f} %, /metrics exporter process {exporter:.0f} %"
        )
    print(
        f"    lost messages {fmt(r.lost_messages, 'd')}   stream errors {r.errors}   "
        f"{'PASS' if r.passed else 'FAIL'}"
    )


def run_collector(
    args: argparse.Namespace,
    tmp: Path,
    streams: int,
    label: str,
    *,
    pg_dsn: str | None = None,
    replicas: int = 1,
    extra: tuple[str, ...] = (),
) -> RunReport:
    """One run at ``streams`` (fresh database): a collector on SQLite, or ``replicas``
    collectors on the PostgreSQL database ``pg_dsn`` (the load spread over them); then the
    /metrics timing of the first."""
    started = [
        start_collector(tmp, pg_dsn, name=f"collector-{i}", extra=extra)
        for i in range(max(1, replicas))
    ]
    http = started[0][2]
    try:
        report = measure(
            label,
            ",".join(t for _, t, _ in started),
            [p.pid for p, _, _ in started],
            streams,
            args.gpus,
            args.hz,
            args.duration,
            args.workers,
            None if pg_dsn else tmp / "bench.db",
            args.streams_per_connection,
            timeline=args.timeline,
            http=http,
            scrape_interval_s=args.scrape_interval,
            pg_dsn=pg_dsn,
        )
        print_report(report)
        if report.live_scrapes_s:
            print(
                f"    /metrics scraped every {args.scrape_interval:g} s during the load: "
                f"{len(report.live_scrapes_s)} scrapes, median "
                f"{statistics.median(report.live_scrapes_s):.3f} s, "
                f"max {max(report.live_scrapes_s):.3f} s (gzip)"
            )
            inside, outside = report.ack_p99_during_scrapes_s, report.ack_p99_outside_scrapes_s
            if inside is not None and outside:
                print(
                    f"    ack p99 of messages sent during a scrape {inside:.3f} s, otherwise "
                    f"{outside:.3f} s: ratio {inside / outside:.2f} (target ≤ 1.5)"
                )
        if report.errors:
            lines = (tmp / "collector-0.log").read_text(errors="replace").splitlines()
            for line in lines[-10:]:
                print(f"    collector log: {line}")
        med, worst, size, gpus, body = time_metrics(http)
        print(f"    store commit latency (in the writer): {commit_latency_text(body)}")
        print(
            f"    /metrics after the load, {gpus:,} GPUs: median {med:.3f} s, max {worst:.3f} s, "
            f"{size / 2**20:.1f} MiB"
        )
        print(f"    {child_restarts_text(body)}")
    finally:
        for p, _, _ in started:
            p.send_signal(signal.SIGTERM)
        for p, _, _ in started:
            p.wait(60)
    return report


def child_restarts_text(body: bytes) -> str:
    """The collector's child-process restarts (a crashed exporter or writer) and the scrapes
    each process served, from its self-metrics."""
    restarts: dict[str, float] = {}
    scrapes: dict[str, float] = {}
    for line in body.decode().splitlines():
        for name, into in (
            ("flopwatt_collector_child_restarts_total{", restarts),
            ("flopwatt_collector_metrics_scrapes_total{", scrapes),
        ):
            if line.startswith(name):
                labels, value = line[len(name) :].rsplit("} ", 1)
                into[labels.split('"')[1]] = float(value)
    crashed = ", ".join(f"{k} {v:.0f}" for k, v in sorted(restarts.items())) or "none"
    served = ", ".join(f"{k} {v:.0f}" for k, v in sorted(scrapes.items())) or "—"
    return f"child process restarts (crashes): {crashed}; /metrics scrapes served by: {served}"


def run_echo(args: argparse.Namespace, streams: int) -> RunReport:
    """The same load against a bare grpc.aio echo server."""
    echo, target = start_echo()
    try:
        report = measure(
            "bare grpc.aio echo",
            target,
            echo.pid,
            streams,
            args.gpus,
            args.hz,
            args.duration,
            args.workers,
            None,
            args.streams_per_connection,
        )
        print_report(report)
    finally:
        echo.kill()
        echo.wait()
    return report


def run_postgres_runs(args: argparse.Namespace, tmp: Path, sqlite: RunReport) -> None:
    """The same load on PostgreSQL with each replica count, each run on a fresh database."""
    import contextlib

    import psycopg

    with contextlib.ExitStack() as stack:
        if args.db == "local":
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.postgres_server import run_postgres

            server = stack.enter_context(run_postgres())
            base = server.dsn()
        else:
            base = args.db
        for n in (int(x) for x in args.replicas.split(",")):
            name = f"flopwatt_bench_{n}"
            with psycopg.connect(base, autocommit=True) as con:
                con.execute(f'DROP DATABASE IF EXISTS "{name}"')
                con.execute(f'CREATE DATABASE "{name}"')
            dsn = base.rsplit("/", 1)[0] + "/" + name
            print(f"  PostgreSQL, {n} replica(s):")
            run = run_collector(
                args, tmp / f"pg-{n}", args.streams, f"postgresql x{n}", pg_dsn=dsn, replicas=n
            )
            if run.committed_samples_per_s and sqlite.committed_samples_per_s:
                total = run.cpu_pct_of_one_core + (run.postgres_cpu_pct_of_one_core or 0.0)
                print(
                    f"    vs SQLite: ack p99 {fmt_ratio(run.ack_p99_s, sqlite.ack_p99_s)}, "
                    f"CPU (collectors + PostgreSQL) ÷ SQLite collector CPU "
                    f"{total / sqlite.cpu_pct_of_one_core:.2f}"
                )


def fmt_ratio(a: float | None, b: float | None) -> str:
    """``a ÷ b`` as "x.xx×", or "—" where either is missing."""
    return f"{a / b:.2f}×" if a is not None and b else "—"


MAINTENANCE_OFF = ("--maintenance-interval", "1000000")
PRUNING_ALL_ALONG = (
    "--retention",
    "raw=15s,10s=1h,1m=1h",
    "--maintenance-interval",
    "5",
    "--maintenance-settle",
    "3",
)


def retention_compare(args: argparse.Namespace, tmp: Path) -> int:
    """The load without store maintenance, then with compaction and pruning running all along
    (see ``--retention-compare``); exit 0 when both pass and the ack p99 ratio is ≤ 1.5."""
    off = run_collector(args, tmp / "off", args.streams, "maintenance off", extra=MAINTENANCE_OFF)
    on = run_collector(
        args, tmp / "on", args.streams, "compacting and pruning", extra=PRUNING_ALL_ALONG
    )
    conn = sqlite3.connect(f"file:{tmp / 'on' / 'bench.db'}?mode=ro", uri=True)
    pruned = conn.execute("SELECT COALESCE(SUM(pruned), 0) FROM stream_progress").fetchone()[0]
    rolled = conn.execute(
        "SELECT COALESCE(SUM(n_samples), 0) FROM telemetry_rollups WHERE tier = '10s'"
    ).fetchone()[0]
    (waiting,) = conn.execute("SELECT COALESCE(SUM(n_samples), 0) FROM telemetry_chunks").fetchone()
    conn.close()
    print(
        f"    during the second run: {rolled:,} samples compacted and rolled up, "
        f"{pruned:,} messages pruned at the raw horizon"
    )
    rate = args.streams * args.gpus * args.hz
    settle, interval = float(PRUNING_ALL_ALONG[5]), float(PRUNING_ALL_ALONG[3])
    print(
        f"    at the end: {waiting:,} samples not compacted yet = {waiting / rate:.1f} s of the "
        f"offered load (keeping up leaves the settle time {settle:g} s plus up to one pass "
        f"interval {interval:g} s and one pass)"
    )
    if off.ack_p99_s and on.ack_p99_s:
        ratio = on.ack_p99_s / off.ack_p99_s
        print(
            f"  ack p99 while compacting and pruning {on.ack_p99_s:.3f} s, without maintenance "
            f"{off.ack_p99_s:.3f} s: ratio {ratio:.2f} (target ≤ 1.5)"
        )
        return 0 if off.passed and on.passed and ratio <= 1.5 else 1
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=2, help="load-generator processes")
    ap.add_argument(
        "--streams-per-connection",
        type=int,
        default=1,
        help="agents sharing one HTTP/2 connection in the load generator "
        "(1 = each agent its own, as in a real fleet)",
    )
    ap.add_argument(
        "--scrape-interval",
        type=float,
        default=0.0,
        help="also scrape the collector's /metrics this often during the load (s; 0: never, "
        "the target's condition; 10: as the shipped Prometheus configuration does)",
    )
    ap.add_argument("--no-echo", action="store_true", help="skip the echo-server baseline")
    ap.add_argument(
        "--timeline", action="store_true", help="print ack p99 per 5 s of the collector runs"
    )
    ap.add_argument("--echo-only", action="store_true", help="only the echo-server baseline")
    ap.add_argument(
        "--db",
        default=None,
        help="also run against this PostgreSQL server (postgresql://USER@HOST:PORT/DB; each run "
        "gets a fresh database beside DB), or 'local' to start a throwaway one (Debian "
        "postgresql package), after the SQLite run",
    )
    ap.add_argument(
        "--replicas",
        default="1,2",
        help="collector replicas on PostgreSQL, a comma list of counts (default 1,2)",
    )
    ap.add_argument(
        "--retention-compare",
        action="store_true",
        help="instead of the target run: the same load twice, store maintenance off, then "
        "compacting, rolling up and pruning all along (raw kept 15 s, a pass every 5 s); "
        "prints the ratio of their ack p99 (target <= 1.5)",
    )
    ap.add_argument(
        "--ceiling",
        action="store_true",
        help="after the target run, step the load up 25 %% while runs pass (or down 10 %% "
        "until one does) and print the largest load that passed",
    )
    args = ap.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"python {sys.version.split()[0]}, grpcio {grpc.__version__}"
    )
    if args.echo_only:
        run_echo(args, args.streams)
        return 0
    with tempfile.TemporaryDirectory(prefix="flopwatt-bench-") as tmp_s:
        tmp = Path(tmp_s)
        if args.retention_compare:
            return retention_compare(args, tmp)
        report = run_collector(args, tmp / "target", args.streams, "collector")
        if not args.no_echo:
            echo = run_echo(args, args.streams)
            if echo.cpu_pct_of_one_core > 0:
                print(
                    f"    collector CPU ÷ echo CPU = "
                    f"{report.cpu_pct_of_one_core / echo.cpu_pct_of_one_core:.2f}"
                )
        if args.db:
            run_postgres_runs(args, tmp, report)
        if args.ceiling:
            # From the target, step up 25 % while runs pass, or down 10 % until one does: the
            # ceiling is the largest load run that met zero loss and ack p99 <= 1 s.
            step = 1.25 if report.passed else 0.9
            passed = args.streams if report.passed else 0
            failed = 0 if report.passed else args.streams
            streams = args.streams
            while streams > 10:
                streams = int(streams * step)
                run = run_collector(args, tmp / f"ceiling-{streams}", streams, "ceiling")
                if run.passed:
                    passed = max(passed, streams)
                    if step < 1:
                        break
                else:
                    failed = streams if not failed else min(failed, streams)
                    if step > 1:
                        break
            if passed and failed and failed - passed > passed // 10:
                # One bisection step between the last load that passed and the first that
                # failed.
                streams = (passed + failed) // 2
                run = run_collector(args, tmp / f"ceiling-{streams}", streams, "ceiling")
                if run.passed:
                    passed = streams
                else:
                    failed = streams

            def load(n: int) -> str:
                return f"{n} streams ({n * args.gpus * args.hz:,.0f} samples/s)"

            print(f"  ceiling: {load(passed)} passed; {load(failed)} failed")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
