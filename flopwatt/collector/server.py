"""Build and run the collector: ``run_server(config)`` is the one way, used by the CLI and every
test alike. It yields the bound ports (port 0 picks free ones) and stops gracefully on exit:
health NOT_SERVING first, streams drained (everything received is committed and acked), then
the gRPC server, the writer, the exporter and the store are closed.

Processes: the main process runs gRPC (one event loop: streams, acks, registrations, jobs);
the store writer and the HTTP exporter are children spawned before gRPC starts. Whenever the
store cannot commit — the writer is gone (it is restarted), the disk is full, the database is
locked — :class:`~flopwatt.collector.health.StoreHealth` turns gRPC health and ``/healthz``
NOT_SERVING, agents are refused with ``UNAVAILABLE`` and a retry delay, and the store is probed
every second until it commits again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from flopwatt.collector.exporter import ExporterConfig, ExporterProcess, ExporterStartError
from flopwatt.collector.health import HealthView, StoreHealth
from flopwatt.collector.ingest import Ingest
from flopwatt.collector.jobs import JobService
from flopwatt.collector.maintenance import MaintenanceProcess
from flopwatt.collector.metrics import FleetMetrics
from flopwatt.collector.report_route import report_route
from flopwatt.collector.servicer import AdminServicer, AgentServicer, agent_service_handler
from flopwatt.collector.session import SessionRegistry
from flopwatt.collector.state import Counters, FleetState
from flopwatt.collector.writer import BatchWriter, ProcessStoreWriter, StoreWriter
from flopwatt.http_server import HttpServer
from flopwatt.records import AgentSettings
from flopwatt.store import describe_db, is_postgres, open_store
from flopwatt.store.base import Store
from flopwatt.store.maintenance import MaintenanceConfig, free_bytes
from flopwatt.store.retention import Retention, default_max_db_bytes
from flopwatt.v1 import admin_pb2_grpc

log = logging.getLogger(__name__)

MAX_PENDING_CALLS = 20_000
"""Calls gRPC holds for the event loop to take up before it refuses new ones (see
:func:`server_options`)."""

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Largest agent message accepted; larger gets RESOURCE_EXHAUSTED from gRPC itself."""


class ConfigError(ValueError):
    """The collector configuration is unsafe or invalid (message says what to change)."""


class StartError(RuntimeError):
    """The collector could not start a part it needs (a taken port, a child process that
    exited at start-up); the message says which and why."""


@dataclass(frozen=True)
class CollectorConfig:
    """Everything ``run_server`` needs. Addresses are ``HOST:PORT``; port 0 picks a free one."""

    grpc_listen: str = "127.0.0.1:50051"
    http_listen: str = "127.0.0.1:9464"
    db_path: Path | str = Path("flopwatt-data/flopwatt.db")
    """The store: a SQLite file, or a PostgreSQL DSN (``postgresql://…``)."""
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
    exporter_process: bool = True
    """Serve HTTP (``/metrics``, ``/healthz``, ``/report``) from a child process rather than a
    thread of the ingest process (tests turn it off to start faster)."""
    store_busy_timeout_s: float = 10.0
    """How long a commit waits for another process's write lock on the database before it
    fails (and the collector reports NOT_SERVING until it can commit again) (s)."""
    writer_max_delay_s: float = 0.05
    """How long the writer waits for more messages to join a commit once one has arrived (s):
    longer batches fewer, larger transactions at the cost of ack latency."""
    settings: AgentSettings = field(default_factory=AgentSettings)
    retention: Retention = field(default_factory=Retention)
    """How long each tier of the store keeps its data (``--retention``)."""
    max_db_bytes: int | None = None
    """Size cap of the store (B): near it the oldest data is pruned early. None: the default
    (SQLite: its size at start plus 80 % of the free space then; PostgreSQL: no cap); 0: no
    cap."""
    maintenance: bool = True
    """Run retention (compaction, rollups, pruning) in a child process."""
    maintenance_interval_s: float = 60.0
    """Time between maintenance passes (s); the first pass comes after one interval."""
    maintenance_settle_s: float = 60.0
    """Telemetry younger than this is left uncompacted (s)."""


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
        # Calls that arrived and are not yet taken up by the event loop. Past the default soft
        # limit of 1,000, gRPC cancels new calls at random (CANCELLED, before any handler
        # runs): with the event loop busy, a thousand agents reconnecting at once lost a
        # third of their Register and Stream calls that way, and a bare echo server with a
        # busy loop does the same. A call still waits at most 30 s to be taken up.
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    ]


