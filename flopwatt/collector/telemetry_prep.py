"""Turning received telemetry bytes into validated, storable blocks — on the writer's side.

Telemetry is most of what a collector receives, and decoding and validating it is most of the
per-message work. The stream handler therefore passes telemetry on as its wire bytes and the
store writer (a thread, or a child process on another core) prepares it here, just before the
commit: decode, check every series belongs to a device the agent registered, validate each
sample. A commit's telemetry is prepared together (:meth:`TelemetryPreparer.prepare_batch`):
the array work is done once for all its messages rather than once per message.

A structurally broken message becomes a rejection write (status ``rejected`` with the reason),
so its sequence is consumed and the stream handler can end the stream with
``INVALID_ARGUMENT`` (``RESOURCE_EXHAUSTED`` for an oversized series) after the commit.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from google.protobuf.message import DecodeError

from flopwatt.collector.store import MessageWrite, pack_block_chunks
from flopwatt.collector.validate import merge_counts, validate_block
from flopwatt.records import SeriesBlock
from flopwatt.v1 import telemetry_pb2
from flopwatt.wire import (
    UniformParts,
    WireError,
    WireTooLargeError,
    block_from_parts,
    telemetry_from_proto,
    uniform_parts,
)

REJECT_INVALID = "invalid_argument"
REJECT_TOO_LARGE = "resource_exhausted"


def telemetry_digest(telemetry_wire: bytes) -> bytes:
    """Digest of a telemetry message's content: its serialised batch as received (BLAKE2b-128).
    A resend from the agent's spool carries byte-identical content."""
    return hashlib.blake2b(telemetry_wire, digest_size=16, person=b"telemetry").digest()


