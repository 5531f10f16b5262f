"""Attribution end to end: sim agents whose GPUs are allocated to pods (``--sim-pod``) and run
processes stream who uses each GPU through a real collector (gRPC on loopback, SQLite); the
live-efficiency series carry the pod, the per-process series appear (at most four per GPU), the
store keeps spans of unchanged owners, a collector restart keeps the labels (state rebuilt
from the store), and a bad attribution is rejected whole without ending the stream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from flopwatt.agent.agent import Agent, AgentConfig
from flopwatt.agent.devices.sim import SIM_PID_BASE, SimBackend
from flopwatt.channel import ClientCredentials
from flopwatt.records import Attribution, DeviceAttribution, GpuProcess, PodRef
from flopwatt.report.files import as_report
from flopwatt.report.tables import ReportParameters
from flopwatt.store.sqlite import SQLiteStore
from tests.collector_helpers import collector, find, http_get, samples
from tests.postgres_server import PostgresServer
from tests.test_agent_e2e import run_agents, wait_for

pytestmark = pytest.mark.slow


def _agent(tmp_path: Path, name: str, target: str, **options: object) -> Agent:
    config = AgentConfig(
        hostname=name,
        collector=ClientCredentials(target),
        spool_path=tmp_path / f"spool-{name}.db",
        interval_s=0.05,
        batch_interval_s=0.2,
        backoff_base_s=0.2,
        backoff_cap_s=1.0,
        attribution_interval_s=0.2,
        attribution_refresh_s=0.4,
    )
    backend = SimBackend.from_options(
        sku="H100-SXM5-80GB",
        gpus=2,
        seed=1,
        host=name,
        workloads=["train:0.42@0", "inference:0.2@1"],
        **options,  # type: ignore[arg-type]
    )
    return Agent(config, backend)


def _labels(
    parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str
) -> list[dict[str, str]]:
    return [dict(lbls) for (n, lbls), _ in parsed.items() if n == name]


async def test_pods_label_the_live_series_and_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "attr.db"
    async with collector(tmp_path, db_path=db) as c:
        agent = _agent(tmp_path, "h100-k8s", c.grpc_address, pods=["ml/llama-0/trainer@0"])
        stop, tasks = await run_agents([agent])
        try:
            await wait_for(
                lambda: agent.attributor is not None and agent.attributor.sent_total >= 3,
                30,
                "attribution",
            )
            await wait_for(lambda: agent.uplink.stats.acked_messages >= 5, 30, "acks")
            _, text = await http_get(c.http_url + "/metrics")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    parsed = samples(text)
    mfu = {d["gpu_index"]: d for d in _labels(parsed, "flopwatt_gpu_estimated_mfu_ratio")}
    assert (mfu["0"]["namespace"], mfu["0"]["pod"], mfu["0"]["container"]) == (
        "ml",
        "llama-0",
        "trainer",
    )
    # GPU 1 is not allocated to a pod: no pod labels (absent, not empty-named series).
    assert "pod" not in mfu["1"]
    assert find(parsed, "flopwatt_gpu_compute_processes", gpu_index="0", pod="llama-0") == [1.0]
    util = _labels(parsed, "flopwatt_gpu_process_sm_utilization_ratio")
    by_gpu = {d["gpu_index"]: d for d in util}
    assert by_gpu["0"]["pid"] == str(SIM_PID_BASE) and by_gpu["0"]["process"] == "python3"
    assert by_gpu["1"]["process"] == "tritonserver"
    mem = find(parsed, "flopwatt_gpu_process_used_memory_bytes", gpu_index="1")
    assert mem and mem[0] > 0
    # The store holds one span per GPU (owners never changed), extended in place.
    store = SQLiteStore(db)
    try:
        rows = store.query("SELECT * FROM gpu_attribution ORDER BY device_uuid")
    finally:
        store.close()
    assert len(rows) == 2
    assert {r["job"] for r in rows} == {"ml/llama-0/trainer", "tritonserver"}
    assert all(r["end_unix_ns"] > r["start_unix_ns"] for r in rows)
    # The report: live efficiency per pod or job, each the MFU its workload was built with.
    report = as_report(db, parameters=ReportParameters(window_s=3600))
    jobs = {r["job"]: r for r in report.jobs.to_dict("records")}
    assert set(jobs) == {"ml/llama-0/trainer", "tritonserver"}
    trainer = jobs["ml/llama-0/trainer"]
    assert (trainer["namespace"], trainer["pod"], trainer["container"]) == (
        "ml",
        "llama-0",
        "trainer",
    )
    assert trainer["processes"] == "python3" and trainer["gpus"] == 1
    assert trainer["estimated_mfu_ratio"] == pytest.approx(0.42, rel=0.05)
    assert jobs["tritonserver"]["estimated_mfu_ratio"] == pytest.approx(0.2, rel=0.05)
    assert jobs["tritonserver"]["pod"] is None
    assert trainer["observed_gpu_s"] > 0 and trainer["estimated_energy_per_flop_j"] > 0
    assert trainer["estimate_basis"] == "spec"
    # A new collector on the same store: the pod labels come back from the store alone.
    async with collector(tmp_path, db_path=db) as c2:
        agent2 = _agent(tmp_path, "h100-k8s", c2.grpc_address, pods=["ml/llama-0/trainer@0"])
        assert agent2.attributor is not None
        agent2.attributor = None  # this run sends no attribution: the labels are the store's
        stop, tasks = await run_agents([agent2])
        try:
            await wait_for(lambda: agent2.uplink.stats.acked_messages >= 3, 30, "acks")
            _, text2 = await http_get(c2.http_url + "/metrics")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    mfu2 = {d["gpu_index"]: d for d in _labels(samples(text2), "flopwatt_gpu_estimated_mfu_ratio")}
    assert mfu2["0"].get("pod") == "llama-0"


async def test_a_bad_attribution_is_rejected_whole_and_the_stream_goes_on(tmp_path: Path) -> None:
    async with collector(tmp_path) as c:
        agent = _agent(tmp_path, "h100-bad", c.grpc_address)
        agent.attributor = None
        uuid = agent.devices[0].info.uuid
        stop, tasks = await run_agents([agent])
        try:
            await wait_for(lambda: agent.uplink.stats.acked_messages >= 2, 30, "acks")
            bad = [
                DeviceAttribution("GPU-not-mine", (), True),
                DeviceAttribution(uuid, (GpuProcess(7, "x", None, float("nan")),), True),
                DeviceAttribution(uuid, (GpuProcess(0, "x"),), True),
                DeviceAttribution(uuid, (GpuProcess(7, "x"), GpuProcess(7, "y")), True),
                DeviceAttribution(uuid, (), False, PodRef("", "p", "c")),
                DeviceAttribution(uuid, (GpuProcess(7, "a\nb"),), True),
            ]
            seqs = [agent.emit(Attribution(time.time_ns(), (d,))) for d in bad]
            agent.emit(
                Attribution(
                    time.time_ns(),
                    (DeviceAttribution(uuid, (GpuProcess(9, "ok", 1, 0.5),), True),),
                )
            )
            await wait_for(
                lambda: agent.uplink.stats.acked_messages >= 2 + len(bad) + 1, 30, "acks"
            )
            _, text = await http_get(c.http_url + "/metrics")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    assert agent.uplink.stats.rejected_messages == len(seqs)
    parsed = samples(text)
    assert find(parsed, "flopwatt_gpu_process_sm_utilization_ratio", pid="9") == [0.5]


async def test_an_agent_moving_to_another_replica_keeps_its_pod_labels(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """Two collector replicas on one PostgreSQL store: the agent's attribution is stored
    through the first; when it registers with the second (which never saw an attribution from
    it), the second labels its GPUs from the store."""
    dsn = postgres.create_database("attribution_replicas")
    async with collector(tmp_path / "a", db_path=dsn) as a:
        agent = _agent(tmp_path, "h100-move", a.grpc_address, pods=["ml/llama-0/trainer@0"])
        stop, tasks = await run_agents([agent])
        try:
            await wait_for(lambda: agent.uplink.stats.acked_messages >= 5, 30, "acks")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    async with collector(tmp_path / "b", db_path=dsn) as b:
        moved = _agent(tmp_path, "h100-move", b.grpc_address, pods=["ml/llama-0/trainer@0"])
        moved.attributor = None  # nothing sent here: the labels come from the store
        stop, tasks = await run_agents([moved])
        try:
            await wait_for(lambda: moved.uplink.stats.acked_messages >= 3, 30, "acks")
            _, text = await http_get(b.http_url + "/metrics")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    assert find(samples(text), "flopwatt_gpu_compute_processes", pod="llama-0") == [1.0]
