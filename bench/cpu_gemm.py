#!/usr/bin/env python3
"""CPU GEMM burst: flopwatt's figure next to plain ``torch.matmul`` and ``numpy.matmul`` loops
measured in the same run at the same sizes.

For each precision (fp32, fp64) and square size, three measurements run in interleaved rounds
(so a noisy neighbour hurts all three alike): flopwatt's ``measure_burst`` (both BLAS builds,
best of short trials), a plain ``torch.matmul(a, b)`` loop and a plain ``numpy.matmul`` loop,
each timed with ``time.perf_counter`` as best of the same number of trials of the same minimum
length after a warm-up. FLOPs = 2·n³ throughout. Prints every figure, the spread of each, and
per precision the ratio flopwatt burst ÷ best plain loop (target ≥ 0.97), with the thread
counts and BLAS builds.

Usage: python bench/cpu_gemm.py [--sizes 1024,2048,4096] [--rounds 2] [--trials 5]
       (about 3 minutes on 2 cores with the defaults)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from flopwatt.agent.jobs.gemm import GemmConfig, measure_burst, parse_shape, software_info
from flopwatt.analysis.precision import Precision

MIN_TRIAL_S = 0.1
WARMUP_S = 0.3


def plain_loop(fn: Callable[[], object], flops: int, trials: int) -> list[float]:
    """FLOP/s of ``trials`` timed trials of back-to-back calls, after a warm-up."""
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < WARMUP_S or calls < 1:
        fn()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    iters = max(1, math.ceil(MIN_TRIAL_S / per_call))
    out = []
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        out.append(flops * iters / (time.perf_counter() - t0))
    return out


def plain_torch(n: int, precision: Precision, trials: int) -> list[float]:
    dtype = torch.float32 if precision is Precision.FP32 else torch.float64
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return plain_loop(lambda: torch.matmul(a, b), 2 * n**3, trials)


def plain_numpy(n: int, precision: Precision, trials: int) -> list[float]:
    dtype = np.float32 if precision is Precision.FP32 else np.float64
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=dtype)
    b = rng.standard_normal((n, n), dtype=dtype)
    return plain_loop(lambda: np.matmul(a, b), 2 * n**3, trials)


def spread(values: list[float]) -> str:
    return f"{(max(values) - min(values)) / max(values):.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048,4096")
    parser.add_argument("--precisions", default="fp32,fp64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    precisions = [Precision.parse(p) for p in args.precisions.split(",")]

    sw = software_info("cpu")
    print(f"machine: {sw.device_name}, {os.cpu_count()} logical CPUs, {platform.platform()}")
    print(f"load average at start: {os.getloadavg()}")
    print(f"torch {sw.torch_version}, numpy {np.__version__}; threads {sw.threads}")
    print(f"BLAS: {sw.blas}")
    print(f"{args.rounds} interleaved rounds × {args.trials} trials of ≥ {MIN_TRIAL_S} s each\n")

    started = time.monotonic()
    summary = []
    for precision in precisions:
        fw: dict[int, list[float]] = {n: [] for n in sizes}
        fw_lib: dict[int, dict[float, str]] = {n: {} for n in sizes}
        pt: dict[int, list[float]] = {n: [] for n in sizes}
        pn: dict[int, list[float]] = {n: [] for n in sizes}
        for round_ in range(args.rounds):
            for n in sizes:
                config = GemmConfig(
                    shapes=(parse_shape(str(n)),),
                    trials=args.trials,
                    min_trial_s=MIN_TRIAL_S,
                    warmup_s=WARMUP_S,
                )
                for i in range(3):  # rotate the order each round
                    which = ("flopwatt", "torch", "numpy")[(i + round_) % 3]
                    if which == "flopwatt":
                        _flopwatt(precision, n, config, fw, fw_lib)
                    elif which == "torch":
                        pt[n].extend(plain_torch(n, precision, args.trials))
                    else:
                        pn[n].extend(plain_numpy(n, precision, args.trials))
        print(f"{precision.value}: GFLOP/s, best (spread over all trials)")
        print(f"  {'n':>6} {'flopwatt':>18} {'plain torch':>18} {'plain numpy':>18} {'ratio':>7}")
        for n in sizes:
            best_fw, best_t, best_n = max(fw[n]), max(pt[n]), max(pn[n])
            lib = fw_lib[n][best_fw]
            print(
                f"  {n:>6} {best_fw / 1e9:>9.1f} ({lib:>5}) {spread(fw[n]):>4} "
                f"{best_t / 1e9:>12.1f} {spread(pt[n]):>5} {best_n / 1e9:>12.1f} "
                f"{spread(pn[n]):>5} {best_fw / max(best_t, best_n):>7.3f}"
            )
        burst = max(max(v) for v in fw.values())
        plain = max(max(max(v) for v in pt.values()), max(max(v) for v in pn.values()))
        winner = "torch" if max(max(v) for v in pt.values()) >= plain else "numpy"
        summary.append((precision, burst, plain, winner))
        print()
    print("burst per precision (best over sizes):")
    for precision, burst, plain, winner in summary:
        verdict = "OK" if burst / plain >= 0.97 else "BELOW TARGET"
        print(
            f"  {precision.value}: flopwatt {burst / 1e9:.1f} GFLOP/s, best plain loop "
            f"{plain / 1e9:.1f} GFLOP/s ({winner}); ratio {burst / plain:.3f} "
            f"(target ≥ 0.97: {verdict})"
        )
    print(f"\nload average at end: {os.getloadavg()}; wall time {time.monotonic() - started:.0f} s")


def _flopwatt(
    precision: Precision,
    n: int,
    config: GemmConfig,
    out: dict[int, list[float]],
    libs: dict[int, dict[float, str]],
) -> None:
    trials, _, _ = measure_burst(precision, "cpu", config)
    for t in trials:
        for value in t.trial_flops_per_s:
            out[n].append(value)
            libs[n][value] = t.library


if __name__ == "__main__":
    main()
