"""``flopwatt agent``: sample this node's devices and stream to a collector until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import click

from flopwatt.channel import ClientCredentials, TokenFileError, read_token_file
from flopwatt.commands.collector import setup_logging
from flopwatt.http_server import HttpServer

log = logging.getLogger("flopwatt.agent")

_file = click.Path(dir_okay=False, path_type=Path, exists=True)


def default_hostname() -> str:
    """The node's name: ``NODE_NAME`` (Kubernetes downward API: the node, not the pod), else the
    host name."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


def _sku_choices() -> list[str]:
    from flopwatt.analysis.registry import load_registry

    return list(load_registry().skus)


@click.command("agent")
@click.option(
    "--collector",
    "target",
    default="127.0.0.1:50051",
    show_default=True,
    envvar="FLOPWATT_COLLECTOR",
    help="Collector gRPC HOST:PORT, or several comma-separated (replicas on one store): the "
    "agent moves to the next when a connection fails, its spool making the switch lossless. "
    "A host name with several addresses is tried address by address.",
)
@click.option(
    "--hostname",
    default=None,
    help="Node name to report (default: $NODE_NAME, else the host name).",
)
@click.option(
    "--device-backend",
    type=click.Choice(["auto", "nvml", "cpu", "sim"]),
    default="auto",
    show_default=True,
    help="Where devices come from.",
)
@click.option(
    "--sim-sku",
    default="H100-SXM5-80GB",
    show_default=True,
    help="Registry SKU the sim backend simulates.",
)
@click.option("--sim-gpus", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--sim-seed", type=int, default=0, show_default=True)
@click.option(
    "--sim-fault",
    "sim_faults",
    multiple=True,
    help="slow:FRACTION, power-cap:WATTS, lost-after:SECONDSs, stuck-power, xid:CODE (a "
    "critical XID seen, e.g. xid:79), ecc:COUNT (uncorrected ECC errors), row-remap (a row "
    "remapped for an uncorrectable error, pending a reset) or nvlink:COUNT (NVLink replays, "
    "SXM parts), each optionally @GPU_INDEX (repeatable).",
)
@click.option(
    "--sim-workload",
    "sim_workloads",
    multiple=True,
    help="What the simulated GPUs run besides flopwatt's jobs, seen through GPM on Hopper and "
    "newer: train:MFU, inference:MFU (MFU in (0, 1], e.g. train:0.42) or idle (allocated, "
    "computing nothing), each optionally @GPU_INDEX (repeatable).",
)
@click.option(
    "--sim-pod",
    "sim_pods",
    multiple=True,
    help="NAMESPACE/POD/CONTAINER@GPU_INDEX: the Kubernetes container a simulated GPU is "
    "allocated to, as the kubelet would say (repeatable; used when --kubelet-socket is auto).",
)
@click.option(
    "--kubelet-socket",
    default="auto",
    show_default=True,
    help="The kubelet pod-resources socket that says which pod/namespace/container holds each "
    "GPU (read-only): a path, 'none', or 'auto' (/var/lib/kubelet/pod-resources/kubelet.sock "
    "when it exists; the --sim-pod map on the sim backend).",
)
@click.option(
    "--attribution-interval",
    "attribution_interval_s",
    type=click.FloatRange(min=0, max=60),
    default=5.0,
    show_default=True,
    help="How often the processes (NVML) and pods using each GPU are read (s, at most 60); sent "
    "when they change and at least every 60 s. 0 turns attribution off.",
)
@click.option(
    "--spool",
    "spool_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Spool file (default: ./flopwatt-data/spool-HOSTNAME.db).",
)
@click.option(
    "--spool-max-mb",
    type=click.FloatRange(min=1),
    default=256,
    show_default=True,
    help="Spool size before the oldest telemetry is dropped (counted).",
)
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0.01),
    default=0.1,
    show_default=True,
    help="Sampling period (s); the collector may change it.",
)
@click.option(
    "--batch-interval",
    "batch_interval_s",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="How often a telemetry batch is sent (s).",
)
@click.option(
    "--token-file",
    type=_file,
    default=None,
    envvar="FLOPWATT_TOKEN_FILE",
    help="File holding this node's bearer token.",
)
@click.option("--tls-ca", type=_file, default=None, help="CA to verify the collector.")
@click.option("--tls-cert", type=_file, default=None, help="Client certificate (mutual TLS).")
@click.option("--tls-key", type=_file, default=None, help="Client key (mutual TLS).")
@click.option("--tls-server-name", default=None, help="Expected collector certificate name.")
@click.option(
    "--metrics-listen",
    default=None,
    help="HOST:PORT for the agent's own /metrics (off by default).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def agent(
    target: str,
    hostname: str | None,
    device_backend: str,
    sim_sku: str,
    sim_gpus: int,
    sim_seed: int,
    sim_faults: tuple[str, ...],
    sim_workloads: tuple[str, ...],
    sim_pods: tuple[str, ...],
    kubelet_socket: str,
    attribution_interval_s: float,
    spool_path: Path | None,
    spool_max_mb: float,
    interval_s: float,
    batch_interval_s: float,
    token_file: Path | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_server_name: str | None,
    metrics_listen: str | None,
    log_level: str,
) -> None:
    """Sample this node's devices (NVML GPUs, the CPU, or simulated GPUs) and stream telemetry
    and job results to a collector, keeping everything unacked in an on-disk spool."""
    setup_logging(log_level)
    from flopwatt.agent.agent import Agent, AgentConfig
    from flopwatt.agent.devices import open_backend
    from flopwatt.agent.devices.base import BackendUnavailable
    from flopwatt.agent.devices.sim import parse_fault
    from flopwatt.agent.devices.sim_workload import parse_pod, parse_workload

    host = hostname or default_hostname()
    if device_backend == "sim":
        if sim_sku not in _sku_choices():
            raise click.BadParameter(
                f"unknown SKU {sim_sku!r}; accepted: {', '.join(_sku_choices())}",
                param_hint="--sim-sku",
            )
        for fault in sim_faults:
            try:
                parse_fault(fault)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--sim-fault") from None
        for workload in sim_workloads:
            try:
                parse_workload(workload)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--sim-workload") from None
        for pod in sim_pods:
            try:
                parse_pod(pod)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--sim-pod") from None
    if kubelet_socket not in ("auto", "none") and not Path(kubelet_socket).exists():
        raise click.BadParameter(
            f"{kubelet_socket} does not exist (accepted: a socket path, auto or none)",
            param_hint="--kubelet-socket",
        )
    if token_file is not None:
        try:
            read_token_file(token_file)
        except TokenFileError as exc:
            raise click.BadParameter(str(exc), param_hint="--token-file") from None
    try:
        backend = open_backend(
            device_backend,
            sku=sim_sku,
            gpus=sim_gpus,
            seed=sim_seed,
            faults=list(sim_faults),
            workloads=list(sim_workloads),
            pods=list(sim_pods),
            host=host,
        )
    except (BackendUnavailable, ValueError) as exc:
        raise click.ClickException(f"device backend {device_backend}: {exc}") from None
    config = AgentConfig(
        hostname=host,
        collector=ClientCredentials(target, token_file, tls_ca, tls_cert, tls_key, tls_server_name),
        spool_path=spool_path or Path("flopwatt-data") / f"spool-{host}.db",
        spool_max_bytes=int(spool_max_mb * 1024 * 1024),
        interval_s=interval_s,
        batch_interval_s=batch_interval_s,
        attribution_interval_s=attribution_interval_s,
        kubelet_socket=kubelet_socket,
    )
    try:
        instance = Agent(config, backend)
    except ValueError as exc:
        backend.close()
        raise click.ClickException(str(exc)) from None
    log.info(
        "agent %s: %d %s device(s), epoch %d, collector %s, spool %s",
        host,
        len(instance.devices),
        backend.name,
        instance.epoch,
        target,
        config.spool_path,
    )
    from flopwatt.agent.self_metrics import serve_agent_metrics

    try:
        server = serve_agent_metrics(instance, metrics_listen) if metrics_listen else None
    except (OSError, ValueError) as exc:
        instance.spool.close()
        instance.backend.close()
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise click.ClickException(f"--metrics-listen {metrics_listen}: {detail}") from None
    asyncio.run(_run(instance, server))


async def _run(instance: object, server: HttpServer | None) -> None:
    from flopwatt.agent.agent import Agent

    assert isinstance(instance, Agent)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await instance.run(stop)
    finally:
        if server is not None:
            server.stop()
    sys.stdout.flush()