@dataclass
class RunningCollector:
    """A started collector (yielded by :func:`run_server`)."""

    grpc_port: int
    http_port: int
    grpc_host: str
    http_host: str
    state: FleetState
    store: Store
    ingest: Ingest
    jobs: JobService
    sessions: SessionRegistry
    health: StoreHealth
    writer: BatchWriter
    exporter: ExporterProcess | None
    """The HTTP exporter process (None when HTTP is served in-process)."""
    fatal: asyncio.Event
    """Set when the collector cannot go on (its store writer cannot be restarted): the caller
    should stop it and exit non-zero so that a supervisor restarts it."""
    fatal_reason: list[str]
    _server: grpc.aio.Server
    _health: HealthServicer
    _http: HttpServer | None
    _tasks: list[asyncio.Task[None]]
    maintenance: MaintenanceProcess | None = None
    """The store maintenance process (None when maintenance is off)."""
    _stop_listening: Callable[[], None] = lambda: None
    """Stops the store's job announcements (replicas on PostgreSQL)."""
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
        """Graceful stop (idempotent), in order: intake stops (NOT_SERVING, streams stop
        reading), everything received is committed and acked, then the gRPC server, the
        writer, the exporter and the store are closed. Bounded by about ``grace_s`` + 3 s."""
        if self._stopped:
            return
        self._stopped = True
        t0 = time.monotonic()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.health.shutting_down()  # /healthz 503 from now on, without an error
        await self._health.enter_graceful_shutdown()
        drains = [s.drain() for s in self.sessions.all()]
        if drains:
            _done, pending = await asyncio.wait(
                [asyncio.ensure_future(d) for d in drains], timeout=grace_s
            )
            for p in pending:
                p.cancel()
        await self._server.stop(grace=1.0)
        await asyncio.to_thread(self.writer.close)
        if self.maintenance is not None:
            await asyncio.to_thread(self.maintenance.stop)
        if self.exporter is not None:
            await asyncio.to_thread(self.exporter.stop)
        if self._http is not None:
            self._http.stop()
        await asyncio.to_thread(self.ingest.close)
        await asyncio.to_thread(self._stop_listening)
        self.store.close()
        log.info("collector stopped in %.2f s", time.monotonic() - t0)


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


PROBE_INTERVAL_S = 1.0
"""While the store cannot commit, how often it is probed (s)."""

_SERVICES = ("", "flopwatt.v1.AgentService", "flopwatt.v1.AdminService")


async def _probe_while_unhealthy(store: Store, writer: BatchWriter, health: StoreHealth) -> None:
    """While the store cannot commit, find out when it can again: the writer is running and a
    small transaction commits with some free space left (``Store.probe``)."""
    while True:
        await asyncio.sleep(PROBE_INTERVAL_S)
        if health.serving or not writer.alive:
            continue
        try:
            await asyncio.to_thread(store.probe)
        except Exception as exc:  # any engine's error (sqlite3, psycopg, OSError): not yet
            health.failed(f"probe: {exc}")
            continue
        health.succeeded()


def effective_max_db_bytes(config: CollectorConfig) -> int | None:
    """The store's size cap (B) for ``config`` (see :attr:`CollectorConfig.max_db_bytes`)."""
    if config.max_db_bytes is not None:
        return config.max_db_bytes or None
    if is_postgres(config.db_path):
        return None
    path = Path(config.db_path)
    size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    return default_max_db_bytes(size, free_bytes(path.parent))


def _start_maintenance(config: CollectorConfig, state: FleetState) -> MaintenanceProcess | None:
    """The maintenance child, started (None when ``config.maintenance`` is off)."""
    if not config.maintenance:
        return None
    cap = effective_max_db_bytes(config)
    mconfig = MaintenanceConfig(
        retention=config.retention,
        max_db_bytes=cap,
        interval_s=config.maintenance_interval_s,
        settle_s=config.maintenance_settle_s,
    )

    def on_totals(totals: dict[str, Any]) -> None:
        def put(c: Counters) -> None:
            c.store_maintenance = totals
            c.store_max_bytes = cap

        state.count(put)

    state.count(lambda c: setattr(c, "store_max_bytes", cap))
    process = MaintenanceProcess(
        config.db_path, mconfig, on_totals, busy_timeout_s=config.store_busy_timeout_s
    )
    process.start()
    log.info(
        "store retention %s; size cap %s",
        config.retention.describe(),
        f"{cap / 2**30:.1f} GiB" if cap else "none",
    )
    return process


