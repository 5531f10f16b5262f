"""Suspect GPUs: health counters joined with efficiency outliers and throttling, hand cases;
and end to end from sim faults through a real collector and store into the report."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flopwatt.agent.agent import Agent, AgentConfig
from flopwatt.agent.devices.sim import SimBackend
from flopwatt.channel import ClientCredentials
from flopwatt.report.files import as_report
from flopwatt.report.suspects import THROTTLED_SHARE, assess
from flopwatt.report.window_table import throttle_time_text
from tests.collector_helpers import collector
from tests.test_agent_e2e import run_agents, wait_for


def test_throttle_time_is_absent_where_the_gpu_reports_no_reasons() -> None:
    """No throttle column at all: the GPU cannot tell, which is not "none"."""
    assert throttle_time_text(None, 60.0) is None
    assert throttle_time_text({}, 60.0) == "none"
    assert throttle_time_text({2: 15.0}, 60.0) == "sw_power_cap 25.0 %"


def test_a_healthy_gpu_is_no_suspect_and_absent_counters_prove_nothing() -> None:
    zeros = {"xid_events_total": 0, "ecc_uncorrected_volatile_total": 0, "pcie_replay_total": 0}
    assert assess(zeros, None, 0.0) is None
    assert assess({}, None, None) is None  # nothing reported: not "healthy", just not suspect


def test_severity_is_the_worst_reason_and_every_reason_is_named() -> None:
    verdict = assess(
        {"xid_events_total": 2, "xid_last": 79, "pcie_replay_total": 12},
        "slow",
        0.4,
    )
    assert verdict is not None
    severity, reasons = verdict
    assert severity == "critical"
    assert reasons == [
        "XID 79 (fallen off the bus), 2 events",
        "12 PCIe replays",
        "outlier: slow",
        "throttled 40 % of the time",
    ]
    assert assess({"nvlink_crc_errors_total": 3}, None, None) == (
        "warning",
        ["3 NVLink CRC errors"],
    )
    assert assess({}, None, THROTTLED_SHARE) == ("performance", ["throttled 10 % of the time"])
    assert assess({}, None, THROTTLED_SHARE * 0.99) is None
    # An application's XID (13: graphics engine exception) names a job, not a bad GPU.
    assert assess({"xid_events_total": 1, "xid_last": 13}, None, None) == (
        "warning",
        ["XID 13 (graphics engine exception), 1 events"],
    )
    pending = assess({"row_remap_pending": 1, "remapped_rows_uncorrectable_total": 1}, None, None)
    assert pending == ("critical", ["row remap pending: needs a GPU reset"])


@pytest.mark.slow
async def test_sim_faults_become_suspects_in_the_report(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with collector(tmp_path, db_path=db) as c:
        config = AgentConfig(
            hostname="sick-node",
            collector=ClientCredentials(c.grpc_address),
            spool_path=tmp_path / "spool.db",
            interval_s=0.05,
            batch_interval_s=0.2,
        )
        backend = SimBackend.from_options(
            sku="H100-SXM5-80GB",
            gpus=5,
            host="sick-node",
            faults=["xid:79@0", "ecc:3@1", "row-remap@2", "nvlink:40@4"],
        )
        agent = Agent(config, backend)
        stop, tasks = await run_agents([agent])
        try:
            await wait_for(lambda: agent.uplink.stats.acked_messages >= 3, 30, "acks")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    report = as_report(db)
    by_index = {r["device_index"]: r for r in report.suspects.to_dict("records")}
    assert set(by_index) == {0, 1, 2, 4}  # GPU 3 is healthy
    assert by_index[0]["severity"] == "critical" and "XID 79" in by_index[0]["reasons"]
    assert by_index[1]["reasons"] == "3 uncorrected ECC errors"
    assert "row remap pending" in by_index[2]["reasons"]
    assert by_index[4]["reasons"] == "40 NVLink replays"
    assert by_index[4]["nvlink_replay_errors_total"] == 40
    assert by_index[4]["nvlink_recovery_errors_total"] == 0
    assert list(report.suspects["severity"]) == ["critical"] * 3 + ["warning"]


def test_the_software_power_cap_is_policy_not_a_suspect() -> None:
    """Dense work held at the enforced limit (SwPowerCap, bit 2) all window long names no GPU;
    thermal slowdown (HwThermalSlowdown, bit 6) for 20 % of it does."""
    from flopwatt.report.suspects import _throttled

    assert _throttled({2: 60.0}, 60.0) == 0.0
    assert _throttled({2: 60.0, 6: 12.0}, 60.0) == pytest.approx(0.2)
    assert _throttled(None, 60.0) is None
