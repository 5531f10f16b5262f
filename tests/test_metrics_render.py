"""The /metrics renderer (:class:`FleetMetrics`): what it writes, checked by parsing it.

The reference is ``tests/data/metrics_render_golden.prom``: what the previous renderer (two sinks
walking per-device dicts) wrote for the scenario in :mod:`tests.metrics_scenario`. The rewritten
renderer must write the same series with the same values, byte for byte per line; only the order
of lines within a family may differ (see :mod:`flopwatt.collector.metrics`).
"""

from __future__ import annotations

import math
import pickle
import shutil
import subprocess
import threading
from collections import Counter as Multiset
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from flopwatt.analysis.registry import load_registry
from flopwatt.collector.metrics import FleetMetrics
from flopwatt.collector.state import (
    VALUE_COLUMNS,
    DeviceState,
    FleetSnapshot,
    FleetState,
)
from flopwatt.metrics_spec import METRICS, MetricType
from flopwatt.records import DeviceInfo, DeviceKind, NodeInfo
from flopwatt.store.latest import LatestBlock, latest_block
from tests.metrics_scenario import (
    GOLDEN,
    NOW,
    STALENESS_S,
    build_state,
    gemm_result,
    play,
    telemetry_block,
)

_S = 10**9
Sample = tuple[str, frozenset[tuple[str, str]], float]


def _render(state: FleetState, now: int = NOW) -> str:
    return FleetMetrics(state, staleness_s=STALENESS_S, clock_ns=lambda: now).render_text()


def _sample_lines(text: str) -> list[str]:
    return [x for x in text.split("\n") if x and not x.startswith("#")]


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def _families(text: str) -> dict[str, tuple[str, str, Multiset[Sample]]]:
    """Family → (type, help, its samples as a multiset)."""
    return {
        f.name: (
            f.type,
            f.documentation,
            Multiset((s.name, frozenset(s.labels.items()), s.value) for s in f.samples),
        )
        for f in text_string_to_metric_families(text)
    }


def _find(text: str, name: str, **labels: str) -> list[float]:
    want = set(labels.items())
    return [v for (n, lbls), v in _samples(text).items() if n == name and want <= lbls]


# --- equivalence with the previous renderer ---------------------------------------------------


ADDED_SINCE_GOLDEN = (
    "flopwatt_collector_store_up",
    "flopwatt_collector_store_unavailable_episodes_total",
    "flopwatt_collector_store_failed_commits_total",
    "flopwatt_collector_child_restarts_total",
    "flopwatt_collector_metrics_scrapes_total",
    *(m.name for m in METRICS if m.name.startswith("flopwatt_store_")),
    "flopwatt_gpu_pipe_active_ratio",
    "flopwatt_gpu_sm_active_ratio",
    "flopwatt_gpu_sm_occupancy_ratio",
    "flopwatt_gpu_dram_bandwidth_ratio",
    "flopwatt_gpu_estimated_flops_per_second",
    "flopwatt_gpu_estimated_mfu_ratio",
    "flopwatt_gpu_ecc_errors_total",
    "flopwatt_gpu_remapped_rows_total",
    "flopwatt_gpu_row_remap_pending",
    "flopwatt_gpu_row_remap_failed",
    "flopwatt_gpu_pcie_replays_total",
    "flopwatt_gpu_nvlink_crc_errors_total",
    "flopwatt_gpu_nvlink_replays_total",
    "flopwatt_gpu_nvlink_recoveries_total",
    "flopwatt_gpu_xid_events_total",
    "flopwatt_gpu_xid_last",
    "flopwatt_gpu_compute_processes",
    "flopwatt_gpu_process_sm_utilization_ratio",
    "flopwatt_gpu_process_used_memory_bytes",
)
"""Families added after the golden file was captured (the collector's store and child process
health, store retention, GPM activity, live efficiency, GPU health counters, attribution);
they are checked by their own tests."""


def _without_added(text: str) -> str:
    keep = []
    for line in text.splitlines(keepends=True):
        name = line.split(" ", 3)[2] if line.startswith("#") else line.split("{")[0].split(" ")[0]
        if name not in ADDED_SINCE_GOLDEN:
            keep.append(line)
    return "".join(keep)


