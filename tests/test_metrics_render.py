"""The /metrics text renderer keeps each series' text up to its value between scrapes; these
check that what it keeps never outlives the labels it was built from."""

from __future__ import annotations

import asyncio
import time

import pytest

from flopwatt.analysis.registry import load_registry
from flopwatt.collector.forked_render import ForkedRenderError, render_forked
from flopwatt.collector.metrics import FleetMetrics, exposition
from flopwatt.collector.state import DeviceState, FleetState
from flopwatt.records import DeviceInfo, NodeInfo

NOW = time.time_ns()


def _register(state: FleetState, host: str, name: str, sku: str | None, power_w: float) -> None:
    spec = load_registry().get(sku) if sku else None
    d = DeviceState(DeviceInfo(uuid="GPU-1", index=0, name=name), host, spec, "name")
    d.latest = {"power_instant_w": power_w, "throttle_reasons": 4.0}
    state.register(NodeInfo(hostname=host, agent_version="t"), 1, [d], NOW)


def _power_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("flopwatt_gpu_power_watts{")]


def test_relabelled_device_is_rendered_with_its_new_labels_only() -> None:
    state = FleetState()
    exporter = FleetMetrics(state, clock_ns=lambda: NOW)
    _register(state, "node-a", "NVIDIA H100 80GB HBM3", "H100-SXM5-80GB", 600.0)
    first = exporter.render_text()
    assert first == exporter.render_text()  # a second scrape, from the kept text, is identical
    assert _power_lines(first) == [
        'flopwatt_gpu_power_watts{hostname="node-a",gpu_uuid="GPU-1",gpu_index="0",'
        'gpu_model="NVIDIA H100 80GB HBM3",sku="H100-SXM5-80GB",source="hardware",'
        'kind="instant"} 600.0'
    ]
    # The same GPU re-registered from another host under another name (and no registry match):
    # one series under its new labels (node-a still lists it, but no longer owns it), carrying
    # its last value until the new host reports.
    _register(state, "node-b", 'odd "name"\\', None, 300.5)
    second = exporter.render_text()
    assert _power_lines(second) == [
        'flopwatt_gpu_power_watts{hostname="node-b",gpu_uuid="GPU-1",gpu_index="0",'
        'gpu_model="odd \\"name\\"\\\\",sku="unknown",source="hardware",kind="instant"} 600.0'
    ]
    throttle = [x for x in second.splitlines() if x.startswith("flopwatt_gpu_throttle_active{")]
    assert throttle and all('hostname="node-b"' in x for x in throttle)


async def test_stepped_render_on_the_event_loop_matches_the_snapshot_render() -> None:
    """``/metrics`` renders on the event loop in steps of a few devices, letting other work
    run in between: the text equals the one-snapshot render when nothing changes meanwhile,
    and work scheduled during the render runs before it finishes (the loop is not held)."""
    state = FleetState()
    exporter = FleetMetrics(state, clock_ns=lambda: NOW)
    for a in range(7):
        devices = [
            DeviceState(
                DeviceInfo(uuid=f"GPU-{a}-{g}", index=g, name="sim"), f"node-{a}", None, "-"
            )
            for g in range(4)
        ]
        for g, d in enumerate(devices):
            d.latest = {"power_instant_w": 100.0 + 10 * a + g}
        state.register(NodeInfo(hostname=f"node-{a}"), 1, devices, NOW)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    stepped = await exporter.render_text_async(devices_per_step=3)
    during = ticks
    task.cancel()
    assert stepped == exporter.render_text()
    assert len(_power_lines(stepped)) == 28
    assert during >= 28 // 3  # the loop ran other work between the steps


def test_render_in_a_forked_child_matches_and_warm_text_needs_no_additions() -> None:
    """``/metrics`` is rendered in a forked child from the parent's state (copy-on-write): the
    bytes equal the in-process render. The series text a child uses is the parent's, built at
    registration (:meth:`FleetMetrics.warm`): after warming, a render builds nothing new."""
    state = FleetState()
    exporter = FleetMetrics(state, clock_ns=lambda: NOW)
    spec = load_registry().get("H100-SXM5-80GB")
    devices = [
        DeviceState(
            DeviceInfo(uuid=f"GPU-{g}", index=g, name="NVIDIA H100 80GB HBM3"), "n", spec, "pci"
        )
        for g in range(3)
    ]
    for g, d in enumerate(devices):
        d.latest = {
            "power_instant_w": 500.0 + g,
            "power_average_1s_w": 490.0,
            "energy_j": 1e6,
            "sm_clock_mhz": 1980.0,
            "throttle_reasons": 4.0,
            "gpu_temperature_c": 60.0,
        }
    state.register(NodeInfo(hostname="n"), 1, devices, NOW)
    exporter.warm(devices)
    built = {k: len(g.prefixes) for k, g in exporter._gpus.items()}
    in_process = exposition([exporter])
    assert {k: len(g.prefixes) for k, g in exporter._gpus.items()} == built
    forked = render_forked(lambda: exposition([exporter]), state.quiescent)
    assert forked == in_process
    assert b'flopwatt_gpu_power_watts{hostname="n",gpu_uuid="GPU-2"' in forked


def test_a_failing_render_child_is_an_error_not_a_body() -> None:
    def broken() -> bytes:
        raise RuntimeError("boom")

    state = FleetState()
    with pytest.raises(ForkedRenderError):
        render_forked(broken, state.quiescent)
