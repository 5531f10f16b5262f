#!/usr/bin/env python3
"""Compaction throughput: how many telemetry samples per second one maintenance process
re-packs into compact chunks and rolls up (10 s and 1 min), on one core, with no other load.

Fills a store (SQLite file, or ``--db postgresql://…``) with A agents × 8 GPUs × 10 Hz for S
seconds of realistic telemetry (NVML resolution: mW, mJ, whole °C and %, noise, a power-cap
throttle 10 % of the time), one message per agent per second as agents send them, then times
``Maintainer.compact`` over all of it and prints samples/s, the bytes per sample packed and
the store's bytes per sample before and after. ``--profile`` prints where the time goes.

The collector's target load is 80,000 samples/s (1,000 GPUs at 10 Hz × 8, see
``bench/collector_ingest.py``): compaction keeps up with a fleet when its throughput exceeds
the fleet's sample rate on the core the maintenance process gets.

Usage:
    python bench/compaction.py                       # 25 agents (200 GPUs), 60 s
    python bench/compaction.py --agents 50 --seconds 120 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``flopwatt`` importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flopwatt.records import DeviceInfo, NodeInfo, SeriesBlock
from flopwatt.store import open_store
from flopwatt.store.base import MessageWrite, Registration
from flopwatt.store.maintenance import Maintainer, MaintenanceConfig
from flopwatt.store.retention import Retention

S = 1_000_000_000
T0 = 1_764_997_200 * S
GPUS = 8
HZ = 10


def fill(db: str, agents: int, seconds: int, seed: int = 1) -> int:
    """Write the telemetry; returns the samples written."""
    store = open_store(db)
    rng = np.random.default_rng(seed)
    regs = []
    for a in range(agents):
        node = NodeInfo(hostname=f"node-{a}", agent_version="bench", device_backend="sim")
        devs = tuple(
            DeviceInfo(uuid=f"GPU-{a}-{g}", index=g, name="NVIDIA H100 80GB HBM3", simulated=True)
            for g in range(GPUS)
        )
        regs.append(Registration(node, devs, a + 1, {}, T0))
    store.register_agents(regs)
    energy = np.full((agents, GPUS), 1e6)
    writes: list[MessageWrite] = []
    n = GPUS * HZ
    for sec in range(seconds):
        for a in range(agents):
            ts = T0 + sec * S + np.arange(HZ) * (S // HZ) + rng.integers(0, 10**6, HZ)
            power = np.round(650 + rng.normal(0, 15, n), 3)
            steps = power.reshape(GPUS, HZ) / HZ  # J per 0.1 s sample
            e = energy[a][:, None] + np.cumsum(steps, axis=1)
            energy[a] = e[:, -1]
            cols = {
                "power_instant_w": power,
                "power_average_1s_w": np.round(power - 2, 3),
                "energy_j": np.round(e.reshape(-1), 3),
                "sm_clock_mhz": (1980 - rng.integers(0, 3, n) * 15).astype(np.uint32),
                "mem_clock_mhz": np.full(n, 2619, dtype=np.uint32),
                "gpu_temperature_c": np.round(60 + rng.normal(0, 1, n)).astype(np.float32),
                "memory_temperature_c": np.round(70 + rng.normal(0, 1, n)).astype(np.float32),
                "gpu_utilization_ratio": (rng.integers(90, 101, n) / 100).astype(np.float32),
                "memory_utilization_ratio": (rng.integers(40, 60, n) / 100).astype(np.float32),
                "throttle_reasons": np.where(rng.random(n) < 0.1, 4, 0).astype(np.uint64),
                "power_limit_w": np.full(n, 700.0),
                "memory_used_bytes": np.full(n, 60 * 2**30, dtype=np.uint64),
            }
            block = SeriesBlock(
                tuple(f"GPU-{a}-{g}" for g in range(GPUS)),
                np.arange(GPUS + 1, dtype=np.int64) * HZ,
                np.tile(ts, GPUS).astype(np.int64),
                cols,
            )
            writes.append(
                MessageWrite(
                    f"node-{a}", a + 1, sec + 1, "telemetry", bytes(16), T0 + sec * S,
                    blocks=(block,),
                )
            )  # fmt: skip
        if len(writes) >= 200:
            store.apply(writes)
            writes = []
    if writes:
        store.apply(writes)
    store.close()
    return agents * GPUS * HZ * seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--agents", type=int, default=25)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--db", default=None, help="a PostgreSQL DSN (default: a temporary SQLite)")
    ap.add_argument("--profile", action="store_true", help="print the 25 costliest calls")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "compaction.db")
        t = time.perf_counter()
        samples = fill(db, args.agents, args.seconds)
        print(
            f"filled {samples:,} samples ({args.agents} agents × {GPUS} GPUs × {HZ} Hz × "
            f"{args.seconds} s) in {time.perf_counter() - t:.1f} s"
        )
        now = T0 + (args.seconds + 3600) * S
        m = Maintainer(
            db, MaintenanceConfig(retention=Retention(), settle_s=0), clock_ns=lambda: now
        )
        prof = cProfile.Profile() if args.profile else None
        try:
            cpu0, t0 = time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            m.compact(now)
            if prof:
                prof.disable()
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        finally:
            m.close()
        tot = m.totals
        print(
            f"compacted {tot.compacted_samples:,} samples of {tot.compacted_messages:,} messages "
            f"in {wall:.2f} s wall, {cpu:.2f} s CPU of this process: "
            f"{tot.compacted_samples / wall:,.0f} samples/s "
            f"({tot.compacted_samples / max(cpu, 1e-9):,.0f} per CPU-second)"
        )
        print(
            f"packed data: {tot.compacted_packed_bytes / tot.compacted_samples:.2f} B/sample "
            f"(per-message chunks were {tot.compacted_source_bytes / tot.compacted_samples:.1f})"
        )
        if prof:
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
