"""The collector with real parts: gRPC on loopback port 0, a real SQLite file, raw protobuf
clients. Exactly-once storage, per-sample rejection, structural errors, comparison, metrics."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from flopwatt.collector.store import MessageWrite, SQLiteStore, WriteOutcome
from flopwatt.v1 import agent_pb2, agent_pb2_grpc, jobs_pb2
from tests.collector_helpers import (
    AgentStream,
    collector,
    device_pb,
    find,
    heartbeat_pb,
    hello_pb,
    http_get,
    register_pb,
    samples,
    telemetry_pb,
)

EPOCH = 0x1234_5678_9ABC


async def _register(channel: grpc.aio.Channel, host: str = "node-a", *devices: object) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    devs = list(devices) or [device_pb()]
    resp = await stub.Register(register_pb(host, devs, EPOCH))  # type: ignore[arg-type]
    assert resp.agent_id == host
    assert resp.settings.sample_interval_s == pytest.approx(0.1)


def _stored(c: object, table: str = "messages") -> list[tuple[object, ...]]:
    rows = c.store.query(  # type: ignore[attr-defined]
        f"SELECT agent_id, epoch, sequence FROM {table} ORDER BY epoch, sequence"
    )
    return [tuple(r) for r in rows]


async def test_telemetry_is_acked_only_after_commit_and_stored_once(tmp_path: Path) -> None:
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH))
        await s.wait_ack(EPOCH, 0)
        s.send(*(telemetry_pb(EPOCH, i) for i in range(1, 6)), heartbeat_pb(EPOCH, 6))
        await s.wait_ack(EPOCH, 6)
        assert await s.close() == grpc.StatusCode.OK
        rows = c.store.query("SELECT sequence, kind, status, samples FROM messages")
        assert [(r["sequence"], r["kind"], r["status"]) for r in rows] == [
            (i, "telemetry", "stored") for i in range(1, 6)
        ] + [(6, "heartbeat", "stored")]
        chunks = c.store.query("SELECT SUM(n_samples) AS n FROM telemetry_chunks")
        assert chunks[0]["n"] == 50
        assert c.store.committed_through("node-a", EPOCH) == 6


async def test_duplicate_and_conflicting_resends(tmp_path: Path) -> None:
    t0 = time.time_ns()
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)
        s = AgentStream(ch)
        s.send(
            hello_pb("node-a", EPOCH),
            telemetry_pb(EPOCH, 1, t0_ns=t0),
            telemetry_pb(EPOCH, 2, t0_ns=t0 + 10**9),
        )
        await s.wait_ack(EPOCH, 2)
        await s.close()
        # Reconnect (as after a lost ack) and resend 1 unchanged and 2 with another payload.
        s2 = AgentStream(ch)
        s2.send(hello_pb("node-a", EPOCH))
        await s2.wait_ack(EPOCH, 2)  # the hello answer already says 2 is committed
        s2.send(
            telemetry_pb(EPOCH, 1, t0_ns=t0),
            telemetry_pb(EPOCH, 2, t0_ns=t0 + 10**9, power_w=123.0),
            telemetry_pb(EPOCH, 3, t0_ns=t0 + 2 * 10**9),
        )
        await s2.wait_ack(EPOCH, 3)
        await s2.close()
        assert _stored(c) == [("node-a", EPOCH, 1), ("node-a", EPOCH, 2), ("node-a", EPOCH, 3)]
        powers = c.store.query("SELECT data FROM telemetry_chunks WHERE sequence = 2")
        assert len(powers) == 1  # the first copy is kept, not the conflicting one

        from flopwatt.collector.store import unpack_chunk

        assert set(unpack_chunk(powers[0]["data"])[1]["power_instant_w"]) == {300.0}
        _, text = await http_get(c.http_url + "/metrics")
        m = samples(text)
        msgs = "flopwatt_collector_messages_total"
        assert find(m, msgs, kind="telemetry", outcome="stored") == [3.0]
        assert find(m, msgs, kind="telemetry", outcome="duplicate") == [1.0]
        assert find(m, msgs, kind="telemetry", outcome="conflict") == [1.0]
        assert find(m, "flopwatt_collector_samples_ingested_total") == [30.0]


async def test_bad_samples_are_rejected_per_sample_and_never_reach_metrics(tmp_path: Path) -> None:
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)  # power limit 700 W → anything above 1050 W is not believable
        s = AgentStream(ch)
        now = time.time_ns()
        powers = [300.0, math.nan, -5.0, 1200.0, 301.0, math.inf, 302.0, 303.0]
        msg = telemetry_pb(EPOCH, 1, n=8, t0_ns=now, power_w=powers)
        future = telemetry_pb(EPOCH, 2, n=2, t0_ns=now + 20 * 60 * 10**9, power_w=[1.0, 1.0])
        s.send(hello_pb("node-a", EPOCH), msg, future)
        await s.wait_ack(EPOCH, 2)
        await s.close()
        stored = c.store.query("SELECT n_samples FROM telemetry_chunks")
        assert [r["n_samples"] for r in stored] == [4]  # 300, 301, 302, 303 kept
        rejected = {
            r["reason"]: r["samples"]
            for r in c.store.query("SELECT reason, samples FROM rejected_samples")
        }
        assert rejected == {
            "power_not_finite": 2,
            "power_negative": 1,
            "power_above_limit": 1,
            "timestamp_future": 2,
        }
        _, text = await http_get(c.http_url + "/metrics")
        m = samples(text)
        assert find(m, "flopwatt_gpu_power_watts", kind="instant") == [303.0]
        for reason, n in rejected.items():
            assert find(m, "flopwatt_collector_samples_rejected_total", reason=reason) == [n]


async def test_structurally_broken_message_is_invalid_argument_and_consumed(
    tmp_path: Path,
) -> None:
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)
        broken = telemetry_pb(EPOCH, 2)
        broken.telemetry.series[0].power_instant_w += b"\0" * 8  # 11 values for 10 timestamps
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH), telemetry_pb(EPOCH, 1), broken)
        assert await s.wait_end() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sequence 2" in s.details and "power_instant_w" in s.details
        row = c.store.query("SELECT status, detail FROM messages WHERE sequence = 2")[0]
        assert row["status"] == "rejected" and "power_instant_w" in row["detail"]
        # The agent reconnects: the hello ack already covers 2; a resend is a duplicate.
        s2 = AgentStream(ch)
        s2.send(hello_pb("node-a", EPOCH))
        await s2.wait_ack(EPOCH, 2)
        s2.send(broken, telemetry_pb(EPOCH, 3))
        await s2.wait_ack(EPOCH, 3)
        assert await s2.close() == grpc.StatusCode.OK
        assert c.store.query("SELECT COUNT(*) AS n FROM telemetry_chunks")[0]["n"] == 2


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        (
            telemetry_pb(EPOCH, 1, uuid="GPU-not-mine"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not registered",
        ),
        (telemetry_pb(EPOCH, 5), grpc.StatusCode.INVALID_ARGUMENT, "sequence gap"),
        (
            agent_pb2.AgentMessage(epoch=EPOCH, sequence=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no payload",
        ),
        (
            agent_pb2.AgentMessage(
                epoch=EPOCH,
                sequence=1,
                job_result=jobs_pb2.JobResult(job_id="j", device_uuid="GPU-0000"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "neither a GEMM nor a model",
        ),
    ],
)
async def test_structural_errors(
    tmp_path: Path, message: agent_pb2.AgentMessage, code: grpc.StatusCode, words: str
) -> None:
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH), message)
        assert await s.wait_end() == code
        assert words in s.details
        assert c.store.query("SELECT COUNT(*) AS n FROM telemetry_chunks")[0]["n"] == 0


async def test_oversized_message_is_resource_exhausted(tmp_path: Path) -> None:
    async with (
        collector(tmp_path, max_message_bytes=64 * 1024) as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        await _register(ch)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH), telemetry_pb(EPOCH, 1, n=20_000))
        assert await s.wait_end() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_stream_before_register_and_hello_rules(tmp_path: Path) -> None:
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH))
        assert await s.wait_end() == grpc.StatusCode.FAILED_PRECONDITION
        await _register(ch)
        s = AgentStream(ch)
        s.send(telemetry_pb(EPOCH, 1))
        assert await s.wait_end() == grpc.StatusCode.INVALID_ARGUMENT
        assert "hello" in s.details


async def test_register_validation(tmp_path: Path) -> None:
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        for bad in (
            register_pb("", [device_pb()], EPOCH),
            register_pb("n", [device_pb()], 0),
            register_pb("n", [device_pb("GPU-x"), device_pb("GPU-x")], EPOCH),
            register_pb("n", [device_pb("")], EPOCH),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Register(bad)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _gemm_result(seq: int, *, uuid: str = "GPU-0000") -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        epoch=EPOCH,
        sequence=seq,
        job_result=jobs_pb2.JobResult(
            job_id="job-1",
            device_uuid=uuid,
            started_unix_ns=time.time_ns() - 31 * 10**9,
            finished_unix_ns=time.time_ns(),
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


async def test_job_result_is_compared_with_registry_and_physics(tmp_path: Path) -> None:
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH), _gemm_result(1))
        await s.wait_ack(EPOCH, 1)
        await s.close()
        comp = c.store.query("SELECT * FROM comparisons")[0]
        assert comp["sku"] == "H100-SXM5-80GB" and comp["datapath"] == "tensor"
        assert comp["spec_peak_flops_per_s"] == pytest.approx(989.5e12)
        assert comp["sustained_over_spec_ratio"] == pytest.approx(700 / 989.5)
        assert comp["mean_power_over_tdp_ratio"] == pytest.approx(650 / 700)
        # physics: 1.456 pJ/MAC = 0.728 pJ/FLOP; ceiling 700 W / 989.5 TFLOP/s = 0.7074 pJ/FLOP
        assert comp["physics_energy_per_flop_j"] == pytest.approx(0.728e-12, rel=1e-6, abs=0)
        assert comp["ceiling_energy_per_flop_j"] == pytest.approx(700 / 989.5e12, rel=1e-6, abs=0)
        assert comp["measured_energy_per_flop_j"] == pytest.approx(650 / 700e12, rel=1e-6, abs=0)
        _, text = await http_get(c.http_url + "/metrics")
        m = samples(text)
        assert find(m, "flopwatt_gemm_flops_per_second", precision="bf16", kind="sustained") == [
            700e12
        ]
        assert find(m, "flopwatt_gemm_spec_ratio", precision="bf16", kind="burst") == [
            pytest.approx(790 / 989.5)
        ]
        assert find(m, "flopwatt_energy_per_flop_joules", precision="bf16") == [
            pytest.approx(650 / 700e12)
        ]
        assert find(m, "flopwatt_physics_tdp_watts", precision="bf16") == [
            pytest.approx(720.4, abs=0.1)
        ]
        assert find(m, "flopwatt_spec_tdp_watts", sku="H100-SXM5-80GB") == [700.0]


async def test_restart_rebuilds_state_from_the_store(tmp_path: Path) -> None:
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH), _gemm_result(1))
        await s.wait_ack(EPOCH, 1)
        await s.close()
    async with collector(tmp_path) as c2:
        _, text = await http_get(c2.http_url + "/metrics")
        m = samples(text)
        assert find(m, "flopwatt_gemm_flops_per_second", kind="burst") == [790e12]
        assert c2.store.committed_through("node-a", EPOCH) == 1


async def test_stale_agents_series_disappear(tmp_path: Path) -> None:
    now = [time.time_ns()]
    async with (
        collector(tmp_path, staleness_s=60) as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        await _register(ch)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH), telemetry_pb(EPOCH, 1))
        await s.wait_ack(EPOCH, 1)
        await s.close()
        from flopwatt.collector.metrics import FleetMetrics

        exporter = FleetMetrics(c.state, staleness_s=60, clock_ns=lambda: now[0])
        names = {f.name for f in exporter.collect() if f.samples}
        assert "flopwatt_gpu_power_watts" in names
        now[0] += 61 * 10**9
        fams = {f.name: f for f in exporter.collect() if f.samples}
        assert "flopwatt_gpu_power_watts" not in fams
        assert "flopwatt_agent_last_seen_timestamp_seconds" in fams  # how long ago stays visible


async def test_healthz_and_health_service(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        status, body = await http_get(c.http_url + "/healthz")
        assert (status, body.strip()) == (200, "ok")
        health = health_pb2_grpc.HealthStub(ch)
        resp = await health.Check(health_pb2.HealthCheckRequest(service="flopwatt.v1.AgentService"))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        status, _ = await http_get(c.http_url + "/nope")
        assert status == 404


async def test_fast_text_renderer_matches_the_prometheus_client_collector(tmp_path: Path) -> None:
    """/metrics is rendered by FleetMetrics.render_text; it must say exactly what the
    prometheus_client Collector path (collect + generate_latest) says."""
    from prometheus_client import CollectorRegistry, generate_latest

    from flopwatt.collector.metrics import FleetMetrics

    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH), telemetry_pb(EPOCH, 1, throttle=4), _gemm_result(2))
        await s.wait_ack(EPOCH, 2)
        await s.close()
        now = time.time_ns()
        exporter = FleetMetrics(c.state, clock_ns=lambda: now)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(exporter)
        reference = samples(generate_latest(registry).decode())
        fast = samples(exporter.render_text())
        assert fast == reference
        assert len(fast) > 40


@pytest.mark.parametrize("writer_process", [True])
async def test_writer_process_stores_exactly_once_and_keeps_rejections(
    tmp_path: Path, writer_process: bool
) -> None:
    """The default (CLI) configuration commits from a child process; telemetry crosses as its
    wire bytes, and messages with rejected samples as filtered arrays."""
    t0 = time.time_ns()
    async with (
        collector(tmp_path, writer_process=writer_process) as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        await _register(ch)
        s = AgentStream(ch)
        s.send(
            hello_pb("node-a", EPOCH),
            telemetry_pb(EPOCH, 1, t0_ns=t0),
            telemetry_pb(EPOCH, 2, t0_ns=t0 + 10**9, power_w=[300.0] * 9 + [math.nan]),
            _gemm_result(3),
        )
        await s.wait_ack(EPOCH, 3)
        await s.close()
        s2 = AgentStream(ch)
        s2.send(hello_pb("node-a", EPOCH))
        await s2.wait_ack(EPOCH, 3)
        s2.send(telemetry_pb(EPOCH, 1, t0_ns=t0), telemetry_pb(EPOCH, 4, t0_ns=t0 + 3 * 10**9))
        await s2.wait_ack(EPOCH, 4)
        await s2.close()
        rows = c.store.query("SELECT sequence, n_samples FROM telemetry_chunks ORDER BY sequence")
        assert [(r["sequence"], r["n_samples"]) for r in rows] == [(1, 10), (2, 9), (4, 10)]
        assert c.store.query("SELECT COUNT(*) AS n FROM job_results")[0]["n"] == 1
        _, text = await http_get(c.http_url + "/metrics")
        m = samples(text)
        assert find(
            m, "flopwatt_collector_messages_total", kind="telemetry", outcome="duplicate"
        ) == [1.0]
        assert find(m, "flopwatt_collector_samples_rejected_total", reason="power_not_finite") == [
            1.0
        ]


async def test_acks_flow_while_an_agent_keeps_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: acks were only sent when a session had nothing left in flight, so an agent
    sending faster than commits land (any busy collector) heard no ack until it paused, and a
    steady agent never did. Acks must go out after every commit. Each commit here takes 0.3 s
    (a slow disk) while the agent sends every 0.05 s, so something is always in flight."""
    apply = SQLiteStore.apply

    def slow_apply(self: SQLiteStore, writes: Sequence[MessageWrite]) -> list[WriteOutcome]:
        time.sleep(0.3)
        return apply(self, writes)

    monkeypatch.setattr(SQLiteStore, "apply", slow_apply)
    async with (
        collector(tmp_path) as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        await _register(ch)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH))
        await s.wait_ack(EPOCH, 0)
        for seq in range(1, 41):
            s.send(heartbeat_pb(EPOCH, seq))
            await asyncio.sleep(0.05)
        acked_while_sending = s.acks[EPOCH]
        await s.wait_ack(EPOCH, 40)
        await s.close()
    assert acked_while_sending >= 10


