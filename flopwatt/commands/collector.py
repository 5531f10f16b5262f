"""``flopwatt collector``: run the collector until SIGTERM / SIGINT (graceful stop ≤ 10 s)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import click

from flopwatt.channel import TokenFileError
from flopwatt.collector.gc_policy import tune_gc
from flopwatt.collector.server import CollectorConfig, ConfigError, StartError, run_server
from flopwatt.records import AgentSettings
from flopwatt.store import is_postgres
from flopwatt.store.retention import Retention, RetentionError, parse_size_bytes

DEFAULT_RETENTION = Retention().describe()

log = logging.getLogger("flopwatt.collector")


def setup_logging(level: str) -> None:
    """Log to stderr with timestamps (stdout is kept for machine-readable lines)."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


_path = click.Path(dir_okay=False, path_type=Path)


@click.command("collector")
@click.option(
    "--grpc-listen",
    default="127.0.0.1:50051",
    show_default=True,
    help="HOST:PORT for agents and the admin API (port 0 = pick a free one).",
)
@click.option(
    "--http-listen",
    default="127.0.0.1:9464",
    show_default=True,
    help="HOST:PORT for /metrics and /healthz.",
)
@click.option(
    "--db",
    "db_path",
    envvar="FLOPWATT_DB",
    default="flopwatt-data/flopwatt.db",
    show_default=True,
    help="The store: a SQLite file (created if missing) or a PostgreSQL database "
    "(postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, shared by collector replicas). "
    "Also from FLOPWATT_DB.",
)
@click.option(
    "--agent-token-file", type=_path, default=None, help="Agent tokens: 'hostname token' per line."
)
@click.option(
    "--admin-token-file",
    type=_path,
    default=None,
    help="Admin tokens for the fleet API: one per line.",
)
@click.option("--tls-cert", type=_path, default=None, help="Server certificate (PEM).")
@click.option("--tls-key", type=_path, default=None, help="Server private key (PEM).")
@click.option(
    "--tls-client-ca",
    type=_path,
    default=None,
    help="CA for client certificates: enables mutual TLS.",
)
@click.option(
    "--allow-unauthenticated-remote",
    is_flag=True,
    help="Listen beyond loopback without credentials (trusted networks only).",
)
@click.option(
    "--staleness",
    "staleness_s",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds of silence after which an agent's GPU series disappear from /metrics.",
)
@click.option(
    "--sample-interval",
    "sample_interval_s",
    type=click.FloatRange(min=0.01),
    default=0.1,
    show_default=True,
    help="Sampling period agents are told to use (s).",
)
@click.option(
    "--store-busy-timeout",
    "store_busy_timeout_s",
    type=click.FloatRange(min=0.01),
    default=10.0,
    show_default=True,
    help="Seconds a commit waits for another process's lock on the database before it fails "
    "(the collector then reports NOT_SERVING until it can commit again).",
)
@click.option(
    "--retention",
    "retention_text",
    default=DEFAULT_RETENTION,
    show_default=True,
    metavar="TIER=HORIZON,…",
    help="How long each tier of the store keeps its data: raw (samples as received), 10s and "
    "1m (rollups: min/mean/max/last per interval, energy as the exact counter delta, throttle "
    "seconds per reason), results (job results, comparisons, jobs, tombstones, rejected-sample "
    "counts; default the longest). Units s, m, h, d, w, y. Tiers not named keep their default.",
)
@click.option(
    "--max-db-bytes",
    "max_db_bytes_text",
    default="auto",
    show_default=True,
    metavar="SIZE|auto|off",
    help="Size cap of the store (e.g. 400G): at 90 % of it the oldest raw data (then "
    "rollups) is pruned early, back to 80 %, logged once per episode. auto: the SQLite "
    "file's size at start plus 80 % of the free space then (PostgreSQL: no cap); off: none.",
)
@click.option(
    "--maintenance-interval",
    "maintenance_interval_s",
    type=click.FloatRange(min=0.1),
    default=60.0,
    hidden=True,
    help="Seconds between store maintenance passes (benchmarks shorten it).",
)
@click.option(
    "--maintenance-settle",
    "maintenance_settle_s",
    type=click.FloatRange(min=0.0),
    default=60.0,
    hidden=True,
    help="Telemetry younger than this many seconds is left uncompacted.",
)
@click.option(
    "--ready-file",
    type=_path,
    default=None,
    help="Write the bound addresses as JSON here once serving.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def collector(
    grpc_listen: str,
    http_listen: str,
    db_path: str,
    agent_token_file: Path | None,
    admin_token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    allow_unauthenticated_remote: bool,
    staleness_s: float,
    sample_interval_s: float,
    store_busy_timeout_s: float,
    retention_text: str,
    max_db_bytes_text: str,
    maintenance_interval_s: float,
    maintenance_settle_s: float,
    ready_file: Path | None,
    log_level: str,
) -> None:
    """Run the collector: gRPC ingest into the store (SQLite or PostgreSQL), physics
    comparison, Prometheus metrics, and the store's retention (compaction, rollups, pruning).

    Prints one line 'ready grpc=HOST:PORT http=HOST:PORT' on stdout once serving. SIGTERM or
    Ctrl-C stops it gracefully (exit 0); it exits 1 when its store writer cannot be restarted.
    """
    setup_logging(log_level)
    try:
        retention = Retention.parse(retention_text)
        max_db_bytes = _max_db_bytes(max_db_bytes_text)
    except RetentionError as exc:
        raise click.BadParameter(str(exc)) from None
    config = CollectorConfig(
        grpc_listen=grpc_listen,
        http_listen=http_listen,
        db_path=db_path if is_postgres(db_path) else Path(db_path),
        agent_token_file=agent_token_file,
        admin_token_file=admin_token_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        allow_unauthenticated_remote=allow_unauthenticated_remote,
        staleness_s=staleness_s,
        store_busy_timeout_s=store_busy_timeout_s,
        settings=AgentSettings(sample_interval_s=sample_interval_s),
        retention=retention,
        max_db_bytes=max_db_bytes,
        maintenance_interval_s=maintenance_interval_s,
        maintenance_settle_s=maintenance_settle_s,
    )
    tune_gc()
    try:
        fatal = asyncio.run(_serve(config, ready_file))
    except (ConfigError, TokenFileError) as exc:
        raise click.UsageError(str(exc)) from None
    except (StartError, OSError) as exc:
        raise click.ClickException(f"cannot start the collector: {exc}") from None
    if fatal:
        log.error("collector stopped: %s", fatal)
        sys.exit(1)


def _max_db_bytes(text: str) -> int | None:
    """``auto`` → None (the default cap), ``off`` → 0 (none), else a size.

    Raises:
        RetentionError: not a size.
    """
    word = text.strip().lower()
    if word == "auto":
        return None
    if word in ("off", "none", "0"):
        return 0
    return parse_size_bytes(text)


async def _serve(config: CollectorConfig, ready_file: Path | None) -> str:
    """Serve until SIGTERM/SIGINT (returns "") or until the collector cannot go on (returns
    why, and the command exits 1 so that a supervisor restarts it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with run_server(config) as running:
        line = f"ready grpc={running.grpc_address} http={running.http_host}:{running.http_port}"
        click.echo(line)
        sys.stdout.flush()
        if ready_file is not None:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.write_text(
                json.dumps(
                    {
                        "grpc": running.grpc_address,
                        "http": f"{running.http_host}:{running.http_port}",
                    }
                )
            )
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(running.fatal.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if running.fatal.is_set():
            return "; ".join(running.fatal_reason) or "fatal error"
        log.info("signal received: stopping (NOT_SERVING, draining streams)")
    return ""
