"""A mixed fleet written into a real SQLite store with the store's own API, for report tests.

Hosts (``hostname``: what is on it):

* ``h100-sim`` — 5 simulated H100-SXM5-80GB, BF16 at 0.70/0.71/0.69/0.705 of the spec peak and
  one deliberately slow GPU (index 4) at 0.35 and 600 W; GPU 0 also has an older, superseded
  result, telemetry and two model results;
* ``a100-hw`` — 4 hardware A100-SXM4-80GB, BF16: GPU 2 is power-capped (250 W limit, SwPowerCap
  0x4 seen), GPU 3 has no energy reading;
* ``v100-sim`` — 3 simulated V100-SXM2-32GB at FP16, ≥ 0.91 of spec; GPU 1 saw HW thermal
  slowdown (0x40);
* ``t4-sim`` — 2 simulated T4 at FP16 (a cohort too small to score), well under their limit;
* ``local`` — the host CPU (no SKU, no power, no throttle reasons);
* ``new-node`` — a hardware H100 registered but never measured.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from flopwatt.analysis.comparison import SpecComparison, compare_to_spec
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import GpuSpec, Registry
from flopwatt.records import (
    Conditions,
    DeviceCapabilities,
    DeviceInfo,
    DeviceKind,
    DeviceSeries,
    GemmResult,
    GemmShape,
    JobResult,
    ModelResult,
    NodeInfo,
    SeriesBlock,
    SoftwareVersions,
)
from flopwatt.store.base import MessageWrite
from flopwatt.store.sqlite import SQLiteStore

S = 10**9
NOW = 1_800_000_000 * S
"""The fleet's "now" (ns); results finish in the minutes before it."""

CAPS = DeviceCapabilities(
    energy_counter=True, power_instant=True, throttle_reasons=True, clocks=True
)


@dataclass(frozen=True)
class Gpu:
    """One device of the fleet and what it measured (ratios of the SKU's spec peak)."""

    host: str
    index: int
    sku: str | None
    precision: str
    sustained_ratio: float | None
    burst_ratio: float | None
    power_w: float | None
    limit_w: float | None
    throttle: int = 0
    simulated: bool = False
    energy: bool = True
    kind: DeviceKind = DeviceKind.GPU
    name: str = ""
    sustained_flops: float | None = None
    """Absolute sustained FLOP/s (for a device without a spec peak)."""

    @property
    def uuid(self) -> str:
        prefix = "GPU" if self.kind is DeviceKind.GPU else "CPU"
        return f"{prefix}-{self.host}-{self.index}"


@dataclass
class Fleet:
    """The store file and the devices in it."""

    db_path: Path
    gpus: list[Gpu] = field(default_factory=list)
    peaks: dict[tuple[str, str], float] = field(default_factory=dict)
    """(sku, precision) → spec peak FLOP/s used to build the results."""

    def gpu(self, host: str, index: int) -> Gpu:
        return next(g for g in self.gpus if g.host == host and g.index == index)


H100 = "H100-SXM5-80GB"
A100 = "A100-SXM4-80GB"
V100 = "V100-SXM2-32GB"
T4 = "T4"

FLEET: tuple[Gpu, ...] = (
    *(
        Gpu("h100-sim", i, H100, "bf16", r, r * 1.08, p, 700.0, simulated=True)
        for i, (r, p) in enumerate(((0.70, 650.0), (0.71, 655.0), (0.69, 645.0), (0.705, 652.0)))
    ),
    Gpu("h100-sim", 4, H100, "bf16", 0.35, 0.40, 600.0, 700.0, simulated=True),
    Gpu("a100-hw", 0, A100, "bf16", 0.80, 0.86, 380.0, 400.0),
    Gpu("a100-hw", 1, A100, "bf16", 0.79, 0.85, 385.0, 400.0),
    Gpu("a100-hw", 2, A100, "bf16", 0.55, 0.84, 249.0, 250.0, throttle=0x4),
    Gpu("a100-hw", 3, A100, "bf16", 0.81, 0.86, None, 400.0, energy=False),
    Gpu("v100-sim", 0, V100, "fp16", 0.92, 0.95, 280.0, 300.0, simulated=True),
    Gpu("v100-sim", 1, V100, "fp16", 0.93, 0.96, 285.0, 300.0, throttle=0x40, simulated=True),
    Gpu("v100-sim", 2, V100, "fp16", 0.91, 0.95, 282.0, 300.0, simulated=True),
    Gpu("t4-sim", 0, T4, "fp16", 0.60, 0.70, 40.0, 70.0, simulated=True),
    Gpu("t4-sim", 1, T4, "fp16", 0.62, 0.72, 41.0, 70.0, simulated=True),
    Gpu(
        "local",
        0,
        None,
        "fp32",
        None,
        None,
        None,
        None,
        energy=False,
        kind=DeviceKind.CPU,
        name="Intel Xeon Local CPU",
        sustained_flops=1.2e12,
    ),
)
UNMEASURED = Gpu("new-node", 0, H100, "bf16", None, None, None, 700.0)


