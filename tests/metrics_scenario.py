"""A small but realistic fleet state for the /metrics renderer tests, built only through
:class:`~flopwatt.collector.state.FleetState`'s public API.

It has every case the renderer distinguishes: several agents and SKUs (registry matches, a
simulated device, an unknown part), devices with all telemetry columns and with some (values
folded from blocks with different column sets), a device with none, throttle bits, the power
limit from telemetry and from registration, GEMM and model results (with and without a spec
comparison), an older resent sample, several rows of one device in one block, a stale agent, a
device re-registered by another agent, an agent that dropped a device, label values that need
escaping, and counters with a histogram.

``tests/data/metrics_render_golden.prom`` is what the exporter rendered for this state before
the renderer was rewritten (``FleetMetrics(build_state(), staleness_s=STALENESS_S,
clock_ns=lambda: NOW).render_text()`` with that code, the two-sink walk over per-device
dicts); the rewritten renderer must give the same series and values. Change the scenario and
the golden file no longer tells anything: add cases in a new scenario instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flopwatt.analysis.comparison import compare_to_spec
from flopwatt.analysis.registry import load_registry
from flopwatt.collector.state import Counters, DeviceState, FleetState
from flopwatt.records import (
    DeviceInfo,
    GemmResult,
    GemmShape,
    ModelResult,
    NodeInfo,
    SeriesBlock,
    SoftwareVersions,
)
from flopwatt.store.latest import LatestBlock, latest_block

NOW = 1_800_000_000 * 10**9
"""The scenario's wall clock (ns since the Unix epoch); render with ``clock_ns=lambda: NOW``."""
STALENESS_S = 300.0
GOLDEN = Path(__file__).parent / "data" / "metrics_render_golden.prom"

_S = 10**9
_FULL = {
    "power_instant_w": np.float64,
    "power_average_1s_w": np.float64,
    "energy_j": np.float64,
    "sm_clock_mhz": np.uint32,
    "mem_clock_mhz": np.uint32,
    "gpu_temperature_c": np.float32,
    "memory_temperature_c": np.float32,
    "gpu_utilization_ratio": np.float32,
    "memory_utilization_ratio": np.float32,
    "throttle_reasons": np.uint64,
    "power_limit_w": np.float64,
    "memory_used_bytes": np.uint64,
}


def _node(host: str, version: str = "0.9.1", driver: str = "550.54.15") -> NodeInfo:
    return NodeInfo(
        hostname=host,
        agent_version=version,
        software=SoftwareVersions(driver_version=driver),
        device_backend="nvml",
    )


def _dev(
    host: str,
    uuid: str,
    index: int,
    name: str,
    sku: str | None,
    *,
    how: str = "name",
    limit_w: float | None = None,
    simulated: bool = False,
    pci: str = "",
) -> DeviceState:
    spec = load_registry().get(sku) if sku else None
    info = DeviceInfo(
        uuid=uuid,
        index=index,
        name=name,
        pci_bus_id=pci or f"0000:{index + 0x10:02x}:00.0",
        power_limit_enforced_w=limit_w,
        simulated=simulated,
        sim_sku=(sku or "") if simulated else "",
    )
    return DeviceState(info=info, agent_id=host, spec=spec, sku_match=how if spec else "none")


