"""The collector on PostgreSQL, end to end: real sim agents stream to a collector whose store is
a real PostgreSQL database (the writer process and the exporter process included); every
message is stored exactly once, ``/metrics`` shows the fleet, a restarted collector rebuilds
its state from the database, and ``flopwatt report --db postgresql://…`` reads it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from flopwatt.agent.agent import Agent
from flopwatt.cli import cli
from flopwatt.store.schema import epoch_to_db
from tests.collector_helpers import collector, find, http_get, samples
from tests.postgres_server import PostgresServer
from tests.test_agent_e2e import Produced, make_agent, run_agents, wait_for

pytestmark = pytest.mark.slow


def stored(dsn: str, agent: Agent) -> dict[int, tuple[str, int]]:
    with psycopg.connect(dsn) as con:
        rows = con.execute(
            "SELECT sequence, kind, samples FROM messages WHERE agent_id = %s AND epoch = %s",
            (agent.config.hostname, epoch_to_db(agent.epoch)),
        ).fetchall()
    return {int(seq): (kind, int(n)) for seq, kind, n in rows}


@pytest.mark.parametrize("children", [False, True], ids=["in-process", "writer+exporter"])
async def test_agents_on_a_postgres_collector_are_stored_exactly_once(
    tmp_path: Path, postgres: PostgresServer, children: bool
) -> None:
    dsn = postgres.create_database(f"e2e_{int(children)}")
    settings: dict[str, Any] = {"db_path": dsn}
    if children:
        settings |= {"writer_process": True, "exporter_process": True}
    async with collector(tmp_path, **settings) as c:
        agents = [make_agent(tmp_path, f"pg-node-{i}", c.grpc_address, seed=i) for i in range(3)]
        produced = [Produced(a) for a in agents]
        stop, tasks = await run_agents(agents)
        await wait_for(lambda: all(a.uplink.stats.acked_messages >= 10 for a in agents), 60, "acks")
        _, text = await http_get(c.http_url + "/metrics")
        assert len(find(samples(text), "flopwatt_gpu_power_instant_watts")) == 3 * 2
        stop.set()
        await asyncio.gather(*tasks)
    for agent, made in zip(agents, produced, strict=True):
        got = stored(dsn, agent)
        assert set(got) == set(made.samples)
        assert all(got[s][1] == n for s, n in made.samples.items())
        assert agent.final_spool_stats is not None and agent.final_spool_stats.messages == 0

    # A new replica on the same database: agents appear in its state (and /metrics) only as
    # they register with it (a shared store is read by every replica), with their stored
    # results; the stream progress is in the database for whichever replica they pick.
    async with collector(tmp_path, db_path=dsn) as again:
        assert again.state.snapshot().agents == {}
        assert again.store.committed_through(agents[0].config.hostname, agents[0].epoch) == max(
            produced[0].samples
        )

    # The report reads the same database.
    res = CliRunner().invoke(cli, ["report", "--db", dsn, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {g["hostname"] for g in doc["tables"]["gpus"]} == {f"pg-node-{i}" for i in range(3)}
    assert "postgresql://postgres@" in doc["source"]


def test_an_unreachable_database_is_a_one_line_error(tmp_path: Path) -> None:
    dsn = "postgresql://nobody@127.0.0.1:1/none"
    res = CliRunner().invoke(cli, ["report", "--db", dsn])
    assert res.exit_code == 1 and "cannot read postgresql://nobody@127.0.0.1:1/none" in res.output
    assert "Traceback" not in res.output
