#!/usr/bin/env python3
"""``/metrics`` render benchmark: a fleet of 1,000 agents × 8 GPUs built through the state's
public API, rendered by :meth:`FleetMetrics.render_text` as the exporter process does.

The state is built the way the collector builds it: ``register`` per agent, then
``apply_latest`` with :class:`~flopwatt.store.latest.LatestBlock`s made by
:func:`~flopwatt.store.latest.latest_block` from 1-s telemetry blocks (10 samples per GPU,
all 12 telemetry columns, assorted throttle reasons), GEMM results on a tenth of the GPUs and
model results on a twentieth.

Prints, for renders with the machine idle and with ``--busy`` CPU-bound processes competing
(the exporter shares the machine with the ingesting collector and its writer):

* wall time p50 / p90 (s) over ``--renders`` renders, and CPU time per render (s), of
  :meth:`FleetMetrics.render_bytes` (the served body) and :meth:`FleetMetrics.render_text`;
* the body's size (bytes) and its series count (sample lines);
* the baseline: the bare format-and-join of as many lines (``"\\n".join`` of text prefix +
  ``repr(value)``, prefixes made in advance), timed in the same run, and the render's ratio to it;
* ``FleetState.apply_latest`` for one second of load (1,000 blocks of 8 GPUs, one call per
  block as commits deliver them), with and without a journal.

Target: p50 ≤ 0.25 s while the machine is busy, goal 0.1 s.

Usage:
    python bench/metrics_render.py                     # 1,000 × 8 GPUs, 20 renders
    python bench/metrics_render.py --agents 100 --renders 5 --busy 0
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from flopwatt.analysis.comparison import compare_to_spec
from flopwatt.analysis.registry import load_registry
from flopwatt.collector.metrics import FleetMetrics
from flopwatt.collector.state import DeviceState, FleetState
from flopwatt.records import (
    Attribution,
    DeviceAttribution,
    DeviceInfo,
    GemmResult,
    GemmShape,
    GpuProcess,
    ModelResult,
    NodeInfo,
    PodRef,
    SeriesBlock,
    SoftwareVersions,
)
from flopwatt.store.latest import LatestBlock, latest_block

GPUS_PER_AGENT = 8
SAMPLES_PER_S = 10
SKUS = (
    ("H100-SXM5-80GB", "NVIDIA H100 80GB HBM3", 700.0),
    ("A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", 400.0),
    ("H200-SXM-141GB", "NVIDIA H200", 700.0),
    ("L40S", "NVIDIA L40S", 350.0),
)
_S = 10**9


def telemetry(uuids: list[str], t0_ns: int, rng: np.random.Generator) -> SeriesBlock:
    """One second of samples of every GPU in ``uuids``, all 12 columns."""
    n, g = SAMPLES_PER_S, len(uuids)
    rows = n * g
    offsets = np.arange(g + 1, dtype=np.int64) * n
    ts = np.tile(t0_ns + np.arange(n, dtype=np.int64) * (_S // n), g)
    base = np.repeat(rng.uniform(250.0, 690.0, g), n)
    throttle_choices = np.array([0, 0, 0, 1, 4, 4, 0x20, 0x44], dtype=np.uint64)
    cols: dict[str, npt.NDArray[Any]] = {
        "power_instant_w": base + rng.normal(0.0, 5.0, rows),
        "power_average_1s_w": base,
        "energy_j": np.repeat(rng.uniform(1e6, 5e7, g), n) + np.tile(np.arange(n) * 30.0, g),
        "sm_clock_mhz": np.repeat(rng.choice([1980, 1755, 1410, 1830], g), n).astype(np.uint32),
        "mem_clock_mhz": np.full(rows, 2619, dtype=np.uint32),
        "gpu_temperature_c": rng.uniform(40.0, 85.0, rows).astype(np.float32),
        "memory_temperature_c": rng.uniform(45.0, 90.0, rows).astype(np.float32),
        "gpu_utilization_ratio": rng.uniform(0.0, 1.0, rows).astype(np.float32),
        "memory_utilization_ratio": rng.uniform(0.0, 1.0, rows).astype(np.float32),
        "throttle_reasons": np.repeat(rng.choice(throttle_choices, g), n),
        "power_limit_w": np.repeat(rng.choice([700.0, 650.0, 400.0], g), n),
        "memory_used_bytes": np.repeat(rng.integers(0, 80 << 30, g), n).astype(np.uint64),
    }
    return SeriesBlock(tuple(uuids), offsets, ts, cols)


def _gemm(precision: str, burst: float) -> GemmResult:
    sustained = burst * 0.85
    return GemmResult(
        precision=precision,
        backend="torch",
        burst_flops_per_s=burst,
        best_shape=GemmShape(8192, 8192, 8192),
        sustained_flops_per_s=sustained,
        energy_per_flop_j=650.0 / sustained,
        mean_power_w=650.0,
    )


def _model(model: str, batch: int, delivered: float) -> ModelResult:
    return ModelResult(
        model=model,
        batch=batch,
        precision="bf16",
        input_size=224,
        flops=8.2e9 * batch,
        macs=4.1e9 * batch,
        latency_p50_s=8.2e9 * batch / delivered,
        latency_p90_s=0.02,
        latency_p99_s=0.03,
        latency_mean_s=0.015,
        latency_std_s=0.001,
        runs=20,
        throughput_samples_per_s=100.0,
        delivered_flops_per_s=delivered,
        efficiency_ratio=0.4,
        energy_per_inference_j=0.5,
    )


def build_fleet(
    agents: int,
    now_ns: int,
    *,
    journal: bool = False,
    seed: int = 1,
    attribution: bool = False,
) -> tuple[FleetState, list[list[str]]]:
    """The benchmark's fleet state and each agent's GPU uuids; with ``attribution`` every GPU
    is allocated to a pod (four GPUs per pod) and runs two processes."""
    rng = np.random.default_rng(seed)
    registry = load_registry()
    state = FleetState(journal=journal)
    fleet: list[list[str]] = []
    for a in range(agents):
        host = f"gpu-node-{a:04d}.cluster.example.com"
        sku, name, limit = SKUS[a % len(SKUS)]
        spec = registry.get(sku)
        devices = [
            DeviceState(
                info=DeviceInfo(
                    uuid=f"GPU-{a:04d}{g:02d}aa-1b2c-3d4e-5f60-{a * 8 + g:012x}",
                    index=g,
                    name=name,
                    pci_bus_id=f"00000000:{0x18 + g * 0x10:02X}:00.0",
                    power_limit_enforced_w=limit,
                ),
                agent_id=host,
                spec=spec,
                sku_match="pci_device_id",
            )
            for g in range(GPUS_PER_AGENT)
        ]
        node = NodeInfo(
            hostname=host,
            agent_version="0.9.1",
            software=SoftwareVersions(driver_version="550.54.15"),
            device_backend="nvml",
        )
        state.register(node, 1, devices, now_ns - 60 * _S)
        state.set_connected(host, True, now_ns - 60 * _S)
        uuids = [d.info.uuid for d in devices]
        fleet.append(uuids)
        block = latest_block(telemetry(uuids, now_ns - 2 * _S, rng))
        assert block is not None
        state.apply_latest([block])
        if attribution:
            state.apply_attribution(
                Attribution(
                    now_ns - 5 * _S,
                    tuple(
                        DeviceAttribution(
                            uuid,
                            (
                                GpuProcess(1000 + g, "python3", 40 * 2**30, 0.9),
                                GpuProcess(2000 + g, "nccl-proxy", 2**30, 0.01),
                            ),
                            True,
                            PodRef("ml-train", f"job-{a:04d}-{g // 4}", "trainer"),
                        )
                        for g, uuid in enumerate(uuids)
                    ),
                )
            )
        for g, uuid in enumerate(uuids):
            k = a * GPUS_PER_AGENT + g
            if k % 10 == 0:
                for precision, burst in (("bf16", 790e12), ("fp16", 780e12)):
                    r = _gemm(precision, burst * rng.uniform(0.9, 1.0))
                    comp = compare_to_spec(
                        spec,
                        precision,
                        burst_flops_per_s=r.burst_flops_per_s,
                        sustained_flops_per_s=r.sustained_flops_per_s,
                        energy_per_flop_j=r.energy_per_flop_j,
                        mean_power_w=r.mean_power_w,
                    )
                    state.apply_gemm(uuid, r, comp, now_ns - 30 * _S)
            if k % 20 == 1:
                for model, batch in (("resnet50", 32), ("vit_b_16", 8)):
                    m = _model(model, batch, 3e14 * rng.uniform(0.5, 1.0))
                    state.apply_model(uuid, m, now_ns - 20 * _S)
    state.observe_commit_latencies(rng.uniform(0.001, 0.5, 1000).tolist())
    return state, fleet


def _spin(stop: Callable[[], bool]) -> None:  # pragma: no cover - a competing process
    x = 0
    while not stop():
        for _ in range(10000):
            x += 1


def _spinner(event: mp.synchronize.Event) -> None:  # pragma: no cover
    _spin(event.is_set)


def _times(fn: Callable[[], object], n: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(n):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    return walls, cpus


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def measure(exporter: FleetMetrics, renders: int) -> dict[str, tuple[list[float], list[float]]]:
    """Render times (wall, CPU; s) of the served body and of the text."""
    return {
        "render_bytes": _times(exporter.render_bytes, renders),
        "render_text": _times(exporter.render_text, renders),
    }


def baseline(body: str, renders: int) -> tuple[list[float], int]:
    """The bare format-and-join of as many lines as ``body`` has samples."""
    lines = [x for x in body.split("\n") if x and not x.startswith("#")]
    prefixes = [x[: x.rindex(" ") + 1] for x in lines]
    values = [float(x[x.rindex(" ") + 1 :]) for x in lines]
    walls, _ = _times(lambda: "\n".join(map(str.__add__, prefixes, map(repr, values))), renders)
    return walls, len(lines)


def apply_latest_load(
    fleet: list[list[str]], now_ns: int, journal: bool, agents: int
) -> tuple[float, float]:
    """Seconds for ``apply_latest`` of one second of load (every agent's block, one call per
    block), median of 5 seconds; and blocks per second that makes."""
    rng = np.random.default_rng(2)
    state, _ = build_fleet(agents, now_ns - 10 * _S, journal=journal)
    state.take_journal()
    rounds: list[list[LatestBlock]] = []
    for r in range(5):
        blocks = []
        for uuids in fleet:
            b = latest_block(telemetry(uuids, now_ns + r * _S, rng))
            assert b is not None
            blocks.append(b)
        rounds.append(blocks)
    secs = []
    for blocks in rounds:
        t0 = time.perf_counter()
        for b in blocks:
            state.apply_latest([b])
        secs.append(time.perf_counter() - t0)
        state.take_journal()
    s = statistics.median(secs)
    return s, len(fleet) / s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--renders", type=int, default=20)
    p.add_argument(
        "--busy",
        type=int,
        default=os.cpu_count() or 2,
        help="CPU-bound processes competing during the 'busy' renders (default: one per CPU)",
    )
    p.add_argument(
        "--attribution",
        action="store_true",
        help="every GPU allocated to a pod and running two processes (the attribution series)",
    )
    args = p.parse_args(argv)
    now_ns = time.time_ns()
    print(f"# bench/metrics_render.py, {time.strftime('%Y-%m-%d %H:%M')}")
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}; python "
        f"{platform.python_version()}, numpy {np.__version__}"
    )
    t0 = time.perf_counter()
    state, fleet = build_fleet(args.agents, now_ns, attribution=args.attribution)
    gpus = args.agents * GPUS_PER_AGENT
    print(
        f"fleet: {args.agents} agents × {GPUS_PER_AGENT} GPUs = {gpus} GPUs, built in "
        f"{time.perf_counter() - t0:.1f} s"
        + (" (each in a pod, two processes per GPU)" if args.attribution else "")
    )
    exporter = FleetMetrics(state, staleness_s=300.0, clock_ns=lambda: now_ns)
    t0 = time.perf_counter()
    body = exporter.render_bytes()
    print(f"first render (builds the kept series text): {time.perf_counter() - t0:.3f} s")
    text = body.decode()
    n_series = sum(1 for x in text.split("\n") if x and not x.startswith("#"))
    print(f"body: {len(body):,} bytes, {n_series:,} series")

    for label, busy in (("idle", 0), (f"busy ({args.busy} spinning processes)", args.busy)):
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        procs = [ctx.Process(target=_spinner, args=(stop,), daemon=True) for _ in range(busy)]
        for proc in procs:
            proc.start()
        if busy:
            time.sleep(1.0)
        try:
            times = measure(exporter, args.renders)
            base, n_lines = baseline(text, args.renders)
        finally:
            stop.set()
            for proc in procs:
                proc.join(5)
        b50 = _pct(base, 50)
        print(f"\n{label}: {args.renders} renders of {gpus} GPUs")
        for name, (walls, cpus) in times.items():
            p50 = _pct(walls, 50)
            print(
                f"  {name:16}  p50 {p50:.3f} s   p90 {_pct(walls, 90):.3f} s   "
                f"CPU p50 {_pct(cpus, 50):.3f} s   {p50 / b50:.2f} × baseline"
            )
        print(
            f"  {'baseline':16}  p50 {b50:.3f} s   p90 {_pct(base, 90):.3f} s   "
            f"(bare format-and-join of {n_lines:,} lines)"
        )

    print("\nFleetState.apply_latest, one second of load (one call per 8-GPU block):")
    for journal in (False, True):
        s, rate = apply_latest_load(fleet, now_ns + 10 * _S, journal, args.agents)
        what = "with a journal (main process)" if journal else "no journal (exporter's copy)"
        print(f"  {what:34} {s * 1e3:7.1f} ms per {len(fleet)} blocks  ({rate:,.0f} blocks/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