def telemetry_block(
    uuids: list[str],
    t0_ns: int,
    columns: dict[str, list[float]],
    *,
    rows: int = 3,
) -> SeriesBlock:
    """``rows`` samples 0.1 s apart per device; column ``c`` of device ``i`` ends at
    ``columns[c][i]`` (earlier rows differ, so only the newest row may reach the state)."""
    n = len(uuids)
    offsets = np.arange(n + 1, dtype=np.int64) * rows
    ts = np.concatenate([t0_ns + np.arange(rows, dtype=np.int64) * (_S // 10) for _ in uuids])
    cols = {}
    for name, last in columns.items():
        dtype = _FULL[name]
        per_dev = []
        for v in last:
            earlier = (
                [v + 1 + k for k in range(rows - 1)] if dtype is not np.uint64 else [0] * (rows - 1)
            )
            per_dev.extend([*earlier, v])
        cols[name] = np.asarray(per_dev, dtype=dtype)
    return SeriesBlock(tuple(uuids), offsets, ts, cols)


def gemm_result(
    precision: str, burst: float, sustained: float | None, power: float | None
) -> GemmResult:
    return GemmResult(
        precision=precision,
        backend="torch",
        burst_flops_per_s=burst,
        best_shape=GemmShape(8192, 8192, 8192),
        sustained_flops_per_s=sustained,
        energy_per_flop_j=(power / sustained) if power and sustained else None,
        mean_power_w=power,
    )


def _model(
    model: str,
    batch: int,
    precision: str,
    delivered: float,
    *,
    eff: float | None = None,
    spec_eff: float | None = None,
    energy: float | None = None,
) -> ModelResult:
    return ModelResult(
        model=model,
        batch=batch,
        precision=precision,
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
        efficiency_ratio=eff,
        spec_efficiency_ratio=spec_eff,
        energy_per_inference_j=energy,
    )


def build_state(*, journal: bool = False) -> FleetState:
    """The scenario (see module docstring), as of :data:`NOW`."""
    state = FleetState(journal=journal)
    play(state)
    return state


def play(state: FleetState) -> None:
    """Apply the scenario's changes to ``state`` (see :func:`build_state`)."""
    h100 = "H100-SXM5-80GB"
    a100 = "A100-SXM4-80GB"
    # node-a: four H100s, every column, several throttle masks, results.
    a = [
        _dev("node-a", f"GPU-a{i}", i, "NVIDIA H100 80GB HBM3", h100, limit_w=700.0)
        for i in range(4)
    ]
    state.register(_node("node-a"), 1, a, NOW - 100 * _S)
    state.set_connected("node-a", True, NOW - 100 * _S)
    full: dict[str, list[float]] = {
        "power_instant_w": [612.25, 588.5, 101.0, 699.875],
        "power_average_1s_w": [600.0, 590.125, 99.5, 700.0],
        "energy_j": [1.5e7, 1.25e7, 3.0e6, 1.0000000000000002e7],
        "sm_clock_mhz": [1980, 1755, 345, 1410],
        "mem_clock_mhz": [2619, 2619, 2619, 2619],
        "gpu_temperature_c": [61.5, 58.0, 33.25, 82.0],
        "memory_temperature_c": [70.0, 66.5, 40.0, 90.5],
        "gpu_utilization_ratio": [0.97, 0.5, 0.0, 1.0],
        "memory_utilization_ratio": [0.4, 0.25, 0.0, 0.7],
        "throttle_reasons": [0, 4, 1, 0x1FF],
        "power_limit_w": [700.0, 650.0, 700.0, 700.0],
        "memory_used_bytes": [40 << 30, 1 << 30, 0, 80 << 30],
    }
    lb = latest_block(telemetry_block([d.info.uuid for d in a], NOW - 2 * _S, full))
    assert lb is not None
    state.apply_latest([lb])
    spec = load_registry().get(h100)
    for precision, burst, sus, power in (
        ("bf16", 790e12, 650e12, 680.0),
        ("fp8", 1.6e15, None, None),
    ):
        g = gemm_result(precision, burst, sus, power)
        comp = compare_to_spec(
            spec,
            precision,
            burst_flops_per_s=burst,
            sustained_flops_per_s=sus,
            energy_per_flop_j=g.energy_per_flop_j,
            mean_power_w=power,
            power_limit_w=700.0,
        )
        state.apply_gemm("GPU-a0", g, comp, NOW - 50 * _S)
    # An older GEMM result of the same precision does not replace the newer one.
    state.apply_gemm("GPU-a0", gemm_result("bf16", 1.0, None, None), None, NOW - 500 * _S)
    state.apply_model(
        "GPU-a1",
        _model("resnet50", 32, "bf16", 3.1e14, eff=0.4, spec_eff=0.31, energy=0.5),
        NOW - 40 * _S,
    )
    state.apply_model("GPU-a1", _model("vit_b_16", 8, "fp16", 2.2e14), NOW - 40 * _S)
    state.apply_model("GPU-a1", _model("vit_b_16", 8, "weird", 1.0e14), NOW - 40 * _S)

    # node-b: two A100s with some columns; a later block with other columns folds in; an
    # older resent sample is ignored; one device has no power limit anywhere.
    b = [
        _dev("node-b", "GPU-b0", 0, "NVIDIA A100-SXM4-80GB", a100, limit_w=400.0),
        _dev("node-b", "GPU-b1", 1, "NVIDIA A100-SXM4-80GB", a100),
    ]
    state.register(_node("node-b", driver="535.104.05"), 3, b, NOW - 90 * _S)
    state.set_connected("node-b", True, NOW - 90 * _S)
    first = {"power_instant_w": [250.5, 260.0], "gpu_temperature_c": [45.0, 47.5]}
    lb1 = latest_block(telemetry_block(["GPU-b0", "GPU-b1"], NOW - 10 * _S, first))
    second: dict[str, list[float]] = {"energy_j": [2.5e6, 3.5e6], "throttle_reasons": [0x44, 0]}
    lb2 = latest_block(telemetry_block(["GPU-b0", "GPU-b1"], NOW - 5 * _S, second))
    old = {"power_instant_w": [1.0, 1.0], "energy_j": [1.0, 1.0]}
    lb3 = latest_block(telemetry_block(["GPU-b0", "GPU-b1"], NOW - 60 * _S, old))
    assert lb1 is not None and lb2 is not None and lb3 is not None
    state.apply_latest([lb1])
    state.apply_latest([lb2, lb3])
    # Several rows of one device in one block, out of time order, and an unknown device.
    state.apply_latest(
        [
            LatestBlock(
                ("GPU-b1", "GPU-zz", "GPU-b1", "GPU-b1"),
                np.array([NOW - 3 * _S, NOW, NOW - 1 * _S, NOW - 4 * _S], dtype=np.int64),
                ("power_instant_w", "gpu_utilization_ratio"),
                np.array([[271.0, 0.5], [9.0, 9.0], [272.0, 0.625], [273.0, 0.75]]),
            )
        ]
    )
    state.apply_gemm(
        "GPU-b1",
        gemm_result("tf32", 150e12, 140e12, 390.0),
        compare_to_spec(load_registry().get(a100), "tf32", burst_flops_per_s=150e12),
        NOW - 30 * _S,
    )

    # node-c: simulated H200s; one reports nothing (info and registered limit only).
    c = [
        _dev(
            "node-c",
            "GPU-c0",
            0,
            "sim H200",
            "H200-SXM-141GB",
            how="sim",
            simulated=True,
            limit_w=700.0,
        ),
        _dev(
            "node-c",
            "GPU-c1",
            1,
            "sim H200",
            "H200-SXM-141GB",
            how="sim",
            simulated=True,
            limit_w=650.0,
        ),
    ]
    state.register(_node("node-c"), 1, c, NOW - 80 * _S)
    state.set_connected("node-c", True, NOW - 80 * _S)
    lbc = latest_block(
        telemetry_block(
            ["GPU-c0"], NOW - 1 * _S, {"power_average_1s_w": [432.125], "sm_clock_mhz": [1830]}
        )
    )
    assert lbc is not None
    state.apply_latest([lbc])
    state.apply_model(
        "GPU-c0", _model("resnet50", 1, "fp16", 1.2e14, eff=0.5, energy=0.25), NOW - 20 * _S
    )

    # node-stale: heard from ten minutes ago; only its last-seen series remains.
    s = [_dev("node-stale", "GPU-s0", 0, "NVIDIA H100 80GB HBM3", h100, limit_w=700.0)]
    state.register(_node("node-stale"), 1, s, NOW - 600 * _S)
    lbs = latest_block(telemetry_block(["GPU-s0"], NOW - 601 * _S, {"power_instant_w": [500.0]}))
    assert lbs is not None
    state.apply_latest([lbs])
    state.apply_gemm("GPU-s0", gemm_result("bf16", 700e12, None, None), None, NOW - 600 * _S)

    # Odd label values (quotes, backslashes, a newline) and an unknown part.
    odd = [
        _dev('rack"7\\x', "GPU-odd\n0", 0, 'odd "name"\\ \n', None, pci="0000:\\:00.0"),
    ]
    state.register(_node('rack"7\\x', version='v"1"\\', driver="a\nb"), 1, odd, NOW - 70 * _S)
    lbo = latest_block(
        telemetry_block(
            ["GPU-odd\n0"],
            NOW - 1 * _S,
            {"power_instant_w": [55.5], "memory_used_bytes": [123456789]},
        )
    )
    assert lbo is not None
    state.apply_latest([lbo])
    state.apply_gemm("GPU-odd\n0", gemm_result("fp32", 1e12, 9e11, 50.0), None, NOW - 10 * _S)
    state.apply_model("GPU-odd\n0", _model("resnet50", 4, "fp32", 5e11), NOW - 10 * _S)

    # A device moved: registered by node-e, then by node-f (node-e still lists it).
    state.register(
        _node("node-e"),
        1,
        [_dev("node-e", "GPU-move", 2, "NVIDIA A100-SXM4-80GB", a100)],
        NOW - 60 * _S,
    )
    lbm = latest_block(telemetry_block(["GPU-move"], NOW - 59 * _S, {"power_instant_w": [123.0]}))
    assert lbm is not None
    state.apply_latest([lbm])
    state.register(
        _node("node-f"),
        1,
        [
            _dev("node-f", "GPU-move", 0, "NVIDIA A100-SXM4-80GB", a100, limit_w=300.0),
            _dev("node-f", "GPU-f1", 1, "NVIDIA A100-SXM4-80GB", a100, limit_w=300.0),
        ],
        NOW - 50 * _S,
    )
    state.set_connected("node-f", True, NOW - 50 * _S)

    # node-g registered three devices, then again with two: the third is not rendered.
    g3 = [_dev("node-g", f"GPU-g{i}", i, "NVIDIA L4", "L4", limit_w=72.0) for i in range(3)]
    state.register(_node("node-g"), 1, g3, NOW - 45 * _S)
    lbg = latest_block(
        telemetry_block(
            [d.info.uuid for d in g3], NOW - 44 * _S, {"power_instant_w": [30.0, 31.0, 32.0]}
        )
    )
    assert lbg is not None
    state.apply_latest([lbg])
    state.register(
        _node("node-g"),
        2,
        [_dev("node-g", f"GPU-g{i}", i, "NVIDIA L4", "L4", limit_w=72.0) for i in range(2)],
        NOW - 40 * _S,
    )
    state.seen("node-g", NOW - 2 * _S)

    # Counters.
    def count(c: Counters) -> None:
        c.samples_ingested += 123456
        c.samples_rejected["power_not_finite"] = c.samples_rejected.get("power_not_finite", 0) + 3
        c.samples_rejected["bad_timestamp"] = 1
        c.samples_dropped_by_agents += 7
        c.messages[("telemetry", "stored")] = 1000
        c.messages[("telemetry", "duplicate")] = 2
        c.messages[("result", "stored")] = 9

    state.count(count)
    state.observe_commit_latencies([0.0005, 0.003, 0.003, 0.02, 0.2, 0.75, 7.0])