@asynccontextmanager
async def run_server(
    config: CollectorConfig,
    *,
    registry: Registry | None = None,
    clock_ns: Callable[[], int] = time.time_ns,
    store: Store | None = None,
) -> AsyncIterator[RunningCollector]:
    """Start a collector; yield it; stop it gracefully on exit.

    The store writer and the HTTP exporter are child processes spawned before gRPC starts
    (see :mod:`flopwatt.children`); the HTTP side is served in-process only when
    ``config.exporter_process`` is off (tests).

    Args:
        config: what to listen on, where the database is, credentials, settings.
        registry: the GPU spec registry (default: the packaged one).
        clock_ns: wall clock, ns since the Unix epoch.
        store: the main process's store (default: :func:`~flopwatt.store.open_store` on
            ``config.db_path``); with ``writer_process`` off the writer thread commits through
            it too (tests inject failures this way).

    Raises:
        ConfigError: unsafe or invalid configuration, or the HTTP port cannot be bound
            (before gRPC starts).
    """
    auth = build_auth(config)
    split_host_port(config.grpc_listen)
    split_host_port(config.http_listen)
    registry = registry or load_registry()
    if store is None:
        try:
            store = open_store(
                config.db_path, clock=clock_ns, busy_timeout_s=config.store_busy_timeout_s
            )
        except Exception as exc:  # sqlite3 / psycopg errors: the message says what and why
            where = describe_db(config.db_path)
            raise StartError(f"cannot open the store {where}: {exc}".strip()) from exc
    # Whatever starts is stopped again if a later step of the start fails (children ignore
    # SIGTERM, so nothing else would stop them).
    undo: list[Callable[[], object]] = [store.close]
    try:
        running = await _start(config, auth, registry, store, undo, clock_ns)
    except BaseException:
        for step in reversed(undo):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(step)
        raise
    try:
        yield running
    finally:
        await running.stop()


