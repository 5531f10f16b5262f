"""Live efficiency end to end, on the simulator where the truth is known by construction: sim
agents running background workloads stream GPM pipe activity through a real collector (gRPC on
loopback, SQLite), and ``/metrics`` shows the estimated FLOP/s and MFU the workloads were built
with; a GPU without GPM (A100) shows no estimate and no activity — absent, never 0.
Also the wire contract for the new columns, and the sim workload grammar."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import numpy as np
import pytest

from flopwatt.agent.agent import Agent, AgentConfig
from flopwatt.agent.devices.sim import SimBackend
from flopwatt.agent.devices.sim_workload import parse_workload
from flopwatt.channel import ClientCredentials
from flopwatt.records import GPM_COLUMNS, DeviceSeries, TelemetryBatch
from flopwatt.report.files import as_report
from flopwatt.report.tables import ReportParameters
from flopwatt.wire import telemetry_from_proto, telemetry_to_proto
from tests.collector_helpers import collector, find, http_get, samples
from tests.test_agent_e2e import run_agents, wait_for

pytestmark = pytest.mark.slow


def _agent(tmp_path: Path, name: str, target: str, sku: str, workloads: list[str]) -> Agent:
    config = AgentConfig(
        hostname=name,
        collector=ClientCredentials(target),
        spool_path=tmp_path / f"spool-{name}.db",
        interval_s=0.05,
        batch_interval_s=0.2,
        backoff_base_s=0.2,
        backoff_cap_s=1.0,
    )
    backend = SimBackend.from_options(sku=sku, gpus=2, seed=1, host=name, workloads=workloads)
    return Agent(config, backend)


def _fleet(tmp_path: Path, target: str, tag: str) -> list[Agent]:
    """An H100 node (GPU 0 training at 42 % MFU, GPU 1 idle) and an A100 node (no GPM)."""
    return [
        _agent(tmp_path, f"h100-{tag}", target, "H100-SXM5-80GB", ["train:0.42", "idle@1"]),
        _agent(tmp_path, f"a100-{tag}", target, "A100-SXM4-80GB", ["train:0.42"]),
    ]


def test_gpm_columns_round_trip_the_wire_bit_for_bit() -> None:
    ts = np.array([1, 2, 3], dtype=np.int64) * 10**9
    cols = {c: np.array([0.0, 0.5, 1.0], dtype=np.float32) for c in GPM_COLUMNS}
    cols["power_instant_w"] = np.array([100.0, 200.0, 300.0])
    batch = TelemetryBatch((DeviceSeries("GPU-x", ts, cols),))
    back = telemetry_from_proto(telemetry_to_proto(batch))
    (series,) = back.series
    assert set(series.columns) == set(cols)
    for name, values in cols.items():
        assert series.columns[name].tobytes() == values.tobytes(), name


def test_the_workload_grammar_says_what_it_accepts() -> None:
    assert parse_workload("train:0.42").mfu_ratio == 0.42
    assert parse_workload("inference:0.2@3").index == 3
    assert parse_workload("idle").mfu_ratio == 0.0
    for bad in ("train", "train:1.5", "train:0", "sleep:0.3", "idle:0.3", "train:0.4@x"):
        with pytest.raises(ValueError, match=r"accepted|MFU must be"):
            parse_workload(bad)


async def test_estimated_mfu_on_metrics_is_what_the_sim_workload_runs(tmp_path: Path) -> None:
    async with collector(tmp_path) as c:
        h100, a100 = _fleet(tmp_path, c.grpc_address, "a")
        stop, tasks = await run_agents([h100, a100])
        try:
            await wait_for(
                lambda: all(a.uplink.stats.acked_messages >= 3 for a in (h100, a100)), 30, "acks"
            )
            values: list[float] = []
            for _ in range(8):
                _, text = await http_get(c.http_url + "/metrics")
                parsed = samples(text)
                values += find(
                    parsed, "flopwatt_gpu_estimated_mfu_ratio", hostname="h100-a", gpu_index="0"
                )
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    # The training GPU: 42 % by construction (2 % activity noise per sample).
    assert values and statistics.mean(values) == pytest.approx(0.42, rel=0.05)
    mfu = [
        (dict(lbls), v)
        for (n, lbls), v in parsed.items()
        if n == "flopwatt_gpu_estimated_mfu_ratio"
    ]
    by_gpu = {(lbls["hostname"], lbls["gpu_index"]): (lbls, v) for lbls, v in mfu}
    labels, _ = by_gpu[("h100-a", "0")]
    assert (labels["precision"], labels["basis"]) == ("bf16", "spec")
    # The idle-but-allocated GPU: a real zero (GPM reports no activity), not absent.
    assert by_gpu[("h100-a", "1")][1] == 0.0
    # No GPM on A100: no estimate, no activity series — absent, not 0.
    assert not [k for k in by_gpu if k[0] == "a100-a"]
    assert not find(parsed, "flopwatt_gpu_pipe_active_ratio", hostname="a100-a")
    hmma = find(parsed, "flopwatt_gpu_pipe_active_ratio", hostname="h100-a", pipe="tensor_hmma")
    assert len(hmma) == 2
    flops = find(
        parsed, "flopwatt_gpu_estimated_flops_per_second", hostname="h100-a", gpu_index="0"
    )
    assert flops and flops[0] == pytest.approx(0.42 * 989.5e12, rel=0.08)


async def test_the_report_window_estimates_live_efficiency(tmp_path: Path) -> None:
    """The same fleet through the store into the report's window table: the training GPU's
    estimated MFU over the window is its workload's, from the spec; the idle GPU's is 0; the
    A100 (no GPM) has no estimate."""
    db = tmp_path / "live.db"
    async with collector(tmp_path, db_path=db) as c:
        h100, a100 = _fleet(tmp_path, c.grpc_address, "r")
        stop, tasks = await run_agents([h100, a100])
        try:
            await wait_for(
                lambda: all(a.uplink.stats.acked_messages >= 6 for a in (h100, a100)), 30, "acks"
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    report = as_report(db, parameters=ReportParameters(window_s=3600))
    rows = {(r["hostname"], r["device_index"]): r for r in report.window.to_dict("records")}
    train = rows[("h100-r", 0)]
    assert train["estimated_mfu_ratio"] == pytest.approx(0.42, rel=0.03)
    assert (train["estimate_precision"], train["estimate_basis"]) == ("bf16", "spec")
    assert train["estimated_energy_per_flop_j"] > 0
    assert rows[("h100-r", 1)]["estimated_mfu_ratio"] == 0.0
    assert np.isnan(rows[("a100-r", 0)]["estimated_mfu_ratio"])
    assert rows[("a100-r", 0)]["estimate_basis"] is None


def test_sim_health_faults_show_in_the_counters() -> None:
    """xid:79, ecc:3, row-remap and nvlink:40 set the counters a real GPU would; a healthy GPU
    reads 0; V100 (no row remapping before Ampere) has no remap counters at all; a PCIe part
    has no NVLink counters and refuses an NVLink fault."""
    b = SimBackend.from_options(
        sku="H100-SXM5-80GB",
        gpus=4,
        faults=["xid:79@0", "ecc:3@1", "row-remap@2", "nvlink:40@3"],
    )
    s0, s1, s2, s3 = (d.snapshot(0) for d in b.sim_devices())
    assert (s0.xid_events_total, s0.xid_last) == (1, 79)
    assert s1.ecc_uncorrected_volatile_total == 3 and s1.xid_last is None  # no XID yet
    assert (s2.remapped_rows_uncorrectable_total, s2.row_remap_pending) == (1, 1)
    assert s0.nvlink_crc_errors_total == 0  # SXM: NVLink, no errors
    assert (s0.nvlink_replay_errors_total, s0.nvlink_recovery_errors_total) == (0, 0)
    assert s3.nvlink_replay_errors_total == 40
    pcie = SimBackend.from_options(sku="T4", gpus=1).sim_devices()[0].snapshot(0)
    assert pcie.nvlink_replay_errors_total is None and pcie.nvlink_crc_errors_total is None
    with pytest.raises(ValueError, match="SXM"):
        SimBackend.from_options(sku="T4", gpus=1, faults=["nvlink:4"])
    v100 = SimBackend.from_options(sku="V100-SXM2-32GB", gpus=1).sim_devices()[0].snapshot(0)
    assert v100.row_remap_pending is None and v100.ecc_uncorrected_volatile_total == 0
    for bad in ("xid:0", "xid:abc", "ecc:0", "row-remap:2", "nvlink:0", "nvlink:1.5"):
        with pytest.raises(ValueError):
            SimBackend.from_options(sku="H100-SXM5-80GB", gpus=1, faults=[bad])
