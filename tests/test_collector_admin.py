"""Fleet actions through the admin API and the ``flopwatt fleet`` CLI, against a real collector
with real agent streams (raw protobuf)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from flopwatt.cli import cli
from flopwatt.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, jobs_pb2
from tests.collector_helpers import (
    AgentStream,
    bearer,
    collector,
    device_pb,
    hello_pb,
    register_pb,
)

ADMIN = "admin-token-0123456789abcdef"
TOKENS = {"node-a": "tok-a-0123456789abcdef", "node-b": "tok-b-0123456789abcdef"}


@pytest.fixture
def auth_files(tmp_path: Path) -> dict[str, Path]:
    agents = tmp_path / "agents.tokens"
    agents.write_text("".join(f"{h} {t}\n" for h, t in TOKENS.items()))
    admin = tmp_path / "admin.tokens"
    admin.write_text(ADMIN + "\n")
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    return {"agent_token_file": agents, "admin_token_file": admin}


async def _agent(ch: grpc.aio.Channel, host: str, epoch: int, device: object) -> AgentStream:
    stub = agent_pb2_grpc.AgentServiceStub(ch)
    md = bearer(TOKENS[host])
    await stub.Register(register_pb(host, [device], epoch), metadata=md)  # type: ignore[list-item]
    s = AgentStream(ch, md)
    s.send(hello_pb(host, epoch))
    await s.wait_ack(epoch, 0)
    return s


def _status(epoch: int, seq: int, job_id: str, state: int, msg: str = "") -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        epoch=epoch,
        sequence=seq,
        job_status=jobs_pb2.JobStatus(job_id=job_id, state=state, message=msg),
    )


def _result(epoch: int, seq: int, job_id: str, uuid: str) -> agent_pb2.AgentMessage:
    now = time.time_ns()
    return agent_pb2.AgentMessage(
        epoch=epoch,
        sequence=seq,
        job_result=jobs_pb2.JobResult(
            job_id=job_id,
            device_uuid=uuid,
            started_unix_ns=now - 10**9,
            finished_unix_ns=now,
            gemm=jobs_pb2.GemmResult(
                precision="fp16",
                backend="sim",
                burst_flops_per_s=250e12,
                best_shape=jobs_pb2.GemmShape(m=8192, n=8192, k=8192),
            ),
        ),
    )


async def test_run_job_by_sku_delivers_follows_and_finishes(
    tmp_path: Path, auth_files: dict[str, Path]
) -> None:
    async with (
        collector(tmp_path, **auth_files) as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        a = await _agent(ch, "node-a", 1, device_pb("GPU-a"))
        b = await _agent(
            ch,
            "node-b",
            2,
            device_pb("GPU-b", name="NVIDIA A100-SXM4-80GB", pci_device_id=0x20B210DE),
        )
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        md = bearer(ADMIN)
        listed = await admin.ListAgents(admin_pb2.ListAgentsRequest(), metadata=md)
        skus = {ag.agent_id: [d.sku for d in ag.devices] for ag in listed.agents}
        assert skus == {"node-a": ["H100-SXM5-80GB"], "node-b": ["A100-SXM4-80GB"]}
        assert all(ag.connected for ag in listed.agents)

        spec = jobs_pb2.JobSpec(gemm=jobs_pb2.GemmJobSpec(precisions=["fp16"], sustain_s=5))
        resp = await admin.RunJob(
            admin_pb2.RunJobRequest(
                selector=admin_pb2.AgentSelector(skus=["H100-SXM5-80GB"]), spec=spec
            ),
            metadata=md,
        )
        assert list(resp.agent_ids) == ["node-a"]
        cmd = await a.wait_command()
        assert cmd.run_job.job_id == resp.job_id
        assert list(cmd.run_job.spec.gemm.precisions) == ["fp16"]
        assert not b.commands

        watch = admin.WatchJob(admin_pb2.GetJobRequest(job_id=resp.job_id), metadata=md)
        states: list[str] = []

        async def follow() -> admin_pb2.JobInfo:
            last = None
            async for info in watch:
                states.append(jobs_pb2.JobState.Name(info.targets[0].state))
                last = info
            assert last is not None
            return last

        follower = asyncio.create_task(follow())
        a.send(
            _status(1, 1, resp.job_id, jobs_pb2.JOB_STATE_RUNNING),
            _result(1, 2, resp.job_id, "GPU-a"),
            _status(1, 3, resp.job_id, jobs_pb2.JOB_STATE_SUCCEEDED, "done"),
        )
        await a.wait_ack(1, 3)
        final = await asyncio.wait_for(follower, 10)
        assert final.finished
        assert final.targets[0].results == 1
        assert states[0] in ("JOB_STATE_DELIVERED", "JOB_STATE_RUNNING")
        assert states[-1] == "JOB_STATE_SUCCEEDED"
        await a.close()
        await b.close()


async def test_selector_errors(tmp_path: Path, auth_files: dict[str, Path]) -> None:
    async with (
        collector(tmp_path, **auth_files) as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        a = await _agent(ch, "node-a", 1, device_pb("GPU-a"))
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        md = bearer(ADMIN)
        spec = jobs_pb2.JobSpec(gemm=jobs_pb2.GemmJobSpec())
        cases = [
            (admin_pb2.AgentSelector(), spec, grpc.StatusCode.INVALID_ARGUMENT),
            (admin_pb2.AgentSelector(skus=["T4"]), spec, grpc.StatusCode.NOT_FOUND),
            (
                admin_pb2.AgentSelector(all=True),
                jobs_pb2.JobSpec(),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]
        for selector, job, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.RunJob(
                    admin_pb2.RunJobRequest(selector=selector, spec=job), metadata=md
                )
            assert info.value.code() == code
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.GetJob(admin_pb2.GetJobRequest(job_id="nope"), metadata=md)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        await a.close()


async def test_queued_job_reaches_a_late_agent_and_restart_fails_orphans(
    tmp_path: Path, auth_files: dict[str, Path]
) -> None:
    async with (
        collector(tmp_path, **auth_files) as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        a = await _agent(ch, "node-a", 1, device_pb("GPU-a"))
        await a.close()  # registered, now disconnected
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        md = bearer(ADMIN)
        spec = jobs_pb2.JobSpec(model=jobs_pb2.ModelJobSpec(models=["resnet50"]))
        job = await admin.RunJob(
            admin_pb2.RunJobRequest(
                selector=admin_pb2.AgentSelector(hostnames=["node-a"]), spec=spec
            ),
            metadata=md,
        )
        info = await admin.GetJob(admin_pb2.GetJobRequest(job_id=job.job_id), metadata=md)
        assert info.targets[0].state == jobs_pb2.JOB_STATE_QUEUED
        a2 = await _agent(ch, "node-a", 1, device_pb("GPU-a"))  # reconnect, same epoch
        cmd = await a2.wait_command()
        assert cmd.run_job.job_id == job.job_id
        await a2.close()
        # The agent restarts (new epoch) before finishing: the job cannot complete there.
        a3 = await _agent(ch, "node-a", 99, device_pb("GPU-a"))
        info = await admin.GetJob(admin_pb2.GetJobRequest(job_id=job.job_id), metadata=md)
        assert info.targets[0].state == jobs_pb2.JOB_STATE_FAILED
        assert "restarted" in info.targets[0].message
        assert info.finished
        await a3.close()


async def test_fleet_cli(tmp_path: Path, auth_files: dict[str, Path]) -> None:
    async with (
        collector(tmp_path, **auth_files) as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        a = await _agent(ch, "node-a", 1, device_pb("GPU-a"))
        base = [
            "fleet",
            "--collector",
            c.grpc_address,
            "--token-file",
            str(tmp_path / "admin.token"),
        ]
        runner = CliRunner()

        def invoke(*args: str) -> tuple[int, str]:
            r = runner.invoke(cli, [*base, *args])
            return r.exit_code, r.stdout

        code, out = await asyncio.to_thread(invoke, "agents", "--json")
        assert code == 0, out
        agents = json.loads(out)
        assert agents[0]["hostname"] == "node-a"
        assert agents[0]["devices"][0]["sku"] == "H100-SXM5-80GB"
        code, out = await asyncio.to_thread(invoke, "agents")
        assert code == 0 and "node-a" in out

        code, out = await asyncio.to_thread(
            invoke,
            "run",
            "gemm",
            "--select",
            "hostname=node-a",
            "--precision",
            "bf16,fp16",
            "--json",
        )
        assert code == 0, out
        job = json.loads(out)
        cmd = await a.wait_command()
        assert cmd.run_job.job_id == job["job_id"]
        assert list(cmd.run_job.spec.gemm.precisions) == ["bf16", "fp16"]

        code, out = await asyncio.to_thread(invoke, "run", "gemm", "--select", "rack=7")
        assert (
            code == 2
            and "hostname=NAME"
            in runner.invoke(cli, [*base, "run", "gemm", "--select", "rack=7"]).output
        )
        wrong = tmp_path / "wrong.token"
        wrong.write_text("not-the-admin-token-000\n")
        r = await asyncio.to_thread(
            runner.invoke,
            cli,
            ["fleet", "--collector", c.grpc_address, "--token-file", str(wrong), "agents"],
        )
        assert r.exit_code == 1 and "UNAUTHENTICATED" in r.output
        await a.close()