class TelemetryPreparer:
    """Prepares telemetry writes (see module docstring). Not thread-safe: one per writer."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._devices: dict[str, tuple[str, float | None]] = {}

    def update_devices(self, agent_id: str, power_limits_w: Mapping[str, float | None]) -> None:
        """Set the devices ``agent_id`` registered (uuid → power limit in W, or None)."""
        for uuid in [u for u, (a, _) in self._devices.items() if a == agent_id]:
            del self._devices[uuid]
        for uuid, limit in power_limits_w.items():
            self._devices[uuid] = (agent_id, limit)

    def prepare(self, w: MessageWrite) -> MessageWrite:
        """Decode and validate ``w.telemetry_wire``; writes without it pass through unchanged.

        Returns:
            the write with validated blocks and rejection counts, or a rejection write.
        """
        wire = w.telemetry_wire
        if wire is None:
            return w
        if not w.digest:
            w = replace(w, digest=telemetry_digest(wire))
        try:
            batch = telemetry_from_proto(_parse(wire))
            blocks, rejected = self._validate(w.agent_id, batch.as_blocks())
        except WireTooLargeError as exc:
            return self._rejected(w, str(exc), REJECT_TOO_LARGE)
        except WireError as exc:  # StructuralError is not raised here; ownership is below
            return self._rejected(w, str(exc), REJECT_INVALID)
        except _NotOwnedError as exc:
            return self._rejected(w, str(exc), REJECT_INVALID)
        return replace(w, blocks=blocks, rejected_samples=rejected, telemetry_wire=None)

    def prepare_batch(
        self, writes: Sequence[MessageWrite]
    ) -> tuple[list[MessageWrite], list[tuple[SeriesBlock, list[int]]]]:
        """Prepare a commit's writes together: what :meth:`prepare` does to each, with the
        array work done once for all of them.

        Telemetry messages whose series share one column set are joined into one block per
        column set, validated at once and handed back as views of it. Where a joined block
        has a bad sample, its messages are prepared one by one instead (so rejection counts
        stay per message); mixed-column and broken messages always are.

        Returns:
            (the prepared writes, in order; each joined block with the indices of the writes
            it holds, in order).
        """
        out = list(writes)
        groups: dict[tuple[str, ...], list[tuple[int, UniformParts, list[float | None]]]] = {}
        for i, w in enumerate(writes):
            wire = w.telemetry_wire
            if wire is None:
                continue
            if not w.digest:
                w = out[i] = replace(w, digest=telemetry_digest(wire))
            try:
                parts = uniform_parts(_parse(wire))
                if parts is None:
                    out[i] = self.prepare(w)
                    continue
                limits = self._limits(w.agent_id, parts.device_uuids)
            except WireTooLargeError as exc:
                out[i] = self._rejected(w, str(exc), REJECT_TOO_LARGE)
                continue
            except (WireError, _NotOwnedError) as exc:
                out[i] = self._rejected(w, str(exc), REJECT_INVALID)
                continue
            groups.setdefault(parts.signature, []).append((i, parts, limits))
        now = self._clock_ns()
        joined: list[tuple[SeriesBlock, list[int]]] = []
        for members in groups.values():
            block = block_from_parts([p for _, p, _ in members])
            limits = [x for _, _, lim in members for x in lim]
            keep, _ = validate_block(block, now_unix_ns=now, power_limits_w=limits)
            if keep is not None:  # a bad sample somewhere: count rejections message by message
                for i, _, _ in members:
                    out[i] = self.prepare(out[i])
                continue
            bounds = block.offsets.tolist()
            chunks = pack_block_chunks(block)
            device = 0
            for i, parts, _ in members:
                d0, d1 = device, device + len(parts.device_uuids)
                device = d1
                r0, r1 = bounds[d0], bounds[d1]
                view = SeriesBlock(
                    block.device_uuids[d0:d1],
                    block.offsets[d0 : d1 + 1] - r0,
                    block.timestamp_unix_ns[r0:r1],
                    {name: col[r0:r1] for name, col in block.columns.items()},
                )
                out[i] = replace(
                    out[i],
                    blocks=(view,),
                    chunks=tuple(c for c in chunks[d0:d1] if c is not None),
                    rejected_samples={},
                    telemetry_wire=None,
                )
            joined.append((block, [i for i, _, _ in members]))
        return out, joined

    def owner(self, uuid: str) -> str | None:
        """The agent that registered ``uuid``, if any."""
        entry = self._devices.get(uuid)
        return None if entry is None else entry[0]

    def _limits(self, agent_id: str, uuids: Sequence[str]) -> list[float | None]:
        limits = []
        for uuid in uuids:
            owner = self._devices.get(uuid)
            if owner is None or owner[0] != agent_id:
                raise _NotOwnedError(f"device {uuid!r} is not registered by agent {agent_id!r}")
            limits.append(owner[1])
        return limits

    def _validate(
        self, agent_id: str, blocks: tuple[SeriesBlock, ...]
    ) -> tuple[tuple[SeriesBlock, ...], dict[tuple[str, str], int]]:
        now = self._clock_ns()
        clean: list[SeriesBlock] = []
        rejected: dict[tuple[str, str], int] = {}
        for block in blocks:
            limits = self._limits(agent_id, block.device_uuids)
            keep, counts = validate_block(block, now_unix_ns=now, power_limits_w=limits)
            merge_counts(rejected, counts)
            clean.append(block if keep is None else block.take(keep))
        return tuple(clean), rejected

    @staticmethod
    def _rejected(w: MessageWrite, detail: str, code: str) -> MessageWrite:
        return replace(w, rejected_detail=detail, reject_code=code, telemetry_wire=None)


def _parse(wire: bytes) -> telemetry_pb2.TelemetryBatch:
    """The batch in ``wire``.

    Raises:
        WireError: the bytes are not a ``TelemetryBatch`` (the stream only framed them).
    """
    try:
        return telemetry_pb2.TelemetryBatch.FromString(wire)
    except DecodeError as exc:
        raise WireError(f"telemetry is not a TelemetryBatch: {exc}") from None


class _NotOwnedError(ValueError):
    """A series names a device the agent did not register."""
