"""Retention in a running collector: the maintenance child compacts, rolls up and prunes
while sim agents stream, exactly once throughout; /metrics shows the tiers; the ledger and the
report read what is left; a maintenance process that dies is started again."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from flopwatt.collector.server import RunningCollector
from flopwatt.report.loading import load_report_inputs
from flopwatt.store.inspect import check_store
from flopwatt.store.readonly import connect_read_only
from flopwatt.store.retention import Retention
from tests.collector_helpers import collector, http_get, samples
from tests.test_agent_e2e import make_agent, run_agents, wait_for


def _maintenance(running: RunningCollector) -> dict[str, Any]:
    return dict(running.state.snapshot().counters.store_maintenance)


@pytest.mark.asyncio
async def test_a_running_collector_compacts_rolls_up_and_prunes_exactly_once(
    tmp_path: Path,
) -> None:
    db = tmp_path / "collector.db"
    async with collector(
        tmp_path,
        maintenance=True,
        maintenance_interval_s=1.0,
        maintenance_settle_s=0.5,
        retention=Retention.parse("raw=3s,10s=1h,1m=1h"),
    ) as running:
        agents = [make_agent(tmp_path, f"node-{i}", running.grpc_address, seed=i) for i in (1, 2)]
        stop, tasks = await run_agents(agents)
        try:

            def pruned() -> bool:
                m = _maintenance(running)
                return bool(m) and m["pruned_rows"].get("raw", 0) > 0 and m["compacted_samples"] > 0

            await wait_for(pruned, 60, "maintenance to compact and prune raw data")
            await asyncio.sleep(1.5)  # streams go on across further passes
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        # A pass after the agents stopped, then /metrics.
        passes = _maintenance(running)["passes"]
        await wait_for(lambda: _maintenance(running)["passes"] > passes, 30, "another pass")
        assert running.maintenance is not None and running.maintenance.alive
        status, text = await http_get(f"{running.http_url}/metrics")
        assert status == 200
        got = samples(text)
        assert got[("flopwatt_store_compaction_ratio", frozenset())] > 2
        assert got[("flopwatt_store_compacted_samples_total", frozenset())] > 0
        assert got[("flopwatt_store_pruned_rows_total", frozenset({("tier", "raw")}))] > 0
        assert ("flopwatt_store_max_bytes", frozenset()) in got
        for tier in ("raw", "10s", "1m", "results"):
            assert ("flopwatt_store_bytes", frozenset({("tier", tier)})) in got, tier
    for agent in agents:
        assert agent.final_spool_stats is not None and agent.final_spool_stats.messages == 0
    with closing(connect_read_only(db)) as conn:
        check = check_store(conn, engine="sqlite", database=str(db))
        assert check.ok, check
        assert sum(e.pruned for e in check.epochs) > 0
        rollups = conn.execute("SELECT COUNT(*) AS n FROM telemetry_rollups").fetchone()["n"]
        assert rollups > 0
    inputs = load_report_inputs(db)
    assert len(inputs.telemetry) == 4  # every GPU's newest sample: compact chunk or fresh


@pytest.mark.asyncio
async def test_a_killed_maintenance_process_is_started_again(tmp_path: Path) -> None:
    async with collector(
        tmp_path, maintenance=True, maintenance_interval_s=0.5, maintenance_settle_s=0.5
    ) as running:
        process = running.maintenance
        assert process is not None
        await wait_for(lambda: bool(_maintenance(running)), 30, "a first pass")
        pid = process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        await wait_for(lambda: process.restarts == 1 and process.alive, 30, "a restart")
        before = _maintenance(running)["passes"]
        await wait_for(lambda: _maintenance(running)["passes"] != before, 30, "a pass")
        assert time.monotonic() - t0 < 30
