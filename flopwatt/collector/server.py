"""Build and run the collector: ``run_server(config)`` is the one way, used by the CLI and every
test alike. It yields the bound ports (port 0 picks free ones) and stops gracefully on exit:
health NOT_SERVING first, streams drained (everything received is committed and acked), then
the gRPC server, the writer and the store are closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from flopwatt.analysis.registry import Registry, load_registry
from flopwatt.collector.auth import (
    AuthConfig,
    AuthInterceptor,
    load_admin_tokens,
    load_agent_tokens,
)
from flopwatt.collector.forked_render import ForkedRenderError, render_forked
from flopwatt.collector.ingest import Ingest
from flopwatt.collector.jobs import JobService
from flopwatt.collector.metrics import FleetMetrics, exposition, exposition_async
from flopwatt.collector.report_route import report_route
from flopwatt.collector.servicer import AdminServicer, AgentServicer, agent_service_handler
from flopwatt.collector.session import SessionRegistry
from flopwatt.collector.state import FleetState
from flopwatt.collector.store import SQLiteStore
from flopwatt.collector.writer import BatchWriter, ProcessStoreWriter, StoreWriter
from flopwatt.http_server import HttpServer
from flopwatt.records import AgentSettings
from flopwatt.v1 import admin_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Largest agent message accepted; larger gets RESOURCE_EXHAUSTED from gRPC itself."""

FORKED_RENDER = hasattr(os, "fork")
"""Render ``/metrics`` in a forked child (POSIX; see :mod:`flopwatt.collector.forked_render`)."""

METRICS_RENDER_TIMEOUT_S = 60.0
"""A ``/metrics`` render that takes longer than this answers 500 (s)."""


class ConfigError(ValueError):
    """The collector configuration is unsafe or invalid (message says what to change)."""


@dataclass(frozen=True)
class CollectorConfig:
    """Everything ``run_server`` needs. Addresses are ``HOST:PORT``; port 0 picks a free one."""

    grpc_listen: str = "127.0.0.1:50051"
    http_listen: str = "127.0.0.1:9464"
    db_path: Path = Path("flopwatt-data/flopwatt.db")
    agent_token_file: Path | None = None
    admin_token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    allow_unauthenticated_remote: bool = False
    """Listen beyond loopback without any credentials (only behind a trusted network)."""
    staleness_s: float = 300.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    writer_process: bool = True
    """Commit messages from a child process (another core) rather than a thread."""
    writer_max_delay_s: float = 0.05
    """How long the writer waits for more messages to join a commit once one has arrived (s):
    longer batches fewer, larger transactions at the cost of ack latency."""
    settings: AgentSettings = field(default_factory=AgentSettings)


def split_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[::1]:port"`` → (host, port).

    Raises:
        ConfigError: malformed address.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only the loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_auth(config: CollectorConfig) -> AuthConfig:
    """Load credentials and refuse an unauthenticated collector on a non-loopback address.

    Raises:
        ConfigError: unsafe listen address without credentials, or half a TLS pair.
        TokenFileError, OSError: unreadable or malformed token files.
    """
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise ConfigError("--tls-client-ca needs --tls-cert/--tls-key (mutual TLS)")
    auth = AuthConfig(
        agent_tokens=load_agent_tokens(config.agent_token_file) if config.agent_token_file else {},
        admin_tokens=load_admin_tokens(config.admin_token_file) if config.admin_token_file else (),
        client_certs=config.tls_client_ca is not None,
    )
    host, _ = split_host_port(config.grpc_listen)
    if not auth.enabled and not is_loopback(host) and not config.allow_unauthenticated_remote:
        raise ConfigError(
            f"no credentials configured, so the collector only listens on loopback; "
            f"{config.grpc_listen} is not loopback. Pass --agent-token-file/--admin-token-file "
            f"or --tls-client-ca, or --allow-unauthenticated-remote on a trusted network"
        )
    return auth


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC server channel options, set explicitly (see the README for the reasoning)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Ping idle agents every 30 s and drop them after 10 s of silence, so a vanished agent
        # is noticed in under a minute and its stream slot freed.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Agents ping every 10 s (black-hole detection); accept pings down to 5 s apart.
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