def _device_info(g: Gpu) -> DeviceInfo:
    return DeviceInfo(
        uuid=g.uuid,
        index=g.index,
        name=g.name or (f"Simulated {g.sku}" if g.simulated else f"NVIDIA {g.sku}"),
        kind=g.kind,
        power_limit_enforced_w=g.limit_w,
        capabilities=CAPS if g.kind is DeviceKind.GPU else DeviceCapabilities(),
        simulated=g.simulated,
        sim_sku=(g.sku or "") if g.simulated else "",
    )


def _driver(host: str) -> str:
    if host.endswith("-sim"):
        return "sim"
    return "" if host == "local" else "550.54.15"


def _gemm_result(g: Gpu, peak: float | None, job: str, finished: int) -> JobResult:
    if peak is not None and g.sustained_ratio is not None and g.burst_ratio is not None:
        sustained = g.sustained_ratio * peak
        burst = g.burst_ratio * peak
    else:
        sustained = g.sustained_flops or 1e12
        burst = sustained * 1.05
    energy = g.power_w / sustained if g.energy and g.power_w is not None else None
    return JobResult(
        job_id=job,
        device_uuid=g.uuid,
        gemm=GemmResult(
            precision=g.precision,
            backend="sim" if g.simulated else "torch",
            burst_flops_per_s=burst,
            best_shape=GemmShape(8192, 8192, 8192),
            sustained_flops_per_s=sustained,
            sustained_s=20.0,
            sustained_flops=sustained * 20.0,
            energy_j=energy * sustained * 20.0 if energy is not None else None,
            energy_per_flop_j=energy,
            mean_power_w=g.power_w if g.energy else None,
        ),
        conditions=Conditions(
            power_limit_w=g.limit_w,
            throttle_reasons_seen=g.throttle,
            sm_clock_mean_mhz=1700.0 if g.kind is DeviceKind.GPU else None,
            temperature_max_c=70.0 if g.kind is DeviceKind.GPU else None,
            mean_power_w=g.power_w if g.energy else None,
            energy_from_counter=g.energy,
            window_s=20.0,
            driver_version=_driver(g.host),
            simulated=g.simulated,
        ),
        started_unix_ns=finished - 30 * S,
        finished_unix_ns=finished,
    )


def _model_result(g: Gpu, peak: float, efficiency: float, finished: int) -> JobResult:
    flops = 4.1e9 * 2 * 32
    delivered = efficiency * (g.sustained_ratio or 0.0) * peak
    return JobResult(
        job_id="model-1",
        device_uuid=g.uuid,
        model=ModelResult(
            model="resnet50",
            batch=32,
            precision=g.precision,
            input_size=224,
            flops=flops,
            macs=flops / 2,
            latency_p50_s=flops / delivered,
            latency_p90_s=flops / delivered * 1.1,
            latency_p99_s=flops / delivered * 1.2,
            latency_mean_s=flops / delivered,
            latency_std_s=0.0001,
            runs=50,
            throughput_samples_per_s=32 * delivered / flops,
            delivered_flops_per_s=delivered,
            peak_flops_per_s=(g.sustained_ratio or 0.0) * peak,
            peak_source="measured",
            efficiency_ratio=efficiency,
            spec_efficiency_ratio=delivered / peak,
            energy_per_inference_j=0.5,
            mean_power_w=500.0,
        ),
        conditions=Conditions(
            power_limit_w=g.limit_w, driver_version=_driver(g.host), simulated=g.simulated
        ),
        started_unix_ns=finished - 10 * S,
        finished_unix_ns=finished,
    )