def test_same_series_and_values_as_the_previous_renderer() -> None:
    text = _without_added(_render(build_state()))
    golden = GOLDEN.read_text()
    # Every sample line byte for byte (labels in the same order, values formatted the same).
    assert Multiset(_sample_lines(text)) == Multiset(_sample_lines(golden))
    # The same families, announced in the same order.
    assert [x for x in text.splitlines() if x.startswith("#")] == [
        x for x in golden.splitlines() if x.startswith("#")
    ]
    # Parsed: the same families with the same samples.
    assert _families(text) == _families(golden)
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_a_second_render_is_identical_and_bytes_are_the_text_encoded() -> None:
    exporter = FleetMetrics(build_state(), staleness_s=STALENESS_S, clock_ns=lambda: NOW)
    first = exporter.render_bytes()
    assert exporter.render_bytes() == first
    assert exporter.render_text() == first.decode()


# --- the format --------------------------------------------------------------------------------


def test_prometheus_client_parses_every_family_once_and_round_trips() -> None:
    """HELP/TYPE once per family, a family's lines together (a family split in two would be
    parsed as two), counters as ``_total``, the histogram as ``_bucket``/``_count``/``_sum``;
    and prometheus_client writes the parsed families back to the same samples."""
    text = _render(build_state())
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names))
    collector_metrics = [m for m in METRICS if m.scope == "collector"]
    assert len(families) == len(collector_metrics)
    for fam, spec in zip(families, collector_metrics, strict=True):
        assert fam.type == spec.type.value
        assert fam.documentation == spec.help
        if spec.type is MetricType.COUNTER:
            assert spec.name.endswith("_total") and fam.name == spec.name.removesuffix("_total")
            assert {s.name for s in fam.samples} <= {spec.name}
        elif spec.type is MetricType.HISTOGRAM:
            assert {s.name for s in fam.samples} == {
                f"{spec.name}_bucket",
                f"{spec.name}_count",
                f"{spec.name}_sum",
            }
        else:
            assert {s.name for s in fam.samples} <= {spec.name}
        for s in fam.samples:
            assert set(s.labels) - {"le"} <= set(spec.labels)
    for line in text.splitlines():
        if line.startswith("# HELP"):
            assert text.count(line.split(" ", 3)[2] + " ") >= 1

    class Replay:
        def collect(self) -> Iterator[Metric]:
            yield from families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Replay())
    assert _samples(generate_latest(registry).decode()) == _samples(text)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian 'prometheus')")
def test_promtool_lints_the_body_clean() -> None:
    text = _render(build_state())
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    report = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and report == "", report


def test_label_values_are_escaped() -> None:
    text = _render(build_state())
    # Quotes, backslashes and a line feed in hostname, uuid, model name and agent info.
    assert (
        'flopwatt_gpu_info{hostname="rack\\"7\\\\x",gpu_uuid="GPU-odd\\n0",gpu_index="0",'
        'gpu_model="odd \\"name\\"\\\\ \\n",sku="unknown",source="hardware",device_kind="gpu",'
        'sku_match="none",'
        'pci_bus_id="0000:\\\\:00.0"} 1.0' in text.split("\n")
    )
    assert _find(
        text,
        "flopwatt_gpu_power_instant_watts",
        hostname='rack"7\\x',
        gpu_uuid="GPU-odd\n0",
        gpu_model='odd "name"\\ \n',
    ) == [55.5]
    assert _find(text, "flopwatt_agent_info", agent_version='v"1"\\', driver_version="a\nb") == [
        1.0
    ]
    # Only the escaped forms reach the text: every line is one sample or one comment.
    assert len(text.splitlines()) == len(_sample_lines(text)) + 2 * len(
        list(text_string_to_metric_families(text))
    )


# --- what is written ---------------------------------------------------------------------------


