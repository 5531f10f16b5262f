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
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from flopwatt.collector.store import ChunkRow, MessageWrite, pack_raw_chunk_rows
from flopwatt.collector.validate import merge_counts, validate_block
from flopwatt.records import TELEMETRY_COLUMNS, TIMESTAMP_DTYPE, SeriesBlock
from flopwatt.v1 import telemetry_pb2
from flopwatt.wire import (
    MAX_SERIES_SAMPLES,
    SERIES_FIELD_COUNT,
    SeriesFields,
    WireError,
    WireTooLargeError,
    series_fields,
    telemetry_from_proto,
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

        Every series of the commit is length-checked with one array operation; series with
        the same column set are joined into one block per column set and validated at once;
        each series' chunk is packed straight from its wire bytes. A message with a series
        the check does not pass (malformed, oversized, empty) or with a bad sample is
        prepared on its own by :meth:`prepare` instead, which names the precise error or
        counts its rejections; a message naming a device its agent did not register is
        rejected whole.

        Returns:
            (the prepared writes, in order; each joined block with, for each of its device
            rows, the index of the write that carried it, or -1 where that write was prepared
            on its own).
        """
        out = list(writes)
        candidates: list[tuple[int, bytes, list[SeriesFields]]] = []
        for i, w in enumerate(writes):
            wire = w.telemetry_wire
            if wire is None:
                continue
            digest = w.digest or telemetry_digest(wire)
            try:
                series = series_fields(_parse(wire))
            except WireError as exc:
                out[i] = self._rejected(replace(w, digest=digest), str(exc), REJECT_INVALID)
                continue
            if series:
                candidates.append((i, digest, series))
            else:
                out[i] = self.prepare(replace(w, digest=digest))
        if not candidates:
            return out, []
        sound, samples, bitmaps = _checked_lengths([s for _, _, ss in candidates for s in ss])
        groups: dict[int, _Group] = {}
        accepted: list[tuple[int, bytes, list[ChunkRow | None]]] = []
        r = 0
        for i, digest, series in candidates:
            k = len(series)
            r, first = r + k, r
            if False in sound[first:r]:
                # The precise error, or a shape only the one-by-one path takes.
                out[i] = self.prepare(replace(out[i], digest=digest))
                continue
            try:
                limits = self._limits(out[i].agent_id, [s[0] for s in series])
            except _NotOwnedError as exc:
                out[i] = self._rejected(replace(out[i], digest=digest), str(exc), REJECT_INVALID)
                continue
            accepted.append((i, digest, [None] * k))
            signature = bitmaps[first]
            if bitmaps[first:r].count(signature) == k:  # the usual message
                group = groups.get(signature) or groups.setdefault(signature, _Group())
                group.extend(series, samples[first:r], limits, i)
                continue
            for j in range(k):
                group = groups.get(bitmaps[first + j]) or groups.setdefault(
                    bitmaps[first + j], _Group()
                )
                group.extend(
                    series[j : j + 1], samples[first + j : first + j + 1], limits[j:], i, j
                )
        now = self._clock_ns()
        on_own: set[int] = set()
        joined: list[tuple[SeriesBlock, list[int]]] = []
        slots = {i: packed for i, _, packed in accepted}
        for bitmap, g in groups.items():
            block = g.block(bitmap)
            keep, _ = validate_block(block, now_unix_ns=now, power_limits_w=g.limits)
            if keep is not None:  # a bad sample: its messages count their rejections alone
                clean = np.logical_and.reduceat(keep, block.offsets[:-1]).tolist()
                on_own.update(w for w, ok in zip(g.writes, clean, strict=True) if not ok)
            starts = block.offsets[:-1]
            rows = pack_raw_chunk_rows(
                bitmap,
                g.rows,
                g.samples,
                np.minimum.reduceat(block.timestamp_unix_ns, starts).tolist(),
                np.maximum.reduceat(block.timestamp_unix_ns, starts).tolist(),
            )
            for row, i, j in zip(rows, g.writes, g.positions, strict=True):
                slots[i][j] = row
            joined.append((block, g.writes))
        for i, digest, packed in accepted:
            w = out[i]
            if i in on_own:
                out[i] = self.prepare(replace(w, digest=digest))
            else:
                # A telemetry write carries its identity and the telemetry only.
                out[i] = MessageWrite(
                    w.agent_id,
                    w.epoch,
                    w.sequence,
                    w.kind,
                    digest,
                    w.received_unix_ns,
                    chunks=tuple(c for c in packed if c is not None),
                )
        if on_own:
            joined = [(b, [-1 if i in on_own else i for i in ws]) for b, ws in joined]
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


_ITEMSIZES = np.array([spec.dtype.itemsize for spec in TELEMETRY_COLUMNS], dtype=np.int64)
_COLUMN_BITS = np.array([1 << i for i in range(len(TELEMETRY_COLUMNS))], dtype=np.int64)


def _checked_lengths(rows: list[SeriesFields]) -> tuple[list[bool], list[int], list[int]]:
    """For each series: whether its structure is sound (a device uuid, whole int64
    timestamps, 1 to ``MAX_SERIES_SAMPLES`` samples, every column present with exactly one
    value per timestamp or absent), its sample count, and the bitmap of its columns (bit i ⇔
    ``TELEMETRY_COLUMNS[i]``, the stored chunk's bitmap). One array operation for a whole
    commit's series."""
    sizes = np.fromiter(
        map(len, itertools.chain.from_iterable(rows)),
        dtype=np.int64,
        count=len(rows) * SERIES_FIELD_COUNT,
    ).reshape(len(rows), SERIES_FIELD_COUNT)
    samples = sizes[:, 1] >> 3
    columns = sizes[:, 2:]
    present = columns > 0
    sound = (
        (sizes[:, 0] > 0)
        & (sizes[:, 1] & 7 == 0)
        & (samples > 0)
        & (samples <= MAX_SERIES_SAMPLES)
        & ((columns == samples[:, None] * _ITEMSIZES) | ~present).all(axis=1)
    )
    bitmaps = present.astype(np.int64) @ _COLUMN_BITS
    return sound.tolist(), samples.tolist(), bitmaps.tolist()


@dataclass
class _Group:
    """A commit's series that carry one column set, with where each came from."""

    rows: list[SeriesFields] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    limits: list[float | None] = field(default_factory=list)
    writes: list[int] = field(default_factory=list)
    """Index of the write each series came from."""
    positions: list[int] = field(default_factory=list)
    """Index of each series within its message."""

    def extend(
        self,
        rows: Sequence[SeriesFields],
        samples: Sequence[int],
        limits: Sequence[float | None],
        write: int,
        first: int = 0,
    ) -> None:
        """Add ``rows`` of message ``write``, the first at position ``first`` in it."""
        k = len(rows)
        self.rows.extend(rows)
        self.samples.extend(samples)
        self.limits.extend(limits[:k])
        self.writes.extend([write] * k)
        self.positions.extend(range(first, first + k))

    def block(self, bitmap: int) -> SeriesBlock:
        """The series joined column by column (one join per column; zero-copy arrays)."""
        fields = list(zip(*self.rows, strict=True))
        offsets = np.zeros(len(self.rows) + 1, dtype=np.int64)
        np.cumsum(self.samples, out=offsets[1:])
        columns: dict[str, npt.NDArray[np.generic]] = {
            spec.name: np.frombuffer(b"".join(fields[2 + c]), spec.dtype)
            for c, spec in enumerate(TELEMETRY_COLUMNS)
            if bitmap >> c & 1
        }
        ts = np.frombuffer(b"".join(fields[1]), TIMESTAMP_DTYPE)
        return SeriesBlock(tuple(fields[0]), offsets, ts, columns)


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