def _framed(epoch: int, sequence: int, field: int, payload: bytes) -> bytes:
    """An AgentMessage's bytes with ``payload`` as the given payload field, unchecked."""
    head = agent_pb2.AgentMessage(epoch=epoch, sequence=sequence).SerializeToString()
    return head + bytes([field << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (_framed(EPOCH, 2, 4, b"\xff\xff"), "not a TelemetryBatch"),
        (_framed(EPOCH, 2, 7, b"\xff\xff"), "heartbeat is not a valid message"),
        (b"\xff\xff\xff", "not an AgentMessage"),
    ],
    ids=["telemetry-payload", "heartbeat-payload", "envelope"],
)
async def test_undecodable_bytes_are_invalid_argument_and_lose_nothing_else(
    tmp_path: Path, frame: bytes, words: str
) -> None:
    """The stream frames messages without parsing telemetry; bytes that do not decode get a
    clear INVALID_ARGUMENT, a payload that does not decode is recorded as rejected (its
    sequence consumed), and the message before it is stored."""
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)
        call = ch.stream_stream(
            "/flopwatt.v1.AgentService/Stream",
            request_serializer=lambda b: b,
            response_deserializer=agent_pb2.CollectorMessage.FromString,
        )()
        await call.write(hello_pb("node-a", EPOCH).SerializeToString())
        await call.write(telemetry_pb(EPOCH, 1).SerializeToString())
        await call.write(frame)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (err.value.details() or "")
        rows = c.store.query("SELECT sequence, status, detail FROM messages ORDER BY sequence")
        assert (rows[0]["sequence"], rows[0]["status"]) == (1, "stored")
        if frame.startswith(b"\x09"):  # an envelope was read: the sequence is consumed
            assert rows[1]["status"] == "rejected" and words in rows[1]["detail"]