async def _start(
    config: CollectorConfig,
    auth: AuthConfig,
    registry: Registry,
    store: Store,
    undo: list[Callable[[], object]],
    clock_ns: Callable[[], int],
) -> RunningCollector:
    """Everything :func:`run_server` starts after the store; each started part's stop goes
    on ``undo``."""
    grpc_host, grpc_port = split_host_port(config.grpc_listen)
    http_host, http_port = split_host_port(config.http_listen)
    loop = asyncio.get_running_loop()
    state = FleetState(journal=config.exporter_process)
    ingest = Ingest(
        store,
        state,
        registry,
        settings=config.settings,
        max_message_bytes=config.max_message_bytes,
        clock_ns=clock_ns,
        shared_store=is_postgres(config.db_path),
    )
    undo.append(ingest.close)
    await asyncio.to_thread(ingest.rebuild)
    grpc_health = HealthServicer()
    exporter_box: list[ExporterProcess | None] = [None]

    def on_health(view: HealthView) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if view.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

        async def apply() -> None:
            for service in _SERVICES:
                await grpc_health.set(service, status)

        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(apply()))
        exporter = exporter_box[0]
        if exporter is not None:
            exporter.poke()

    health = StoreHealth(on_health)
    fatal = asyncio.Event()
    fatal_reason: list[str] = []

    def on_fatal(reason: str) -> None:
        fatal_reason.append(reason)
        loop.call_soon_threadsafe(fatal.set)

    on_commit = lambda _n, lat: state.observe_commit_latencies(lat)  # noqa: E731
    writer_args: dict[str, Any] = {
        "on_commit": on_commit,
        "on_failure": health.failed,
        "on_success": health.succeeded,
        "max_delay_s": config.writer_max_delay_s,
    }
    writer: BatchWriter = (
        ProcessStoreWriter(
            config.db_path,
            on_fatal=on_fatal,
            busy_timeout_s=config.store_busy_timeout_s,
            **writer_args,
        )
        if config.writer_process
        else StoreWriter(store, **writer_args)
    )
    undo.append(writer.close)
    ingest.on_devices = writer.update_devices
    sessions = SessionRegistry()
    jobs = JobService(store, state, sessions, clock_ns=clock_ns)
    loop = asyncio.get_running_loop()
    announced: set[asyncio.Future[None]] = set()

    def on_job(job_id: str) -> None:  # from the store's listener thread
        def deliver() -> None:
            task = asyncio.ensure_future(jobs.on_job_announced(job_id))
            announced.add(task)
            task.add_done_callback(announced.discard)

        loop.call_soon_threadsafe(deliver)

    stop_listening = store.listen_jobs(on_job)
    undo.append(stop_listening)

    maintenance = _start_maintenance(config, state)
    if maintenance is not None:
        undo.append(maintenance.stop)

    def refresh_counters() -> None:
        """Bring what the main process keeps outside the state into its counters."""
        view = health.view()
        restarts = {"store_writer": getattr(writer, "restarts", 0)}
        if exporter_box[0] is not None:
            restarts["exporter"] = exporter_box[0].restarts
        if maintenance is not None:
            restarts["maintenance"] = maintenance.restarts

        def put(c: Counters) -> None:
            c.store_up = view.serving
            c.store_episodes = view.episodes_total
            c.store_failed_commits = view.failed_batches_total
            c.child_restarts = restarts

        state.count(put)

    exporter: ExporterProcess | None = None
    http: HttpServer | None = None
    try:
        if config.exporter_process:
            exporter = ExporterProcess(
                ExporterConfig(
                    http_host,
                    http_port,
                    config.db_path,
                    config.staleness_s,
                    logging.getLogger().getEffectiveLevel(),
                ),
                state,
                health.view,
                refresh_counters,
            )
            exporter_box[0] = exporter
            exporter.start()  # spawned from the main thread: see flopwatt.children
            undo.append(exporter.stop)
            bound_http = exporter.port
        else:
            metrics = FleetMetrics(
                state,
                staleness_s=config.staleness_s,
                clock_ns=clock_ns,
                connected_only=is_postgres(config.db_path),
            )

            def render() -> bytes:
                refresh_counters()
                state.count(
                    lambda c: c.metrics_scrapes.update(main=c.metrics_scrapes.get("main", 0) + 1)
                )
                return metrics.render_bytes()

            http = HttpServer(http_host, http_port, render, lambda: True)
            http.routes["/healthz"] = lambda _query: (
                (200, "text/plain", b"ok\n")
                if health.serving
                else (503, "text/plain", f"not serving: {health.view().reason}\n".encode())
            )
            http.routes["/report"] = report_route(config.db_path, clock_ns=clock_ns)
            http.start()
            undo.append(http.stop)
            bound_http = http.port
    except (ExporterStartError, OSError) as exc:
        raise StartError(str(exc)) from None
    ingest.announce_all()

    server = grpc.aio.server(
        interceptors=[AuthInterceptor(auth)],
        options=server_options(config.max_message_bytes),
    )
    server.add_generic_rpc_handlers(
        (agent_service_handler(AgentServicer(ingest, writer, sessions, jobs, auth, health)),)
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(  # type: ignore[no-untyped-call]
        AdminServicer(ingest, jobs), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(grpc_health, server)
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
    undo.append(lambda: asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(5))
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if health.serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in _SERVICES:
        await grpc_health.set(service, status)
    tasks = [asyncio.create_task(_probe_while_unhealthy(store, writer, health))]
    running = RunningCollector(
        grpc_port=bound_grpc,
        http_port=bound_http,
        grpc_host=grpc_host if grpc_host != "0.0.0.0" else socket.gethostname(),
        http_host=http_host if http_host != "0.0.0.0" else socket.gethostname(),
        state=state,
        store=store,
        ingest=ingest,
        jobs=jobs,
        sessions=sessions,
        health=health,
        writer=writer,
        exporter=exporter,
        fatal=fatal,
        fatal_reason=fatal_reason,
        _server=server,
        _health=grpc_health,
        _http=http,
        _tasks=tasks,
        _stop_listening=stop_listening,
        maintenance=maintenance,
    )
    if not auth.enabled:
        # Only a loopback listener (or an explicit --allow-unauthenticated-remote) gets here:
        # on loopback, nothing beyond this machine can connect, so it is a note, not a warning.
        remote = not is_loopback(split_host_port(config.grpc_listen)[0])
        log.log(
            logging.WARNING if remote else logging.INFO,
            "no credentials configured: agents and admins are not authenticated (listening on %s)",
            config.grpc_listen,
        )
    log.info(
        "collector listening: gRPC %s:%d, HTTP %s:%d (/metrics, /healthz, /report), db %s",
        grpc_host,
        bound_grpc,
        http_host,
        bound_http,
        describe_db(config.db_path),
    )
    return running