def test_units_are_converted_to_base_units() -> None:
    text = _render(build_state())
    assert _find(text, "flopwatt_gpu_sm_clock_hertz", gpu_uuid="GPU-a0") == [1.98e9]
    assert _find(text, "flopwatt_gpu_memory_clock_hertz", gpu_uuid="GPU-a3") == [2.619e9]
    assert _find(text, "flopwatt_gpu_energy_joules_total", gpu_uuid="GPU-a0") == [1.5e7]
    assert _find(text, "flopwatt_gpu_memory_used_bytes", gpu_uuid="GPU-a0") == [40 << 30]
    # Throttle reasons: one 0/1 series per reason bit (0x44 = sw_power_cap | hw_thermal).
    on = {
        dict(lbls)["reason"]: v
        for (n, lbls), v in _samples(text).items()
        if n == "flopwatt_gpu_throttle_active" and ("gpu_uuid", "GPU-b0") in lbls
    }
    assert on == {
        "gpu_idle": 0.0,
        "applications_clocks_setting": 0.0,
        "sw_power_cap": 1.0,
        "hw_slowdown": 0.0,
        "sync_boost": 0.0,
        "sw_thermal_slowdown": 0.0,
        "hw_thermal_slowdown": 1.0,
        "hw_power_brake_slowdown": 0.0,
        "display_clock_setting": 0.0,
    }


def test_absent_columns_have_no_series() -> None:
    """A value the hardware does not give is absent, never zero."""
    text = _render(build_state())
    samples = _samples(text)

    def families_of(uuid: str) -> set[str]:
        return {n for (n, lbls) in samples if ("gpu_uuid", uuid) in lbls}

    # GPU-c1 reported nothing: identity and its registered power limit only.
    assert families_of("GPU-c1") == {"flopwatt_gpu_info", "flopwatt_gpu_power_limit_watts"}
    # GPU-b1 has no limit in telemetry or registration: no limit series.
    assert "flopwatt_gpu_power_limit_watts" not in families_of("GPU-b1")
    # GPU-b0: what two blocks with different columns gave, nothing else.
    assert families_of("GPU-b0") == {
        "flopwatt_gpu_info",
        "flopwatt_gpu_power_instant_watts",
        "flopwatt_gpu_temperature_celsius",
        "flopwatt_gpu_energy_joules_total",
        "flopwatt_gpu_throttle_active",
        "flopwatt_gpu_power_limit_watts",
    }
    assert _find(text, "flopwatt_gpu_power_average_1s_watts", gpu_uuid="GPU-b0") == []
    assert _find(text, "flopwatt_gpu_temperature_celsius", gpu_uuid="GPU-b0", sensor="memory") == []
    # The power limit falls back to the registered one: GPU-b0 registered 400 W.
    assert _find(text, "flopwatt_gpu_power_limit_watts", gpu_uuid="GPU-b0") == [400.0]


def test_newest_values_win() -> None:
    text = _render(build_state())
    # Several rows of GPU-b1 in one block, out of order: the newest (272 W, 0.625) wins; a
    # resent older block (1 W) changes nothing; an unknown device's row is ignored.
    assert _find(text, "flopwatt_gpu_power_instant_watts", gpu_uuid="GPU-b1") == [272.0]
    assert _find(text, "flopwatt_gpu_utilization_ratio", gpu_uuid="GPU-b1") == [0.625]
    assert _find(text, "flopwatt_gpu_energy_joules_total", gpu_uuid="GPU-b1") == [3.5e6]
    assert _find(text, "flopwatt_gpu_info", gpu_uuid="GPU-zz") == []


def test_stale_agents_keep_only_their_last_seen() -> None:
    state = build_state()
    text = _render(state)
    assert _find(text, "flopwatt_agent_last_seen_timestamp_seconds", hostname="node-stale") == [
        (NOW - 600 * _S) / 1e9
    ]
    assert not [k for k in _samples(text) if ("hostname", "node-stale") in k[1] and "gpu" in k[0]]
    assert _find(text, "flopwatt_agent_connected", hostname="node-stale") == []
    assert _find(text, "flopwatt_gemm_burst_flops_per_second", gpu_uuid="GPU-s0") == []
    # Later, every agent is stale: no GPU or SKU series at all; last-seen of every agent stays.
    later = _render(state, NOW + 3600 * _S)
    names = {n for n, _ in _samples(later)}
    assert not {n for n in names if n.startswith(("flopwatt_gpu_", "flopwatt_spec_"))}
    assert len(_find(later, "flopwatt_agent_last_seen_timestamp_seconds")) == 8
    assert _find(later, "flopwatt_collector_samples_ingested_total") == [123456.0]


def test_a_moved_device_is_written_once_under_its_new_agent() -> None:
    text = _render(build_state())
    lines = [x for x in _sample_lines(text) if 'gpu_uuid="GPU-move"' in x]
    assert lines and all('hostname="node-f"' in x for x in lines)
    assert _find(text, "flopwatt_gpu_power_instant_watts", gpu_uuid="GPU-move") == [123.0]
    # node-g dropped GPU-g2 when it registered again.
    assert _find(text, "flopwatt_gpu_info", gpu_uuid="GPU-g2") == []


