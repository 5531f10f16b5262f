#!/usr/bin/env python3
"""Store growth under retention: N sim agents × 8 GPUs × 10 Hz stream into a real collector
(its own process, SQLite) for M minutes with short horizons; the store's size must level off.

Every ``--every`` seconds it prints the file size (database + WAL) and, per retention tier
(from ``flopwatt store stats --json``), bytes, rows, samples and bytes per sample. At the end:

* bytes per raw sample on disk, all overhead included (compact chunks, the fresh per-message
  chunks not yet compacted, the message ledger, indexes), measured once the raw tier is full;
* bytes per GPU-second of each rollup tier;
* the extrapolation to 1,000 GPUs at 10 Hz for a year with the default horizons
  (raw 7 d, 10 s 90 d, 1 min 400 d), and what raw data alone would take for a year.

Usage:
    python bench/store_growth.py                          # 20 agents, 8 min, raw=2m
    python bench/store_growth.py --agents 50 --minutes 12 --retention raw=3m,10s=6m,1m=9m
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.faultlib.processes import CollectorProcess, ManagedProcess, flopwatt_command
from flopwatt.store.retention import (
    DEFAULT_HORIZONS_S,
    Retention,
    format_duration,
)

GPUS_PER_AGENT = 8
HZ = 10.0
FLEET_GPUS = 1000
YEAR_S = 365 * 86_400


def store_stats(db: Path) -> dict[str, Any]:
    out = subprocess.run(
        [*flopwatt_command(), "store", "stats", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return dict(json.loads(out.stdout))


def file_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--retention", default="raw=2m,10s=4m,1m=6m")
    ap.add_argument("--interval", type=float, default=15.0, help="maintenance pass interval (s)")
    ap.add_argument("--every", type=float, default=30.0, help="print a line this often (s)")
    args = ap.parse_args()
    retention = Retention.parse(args.retention)
    gpus = args.agents * GPUS_PER_AGENT
    print(
        f"machine: {os.cpu_count()} CPUs; {args.agents} sim agents × {GPUS_PER_AGENT} GPUs × "
        f"{HZ:g} Hz = {gpus * HZ:,.0f} samples/s for {args.minutes:g} min; retention "
        f"{retention.describe()}; a maintenance pass every {args.interval:g} s"
    )
    with tempfile.TemporaryDirectory(prefix="flopwatt-growth-") as tmp_s:
        tmp = Path(tmp_s)
        db = tmp / "growth.db"
        collector = CollectorProcess(db, tmp)
        collector.argv += [
            "--retention",
            args.retention,
            "--maintenance-interval",
            str(args.interval),
            "--maintenance-settle",
            str(args.interval),
            "--log-level",
            "warning",
        ]
        collector.start_and_wait()
        farm = ManagedProcess(
            "farm",
            [
                sys.executable,
                "-m",
                "bench.faultlib.farm",
                "--target",
                collector.grpc_address,
                "--agents",
                str(args.agents),
                "--gpus",
                str(GPUS_PER_AGENT),
                "--dir",
                str(tmp / "farm"),
                "--status",
                str(tmp / "farm.json"),
                "--log-level",
                "warning",
            ],
            tmp,
        )
        farm.start()
        t0 = time.monotonic()
        header = (
            f"{'t (s)':>6} {'file MiB':>9} │ {'raw MiB':>8} {'samples':>10} {'B/sample':>8} "
            f"{'oldest':>7} │ {'10s MiB':>8} {'oldest':>7} │ {'1m MiB':>7} {'oldest':>7}"
        )
        print(header)
        last: dict[str, Any] = {}
        try:
            end = t0 + args.minutes * 60
            while time.monotonic() < end:
                time.sleep(min(args.every, max(0.0, end - time.monotonic())))
                last = store_stats(db)
                tiers = last["tiers"]

                def age(t: dict[str, Any]) -> str:
                    a = t["oldest_age_s"]
                    return "—" if a is None else f"{a:.0f}s"

                raw, r10, r1 = tiers["raw"], tiers["10s"], tiers["1m"]
                bps = raw["bytes_per_sample"]
                print(
                    f"{time.monotonic() - t0:6.0f} {file_bytes(db) / 2**20:9.1f} │ "
                    f"{raw['bytes'] / 2**20:8.2f} {raw['samples']:10,} "
                    f"{'—' if bps is None else f'{bps:.2f}':>8} {age(raw):>7} │ "
                    f"{r10['bytes'] / 2**20:8.2f} {age(r10):>7} │ "
                    f"{r1['bytes'] / 2**20:7.2f} {age(r1):>7}",
                    flush=True,
                )
        finally:
            farm.stop(timeout_s=30)
            collector.stop(timeout_s=30)
            farm.close()
            collector.close()
        summarise(last, gpus, retention)
    return 0


def summarise(stats: dict[str, Any], gpus: int, retention: Retention) -> None:
    """Bytes per sample / per GPU-second per tier, and the fleet-year extrapolation."""
    tiers = stats["tiers"]
    raw = tiers["raw"]
    tables = {t["table"]: t for t in stats["tables"]}
    fresh, packed = tables["telemetry_chunks"], tables["telemetry_packed"]
    print(
        f"raw tier: {raw['bytes'] / 2**20:.1f} MiB for {raw['samples']:,} samples = "
        f"{raw['bytes_per_sample']:.2f} B/sample, all overhead included; of them "
        f"{fresh['samples']:,} not compacted yet (the newest settle + interval seconds, "
        f"{(fresh['bytes'] or 0) / max(fresh['samples'], 1):.1f} B/sample)"
    )
    # Once compacted: the compact chunks with their index, plus the message ledger (every
    # raw sample's share of it) — what a long raw horizon costs per sample.
    ledger = sum(tables[t]["bytes"] or 0 for t in ("messages", "telemetry_tails"))
    raw_bps = (packed["bytes"] or 0) / max(packed["samples"], 1) + ledger / max(raw["samples"], 1)
    print(
        f"compacted raw data: {(packed['bytes'] or 0) / max(packed['samples'], 1):.2f} B/sample "
        f"in compact chunks + {ledger / max(raw['samples'], 1):.2f} B/sample of message ledger "
        f"= {raw_bps:.2f} bytes per 12-column sample on disk (goal ≤ 8, target ≤ 20)"
    )
    per_gpu_s: dict[str, float] = {}
    for name in ("10s", "1m"):
        t = tiers[name]
        covered_s = (t["oldest_age_s"] or 0) - (t["newest_age_s"] or 0)
        if t["bytes"] and covered_s > 0:
            per_gpu_s[name] = t["bytes"] / (gpus * covered_s)
            print(
                f"{name} tier: {t['bytes'] / 2**20:.2f} MiB for {gpus} GPUs over "
                f"{covered_s:.0f} s = {per_gpu_s[name]:.2f} bytes per GPU-second "
                f"({per_gpu_s[name] * 86_400 / 2**20:.2f} MiB per GPU-day)"
            )
    results = tiers["results"]
    print(f"results tier: {results['bytes'] / 2**20:.2f} MiB ({results['rows']:,} rows)")
    if len(per_gpu_s) < 2:
        print("not enough data to extrapolate (run longer than the 1m horizon)")
        return
    defaults = Retention()
    raw_total = raw_bps * HZ * FLEET_GPUS * defaults.horizon_s("raw")
    r10 = per_gpu_s["10s"] * FLEET_GPUS * defaults.horizon_s("10s")
    r1 = per_gpu_s["1m"] * FLEET_GPUS * defaults.horizon_s("1m")
    total = raw_total + r10 + r1
    print(
        f"extrapolated to {FLEET_GPUS:,} GPUs × {HZ:g} Hz, a year, default horizons "
        f"(raw {format_duration(DEFAULT_HORIZONS_S['raw'])}, 10s "
        f"{format_duration(DEFAULT_HORIZONS_S['10s'])}, 1m "
        f"{format_duration(DEFAULT_HORIZONS_S['1m'])}): raw {raw_total / 1e9:.0f} GB + 10 s "
        f"{r10 / 1e9:.0f} GB + 1 min {r1 / 1e9:.0f} GB = {total / 1e9:.0f} GB, level after "
        f"{format_duration(defaults.horizon_s('1m'))} (results grow with jobs run, not time)"
    )
    year = raw_bps * HZ * FLEET_GPUS * YEAR_S
    print(
        f"for comparison, a year of raw samples kept whole: {year / 1e12:.1f} TB at "
        f"{raw_bps:.2f} B/sample ({92.0 * HZ * FLEET_GPUS * YEAR_S / 1e12:.0f} TB at the "
        f"91.5 B/sample stored before compaction)"
    )
    _ = retention


if __name__ == "__main__":
    sys.exit(main())
