"""The agent stream's messages as the collector reads them: the envelope (epoch, sequence,
which payload) without decoding the payload.

Telemetry is almost every message a collector receives, and it is decoded and validated in the
store writer (``telemetry_prep``). Parsing it into protobuf objects on the event loop only to
serialise it again for the writer cost a good part of the event loop's time per message, so the
stream's request deserializer is :func:`read_envelope`: a scan of the few top-level fields that
slices the payload's bytes out as they arrived. Anything the scan does not expect (a repeated
payload field, a group, a known field with another wire type) is parsed by protobuf instead, so
the result always matches what protobuf would make of the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from flopwatt.v1 import agent_pb2

#: payload field number → the name of the ``AgentMessage.payload`` oneof member
PAYLOAD_FIELDS = {
    f.number: f.name for f in agent_pb2.AgentMessage.DESCRIPTOR.oneofs_by_name["payload"].fields
}
_EPOCH, _SEQUENCE = 1, 2
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True, slots=True)
class AgentEnvelope:
    """One ``AgentMessage`` as received.

    ``kind`` is the payload's field name (``"telemetry"``, ``"hello"``, …), ``"empty"`` when
    none is set, or ``"malformed"`` with ``error`` when the bytes are not an ``AgentMessage``.
    ``payload`` is the payload message's bytes exactly as sent.
    """

    epoch: int
    sequence: int
    kind: str
    payload: bytes
    raw: bytes
    error: str = ""

    def message(self) -> agent_pb2.AgentMessage:
        """The whole message, parsed (for the rare kinds the event loop handles itself).

        Raises:
            google.protobuf.message.DecodeError: ``kind`` is ``"malformed"``.
        """
        return agent_pb2.AgentMessage.FromString(self.raw)


def read_envelope(raw: bytes) -> AgentEnvelope:
    """The envelope of a serialised ``AgentMessage`` (never raises: see ``kind``)."""
    try:
        scanned = _scan(raw)
    except (IndexError, ValueError):
        scanned = None
    return scanned if scanned is not None else _parsed(raw)


def envelope_of(message: agent_pb2.AgentMessage) -> AgentEnvelope:
    """The envelope of a message object (tests and in-process callers)."""
    return read_envelope(message.SerializeToString())


def _parsed(raw: bytes) -> AgentEnvelope:
    try:
        m = agent_pb2.AgentMessage.FromString(raw)
    except DecodeError as exc:
        return AgentEnvelope(0, 0, "malformed", b"", raw, f"not an AgentMessage: {exc}")
    kind = m.WhichOneof("payload")
    payload = getattr(m, kind).SerializeToString() if kind else b""
    return AgentEnvelope(m.epoch, m.sequence, kind or "empty", payload, raw)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _scan(raw: bytes) -> AgentEnvelope | None:
    """The envelope by scanning top-level fields; None where protobuf must decide."""
    epoch = sequence = 0
    kind = ""
    start = end = 0
    pos, n = 0, len(raw)
    while pos < n:
        tag, pos = _varint(raw, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            return None
        if wire == _VARINT:
            value, pos = _varint(raw, pos)
            if number == _SEQUENCE:
                sequence = value
            elif number == _EPOCH or number in PAYLOAD_FIELDS:
                return None
        elif wire == _FIXED64:
            if pos + 8 > n:
                return None
            if number == _EPOCH:
                epoch = int.from_bytes(raw[pos : pos + 8], "little")
            elif number == _SEQUENCE or number in PAYLOAD_FIELDS:
                return None
            pos += 8
        elif wire == _LENGTH:
            length, pos = _varint(raw, pos)
            if pos + length > n:
                return None
            if number in PAYLOAD_FIELDS:
                if kind:  # a second payload field: protobuf's merge rules decide
                    return None
                kind, start, end = PAYLOAD_FIELDS[number], pos, pos + length
            elif number in (_EPOCH, _SEQUENCE):
                return None
            pos += length
        elif wire == _FIXED32:
            if number in (_EPOCH, _SEQUENCE) or number in PAYLOAD_FIELDS or pos + 4 > n:
                return None
            pos += 4
        else:  # groups, or not protobuf at all
            return None
    return AgentEnvelope(epoch, sequence, kind or "empty", raw[start:end], raw)