def test_counters_and_histogram() -> None:
    text = _render(build_state())
    name = "flopwatt_collector_commit_latency_seconds"
    buckets = {
        dict(lbls)["le"]: v for (n, lbls), v in _samples(text).items() if n == f"{name}_bucket"
    }
    assert buckets["0.001"] == 1.0 and buckets["0.005"] == 3.0 and buckets["1.0"] == 6.0
    assert buckets["+Inf"] == 7.0 and _find(text, f"{name}_count") == [7.0]
    assert _find(text, f"{name}_sum") == [pytest.approx(7.9765)]
    assert _find(text, "flopwatt_collector_messages_total", kind="telemetry", outcome="stored") == [
        1000.0
    ]
    assert _find(text, "flopwatt_collector_streams_active") == [4.0]


def test_results_and_sku_series() -> None:
    text = _render(build_state())
    assert _find(text, "flopwatt_gemm_burst_flops_per_second", gpu_uuid="GPU-a0") == [
        790e12,
        1.6e15,
    ]
    # The spec efficiency is derived from the spec where the result has none; an unknown
    # precision has none.
    assert _find(
        text, "flopwatt_model_spec_efficiency_ratio", gpu_uuid="GPU-a1", model="vit_b_16"
    ) == [pytest.approx(2.2e14 / 989.5e12)]
    # SKUs of fresh agents only: node-stale's H100 is also node-a's; L40S is nobody's.
    skus = {dict(lbls)["sku"] for (n, lbls) in _samples(text) if n == "flopwatt_spec_tdp_watts"}
    assert skus == {"H100-SXM5-80GB", "A100-SXM4-80GB", "H200-SXM-141GB", "L4"}


def test_non_finite_values_are_written_as_the_format_spells_them() -> None:
    state = FleetState()
    d = DeviceState(DeviceInfo(uuid="GPU-1", index=0, name="x"), "n", None, "none")
    state.register(NodeInfo(hostname="n"), 1, [d], NOW)
    block = LatestBlock(
        ("GPU-1",),
        np.array([NOW], dtype=np.int64),
        ("power_instant_w", "power_average_1s_w", "energy_j"),
        np.array([[math.nan, math.inf, -math.inf]]),
    )
    state.apply_latest([block])
    lines = _sample_lines(_render(state))
    assert [x.rsplit(" ", 1)[1] for x in lines if x.startswith("flopwatt_gpu_power")] == [
        "NaN",
        "+Inf",
    ]
    assert [x.rsplit(" ", 1)[1] for x in lines if x.startswith("flopwatt_gpu_energy")] == ["-Inf"]
    assert math.isnan(_find(_render(state), "flopwatt_gpu_power_instant_watts")[0])


def test_an_empty_state_renders_every_family_header() -> None:
    text = _render(FleetState())
    assert len(list(text_string_to_metric_families(text))) == len(
        [m for m in METRICS if m.scope == "collector"]
    )
    assert _find(text, "flopwatt_collector_streams_active") == [0.0]


def test_relabelled_device_is_rendered_with_its_new_labels_only() -> None:
    state = FleetState()
    exporter = FleetMetrics(state, clock_ns=lambda: NOW)
    spec = load_registry().get("H100-SXM5-80GB")

    def register(host: str, name: str, with_spec: bool) -> None:
        d = DeviceState(
            DeviceInfo(uuid="GPU-1", index=0, name=name), host, spec if with_spec else None, "name"
        )
        state.register(NodeInfo(hostname=host, agent_version="t"), 1, [d], NOW)

    register("node-a", "NVIDIA H100 80GB HBM3", True)
    block = latest_block(
        telemetry_block(["GPU-1"], NOW - _S, {"power_instant_w": [600.0], "throttle_reasons": [4]})
    )
    assert block is not None
    state.apply_latest([block])
    exporter.warm()
    first = exporter.render_text()
    power = "flopwatt_gpu_power_instant_watts{"
    assert [x for x in _sample_lines(first) if x.startswith(power)] == [
        'flopwatt_gpu_power_instant_watts{hostname="node-a",gpu_uuid="GPU-1",gpu_index="0",'
        'gpu_model="NVIDIA H100 80GB HBM3",sku="H100-SXM5-80GB",source="hardware",'
        'device_kind="gpu"} 600.0'
    ]
    # The same GPU re-registered from another host under another name (and no registry match):
    # one series under its new labels, carrying its last value until the new host reports.
    register("node-b", 'odd "name"\\', False)
    second = exporter.render_text()
    assert [x for x in _sample_lines(second) if x.startswith(power)] == [
        'flopwatt_gpu_power_instant_watts{hostname="node-b",gpu_uuid="GPU-1",gpu_index="0",'
        'gpu_model="odd \\"name\\"\\\\",sku="unknown",source="hardware",device_kind="gpu"} 600.0'
    ]
    throttle = [x for x in _sample_lines(second) if x.startswith("flopwatt_gpu_throttle_active{")]
    assert len(throttle) == 9 and all('hostname="node-b"' in x for x in throttle)


