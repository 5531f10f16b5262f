"""Agent farm: N real :class:`~flopwatt.agent.agent.Agent` objects (simulated GPUs) on one asyncio
loop, in their own process, so the fault suite can stop them cleanly (SIGTERM / SIGINT) or kill
them (SIGKILL) like a fleet of agent processes.

Run as ``python -m bench.faultlib.farm --target HOST:PORT --agents N --dir DIR --status FILE``.
Every 0.5 s it writes a status JSON file atomically (temporary file + rename)::

    {"pid": …, "t_mono": <time.monotonic() s>, "final": false,
     "agents": {"<hostname>": {"epoch": …, "last_sequence": …, "spool_messages": …,
                               "spool_bytes": …, "dropped_samples_total": …,
                               "killed_samples_total": …, "connected": …, "reconnects": …,
                               "acked_messages": …, "sent_messages": …, "last_error": "…"}}}

``time.monotonic()`` is system-wide on Linux, so the harness compares it with its own clock.
After a clean stop the file is written once more with ``"final": true``. Exit status 0 after a
clean stop.

One difference from a fleet of agent processes: the agents of a farm share gRPC's global
subchannel pool, so their channels to the same target share a few TCP connections rather than
one each (the proxy counts them). The streams are still one per agent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from flopwatt.agent.agent import Agent, AgentConfig
from flopwatt.agent.devices.sim import SimBackend
from flopwatt.agent.spool import Spool, SpoolStats
from flopwatt.channel import ClientCredentials

log = logging.getLogger("bench.faultlib.farm")

STATUS_INTERVAL_S = 0.5
"""How often the status file is rewritten (s)."""


def write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` so that a reader never sees a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def agent_status(agent: Agent, stats: SpoolStats, last_sequence: int) -> dict[str, Any]:
    """One agent's line of the status file (spool size, uplink counters, epoch)."""
    up = agent.uplink.stats
    return {
        "epoch": agent.epoch,
        "last_sequence": last_sequence,
        "spool_messages": stats.messages,
        "spool_bytes": stats.payload_bytes,
        "dropped_samples_total": stats.dropped_samples_total,
        "killed_samples_total": stats.killed_samples_total,
        "connected": up.connected,
        "reconnects": up.reconnects,
        "acked_messages": up.acked_messages,
        "sent_messages": up.sent_messages,
        "last_error": up.last_error,
    }


def snapshot(agents: list[Agent]) -> dict[str, Any]:
    """Status of every running agent (reads each spool: call off the event loop)."""
    out: dict[str, Any] = {}
    for a in agents:
        stats = a.spool.stats()
        last = a.spool.produced().get(a.epoch, 0)
        out[a.config.hostname] = agent_status(a, stats, last)
    return out


def final_snapshot(agents: list[Agent]) -> dict[str, Any]:
    """Status after every agent's :meth:`Agent.run` returned (each spool is reopened: the agent
    closed it)."""
    out: dict[str, Any] = {}
    for a in agents:
        spool = Spool(a.config.spool_path)
        try:
            out[a.config.hostname] = agent_status(
                a, spool.stats(), spool.produced().get(a.epoch, 0)
            )
        finally:
            spool.close()
    return out


def build_agents(args: argparse.Namespace) -> list[Agent]:
    """The farm's agents: ``{prefix}-{i:03d}``, seeds ``seed_base + i``, one spool file each."""
    creds = ClientCredentials(args.target)
    # The product's reconnect backoff unless the case asks for another.
    backoff = {}
    if args.backoff_base is not None:
        backoff["backoff_base_s"] = args.backoff_base
    if args.backoff_cap is not None:
        backoff["backoff_cap_s"] = args.backoff_cap
    agents = []
    for i in range(args.agents):
        name = f"{args.prefix}-{i:03d}"
        backend = SimBackend.from_options(
            sku=args.sku, gpus=args.gpus, seed=args.seed_base + i, host=name
        )
        config = AgentConfig(
            hostname=name,
            collector=creds,
            spool_path=args.dir / f"spool-{name}.db",
            spool_max_bytes=args.spool_max_bytes,
            interval_s=0.1,
            batch_interval_s=1.0,
            **backoff,
        )
        agents.append(Agent(config, backend))
    return agents


async def run_farm(args: argparse.Namespace) -> None:
    """Run the agents until SIGTERM / SIGINT, writing the status file meanwhile."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.start_at:
        # A shared wall-clock start (a registration storm with other processes).
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
    agents = await asyncio.to_thread(build_agents, args)
    log.info("farm: %d agents × %d %s GPUs → %s", len(agents), args.gpus, args.sku, args.target)
    tasks = [asyncio.create_task(a.run(stop, drain_s=args.drain)) for a in agents]

    async def report() -> None:
        while not stop.is_set():
            agents_status = await asyncio.to_thread(snapshot, agents)
            status = {
                "pid": os.getpid(),
                "t_mono": time.monotonic(),
                "final": False,
                "agents": agents_status,
            }
            await asyncio.to_thread(write_json_atomic, args.status, status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_INTERVAL_S)

    reporter = asyncio.create_task(report())
    await stop.wait()
    log.info("farm: stopping")
    # The reporter must not read a spool after its agent closed it.
    await asyncio.gather(reporter, return_exceptions=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for agent, result in zip(agents, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("agent %s ended with %r", agent.config.hostname, result)
    status = {
        "pid": os.getpid(),
        "t_mono": time.monotonic(),
        "final": True,
        "agents": final_snapshot(agents),
    }
    write_json_atomic(args.status, status)
    log.info("farm: stopped")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--target", required=True, help="collector (or proxy) HOST:PORT")
    ap.add_argument("--agents", type=int, required=True)
    ap.add_argument("--gpus", type=int, default=8, help="simulated GPUs per agent")
    ap.add_argument("--sku", default="H100-SXM5-80GB")
    ap.add_argument("--prefix", default="farm", help="hostname prefix")
    ap.add_argument("--seed-base", type=int, default=0)
    ap.add_argument("--dir", type=Path, required=True, help="directory of the spool files")
    ap.add_argument("--status", type=Path, required=True, help="status JSON file")
    ap.add_argument("--spool-max-bytes", type=int, default=256 * 1024 * 1024)
    ap.add_argument("--backoff-base", type=float, default=None, help="reconnect backoff base (s)")
    ap.add_argument("--backoff-cap", type=float, default=None, help="reconnect backoff cap (s)")
    ap.add_argument("--drain", type=float, default=5.0, help="delivery drain at stop (s)")
    ap.add_argument("--start-at", type=float, default=0.0, help="wall-clock start (Unix s)")
    ap.add_argument("--log-level", default="info")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args.dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(run_farm(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