def _comparison(spec: GpuSpec | None, r: JobResult) -> SpecComparison | None:
    """The comparison ingest would store with ``r`` (see ``Ingest._compare``)."""
    if r.gemm is not None:
        return compare_to_spec(
            spec,
            r.gemm.precision,
            burst_flops_per_s=r.gemm.burst_flops_per_s,
            sustained_flops_per_s=r.gemm.sustained_flops_per_s,
            energy_per_flop_j=r.gemm.energy_per_flop_j,
            mean_power_w=r.gemm.mean_power_w,
            power_limit_w=r.conditions.power_limit_w,
        )
    if r.model is not None:
        m = r.model
        per_flop = (
            m.energy_per_inference_j * m.batch / m.flops
            if m.energy_per_inference_j is not None
            else None
        )
        return compare_to_spec(
            spec,
            m.precision,
            sustained_flops_per_s=m.delivered_flops_per_s,
            energy_per_flop_j=per_flop,
            mean_power_w=m.mean_power_w,
            power_limit_w=r.conditions.power_limit_w,
        )
    return None


def _write(
    registry: Registry,
    host: str,
    seq: int,
    gpus: list[Gpu],
    result: JobResult | None,
    blocks: tuple[SeriesBlock, ...],
) -> MessageWrite:
    digest = hashlib.sha256(f"{host}/{seq}".encode()).digest()
    comparison = None
    if result is not None:
        g = next(x for x in gpus if x.uuid == result.device_uuid)
        comparison = _comparison(registry.get(g.sku) if g.sku else None, result)
    return MessageWrite(
        host,
        1,
        seq,
        "job_result" if result is not None else "telemetry",
        digest,
        NOW - 60 * S,
        blocks=blocks,
        result=result,
        comparison=comparison,
    )


def build_fleet(path: Path, registry: Registry) -> Fleet:
    """Write the fleet (see the module docstring) into a new store at ``path``."""
    store = SQLiteStore(path)
    fleet = Fleet(db_path=path)
    hosts: dict[str, list[Gpu]] = {}
    for g in (*FLEET, UNMEASURED):
        hosts.setdefault(g.host, []).append(g)
    for host, gpus in hosts.items():
        node = NodeInfo(
            hostname=host,
            agent_version="test",
            software=SoftwareVersions(driver_version=_driver(host)),
            device_backend="sim" if host.endswith("-sim") else "nvml",
        )
        matches: dict[str, tuple[str | None, str]] = {
            g.uuid: ((g.sku, "sim" if g.simulated else "name") if g.sku else (None, "cpu"))
            for g in gpus
        }
        store.register_agent(node, [_device_info(g) for g in gpus], 1, matches, NOW - 3600 * S)
        writes: list[MessageWrite] = []

        def add(result: JobResult | None = None, blocks: tuple[SeriesBlock, ...] = ()) -> None:
            writes.append(_write(registry, host, len(writes) + 1, gpus, result, blocks))  # noqa: B023

        for g in gpus:
            if g is UNMEASURED:
                continue
            peak = None
            if g.sku is not None:
                best = registry.get(g.sku).best_peak(Precision.parse(g.precision))
                assert best is not None
                peak = best.flops_per_s
                fleet.peaks[(g.sku, g.precision)] = peak
            if host == "h100-sim" and g.index == 0:
                # An older result at a different rate: the report must use the newer one.
                old = replace(g, sustained_ratio=0.2)
                add(_gemm_result(old, peak, "gemm-0", NOW - 1800 * S))
            add(_gemm_result(g, peak, "gemm-1", NOW - 120 * S))
            if host == "h100-sim" and g.index in (0, 1) and peak is not None:
                add(_model_result(g, peak, 0.45 + 0.02 * g.index, NOW - 100 * S))
            fleet.gpus.append(g)
        if host == "h100-sim":
            ts = np.array([NOW - 3 * S, NOW - 2 * S, NOW - 1 * S], dtype=np.int64)
            series = DeviceSeries(
                "GPU-h100-sim-0",
                ts,
                {
                    "power_instant_w": np.array([640.0, 645.0, 612.5]),
                    "gpu_temperature_c": np.array([60.0, 61.0, 62.0], dtype=np.float32),
                },
            )
            add(blocks=(SeriesBlock.concat([series]),))
        store.apply(writes)
    fleet.gpus.append(UNMEASURED)
    store.close()
    return fleet