# --- against a plain reference, on random fleets ---------------------------------------------

_REFERENCE = (  # (column, family, extra label, scale) as the previous renderer wrote them
    ("power_instant_w", "flopwatt_gpu_power_instant_watts", None, 1.0),
    ("power_average_1s_w", "flopwatt_gpu_power_average_1s_watts", None, 1.0),
    ("gpu_temperature_c", "flopwatt_gpu_temperature_celsius", "gpu", 1.0),
    ("memory_temperature_c", "flopwatt_gpu_temperature_celsius", "memory", 1.0),
    ("gpu_utilization_ratio", "flopwatt_gpu_utilization_ratio", "gpu", 1.0),
    ("memory_utilization_ratio", "flopwatt_gpu_utilization_ratio", "memory", 1.0),
    ("energy_j", "flopwatt_gpu_energy_joules_total", None, 1.0),
    ("sm_clock_mhz", "flopwatt_gpu_sm_clock_hertz", None, 1e6),
    ("mem_clock_mhz", "flopwatt_gpu_memory_clock_hertz", None, 1e6),
    ("memory_used_bytes", "flopwatt_gpu_memory_used_bytes", None, 1.0),
)
_EXTRA_NAME = {
    "flopwatt_gpu_temperature_celsius": "sensor",
    "flopwatt_gpu_utilization_ratio": "resource",
}


def _reference(snap: FleetSnapshot, now: int) -> set[Sample]:
    """The GPU telemetry series the previous renderer wrote, from a snapshot's per-device
    values (a plain per-device walk)."""
    out: set[Sample] = set()
    for agent_id, a in snap.agents.items():
        if now - a.last_seen_unix_ns > STALENESS_S * 1e9:
            continue
        for uuid in a.device_uuids:
            d = snap.devices.get(uuid)
            if d is None or d.agent_id != agent_id:
                continue
            gpu = (
                ("hostname", agent_id),
                ("gpu_uuid", uuid),
                ("gpu_index", str(d.info.index)),
                ("gpu_model", d.info.name),
                ("sku", d.sku or "unknown"),
                ("source", "sim" if d.info.simulated else "hardware"),
                ("device_kind", "cpu" if d.info.kind == DeviceKind.CPU else "gpu"),
            )
            v = d.latest
            for column, family, extra, scale in _REFERENCE:
                if column in v:
                    labels = gpu + (((_EXTRA_NAME[family], extra),) if extra else ())
                    out.add((family, frozenset(labels), v[column] * scale))
            if "throttle_reasons" in v:
                for reason, bit in (("gpu_idle", 1), ("sw_power_cap", 4), ("hw_slowdown", 8)):
                    on = 1.0 if int(v["throttle_reasons"]) & bit else 0.0
                    labels = (*gpu, ("reason", reason))
                    out.add(("flopwatt_gpu_throttle_active", frozenset(labels), on))
            limit = v.get("power_limit_w", d.info.power_limit_enforced_w)
            if limit is not None:
                out.add(("flopwatt_gpu_power_limit_watts", frozenset(gpu), limit))
    return out


