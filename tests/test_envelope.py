"""The stream's envelope reader: for any bytes, the same epoch, sequence and payload kind as
protobuf's own parse, the payload's bytes exactly as sent, and never an exception."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from flopwatt.collector.envelope import AgentEnvelope, read_envelope
from flopwatt.v1 import agent_pb2
from tests.collector_helpers import heartbeat_pb, hello_pb, telemetry_pb


def _messages() -> list[agent_pb2.AgentMessage]:
    tele = telemetry_pb(2**64 - 1, 2**63 + 5, n=4, t0_ns=1_800_000_000 * 10**9)
    result = agent_pb2.AgentMessage(epoch=7, sequence=300)
    result.job_result.job_id = "job-1"
    status = agent_pb2.AgentMessage(epoch=7, sequence=301)
    status.job_status.job_id = "job-1"
    dropped = agent_pb2.AgentMessage(epoch=1, sequence=1)
    dropped.dropped.samples = 12
    empty_heartbeat = agent_pb2.AgentMessage(epoch=3, sequence=9)
    empty_heartbeat.heartbeat.SetInParent()  # set but with no fields: zero-length payload
    return [
        tele,
        hello_pb("node-a", 42, pending=[41, 40]),
        heartbeat_pb(5, 6),
        result,
        status,
        dropped,
        empty_heartbeat,
        agent_pb2.AgentMessage(epoch=1, sequence=2),  # no payload at all
        agent_pb2.AgentMessage(),
    ]


def _expected(raw: bytes) -> tuple[int, int, str]:
    m = agent_pb2.AgentMessage.FromString(raw)
    return m.epoch, m.sequence, m.WhichOneof("payload") or "empty"


@pytest.mark.parametrize("message", _messages(), ids=lambda m: m.WhichOneof("payload") or "none")
def test_envelope_matches_protobuf_and_keeps_the_payload_bytes(
    message: agent_pb2.AgentMessage,
) -> None:
    raw = message.SerializeToString()
    env = read_envelope(raw)
    assert (env.epoch, env.sequence, env.kind) == _expected(raw)
    kind = message.WhichOneof("payload")
    assert env.payload == (getattr(message, kind).SerializeToString() if kind else b"")
    assert env.raw == raw and env.error == ""
    assert env.message() == message


def test_unknown_fields_are_skipped_like_protobuf_does() -> None:
    base = telemetry_pb(9, 10, n=2).SerializeToString()
    unknown = (
        bytes([12 << 3 | 0, 0x96, 0x01])  # varint
        + bytes([13 << 3 | 5]) + b"\x01\x02\x03\x04"  # fixed32
        + bytes([14 << 3 | 1]) + b"\x00" * 8  # fixed64
        + bytes([15 << 3 | 2, 3]) + b"abc"  # length-delimited
    )  # fmt: skip
    for raw in (unknown + base, base + unknown):
        env = read_envelope(raw)
        assert (env.epoch, env.sequence, env.kind) == (9, 10, "telemetry")
        assert env.payload == agent_pb2.AgentMessage.FromString(base).telemetry.SerializeToString()
        assert (env.epoch, env.sequence, env.kind) == _expected(raw)


def test_two_payload_fields_follow_protobufs_rules() -> None:
    """A second payload field is left to protobuf (last one wins for a oneof; the same field
    twice merges): the envelope agrees with the parse."""
    a = heartbeat_pb(1, 2).SerializeToString()
    b = telemetry_pb(1, 2, n=1).SerializeToString()
    for raw in (a + b, b + a, b + b):
        env = read_envelope(raw)
        parsed = agent_pb2.AgentMessage.FromString(raw)
        assert (env.epoch, env.sequence, env.kind) == _expected(raw)
        kind = parsed.WhichOneof("payload")
        assert kind is not None
        assert env.payload == getattr(parsed, kind).SerializeToString()


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xff", b"\x22\x10abc", b"\x09\x01\x02", b"\x10"],
    ids=["bad-varint", "payload-past-end", "short-fixed64", "missing-varint"],
)
def test_malformed_bytes_are_reported_not_raised(raw: bytes) -> None:
    env = read_envelope(raw)
    assert env.kind == "malformed" and "not an AgentMessage" in env.error


def test_random_corruption_never_raises_and_agrees_with_protobuf() -> None:
    rng = random.Random(1234)
    seeds = [m.SerializeToString() for m in _messages()]
    for _ in range(3000):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            if raw and rng.random() < 0.7:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            else:
                del raw[rng.randrange(len(raw) + 1) :]
        data = bytes(raw)
        env = read_envelope(data)
        assert isinstance(env, AgentEnvelope)
        try:
            expected = _expected(data)
        except DecodeError:
            # Either the envelope is broken too, or only the payload's inside is, which the
            # envelope does not read: then the payload itself fails to parse where it is used.
            if env.kind != "malformed":
                payload_type = type(getattr(agent_pb2.AgentMessage(), env.kind))
                with pytest.raises(DecodeError):
                    payload_type.FromString(env.payload)
            continue
        assert (env.epoch, env.sequence, env.kind) == expected
