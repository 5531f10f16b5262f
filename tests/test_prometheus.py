"""The collector's ``/metrics`` against the real thing: ``promtool check metrics`` lints a real
scrape clean, and a real Prometheus scraping the collector gets every GPU series with the frozen
label scheme and the values the agent sent.

The collector is fed raw protobuf (as in ``test_collector_ingest.py``): a real H100 and a
simulated one, full-column telemetry, a GEMM result, a model result, a rejected sample and a
tombstone, so every family the exporter can emit has samples.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import Registry
from flopwatt.analysis.throttle import THROTTLE_BITS, ThrottleReason
from flopwatt.collector.server import RunningCollector
from flopwatt.metrics_spec import GPU_LABELS
from flopwatt.v1 import agent_pb2, agent_pb2_grpc, jobs_pb2
from tests.collector_helpers import (
    AgentStream,
    collector,
    device_pb,
    heartbeat_pb,
    hello_pb,
    http_get,
    le,
    register_pb,
)
from tests.prometheus_helpers import (
    PROMTOOL,
    query,
    requires_prometheus,
    run_prometheus,
    wait_for_query,
    wait_for_targets_up,
)

pytestmark = [pytest.mark.prometheus, requires_prometheus]

EPOCH = 0x0BAD_CAFE_0000_0001
HOST = "node-a"
H100 = "NVIDIA H100 80GB HBM3"
SKU = "H100-SXM5-80GB"
GPU0, SIM1 = "GPU-11111111-0000-4000-8000-000000000000", "GPU-sim-22222222"
N = 10
#: Expected latest value of each device's telemetry (the last sample of its series).
LAST_POWER = {
    GPU0: {"instant": 309.0, "average_1s": 305.0},
    SIM1: {"instant": 209.0, "average_1s": 205.0},
}
#: The throttle bitmask of each device's last sample: SwPowerCap | SwThermalSlowdown, and none.
LAST_THROTTLE = {GPU0: 0x4 | 0x20, SIM1: 0x0}


def _telemetry(seq: int, uuid: str, base_w: float, throttle: int) -> agent_pb2.AgentMessage:
    """Every column present; power ramps base_w … base_w + 9, so the last sample is base + 9."""
    t0 = time.time_ns() - N * 100_000_000
    m = agent_pb2.AgentMessage(epoch=EPOCH, sequence=seq)
    s = m.telemetry.series.add(device_uuid=uuid)
    s.timestamp_unix_ns = le([t0 + i * 100_000_000 for i in range(N)], "timestamp_unix_ns")
    s.power_instant_w = le([base_w + i for i in range(N)], "power_instant_w")
    s.power_average_1s_w = le([base_w + 5] * N, "power_average_1s_w")
    s.energy_j = le([1000.0 + 30.0 * i for i in range(N)], "energy_j")
    s.sm_clock_mhz = le([1755] * N, "sm_clock_mhz")
    s.mem_clock_mhz = le([2619] * N, "mem_clock_mhz")
    s.gpu_temperature_c = le([65.5] * N, "gpu_temperature_c")
    s.memory_temperature_c = le([71.0] * N, "memory_temperature_c")
    s.gpu_utilization_ratio = le([0.75] * N, "gpu_utilization_ratio")
    s.memory_utilization_ratio = le([0.5] * N, "memory_utilization_ratio")
    s.throttle_reasons = le([0] * (N - 1) + [throttle], "throttle_reasons")
    s.power_limit_w = le([700.0] * N, "power_limit_w")
    s.memory_used_bytes = le([40 * 2**30] * N, "memory_used_bytes")
    return m


def _rejected_sample(seq: int) -> agent_pb2.AgentMessage:
    m = agent_pb2.AgentMessage(epoch=EPOCH, sequence=seq)
    s = m.telemetry.series.add(device_uuid=SIM1)
    s.timestamp_unix_ns = le([time.time_ns() - 10**9], "timestamp_unix_ns")  # older than above
    s.power_instant_w = le([math.nan], "power_instant_w")
    return m


def _gemm(seq: int) -> agent_pb2.AgentMessage:
    now = time.time_ns()
    return agent_pb2.AgentMessage(
        epoch=EPOCH,
        sequence=seq,
        job_result=jobs_pb2.JobResult(
            job_id="job-gemm",
            device_uuid=GPU0,
            started_unix_ns=now - 31 * 10**9,
            finished_unix_ns=now,
            gemm=jobs_pb2.GemmResult(
                precision="bf16",
                backend="cublas",
                burst_flops_per_s=790e12,
                best_shape=jobs_pb2.GemmShape(m=8192, n=8192, k=8192),
                sustained_flops_per_s=700e12,
                sustained_s=30.0,
                sustained_flops=700e12 * 30,
                energy_j=650.0 * 30,
                energy_per_flop_j=650.0 * 30 / (700e12 * 30),
                mean_power_w=650.0,
            ),
        ),
    )


MODEL_DELIVERED = 2 * 4.09e9 * 8 / 0.004


def _model(seq: int) -> agent_pb2.AgentMessage:
    """A model result without ``spec_efficiency_ratio``: the exporter derives it from the
    registry's spec peak at the result's own precision."""
    now = time.time_ns()
    return agent_pb2.AgentMessage(
        epoch=EPOCH,
        sequence=seq,
        job_result=jobs_pb2.JobResult(
            job_id="job-model",
            device_uuid=GPU0,
            started_unix_ns=now - 5 * 10**9,
            finished_unix_ns=now,
            model=jobs_pb2.ModelResult(
                model="resnet50",
                batch=8,
                precision="fp16",
                input_size=224,
                flops=2 * 4.09e9 * 8,
                macs=4.09e9 * 8,
                latency_p50_s=0.004,
                latency_p90_s=0.0045,
                latency_p99_s=0.005,
                latency_mean_s=0.0042,
                latency_std_s=0.0002,
                runs=100,
                throughput_samples_per_s=8 / 0.004,
                delivered_flops_per_s=MODEL_DELIVERED,
                peak_flops_per_s=700e12,
                peak_source="measured:cublas",
                efficiency_ratio=MODEL_DELIVERED / 700e12,
                energy_per_inference_j=0.3,
                mean_power_w=600.0,
            ),
        ),
    )


async def _feed(c: RunningCollector) -> None:
    async with grpc.aio.insecure_channel(c.grpc_address) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        devices = [
            device_pb(GPU0, index=0),
            device_pb(SIM1, index=1, simulated=True, sim_sku=SKU),
        ]
        await stub.Register(register_pb(HOST, devices, EPOCH))
        s = AgentStream(ch)
        s.send(
            hello_pb(HOST, EPOCH),
            _telemetry(1, GPU0, 300.0, LAST_THROTTLE[GPU0]),
            _telemetry(2, SIM1, 200.0, LAST_THROTTLE[SIM1]),
            _rejected_sample(3),
            _gemm(4),
            _model(5),
            agent_pb2.AgentMessage(
                epoch=EPOCH,
                sequence=6,
                dropped=agent_pb2.Dropped(
                    reason="spool full", samples=7, original_kind="telemetry"
                ),
            ),
            heartbeat_pb(EPOCH, 7),
        )
        await s.wait_ack(EPOCH, 7)
        assert await s.close() == grpc.StatusCode.OK


def _promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_promtool_lints_a_real_scrape_clean(tmp_path: Path) -> None:
    async with collector(tmp_path) as c:
        await _feed(c)
        status, text = await http_get(c.http_url + "/metrics")
    assert status == 200
    # The scrape holds the families this test means to lint (not an empty exposition).
    for family in (
        "flopwatt_gpu_power_instant_watts",
        "flopwatt_gpu_power_average_1s_watts",
        "flopwatt_gpu_energy_joules_total",
        "flopwatt_gpu_temperature_celsius",
        "flopwatt_gpu_throttle_active",
        "flopwatt_gemm_burst_flops_per_second",
        "flopwatt_gemm_sustained_flops_per_second",
        "flopwatt_model_delivered_flops_per_second",
        "flopwatt_collector_samples_rejected_total",
        "flopwatt_collector_commit_latency_seconds_bucket",
    ):
        assert f"\n{family}{{" in text, family
    result = await asyncio.to_thread(_promtool_check, text)
    report = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and report == "", f"promtool check metrics:\n{report}"


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def _by(samples: list[dict[str, Any]], **labels: str) -> list[dict[str, Any]]:
    return [s for s in samples if all(s["metric"].get(k) == v for k, v in labels.items())]


def _scrape_with_prometheus(tmp_path: Path, target: str) -> dict[str, Any]:
    """Blocking: run Prometheus against ``target`` and collect what the assertions need."""
    out: dict[str, Any] = {}
    with run_prometheus(tmp_path, [target], interval_s=1) as prom:
        out["targets"] = wait_for_targets_up(prom, 1)
        for name in (
            "flopwatt_gpu_power_instant_watts",
            "flopwatt_gpu_power_average_1s_watts",
            "flopwatt_gemm_burst_flops_per_second",
            "flopwatt_gemm_sustained_flops_per_second",
            "flopwatt_gpu_throttle_active",
            "flopwatt_agent_last_seen_timestamp_seconds",
            "flopwatt_model_delivered_flops_per_second",
        ):
            out[name] = wait_for_query(prom, name)
        # Families that may legitimately be empty are read once the scrape above has landed.
        out["flopwatt_model_spec_efficiency_ratio"] = query(
            prom, "flopwatt_model_spec_efficiency_ratio"
        )
        out["up"] = query(prom, 'up{job="flopwatt"}')
    return out


async def test_prometheus_scrapes_gpu_series_with_the_label_scheme(
    tmp_path: Path, registry: Registry
) -> None:
    t_start = time.time()
    async with collector(tmp_path) as c:
        await _feed(c)
        t_fed = time.time()
        target = f"{c.http_host}:{c.http_port}"
        got = await asyncio.to_thread(_scrape_with_prometheus, tmp_path, target)

    (t,) = got["targets"]
    assert t["health"] == "up" and t["lastError"] == "", t
    assert t["labels"]["instance"] == target
    assert [_value(s) for s in got["up"]] == [1.0]

    def gpu_labels(uuid: str) -> dict[str, str]:
        sim = uuid == SIM1
        return {
            "hostname": HOST,
            "gpu_uuid": uuid,
            "gpu_index": "1" if sim else "0",
            "gpu_model": H100,
            "sku": SKU,
            "source": "sim" if sim else "hardware",
            "device_kind": "gpu",
            "job": "flopwatt",
            "instance": target,
        }

    # Power: one family per reading, exactly the frozen GPU labels (+ Prometheus'
    # job/instance), both devices.
    for uuid in (GPU0, SIM1):
        for kind, want in LAST_POWER[uuid].items():
            family = f"flopwatt_gpu_power_{kind}_watts"
            assert len(got[family]) == 2, got[family]
            (s,) = _by(got[family], gpu_uuid=uuid)
            assert s["metric"] == {"__name__": family, **gpu_labels(uuid)}
            assert _value(s) == want
            assert set(GPU_LABELS) <= set(s["metric"])

    # GEMM: burst and sustained (one family each) for the one device that ran it.
    for kind, want in (("burst", 790e12), ("sustained", 700e12)):
        family = f"flopwatt_gemm_{kind}_flops_per_second"
        (s,) = got[family]
        assert _value(s) == want
        assert s["metric"] == {"__name__": family, **gpu_labels(GPU0), "precision": "bf16"}

    # Throttle: one series per known reason per device; 1 exactly where the last sample's bit is.
    throttle = got["flopwatt_gpu_throttle_active"]
    assert len(throttle) == 2 * len(THROTTLE_BITS)
    for s in throttle:
        m = s["metric"]
        uuid, reason = m["gpu_uuid"], ThrottleReason(m["reason"])
        assert m == {"__name__": "flopwatt_gpu_throttle_active", **gpu_labels(uuid),
                     "reason": reason.value}  # fmt: skip
        bit_set = LAST_THROTTLE[uuid] & THROTTLE_BITS[reason]
        assert _value(s) == (1.0 if bit_set else 0.0), (uuid, reason)
    active = {(s["metric"]["gpu_uuid"], s["metric"]["reason"]) for s in throttle if _value(s)}
    assert active == {(GPU0, "sw_power_cap"), (GPU0, "sw_thermal_slowdown")}

    # Last seen: one series per agent, hostname only, a Unix time within the feed.
    (seen,) = got["flopwatt_agent_last_seen_timestamp_seconds"]
    assert seen["metric"] == {
        "__name__": "flopwatt_agent_last_seen_timestamp_seconds",
        "hostname": HOST,
        "job": "flopwatt",
        "instance": target,
    }
    assert t_start - 1 <= _value(seen) <= t_fed + 1

    # Model: delivered FLOP/s as sent; spec efficiency derived from the registry's fp16 peak.
    (delivered,) = got["flopwatt_model_delivered_flops_per_second"]
    model_labels = {**gpu_labels(GPU0), "model": "resnet50", "batch": "8", "precision": "fp16"}
    assert delivered["metric"] == {
        "__name__": "flopwatt_model_delivered_flops_per_second",
        **model_labels,
    }
    assert _value(delivered) == pytest.approx(MODEL_DELIVERED)
    peak = registry.get(SKU).best_peak(Precision.FP16)
    assert peak is not None
    spec_eff = got["flopwatt_model_spec_efficiency_ratio"]
    assert len(spec_eff) == 1, (
        "flopwatt_model_spec_efficiency_ratio: a result without spec_efficiency_ratio must get "
        f"delivered / the SKU's spec peak at the result's precision (fp16); got {spec_eff}"
    )
    assert spec_eff[0]["metric"] == {
        "__name__": "flopwatt_model_spec_efficiency_ratio",
        **model_labels,
    }
    assert _value(spec_eff[0]) == pytest.approx(MODEL_DELIVERED / peak.flops_per_s)