def _rendered(text: str) -> set[Sample]:
    keep = {f for _, f, _, _ in _REFERENCE} | {
        "flopwatt_gpu_power_limit_watts",
        "flopwatt_gpu_throttle_active",
    }
    out: set[Sample] = set()
    for (name, labels), value in _samples(text).items():
        if name == "flopwatt_gpu_throttle_active" and dict(labels)["reason"] not in (
            "gpu_idle",
            "sw_power_cap",
            "hw_slowdown",
        ):
            continue
        if name in keep:
            out.add((name, labels, value))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_random_fleets_match_a_per_device_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    state = FleetState()
    columns = list(VALUE_COLUMNS)
    agents = [f"host-{i}" for i in range(int(rng.integers(1, 12)))]
    uuids: dict[str, list[str]] = {}
    for i, host in enumerate(agents):
        n = int(rng.integers(0, 6))
        devs = [
            DeviceState(
                DeviceInfo(
                    uuid=f"GPU-{i}-{g}",
                    index=g,
                    name="NVIDIA H100 80GB HBM3",
                    power_limit_enforced_w=None if rng.random() < 0.3 else 700.0 - g,
                    simulated=bool(rng.random() < 0.2),
                ),
                host,
                None,
                "none",
            )
            for g in range(n)
        ]
        seen_s = int(rng.choice([1, 100, 299, 301, 1000]))
        state.register(NodeInfo(hostname=host), 1, devs, NOW - seen_s * _S)
        uuids[host] = [d.info.uuid for d in devs]
    for _ in range(int(rng.integers(1, 30))):
        host = agents[int(rng.integers(len(agents)))]
        if not uuids[host]:
            continue
        chosen = [u for u in uuids[host] if rng.random() < 0.7]
        names = sorted({str(c) for c in rng.choice(columns, int(rng.integers(1, len(columns))))})
        if not chosen:
            continue
        stamps = NOW - rng.integers(1, 500, len(chosen)) * _S
        values = rng.choice([0.0, 1.0, 4.0, 12.5, 700.0, 1e-7, 3.14159], (len(chosen), len(names)))
        values += rng.normal(0, 1, values.shape) * (rng.random() < 0.5)
        values = np.abs(values)
        state.apply_latest(
            [LatestBlock(tuple(chosen), np.asarray(stamps, np.int64), tuple(names), values)]
        )
    # Some devices move to another agent.
    for _ in range(int(rng.integers(0, 3))):
        src, dst = rng.choice(agents, 2)
        if uuids[str(src)] and src != dst:
            moved = uuids[str(src)][0]
            devs = [
                DeviceState(DeviceInfo(uuid=u, index=k, name="m"), str(dst), None, "none")
                for k, u in enumerate([*uuids[str(dst)], moved])
            ]
            state.register(NodeInfo(hostname=str(dst)), 2, devs, NOW - 5 * _S)
            uuids[str(dst)] = [*uuids[str(dst)], moved]
    exporter = FleetMetrics(state, staleness_s=STALENESS_S, clock_ns=lambda: NOW)
    assert _rendered(exporter.render_text()) == _reference(state.snapshot(), NOW)


# --- the state: journal, resync, load, values ---------------------------------------------------


def _more_changes(state: FleetState) -> None:
    """Changes after a resync: new values, a result, a device moving back, a new agent."""
    block = latest_block(
        telemetry_block(
            ["GPU-a0", "GPU-b0", "GPU-c1"],
            NOW - _S // 2,
            {"power_instant_w": [1.0, 2.0, 3.0], "memory_temperature_c": [50.0, 51.0, 52.5]},
        )
    )
    assert block is not None
    state.apply_latest([block])
    play_gpu = DeviceState(
        DeviceInfo(uuid="GPU-move", index=5, name="NVIDIA A100-SXM4-80GB"), "node-e", None, "none"
    )
    state.register(NodeInfo(hostname="node-e"), 2, [play_gpu], NOW - _S)
    state.set_connected("node-e", True, NOW - _S)
    new = DeviceState(DeviceInfo(uuid="GPU-new", index=0, name="x"), "node-new", None, "none")
    state.register(NodeInfo(hostname="node-new"), 1, [new], NOW - _S)
    nb = latest_block(telemetry_block(["GPU-new"], NOW - _S, {"energy_j": [42.0]}))
    assert nb is not None
    state.apply_latest([nb])
    state.apply_gemm("GPU-new", gemm_result("fp16", 1e14, None, None), None, NOW - _S)
    state.seen("node-a", NOW)
    state.count(lambda c: setattr(c, "samples_ingested", c.samples_ingested + 1))


