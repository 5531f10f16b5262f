"""The agent's own ``/metrics`` (optional): the standard ``process_*`` metrics, spool size,
dropped and rejected samples, reconnects and missed ticks, rendered at scrape time from the
agent's state."""

from __future__ import annotations

import os
import resource
import time

from flopwatt.agent.agent import Agent
from flopwatt.http_server import HttpServer
from flopwatt.metrics_spec import METRICS


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best available figure
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _start_time_s() -> float:
    """The process's start time (s since the Unix epoch), from /proc where it exists."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _STARTED_S


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


_STARTED_S = time.time()
"""Fallback start time: when this module was imported (early in the agent's start-up)."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(agent: Agent) -> bytes:
    """The agent's metrics in the Prometheus text format."""
    t = os.times()
    stats = agent.spool.stats()
    series: dict[str, dict[tuple[str, ...], float]] = {
        "process_cpu_seconds_total": {(): t.user + t.system},
        "process_resident_memory_bytes": {(): _rss_bytes()},
        "process_start_time_seconds": {(): _start_time_s()},
        "process_open_fds": {} if (fds := _open_fds()) is None else {(): fds},
        "flopwatt_agent_spool_bytes": {(): stats.payload_bytes},
        "flopwatt_agent_spool_messages": {(): stats.messages},
        "flopwatt_agent_dropped_samples_total": {
            ("spool_full",): stats.dropped_samples_total,
            ("too_large",): stats.oversized_samples_total,
            ("agent_stopped",): stats.killed_samples_total,
        },
        "flopwatt_agent_rejected_samples_total": {
            (reason,): n for reason, n in sorted(agent.uplink.stats.rejected_samples.items())
        },
        "flopwatt_agent_reconnects_total": {(): agent.uplink.stats.reconnects},
        "flopwatt_agent_missed_ticks_total": {(): agent.sampler.missed_ticks_total},
    }
    lines = []
    for m in METRICS:
        if m.scope != "agent":
            continue
        lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.type.value}"]
        for values, value in series[m.name].items():
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(m.labels, values, strict=True))
            lines.append(
                f"{m.name}{{{labels}}} {float(value)!r}" if labels else f"{m.name} {float(value)!r}"
            )
    return ("\n".join(lines) + "\n").encode()


def serve_agent_metrics(agent: Agent, listen: str) -> HttpServer:
    """Serve the agent's metrics on ``HOST:PORT`` (started; call ``stop()`` when done)."""
    host, _, port = listen.rpartition(":")
    server = HttpServer(host or "127.0.0.1", int(port), lambda: render(agent), lambda: True)
    server.start()
    return server
