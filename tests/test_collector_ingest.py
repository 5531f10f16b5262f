"""The collector with real parts: gRPC on loopback port 0, a real SQLite file, raw protobuf
clients. Exactly-once storage, per-sample rejection, structural errors, comparison, metrics."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from flopwatt.store.base import MessageWrite, Registration, WriteOutcome
from flopwatt.store.sqlite import SQLiteStore
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

        from flopwatt.store.chunks import unpack_chunk

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
        assert find(m, "flopwatt_gpu_power_instant_watts") == [303.0]
        for reason, n in rejected.items():
            assert find(m, "flopwatt_collector_samples_rejected_total", reason=reason) == [n]


async def test_a_broken_series_is_rejected_alone_reported_and_consumed(tmp_path: Path) -> None:
    """One structurally broken series (11 power values for 10 timestamps) beside a good one:
    the good series is stored, the broken one counted (malformed_series, 10 samples) and
    reported to the agent in a Rejection before the ack; the stream goes on, and a resend of
    the message is a duplicate."""
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch, "node-a", device_pb("GPU-0000"), device_pb("GPU-0001", index=1))
        broken = telemetry_pb(EPOCH, 2)
        good = telemetry_pb(EPOCH, 2, uuid="GPU-0001").telemetry.series[0]
        broken.telemetry.series[0].power_instant_w += b"\0" * 8  # 11 values for 10 timestamps
        broken.telemetry.series.append(good)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH), telemetry_pb(EPOCH, 1), broken)
        await s.wait_ack(EPOCH, 2)
        [rejection] = s.rejections
        assert (rejection.epoch, rejection.sequence, rejection.message_rejected) == (
            EPOCH,
            2,
            False,
        )
        assert [(r.device_uuid, r.reason, r.samples) for r in rejection.samples] == [
            ("GPU-0000", "malformed_series", 10)
        ]
        row = c.store.query("SELECT status, samples FROM messages WHERE sequence = 2")[0]
        assert (row["status"], row["samples"]) == ("stored", 10)
        s.send(broken, telemetry_pb(EPOCH, 3))  # a resend of 2 is a duplicate
        await s.wait_ack(EPOCH, 3)
        assert await s.close() == grpc.StatusCode.OK
        chunks = c.store.query("SELECT device_uuid FROM telemetry_chunks ORDER BY sequence")
        assert [r["device_uuid"] for r in chunks] == ["GPU-0000", "GPU-0001", "GPU-0000"]
        _, text = await http_get(c.http_url + "/metrics")
        m = samples(text)
        assert find(m, "flopwatt_collector_samples_rejected_total", reason="malformed_series") == [
            10.0
        ]
        outcome = "flopwatt_collector_messages_total"
        assert find(m, outcome, kind="telemetry", outcome="duplicate") == [1.0]


@pytest.mark.parametrize(
    ("make", "sample_reason", "detail"),
    [
        (lambda: telemetry_pb(EPOCH, 1, uuid="GPU-not-mine"), "unregistered_device", ""),
        (lambda: agent_pb2.AgentMessage(epoch=EPOCH, sequence=1), "", "no payload"),
        (
            lambda: agent_pb2.AgentMessage(
                epoch=EPOCH,
                sequence=1,
                job_result=jobs_pb2.JobResult(job_id="j", device_uuid="GPU-0000"),
            ),
            "",
            "neither a GEMM nor a model",
        ),
        (lambda: _gemm_result(1, uuid="GPU-not-mine"), "", "not registered"),
    ],
    ids=["unregistered-series", "no-payload", "empty-result", "result-unregistered-device"],
)
async def test_unusable_messages_are_consumed_and_reported(
    tmp_path: Path, make: Callable[[], agent_pb2.AgentMessage], sample_reason: str, detail: str
) -> None:
    """A message that is an AgentMessage but cannot be used is consumed (stored with nothing
    in it, or recorded as rejected), reported in a Rejection before its ack, and the stream
    goes on: the next message is stored."""
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH), make(), telemetry_pb(EPOCH, 2))
        await s.wait_ack(EPOCH, 2)
        [rejection] = s.rejections
        assert rejection.sequence == 1
        if sample_reason:
            assert [(r.reason, r.samples) for r in rejection.samples] == [(sample_reason, 10)]
            assert not rejection.message_rejected
        else:
            assert rejection.message_rejected and detail in rejection.detail
            row = c.store.query("SELECT status, detail FROM messages WHERE sequence = 1")[0]
            assert row["status"] == "rejected" and detail in row["detail"]
        assert await s.close() == grpc.StatusCode.OK
        assert c.store.query("SELECT COUNT(*) AS n FROM telemetry_chunks")[0]["n"] == 1
        assert c.store.committed_through("node-a", EPOCH) == 2


async def test_a_sequence_gap_ends_the_stream_and_the_hello_ack_says_where_to_resume(
    tmp_path: Path,
) -> None:
    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH), telemetry_pb(EPOCH, 1), telemetry_pb(EPOCH, 5))
        assert await s.wait_end() == grpc.StatusCode.FAILED_PRECONDITION
        assert "sequence gap" in s.details and "expected 2" in s.details
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH))
        await s.wait_ack(EPOCH, 1)
        assert await s.close() == grpc.StatusCode.OK


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
        assert find(m, "flopwatt_gemm_sustained_flops_per_second", precision="bf16") == [700e12]
        assert find(m, "flopwatt_gemm_burst_spec_ratio", precision="bf16") == [
            pytest.approx(790 / 989.5)
        ]
        assert find(m, "flopwatt_energy_per_flop_joules", precision="bf16") == [
            pytest.approx(650 / 700e12, rel=1e-9, abs=0)
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
        assert find(m, "flopwatt_gemm_burst_flops_per_second") == [790e12]
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
        names = {name for name, _ in samples(exporter.render_text())}
        assert "flopwatt_gpu_power_instant_watts" in names
        now[0] += 61 * 10**9
        names = {name for name, _ in samples(exporter.render_text())}
        assert "flopwatt_gpu_power_instant_watts" not in names
        assert "flopwatt_agent_last_seen_timestamp_seconds" in names  # how long ago stays visible


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


async def test_metrics_text_round_trips_through_prometheus_client(tmp_path: Path) -> None:
    """/metrics is written by FleetMetrics straight to the text format; prometheus_client
    parses it, and writes the parsed families back with the same samples."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from flopwatt.collector.metrics import FleetMetrics

    async with collector(tmp_path) as c, grpc.aio.insecure_channel(c.grpc_address) as ch:
        await _register(ch)
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH), telemetry_pb(EPOCH, 1, throttle=4), _gemm_result(2))
        await s.wait_ack(EPOCH, 2)
        await s.close()
        now = time.time_ns()
        text = FleetMetrics(c.state, clock_ns=lambda: now).render_text()
        families = list(text_string_to_metric_families(text))

        class Replay:
            def collect(self) -> Iterator[Any]:
                yield from families

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Replay())
        assert samples(generate_latest(registry).decode()) == samples(text)
        assert len(samples(text)) > 40


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
async def test_undecodable_bytes_lose_nothing_else(
    tmp_path: Path, frame: bytes, words: str
) -> None:
    """The stream frames messages without parsing telemetry. Bytes that are not an
    AgentMessage end the stream with a clear INVALID_ARGUMENT (no sequence can be consumed); a
    payload that does not decode inside a readable envelope is recorded as rejected (its
    sequence consumed), reported in a Rejection, and the stream goes on. Either way the message
    before it is stored."""
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
        envelope_read = frame.startswith(b"\x09")
        if not envelope_read:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in (err.value.details() or "")
        else:
            rejections = []
            async for reply in call:
                if reply.HasField("rejection"):
                    rejections.append(reply.rejection)
                if reply.HasField("ack") and reply.ack.committed_through == 2:
                    await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
            [rejection] = rejections
            assert rejection.sequence == 2 and rejection.message_rejected
            assert words in rejection.detail
        rows = c.store.query("SELECT sequence, status, detail FROM messages ORDER BY sequence")
        assert (rows[0]["sequence"], rows[0]["status"]) == (1, "stored")
        if envelope_read:  # the sequence is consumed
            assert rows[1]["status"] == "rejected" and words in rows[1]["detail"]


class CountingStore(SQLiteStore):
    """The real store, counting the transactions registrations take."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.registration_commits = 0

    def register_agents(self, registrations: Sequence[Registration]) -> None:
        self.registration_commits += 1
        time.sleep(0.05)  # a slow disk: 100 ms fsync makes each commit take this long and more
        super().register_agents(registrations)


async def test_registrations_that_arrive_together_share_a_commit(tmp_path: Path) -> None:
    """60 agents register at once: far fewer commits than agents, every one stored. Registering
    again unchanged (every reconnect does) writes nothing."""
    store = CountingStore(tmp_path / "c.db")
    async with (
        collector(tmp_path, store=store, db_path=tmp_path / "c.db") as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        hosts = [f"node-{i:02d}" for i in range(60)]
        await asyncio.gather(*(_register(ch, h, device_pb(f"GPU-{h}")) for h in hosts))
        assert store.registration_commits < 20
        stored = {r["agent_id"] for r in c.store.query("SELECT agent_id FROM agents")}
        assert stored == set(hosts)
        before = store.registration_commits
        await asyncio.gather(*(_register(ch, h, device_pb(f"GPU-{h}")) for h in hosts[:10]))
        assert store.registration_commits == before
