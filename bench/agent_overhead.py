#!/usr/bin/env python3
"""Agent overhead: one agent process with 8 simulated GPUs sampled at 10 Hz, streaming to a real
collector, for ≥ 60 s. Prints the agent's CPU use (% of one core, total and per GPU), its RSS,
the per-tick sampling cost (reading every device once), and whether torch was loaded.

Target: ≤ 0.5 % of one core per GPU, RSS ≤ 100 MB with torch not loaded in the agent process.

H100 sims report GPM pipe activity (a ``--workload``, by default a training job at 42 % MFU)
and health counters every tick, as a Hopper GPU does through NVML. Attribution is on (as by
default): every ``--attribution-interval`` seconds the agent lists each GPU's processes and the
pod holding it (every GPU is allocated to a simulated pod), sends a message when they change and
at least every ``--attribution-refresh`` seconds; the figures include its cost, and the mean
cost of one attribution read is printed. (The sim's process list costs no NVML calls; on real
GPUs a read is two NVML calls per GPU, every 5 s rather than every tick.)

Usage: python bench/agent_overhead.py [--seconds 60] [--gpus 8] [--hz 10] [--workload train:0.42]
                                      [--attribution-interval 5] [--attribution-refresh 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AGENT = r"""
import asyncio, json, os, resource, sys, time
from pathlib import Path
from flopwatt.agent.agent import Agent, AgentConfig
from flopwatt.agent.devices.sim import SimBackend
from flopwatt.channel import ClientCredentials

target, spool = sys.argv[1], sys.argv[2]
seconds, gpus, hz = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
workloads = [w for w in sys.argv[6].split(",") if w]
attribution_s, refresh_s = float(sys.argv[7]), float(sys.argv[8])
backend = SimBackend.from_options(
    sku="H100-SXM5-80GB", gpus=gpus, seed=1, host="bench-node", workloads=workloads,
    pods=[f"bench/job-{i // 4}/worker@{i}" for i in range(gpus)],
)
config = AgentConfig(
    "bench-node", ClientCredentials(target), Path(spool), interval_s=1 / hz,
    attribution_interval_s=attribution_s, attribution_refresh_s=refresh_s,
)
agent = Agent(config, backend)
reads = []
if agent.attributor is not None:
    untimed = agent.attributor.tick
    def timed_tick():
        t = time.perf_counter()
        try:
            return untimed()
        finally:
            reads.append(time.perf_counter() - t)
    agent.attributor.tick = timed_tick

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

async def main():
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(5)  # warm-up: registration, first batches
    t0, c0 = time.monotonic(), os.times()
    ticks0 = len(agent.sampler.tick_seconds)
    peak = 0
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(1)
        peak = max(peak, rss())
    t1, c1 = time.monotonic(), os.times()
    ticks = agent.sampler.tick_seconds[ticks0:]
    stop.set()
    await task
    print(json.dumps({
        "wall_s": t1 - t0,
        "cpu_s": (c1.user + c1.system) - (c0.user + c0.system),
        "rss_bytes_peak": peak,
        "ticks": len(ticks),
        "tick_mean_s": sum(ticks) / max(len(ticks), 1),
        "tick_p99_s": sorted(ticks)[int(0.99 * len(ticks))] if ticks else None,
        "missed_ticks": agent.sampler.missed_ticks_total,
        "acked_messages": agent.uplink.stats.acked_messages,
        "torch_loaded": "torch" in sys.modules,
        "attribution_reads": len(reads),
        "attribution_read_mean_s": sum(reads) / max(len(reads), 1),
        "attribution_sent": agent.attributor.sent_total if agent.attributor else 0,
        "numpy_loaded": "numpy" in sys.modules,
    }))

asyncio.run(main())
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument(
        "--workload",
        default="train:0.42",
        help="sim workload of every GPU (its GPM activity is sampled and shipped with the "
        "health counters; '' for none)",
    )
    ap.add_argument(
        "--attribution-interval",
        type=float,
        default=5.0,
        help="how often processes and pods are read (s); 0 turns attribution off",
    )
    ap.add_argument("--attribution-refresh", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="flopwatt-agent-bench-") as tmp_s:
        tmp = Path(tmp_s)
        collector = subprocess.Popen(
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
                str(tmp / "c.db"),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert collector.stdout is not None
        ready = collector.stdout.readline()
        target = ready.split("grpc=")[1].split()[0]
        try:
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    AGENT,
                    target,
                    str(tmp / "spool.db"),
                    str(args.seconds),
                    str(args.gpus),
                    str(args.hz),
                    args.workload,
                    str(args.attribution_interval),
                    str(args.attribution_refresh),
                ],
                capture_output=True,
                text=True,
                timeout=args.seconds + 120,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
        finally:
            collector.send_signal(signal.SIGTERM)
            collector.communicate(timeout=30)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return 1
    r = json.loads(out.stdout.strip().splitlines()[-1])
    cpu_pct = 100 * r["cpu_s"] / r["wall_s"]
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    print(
        f"agent: {args.gpus} simulated H100 GPUs (GPM + health counters, workload "
        f"{args.workload or 'none'}) sampled at {args.hz:g} Hz for {r['wall_s']:.0f} s "
        f"({r['acked_messages']} batches acked by a real collector)"
    )
    if args.attribution_interval > 0:
        print(
            f"  attribution every {args.attribution_interval:g} s (refresh "
            f"{args.attribution_refresh:g} s, every GPU in a pod): {r['attribution_reads']} "
            f"reads, mean {1e3 * r['attribution_read_mean_s']:.3f} ms each, "
            f"{r['attribution_sent']} messages sent"
        )
    else:
        print("  attribution off")
    print(
        f"  CPU {cpu_pct:.2f} % of one core = {cpu_pct / args.gpus:.3f} % per GPU "
        f"(target ≤ 0.5 % per GPU)"
    )
    print(
        f"  RSS peak {r['rss_bytes_peak'] / 2**20:.1f} MB (target ≤ 100 MB); "
        f"torch loaded: {r['torch_loaded']}"
    )
    print(
        f"  per tick (all {args.gpus} GPUs): mean {1e3 * r['tick_mean_s']:.3f} ms, "
        f"p99 {1e3 * (r['tick_p99_s'] or 0):.3f} ms; {r['ticks']} ticks, "
        f"{r['missed_ticks']} missed"
    )
    ok = cpu_pct / args.gpus <= 0.5 and r["rss_bytes_peak"] <= 100 * 2**20 and not r["torch_loaded"]
    print("  PASS" if ok else "  FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    time.sleep(0)
    sys.exit(main())
