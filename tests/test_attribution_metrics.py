"""The attribution series on ``/metrics`` from the fleet state, without a network: pod labels on
the live-efficiency estimate (one set per GPU; absent outside Kubernetes), the per-process
series capped at the busiest four per GPU, a change of owners seen at the next render (the kept
text follows the attribution), a stale attribution labelling nothing, and the exporter's copy
of the state following the journal."""

from __future__ import annotations

import numpy as np

from flopwatt.analysis.registry import load_registry
from flopwatt.collector.metrics import FleetMetrics
from flopwatt.collector.state import DeviceState, FleetState
from flopwatt.records import (
    Attribution,
    DeviceAttribution,
    DeviceInfo,
    GpuProcess,
    NodeInfo,
    PodRef,
    SeriesBlock,
)
from flopwatt.store.latest import latest_block
from tests.collector_helpers import find, samples

S = 1_000_000_000
NOW = 1_800_000_000 * S
HOST = "gpu-node-1"


def _state() -> FleetState:
    spec = load_registry().get("H100-SXM5-80GB")
    state = FleetState(journal=True)
    devices = [
        DeviceState(
            DeviceInfo(f"GPU-{i}", i, "NVIDIA H100 80GB HBM3", memory_total_bytes=80 * 2**30),
            HOST,
            spec,
            "name",
        )
        for i in range(2)
    ]
    state.register(NodeInfo(HOST), 1, devices, NOW - 10 * S)
    state.set_connected(HOST, True, NOW - S)
    block = SeriesBlock(
        ("GPU-0", "GPU-1"),
        np.array([0, 1, 2], dtype=np.int64),
        np.array([NOW - S, NOW - S], dtype=np.int64),
        {
            "sm_clock_mhz": np.array([1830.0, 1830.0]),
            "tensor_hmma_active_ratio": np.array([0.4, 0.1], dtype=np.float32),
            "tensor_active_ratio": np.array([0.4, 0.1], dtype=np.float32),
        },
    )
    latest = latest_block(block)
    assert latest is not None
    state.apply_latest([latest])
    return state


def _render(
    state: FleetState, metrics: FleetMetrics
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return samples(metrics.render_text())


def test_pod_labels_processes_and_a_change_of_owners() -> None:
    state = _state()
    metrics = FleetMetrics(state, clock_ns=lambda: NOW)
    many = tuple(GpuProcess(100 + i, f"w{i}", 2**30, i / 10) for i in range(6))
    state.apply_attribution(
        Attribution(
            NOW - 2 * S,
            (
                DeviceAttribution("GPU-0", many, True, PodRef("ml", "llama-0", "trainer")),
                DeviceAttribution("GPU-1", (GpuProcess(7, "vllm", None, None),), True),
            ),
        )
    )
    parsed = _render(state, metrics)
    mfu = {
        dict(lbls)["gpu_index"]: dict(lbls)
        for (n, lbls) in parsed
        if n == "flopwatt_gpu_estimated_mfu_ratio"
    }
    assert (mfu["0"]["namespace"], mfu["0"]["pod"], mfu["0"]["container"]) == (
        "ml",
        "llama-0",
        "trainer",
    )
    assert "pod" not in mfu["1"] and "namespace" not in mfu["1"]
    assert find(parsed, "flopwatt_gpu_compute_processes", gpu_index="0") == [6.0]
    assert find(parsed, "flopwatt_gpu_compute_processes", gpu_index="1") == [1.0]
    util = [dict(lbls) for (n, lbls) in parsed if n == "flopwatt_gpu_process_sm_utilization_ratio"]
    # The four busiest of six; GPU 1's process has no per-process figure: no series.
    assert sorted(d["process"] for d in util) == ["w2", "w3", "w4", "w5"]
    assert find(parsed, "flopwatt_gpu_process_used_memory_bytes", gpu_index="1") == []
    # The owners change: the next render says so (nothing of the old pod is left).
    state.apply_attribution(
        Attribution(NOW - S, (DeviceAttribution("GPU-0", (), True, PodRef("ml", "b", "c")),))
    )
    parsed = _render(state, metrics)
    pods = {dict(lbls).get("pod") for (n, lbls) in parsed if n.startswith("flopwatt_gpu_")}
    assert "llama-0" not in pods and "b" in pods
    assert find(parsed, "flopwatt_gpu_compute_processes", gpu_index="0") == [0.0]
    assert not [1 for (n, lbls) in parsed if n == "flopwatt_gpu_process_sm_utilization_ratio"
                and dict(lbls)["gpu_index"] == "0"]  # fmt: skip
    # An older observation does not replace a newer one.
    state.apply_attribution(
        Attribution(NOW - 3 * S, (DeviceAttribution("GPU-0", (), True, PodRef("x", "y", "z")),))
    )
    assert "y" not in {dict(lbls).get("pod") for (_, lbls) in _render(state, metrics)}


def test_a_stale_or_unknown_attribution_labels_nothing() -> None:
    state = _state()
    state.apply_attribution(
        Attribution(
            NOW - 181 * S,  # three refreshes missed
            (
                DeviceAttribution(
                    "GPU-0", (GpuProcess(1, "a", 1, 0.5),), True, PodRef("a", "b", "c")
                ),
            ),
        )
    )
    state.apply_attribution(Attribution(NOW - S, (DeviceAttribution("GPU-1", (), False),)))
    parsed = _render(state, FleetMetrics(state, clock_ns=lambda: NOW))
    assert not [1 for (n, lbls) in parsed if dict(lbls).get("pod")]
    assert find(parsed, "flopwatt_gpu_compute_processes") == []  # unknown is absent, not 0


def test_the_exporters_copy_follows_the_journal() -> None:
    state = _state()
    copy = FleetState()
    copy.load(state.resync())
    state.apply_attribution(
        Attribution(NOW - S, (DeviceAttribution("GPU-0", (), True, PodRef("a", "p", "c")),))
    )
    for event in state.take_journal():
        copy.apply_event(event)
    parsed = _render(copy, FleetMetrics(copy, clock_ns=lambda: NOW))
    assert find(parsed, "flopwatt_gpu_compute_processes", pod="p") == [0.0]
    # A copy started after the attribution carries it too.
    fresh = FleetState()
    fresh.load(state.resync())
    assert find(
        _render(fresh, FleetMetrics(fresh, clock_ns=lambda: NOW)),
        "flopwatt_gpu_compute_processes",
        pod="p",
    ) == [0.0]
