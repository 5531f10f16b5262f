"""Two collector replicas on one PostgreSQL, agents given both addresses; one replica SIGKILLed
mid-stream. The agents that were on it move to the survivor and continue their epochs exactly
once (the progress lives in the database): ``flopwatt store check`` finds no gap, every agent
is acked by the survivor within 30 s of the kill, and a job requested on the survivor reaches
an agent that was on the dead replica.

Real parts: PostgreSQL (Debian package), two ``flopwatt collector`` processes, sim agents with
their on-disk spools, the ``flopwatt fleet`` and ``flopwatt store`` commands.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flopwatt.cli import cli
from tests.collector_helpers import collector, find, http_get, samples
from tests.postgres_server import PostgresServer
from tests.test_agent_e2e import Produced, free_port, make_agent, run_agents, wait_for

pytestmark = pytest.mark.slow

AGENTS = 10


def _start_replica(dsn: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:  # the child keeps its own descriptor
        proc = _popen(dsn, port, err)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("ready"), (line, log.read_text(errors="replace")[-2000:])
    return proc


def _popen(dsn: str, port: int, err: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flopwatt",
            "collector",
            "--grpc-listen",
            f"127.0.0.1:{port}",
            "--http-listen",
            "127.0.0.1:0",
            "--db",
            dsn,
        ],
        stdout=subprocess.PIPE,
        stderr=err,
    )


async def test_a_replica_killed_mid_stream_loses_nothing(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    dsn = postgres.create_database("failover")
    a_port, b_port = free_port(), free_port()
    a = await asyncio.to_thread(_start_replica, dsn, a_port, tmp_path / "a.log")
    b = await asyncio.to_thread(_start_replica, dsn, b_port, tmp_path / "b.log")
    a_addr, b_addr = f"127.0.0.1:{a_port}", f"127.0.0.1:{b_port}"
    # Half the agents list A first, half B first: both replicas carry streams.
    agents = [
        make_agent(
            tmp_path,
            f"node-{i}",
            f"{a_addr},{b_addr}" if i % 2 == 0 else f"{b_addr},{a_addr}",
            seed=i,
            ack_timeout_s=3.0,
        )
        for i in range(AGENTS)
    ]
    produced = [Produced(x) for x in agents]
    stop, tasks = await run_agents(agents)
    try:
        await wait_for(
            lambda: all(x.uplink.stats.acked_messages >= 5 for x in agents), 60, "first acks"
        )
        on_a = [x for x in agents if x.uplink.stats.collector == a_addr]
        assert on_a and len(on_a) < AGENTS
        acked_before = {x.config.hostname: x.uplink.stats.acked_messages for x in agents}
        os.kill(a.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        a.wait(10)
        # Every agent is acked again, by the survivor, within 30 s of the kill.
        await wait_for(
            lambda: all(
                x.uplink.stats.collector == b_addr
                and x.uplink.stats.acked_messages > acked_before[x.config.hostname] + 2
                for x in agents
            ),
            30,
            "every agent acked by the survivor",
        )
        took = time.monotonic() - killed_at
        print(f"every agent acked by the survivor {took:.1f} s after the kill")
        # A job requested on the survivor reaches an agent that was on the dead replica.
        moved = on_a[0].config.hostname
        res = await asyncio.to_thread(
            CliRunner().invoke,
            cli,
            [
                "fleet",
                "--collector",
                b_addr,
                "run",
                "gemm",
                "--select",
                f"hostname={moved}",
                "--precision",
                "bf16",
                "--wait",
                "--json",
            ],
        )
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        states = {t["agent_id"]: t["state"] for t in doc["targets"]}
        assert states == {moved: "succeeded"}, doc
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        b.send_signal(signal.SIGTERM)
        b.wait(30)
        if a.poll() is None:
            a.kill()
            a.wait(10)
        for proc in (a, b):
            assert proc.stdout is not None
            proc.stdout.close()
    for agent in agents:
        assert agent.final_spool_stats is not None and agent.final_spool_stats.messages == 0
    check = CliRunner().invoke(cli, ["store", "check", "--db", dsn, "--json"])
    assert check.exit_code == 0, check.output
    ledger = json.loads(check.stdout)
    assert ledger["gaps"] == 0 and ledger["ok"] is True
    by_agent = {e["agent_id"]: e for e in ledger["epochs"]}
    for agent, made in zip(agents, produced, strict=True):
        e = by_agent[agent.config.hostname]
        assert e["messages"] == len(made.samples) == e["committed_through"]
        assert e["conflicts"] == 0


async def test_a_job_requested_on_one_replica_runs_on_an_agent_of_the_other(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """Both replicas alive: the job is created on A for an agent streaming to B; B hears of it
    (NOTIFY), delivers it once, and the result is visible from both."""
    from flopwatt.collector.jobs import Selector
    from flopwatt.records import GemmJobSpec, JobSpec, JobState

    dsn = postgres.create_database("jobs_across")
    async with (
        collector(tmp_path / "a", db_path=dsn) as a,
        collector(tmp_path / "b", db_path=dsn) as b,
    ):
        agent = make_agent(tmp_path, "node-on-b", b.grpc_address)
        stop, tasks = await run_agents([agent])
        try:
            await wait_for(lambda: agent.uplink.stats.acked_messages > 2, 30, "acks from B")
            assert a.sessions.get("node-on-b") is None and b.sessions.get("node-on-b")
            job_id, targets = await a.jobs.create(
                Selector(hostnames=("node-on-b",)), JobSpec(gemm=GemmJobSpec(("bf16",)))
            )
            assert targets == ["node-on-b"]

            def state() -> JobState | None:
                job = a.store.get_job(job_id)
                return job.targets[0].state if job is not None else None

            await wait_for(lambda: state() is JobState.SUCCEEDED, 60, "the job to succeed")
            seen_from_b = b.store.get_job(job_id)
            assert seen_from_b is not None
            assert seen_from_b.targets[0].state is JobState.SUCCEEDED
            assert seen_from_b.targets[0].results == 2  # one per simulated GPU
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        # The agent comes back to a replica that never saw it: its stored results come along.
        async with collector(tmp_path / "c", db_path=dsn) as c:
            again = make_agent(tmp_path, "node-on-b", c.grpc_address)
            stop, tasks = await run_agents([again])
            try:
                await wait_for(lambda: again.uplink.stats.acked_messages > 1, 30, "acks from C")
                _, text = await http_get(c.http_url + "/metrics")
                gemm = find(samples(text), "flopwatt_gemm_sustained_flops_per_second")
                assert len(gemm) == 2 and all(v > 0 for v in gemm)
            finally:
                stop.set()
                await asyncio.gather(*tasks)


async def test_two_streams_of_one_agent_on_two_replicas_are_fenced(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """A half-open stream on replica A while the agent has moved to replica B: the newer
    stream (B) holds the epoch; A's next commit for it is refused and A ends its stream with
    ABORTED; nothing is acked twice or skipped."""
    import grpc

    from tests.collector_helpers import AgentStream, hello_pb, telemetry_pb
    from tests.test_collector_ingest import EPOCH, _register

    dsn = postgres.create_database("fencing")
    async with (
        collector(tmp_path / "a", db_path=dsn) as a,
        collector(tmp_path / "b", db_path=dsn) as b,
        grpc.aio.insecure_channel(a.grpc_address) as ch_a,
        grpc.aio.insecure_channel(b.grpc_address) as ch_b,
    ):
        await _register(ch_a)
        old = AgentStream(ch_a)
        old.send(hello_pb("node-a", EPOCH), telemetry_pb(EPOCH, 1))
        await old.wait_ack(EPOCH, 1)
        await _register(ch_b)
        new = AgentStream(ch_b)
        new.send(hello_pb("node-a", EPOCH))
        await new.wait_ack(EPOCH, 1)  # B continues from what A committed
        old.send(telemetry_pb(EPOCH, 2))  # the old stream's next message: fenced
        await old.wait_end()
        assert old.code is grpc.StatusCode.ABORTED and "superseded" in old.details
        assert old.acks[EPOCH] == 1
        new.send(telemetry_pb(EPOCH, 2), telemetry_pb(EPOCH, 3))
        await new.wait_ack(EPOCH, 3)
        await new.close()
    check = CliRunner().invoke(cli, ["store", "check", "--db", dsn, "--json"])
    ledger = json.loads(check.stdout)
    assert check.exit_code == 0 and ledger["gaps"] == 0
    (epoch,) = ledger["epochs"]
    assert (epoch["messages"], epoch["committed_through"], epoch["conflicts"]) == (3, 3, 0)