def test_a_copy_fed_resync_and_the_journal_renders_the_same() -> None:
    original = FleetState(journal=True)
    play(original)
    snapshot = original.resync()
    assert original.take_journal() == []  # what the snapshot holds is not replayed
    copy_ = FleetState()
    copy_.load(pickle.loads(pickle.dumps(snapshot)))  # as the exporter receives it
    copy_.apply_liveness(pickle.loads(pickle.dumps(original.liveness())))
    assert _render(copy_) == _render(original)

    _more_changes(original)
    for event in pickle.loads(pickle.dumps(original.take_journal())):
        copy_.apply_event(event)
    copy_.apply_liveness(pickle.loads(pickle.dumps(original.liveness())))
    text = _render(copy_)
    assert text == _render(original)
    assert _find(text, "flopwatt_gpu_power_instant_watts", gpu_uuid="GPU-a0") == [1.0]
    assert _find(text, "flopwatt_gpu_energy_joules_total", gpu_uuid="GPU-new") == [42.0]
    assert all('hostname="node-e"' in x for x in _sample_lines(text) if "GPU-move" in x)


def test_an_exporter_follows_its_state_across_a_load() -> None:
    """The exporter keeps text per table row; a load renumbers the rows."""
    original = build_state()
    copy_ = FleetState()
    exporter = FleetMetrics(copy_, staleness_s=STALENESS_S, clock_ns=lambda: NOW)
    first = FleetState()
    d = DeviceState(DeviceInfo(uuid="GPU-zz", index=0, name="z"), "zz", None, "none")
    first.register(NodeInfo(hostname="zz"), 1, [d], NOW)
    copy_.load(first.snapshot())
    assert "GPU-zz" in exporter.render_text()
    copy_.load(original.resync())
    copy_.apply_liveness(original.liveness())
    assert exporter.render_text() == _render(original)


def test_load_takes_values_from_devices_when_the_snapshot_has_no_table() -> None:
    original = build_state()
    snap = original.snapshot()
    bare = FleetSnapshot(snap.agents, snap.devices, snap.counters)
    copy_ = FleetState()
    copy_.load(bare)
    assert _render(copy_) == _render(original)


