#!/usr/bin/env python3
"""Model efficiency on the CPU: runs
``flopwatt bench model --model resnet50,vit_b_16 --batch 1,8 --device cpu --json`` as a
subprocess and prints its table (efficiency against the CPU's own measured fp32 GEMM peak) and
the command's total wall time (target ≤ 3 min).

By default the command gets a fresh, empty peak cache, so the wall time includes measuring the
GEMM peak (the cold, worst case); ``--cache-dir`` points it at an existing cache instead.

Usage: python bench/model_efficiency.py [--cache-dir DIR] [--runs N] [--warmup N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def flopwatt_command() -> list[str]:
    script = Path(sys.executable).with_name("flopwatt")
    if script.exists():
        return [str(script)]
    found = shutil.which("flopwatt")
    return [found] if found else [sys.executable, "-m", "flopwatt"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="existing peak cache (default: fresh)")
    parser.add_argument("--runs", default=None, help="pass --runs to the command")
    parser.add_argument("--warmup", default=None, help="pass --warmup to the command")
    args = parser.parse_args()

    command = [*flopwatt_command(), "bench", "model", "--model", "resnet50,vit_b_16"]
    command += ["--batch", "1,8", "--device", "cpu", "--json"]
    if args.runs:
        command += ["--runs", args.runs]
    if args.warmup:
        command += ["--warmup", args.warmup]
    with tempfile.TemporaryDirectory(prefix="flopwatt-bench-") as fresh:
        cache_dir = args.cache_dir or fresh
        command += ["--cache-dir", cache_dir]
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
        print(f"load average at start: {os.getloadavg()}")
        print("$ " + " ".join(command))
        start = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall_s = time.monotonic() - start
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        sys.exit(f"flopwatt exited with {done.returncode}")
    rows = json.loads(done.stdout)
    first = next((r for r in rows if not r.get("error")), None)
    if first is not None:
        print(
            f"device: {first['device_name']} ({first['threads']} torch threads); peak "
            f"{first['peak_flops_per_s'] / 1e9:.1f} GFLOP/s fp32 ({first['peak_library']}, "
            f"{first['peak_source']}, measured {first['peak_measured_at']})"
        )
        print(f"peak method: {first['peak_method']}")
    print(
        f"\n{'model':<10} {'batch':>5} {'GFLOPs':>8} {'p50 ms':>9} {'p90 ms':>9} "
        f"{'GFLOP/s':>9} {'peak':>8} {'eff.':>6} {'AI':>5} {'bound':>8} {'J/inf':>7}"
    )
    for r in rows:
        if r.get("error"):
            print(f"{r['model']:<10} {r['batch']:>5} failed ({r['stage']}): {r['error']}")
            continue
        energy = r["energy_per_inference_j"]
        print(
            f"{r['model']:<10} {r['batch']:>5} {r['flops'] / 1e9:>8.2f} "
            f"{r['latency_ms_p50']:>9.1f} {r['latency_ms_p90']:>9.1f} "
            f"{r['delivered_flops_per_s'] / 1e9:>9.1f} {r['peak_flops_per_s'] / 1e9:>8.1f} "
            f"{r['efficiency']:>6.1%} {r['arithmetic_intensity_flops_per_byte']:>5.0f} "
            f"{r['roofline_bound']:>8} {'—' if energy is None else f'{energy:.3g}':>7}"
        )
    print(f"\nload average at end: {os.getloadavg()}")
    verdict = "OK" if wall_s <= 180 else "OVER TARGET"
    print(f"wall time of the command: {wall_s:.1f} s (target ≤ 180 s: {verdict})")


if __name__ == "__main__":
    main()