@dataclass
class RunningCollector:
    """A started collector (yielded by :func:`run_server`)."""

    grpc_port: int
    http_port: int
    grpc_host: str
    http_host: str
    state: FleetState
    store: SQLiteStore
    ingest: Ingest
    jobs: JobService
    sessions: SessionRegistry
    http: HttpServer
    _server: grpc.aio.Server
    _health: HealthServicer
    _writer: BatchWriter
    _serving: list[bool]
    _stopped: bool = False

    @property
    def grpc_address(self) -> str:
        """``host:port`` agents connect to."""
        return f"{self.grpc_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP side."""
        return f"http://{self.http_host}:{self.http_port}"

    async def stop(self, grace_s: float = 5.0) -> None:
        """Graceful stop (idempotent); bounded by about ``grace_s`` + 2 s."""
        if self._stopped:
            return
        self._stopped = True
        t0 = time.monotonic()
        self._serving[0] = False
        await self._health.enter_graceful_shutdown()
        drains = [s.drain() for s in self.sessions.all()]
        if drains:
            _done, pending = await asyncio.wait(
                [asyncio.ensure_future(d) for d in drains], timeout=grace_s
            )
            for p in pending:
                p.cancel()
        await self._server.stop(grace=1.0)
        await asyncio.to_thread(self._writer.close)
        self.http.stop()
        self.store.close()
        log.info("collector stopped in %.2f s", time.monotonic() - t0)


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@asynccontextmanager
async def run_server(
    config: CollectorConfig,
    *,
    registry: Registry | None = None,
    clock_ns: Callable[[], int] = time.time_ns,
) -> AsyncIterator[RunningCollector]:
    """Start a collector; yield it; stop it gracefully on exit.

    Raises:
        ConfigError: unsafe or invalid configuration (before anything starts).
    """
    auth = build_auth(config)
    grpc_host, grpc_port = split_host_port(config.grpc_listen)
    http_host, http_port = split_host_port(config.http_listen)
    registry = registry or load_registry()
    store = SQLiteStore(config.db_path, clock=clock_ns)
    state = FleetState()
    ingest = Ingest(store, state, registry, settings=config.settings, clock_ns=clock_ns)
    await asyncio.to_thread(ingest.rebuild)
    on_commit = lambda _n, lat: state.observe_commit_latencies(lat)  # noqa: E731
    writer: BatchWriter = (
        await asyncio.to_thread(
            ProcessStoreWriter,
            config.db_path,
            on_commit=on_commit,
            max_delay_s=config.writer_max_delay_s,
        )
        if config.writer_process
        else StoreWriter(store, on_commit=on_commit, max_delay_s=config.writer_max_delay_s)
    )
    exporter = FleetMetrics(state, staleness_s=config.staleness_s, clock_ns=clock_ns)
    ingest.on_devices = writer.update_devices
    ingest.on_device_states = exporter.warm
    ingest.announce_all()
    sessions = SessionRegistry()
    jobs = JobService(store, state, sessions, clock_ns=clock_ns)

    server = grpc.aio.server(
        interceptors=[AuthInterceptor(auth)],
        options=server_options(config.max_message_bytes),
    )
    server.add_generic_rpc_handlers(
        (agent_service_handler(AgentServicer(ingest, writer, sessions, jobs, auth)),)
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(  # type: ignore[no-untyped-call]
        AdminServicer(ingest, jobs), server
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bind = f"{_bind_host(grpc_host)}:{grpc_port}"
    if config.tls_cert is not None and config.tls_key is not None:
        creds = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
            root_certificates=config.tls_client_ca.read_bytes() if config.tls_client_ca else None,
            require_client_auth=config.tls_client_ca is not None,
        )
        bound_grpc = server.add_secure_port(bind, creds)
    else:
        bound_grpc = server.add_insecure_port(bind)
    if bound_grpc == 0:
        raise ConfigError(f"could not bind gRPC to {config.grpc_listen}")
    await server.start()
    for service in ("", "flopwatt.v1.AgentService", "flopwatt.v1.AdminService"):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)

    serving = [True]
    loop = asyncio.get_running_loop()

    def metrics_body() -> bytes:
        # In a forked child at low priority (forked_render); where fork is unavailable or
        # fails, on the event loop in steps (render_text_async). The HTTP thread only waits
        # and sends the bytes.
        if FORKED_RENDER:
            try:
                return render_forked(lambda: exposition([exporter]), state.quiescent)
            except (OSError, ForkedRenderError) as exc:
                log.warning("/metrics render in a child failed (%s); rendering in-process", exc)
        future = asyncio.run_coroutine_threadsafe(exposition_async([exporter]), loop)
        return future.result(timeout=METRICS_RENDER_TIMEOUT_S)

    http = HttpServer(http_host, http_port, metrics_body, lambda: serving[0])
    http.routes["/report"] = report_route(config.db_path, clock_ns=clock_ns)
    http.start()
    running = RunningCollector(
        grpc_port=bound_grpc,
        http_port=http.port,
        grpc_host=grpc_host if grpc_host != "0.0.0.0" else socket.gethostname(),
        http_host=http_host if http_host != "0.0.0.0" else socket.gethostname(),
        state=state,
        store=store,
        ingest=ingest,
        jobs=jobs,
        sessions=sessions,
        http=http,
        _server=server,
        _health=health,
        _writer=writer,
        _serving=serving,
    )
    if not auth.enabled:
        log.warning(
            "no credentials configured: agents and admins are not authenticated (listening on %s)",
            config.grpc_listen,
        )
    log.info(
        "collector listening: gRPC %s:%d, HTTP %s:%d (/metrics, /healthz), db %s",
        grpc_host,
        bound_grpc,
        http_host,
        http.port,
        config.db_path,
    )
    try:
        yield running
    finally:
        await running.stop()