def test_device_latest_is_a_view_of_the_newest_values() -> None:
    state = build_state()
    live = state.device("GPU-b0")
    assert live is not None
    copy_ = state.snapshot().devices["GPU-b0"]
    one = state.device_copy("GPU-b0")
    assert one is not None
    expected = {
        "power_instant_w": 250.5,
        "gpu_temperature_c": 45.0,
        "energy_j": 2.5e6,
        "throttle_reasons": 68.0,
    }
    assert live.latest == copy_.latest == one.latest == expected
    stamp = live.latest_sample_unix_ns
    assert stamp == NOW - 5 * _S + 2 * (_S // 10)
    block = latest_block(telemetry_block(["GPU-b0"], NOW, {"power_instant_w": [1.0]}))
    assert block is not None
    state.apply_latest([block])
    assert live.latest["power_instant_w"] == 1.0  # the registered object reads the state now
    assert copy_.latest["power_instant_w"] == 250.5  # a copy is as of the copy
    assert one.latest_sample_unix_ns == stamp
    assert pickle.loads(pickle.dumps(copy_)).latest == expected
    assert state.device_copy("GPU-nope") is None
    assert DeviceState(DeviceInfo(uuid="x", index=0, name="x"), "a", None, "").latest == {}


def test_columns_the_table_does_not_know_are_not_kept() -> None:
    state = FleetState()
    d = DeviceState(DeviceInfo(uuid="GPU-1", index=0, name="x"), "n", None, "none")
    state.register(NodeInfo(hostname="n"), 1, [d], NOW)
    block = LatestBlock(
        ("GPU-1",),
        np.array([NOW], dtype=np.int64),
        ("future_column_x", "power_instant_w"),
        np.array([[9.0, 100.0]]),
    )
    state.apply_latest([block])
    assert d.latest == {"power_instant_w": 100.0}


def test_a_large_fleet_matches_the_reference() -> None:
    """Past the table's first size, and with series of many devices where values repeat
    (formatted once per distinct value) or do not."""
    state = FleetState()
    for a in range(40):
        devs = [
            DeviceState(DeviceInfo(uuid=f"G-{a}-{g}", index=g, name="x"), f"h{a}", None, "none")
            for g in range(8)
        ]
        state.register(NodeInfo(hostname=f"h{a}"), 1, devs, NOW)
        block = LatestBlock(
            tuple(d.info.uuid for d in devs),
            np.full(8, NOW - _S, dtype=np.int64),
            ("power_instant_w", "sm_clock_mhz", "gpu_temperature_c"),
            np.array(
                [
                    [a + g / 8, 1980.0 - 15 * (g % 3), math.nan if a == g == 3 else 40.0 + g]
                    for g in range(8)
                ]
            ),
        )
        state.apply_latest([block])
    text = _render(state)
    assert _find(text, "flopwatt_gpu_power_instant_watts", gpu_uuid="G-0-1") == [0.125]
    assert _find(text, "flopwatt_gpu_power_instant_watts", gpu_uuid="G-39-7") == [39.875]
    assert len(_find(text, "flopwatt_gpu_power_instant_watts")) == 320
    assert _find(text, "flopwatt_gpu_sm_clock_hertz", gpu_uuid="G-5-4") == [1965e6]
    assert math.isnan(_find(text, "flopwatt_gpu_temperature_celsius", gpu_uuid="G-3-3")[0])
    assert (
        'gpu_uuid="G-3-3",gpu_index="3",gpu_model="x",sku="unknown",source="hardware",'
        'device_kind="gpu",sensor="gpu"} NaN' in text
    )
    rendered = {x for x in _rendered(text) if not (x[0].endswith("celsius") and math.isnan(x[2]))}
    reference = {
        x
        for x in _reference(state.snapshot(), NOW)
        if not (x[0].endswith("celsius") and math.isnan(x[2]))
    }
    assert rendered == reference and len(reference) == 3 * 320 - 1  # less the NaN


def test_renders_while_the_state_changes_stay_whole() -> None:
    """Renders on other threads while the state is written: every body parses, every device
    is there with its power."""
    state = build_state()
    exporter = FleetMetrics(state, staleness_s=STALENESS_S, clock_ns=lambda: NOW)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        k = 0
        try:
            while not stop.is_set():
                k += 1
                block = latest_block(
                    telemetry_block(["GPU-a0", "GPU-a1"], NOW + k, {"power_instant_w": [k, k]})
                )
                assert block is not None
                state.apply_latest([block])
                if k % 50 == 0:
                    d = DeviceState(
                        DeviceInfo(uuid=f"GPU-w{k}", index=0, name="w"), "node-w", None, "none"
                    )
                    state.register(NodeInfo(hostname="node-w"), 1, [d], NOW)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        bodies = [exporter.render_text() for _ in range(30)]
    finally:
        stop.set()
        writer.join()
    assert not errors
    for body in bodies:
        assert len(_find(body, "flopwatt_gpu_power_instant_watts", gpu_uuid="GPU-a0")) == 1


def test_replicas_write_an_agents_gpu_series_only_while_it_streams_to_them() -> None:
    """On a shared store (collector replicas), an agent that disconnected from this replica —
    it may be streaming to another one — has no GPU or result series here, so a sum over the
    replicas counts each GPU once; its last-seen time stays (the alert takes the newest over
    all replicas). A single collector keeps writing it until the staleness window."""
    state = build_state()
    state.set_connected("node-a", False, NOW - 10 * _S)  # fresh, but not streaming here
    single = FleetMetrics(state, staleness_s=STALENESS_S, clock_ns=lambda: NOW).render_text()
    replica = FleetMetrics(
        state, staleness_s=STALENESS_S, clock_ns=lambda: NOW, connected_only=True
    ).render_text()
    assert _find(single, "flopwatt_gpu_power_instant_watts", hostname="node-a")
    assert _find(replica, "flopwatt_gpu_power_instant_watts", hostname="node-a") == []
    assert _find(replica, "flopwatt_gemm_burst_flops_per_second", hostname="node-a") == []
    assert _find(replica, "flopwatt_agent_last_seen_timestamp_seconds", hostname="node-a")
    # Agents still streaming here are written as by a single collector.
    for family in ("flopwatt_gpu_power_instant_watts", "flopwatt_gpu_energy_joules_total"):
        assert _find(replica, family, hostname="node-b") == _find(single, family, hostname="node-b")
