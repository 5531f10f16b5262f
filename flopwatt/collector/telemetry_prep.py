"""Turning received telemetry bytes into validated, storable chunks — on the writer's side.

Telemetry is most of what a collector receives, and decoding and validating it is most of the
per-message work. The stream handler therefore passes telemetry on as its wire bytes and the
store writer (a thread, or a child process on another core) prepares it here, just before the
commit: decode, check every series is sound and belongs to a device the agent registered,
validate each sample (:mod:`~flopwatt.collector.validate` lists every rule). A commit's
telemetry is prepared together (:meth:`TelemetryPreparer.prepare_batch`): the array work is
done once for all its messages rather than once per message.

What is refused is refused as narrowly as possible: a bad sample alone, a broken or foreign
series alone (``malformed_series``, ``unregistered_device``), each counted in the message's
``rejected_samples``; the rest of the message is stored. A message whose every series is
refused is stored without telemetry (its sequence is consumed). Only bytes that are not a
``TelemetryBatch`` become a rejection write (status ``rejected``, ``reject_code``
``invalid_argument``), after whose commit the stream handler ends the stream.

The preparer remembers, per registered device, what the ``energy_decreasing`` rule needs
(:class:`~flopwatt.collector.validate.EnergyTracker`); it expects each agent's telemetry in
sequence order, as the writer receives it.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from flopwatt.collector.validate import (
    ENERGY_COLUMN,
    ENERGY_DECREASING_CODE,
    REASONS,
    THRESHOLD_COUNT,
    DeviceLimits,
    EnergyPart,
    EnergySeries,
    EnergyTracker,
    RejectReason,
    count_codes,
    merge_counts,
    reject_codes,
    thresholds,
)
from flopwatt.records import TELEMETRY_COLUMNS, TIMESTAMP_DTYPE, DeviceSeries, SeriesBlock
from flopwatt.store.base import MessageWrite
from flopwatt.store.chunks import ChunkRow, pack_block_chunks, pack_raw_chunk_rows
from flopwatt.v1 import telemetry_pb2
from flopwatt.wire import (
    MAX_SERIES_SAMPLES,
    SERIES_FIELD_COUNT,
    SeriesFields,
    WireError,
    series_fields,
    series_from_proto,
)

REJECT_INVALID = "invalid_argument"
"""The ``reject_code`` of a message whose bytes are not a ``TelemetryBatch`` (the only whole
message rejection here; an oversized series is a ``malformed_series`` rejection)."""

_MALFORMED = RejectReason.MALFORMED_SERIES.value
_UNREGISTERED = RejectReason.UNREGISTERED_DEVICE.value

Counts = dict[tuple[str, str], int]


def telemetry_digest(telemetry_wire: bytes) -> bytes:
    """Digest of a telemetry message's content: its serialised batch as received (BLAKE2b-128).
    A resend from the agent's spool carries byte-identical content."""
    return hashlib.blake2b(telemetry_wire, digest_size=16, person=b"telemetry").digest()


def claimed_samples(timestamp_bytes: int) -> int:
    """The samples a refused series is counted with: its timestamps' byte length ÷ 8 when that
    is a whole positive number, else 1."""
    n, partial = divmod(timestamp_bytes, TIMESTAMP_DTYPE.itemsize)
    return n if n > 0 and not partial else 1


class TelemetryPreparer:
    """Prepares telemetry writes (see module docstring). Not thread-safe: one per writer.

    Each registered device has a slot: a row of the threshold table its samples are checked
    against and its energy memory.
    """

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._agents: dict[str, dict[str, int]] = {}
        """agent id → {device uuid → slot}."""
        self._owner: dict[str, str] = {}
        """device uuid → the agent that registered it."""
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._thresholds = np.zeros((0, THRESHOLD_COUNT))
        self._energy = EnergyTracker()

    def update_devices(self, agent_id: str, limits: Mapping[str, DeviceLimits]) -> None:
        """Set the devices ``agent_id`` registered (uuid → limits), replacing its previous
        set. A device that stays registered by the same agent keeps its energy memory."""
        for uuid in self._agents.pop(agent_id, {}):
            if uuid not in limits:
                self._forget(uuid)
        devices: dict[str, int] = {}
        for uuid, lim in limits.items():
            previous = self._owner.get(uuid)
            if previous is not None and previous != agent_id:
                self._agents.get(previous, {}).pop(uuid, None)
                self._forget(uuid)
            slot = self._slots.get(uuid)
            if slot is None:
                slot = self._slots[uuid] = self._free.pop() if self._free else len(self._slots)
                self._energy.reset(slot)
            if slot >= len(self._thresholds):
                grown = np.zeros((max(2 * len(self._thresholds), slot + 1, 16), THRESHOLD_COUNT))
                grown[: len(self._thresholds)] = self._thresholds
                self._thresholds = grown
            self._thresholds[slot] = thresholds(lim)
            self._owner[uuid] = agent_id
            devices[uuid] = slot
        self._agents[agent_id] = devices

    def _forget(self, uuid: str) -> None:
        self._owner.pop(uuid, None)
        slot = self._slots.pop(uuid, None)
        if slot is not None:
            self._energy.reset(slot)
            self._free.append(slot)

    def owner(self, uuid: str) -> str | None:
        """The agent that registered ``uuid``, if any."""
        return self._owner.get(uuid)

    def energy_reference(self, uuid: str) -> tuple[int, int, float] | None:
        """(epoch, sequence, energy J) the energy rule remembers for ``uuid``, if anything."""
        slot = self._slots.get(uuid)
        return None if slot is None else self._energy.reference(slot)

    # --- one message at a time -----------------------------------------------------------

    def prepare(self, w: MessageWrite) -> MessageWrite:
        """Decode and validate ``w.telemetry_wire`` on its own; writes without it pass through
        unchanged. Decodes series by series into arrays (the batch path packs from the wire
        bytes instead; both store the same).

        Returns:
            the write with validated blocks and rejection counts, or a rejection write when
            the bytes are not a ``TelemetryBatch``.
        """
        wire = w.telemetry_wire
        if wire is None:
            return w
        if not w.digest:
            w = replace(w, digest=telemetry_digest(wire))
        try:
            batch = _parse(wire)
        except WireError as exc:
            return self._rejected(w, str(exc), REJECT_INVALID)
        rejected: Counts = {}
        devices = self._agents.get(w.agent_id, {})
        kept: list[tuple[DeviceSeries, int]] = []
        for m in batch.series:
            try:
                s = series_from_proto(m)
            except WireError:
                s = None
            if s is None or len(s) == 0:
                key = (m.device_uuid, _MALFORMED)
                rejected[key] = rejected.get(key, 0) + claimed_samples(len(m.timestamp_unix_ns))
                continue
            slot = devices.get(s.device_uuid)
            if slot is None:
                key = (s.device_uuid, _UNREGISTERED)
                rejected[key] = rejected.get(key, 0) + len(s)
                continue
            kept.append((s, slot))
        # Runs of consecutive series with one column set, as the wire decoder groups them.
        blocks: list[SeriesBlock] = []
        slots: list[list[int]] = []
        for _, run in itertools.groupby(kept, key=lambda e: frozenset(e[0].columns)):
            members = list(run)
            blocks.append(SeriesBlock.concat([s for s, _ in members]))
            slots.append([slot for _, slot in members])
        rank = itertools.count()
        parts = [
            _Part(b, _ints(s), np.zeros(len(s), dtype=np.int64), [next(rank) for _ in s])
            for b, s in zip(blocks, slots, strict=True)
        ]
        codes = self._check(parts, [w])
        clean: list[SeriesBlock] = []
        for block, c in zip(blocks, codes, strict=True):
            if c is not None:
                merge_counts(rejected, count_codes(block, c))
                block = block.take(c == 0)
            if len(block):
                clean.append(block)
        return replace(w, blocks=tuple(clean), rejected_samples=rejected, telemetry_wire=None)

    # --- a whole commit ------------------------------------------------------------------

    def prepare_batch(
        self, writes: Sequence[MessageWrite]
    ) -> tuple[list[MessageWrite], list[tuple[SeriesBlock, list[int]]]]:
        """Prepare a commit's writes together: what :meth:`prepare` does to each in turn,
        with the array work done once for all of them.

        Every series of the commit is length-checked with one array operation; sound series
        of registered devices with the same column set are joined into one block per column
        set and validated at once; each series' chunk is packed straight from its wire bytes
        (from the validated arrays when some of its samples were rejected).

        Returns:
            (the prepared writes, in order; each joined block, its rejected samples removed,
            with, for each of its device rows, the index of the write that carried it).
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
            candidates.append((i, digest, series))
        if not candidates:
            return out, []
        flat = [s for _, _, ss in candidates for s in ss]
        sound, samples, bitmaps, ts_bytes = _checked_lengths(flat)
        groups: dict[int, _Group] = {}
        rejected: dict[int, Counts] = {}
        packed: dict[int, list[ChunkRow | None]] = {}
        r = 0
        for i, _, series in candidates:
            k = len(series)
            r, first = r + k, r
            packed[i] = [None] * k
            if not k:
                continue
            devices = self._agents.get(out[i].agent_id, {})
            slots = list(map(devices.get, map(_UUID, series), itertools.repeat(-1, k)))
            signature = bitmaps[first]
            if (
                False not in sound[first:r]
                and -1 not in slots
                and bitmaps[first:r].count(signature) == k
            ):  # the usual message
                group = groups.get(signature) or groups.setdefault(signature, _Group())
                group.extend(series, samples[first:r], slots, i, 0, first)
                continue
            counts = rejected.setdefault(i, {})
            for j in range(k):
                if not sound[first + j]:
                    key = (series[j][0], _MALFORMED)
                    counts[key] = counts.get(key, 0) + claimed_samples(ts_bytes[first + j])
                elif slots[j] < 0:
                    key = (series[j][0], _UNREGISTERED)
                    counts[key] = counts.get(key, 0) + samples[first + j]
                else:
                    bitmap = bitmaps[first + j]
                    group = groups.get(bitmap) or groups.setdefault(bitmap, _Group())
                    group.extend(
                        series[j : j + 1],
                        samples[first + j : first + j + 1],
                        slots[j : j + 1],
                        i,
                        j,
                        first + j,
                    )
        parts = [g.part(bitmap) for bitmap, g in groups.items()]
        codes = self._check(parts, writes)
        joined: list[tuple[SeriesBlock, list[int]]] = []
        for part, g, c in zip(parts, groups.values(), codes, strict=True):
            block = part.block
            starts = block.offsets[:-1]
            rows: list[ChunkRow | None] = list(
                pack_raw_chunk_rows(
                    _bitmap(block),
                    g.rows,
                    g.samples,
                    np.minimum.reduceat(block.timestamp_unix_ns, starts).tolist(),
                    np.maximum.reduceat(block.timestamp_unix_ns, starts).tolist(),
                )
            )
            if c is not None:
                # Count the rejections per message, and repack only the series that lost
                # samples, from their remaining ones.
                index = np.repeat(np.arange(len(g.rows)), g.samples)
                bad = np.flatnonzero(c)
                keys, counts = np.unique(index[bad] * 256 + c[bad], return_counts=True)
                for key, n in zip(keys.tolist(), counts.tolist(), strict=True):
                    series = key >> 8
                    into = rejected.setdefault(g.writes[series], {})
                    name = (g.rows[series][0], REASONS[(key & 255) - 1].value)
                    into[name] = into.get(name, 0) + n
                keep = c == 0
                hit = np.zeros(len(g.rows), dtype=bool)
                hit[index[bad]] = True
                repack = np.flatnonzero(hit)
                rest = keep & hit[index]
                offsets = np.zeros(len(repack) + 1, dtype=np.int64)
                np.cumsum(np.bincount(index[rest], minlength=len(g.rows))[repack], out=offsets[1:])
                uuids = block.device_uuids
                sub = SeriesBlock(
                    tuple(uuids[k] for k in repack.tolist()),
                    offsets,
                    block.timestamp_unix_ns[rest],
                    {name: col[rest] for name, col in block.columns.items()},
                )
                for k, row in zip(repack.tolist(), pack_block_chunks(sub), strict=True):
                    rows[k] = row
                block = block.take(keep)
            for row, i, j in zip(rows, g.writes, g.positions, strict=True):
                packed[i][j] = row
            joined.append((block, g.writes))
        for i, digest, _ in candidates:
            w = out[i]
            # A telemetry write carries its identity and the telemetry only.
            out[i] = MessageWrite(
                w.agent_id,
                w.epoch,
                w.sequence,
                w.kind,
                digest,
                w.received_unix_ns,
                rejected_samples=rejected.get(i) or {},
                chunks=tuple(c for c in packed[i] if c is not None),
                stream_owner=w.stream_owner,
            )
        return out, joined

    # --- shared ----------------------------------------------------------------------------

    def _check(
        self, parts: Sequence[_Part], writes: Sequence[MessageWrite]
    ) -> list[npt.NDArray[np.uint8] | None]:
        """Every sample rule over ``parts`` (their writes' indices into ``writes``): the
        stateless rules block by block, then the energy rule across all of them."""
        if not parts:
            return []
        now = self._clock_ns()
        codes = [
            reject_codes(p.block, now_unix_ns=now, thresholds=self._thresholds[p.slots])
            for p in parts
        ]
        if not any(ENERGY_COLUMN in p.block.columns for p in parts):
            # Nothing to compare, but the devices' last sequences still move.
            energy_parts = [EnergyPart(None, p.block.offsets, None) for p in parts]
        else:
            energy_parts = [
                EnergyPart(p.block.columns.get(ENERGY_COLUMN), p.block.offsets, c)
                for p, c in zip(parts, codes, strict=True)
            ]
        epochs = np.array([w.epoch for w in writes], dtype=np.uint64)
        sequences = np.array([w.sequence for w in writes], dtype=np.uint64)
        write = np.concatenate([p.writes for p in parts])
        # One part's series are in arrival order already; several parts need their ranks.
        ranks = (
            np.arange(len(write)) if len(parts) == 1 else np.concatenate([p.ranks for p in parts])
        )
        decreasing = self._energy.check(
            energy_parts,
            EnergySeries(
                np.concatenate([p.slots for p in parts]),
                epochs[write],
                sequences[write],
                write,
                ranks,
            ),
        )
        for k, d in enumerate(decreasing):
            if d is not None:
                c = codes[k]
                if c is None:
                    c = codes[k] = np.zeros(len(parts[k].block), dtype=np.uint8)
                c[d] = ENERGY_DECREASING_CODE
        return codes

    @staticmethod
    def _rejected(w: MessageWrite, detail: str, code: str) -> MessageWrite:
        return replace(w, rejected_detail=detail, reject_code=code, telemetry_wire=None)


_ITEMSIZES = np.array([spec.dtype.itemsize for spec in TELEMETRY_COLUMNS], dtype=np.int64)
_COLUMN_BITS = np.array([1 << i for i in range(len(TELEMETRY_COLUMNS))], dtype=np.int64)
_UUID = operator.itemgetter(0)
_BIT_OF = {spec.name: 1 << i for i, spec in enumerate(TELEMETRY_COLUMNS)}


def _bitmap(block: SeriesBlock) -> int:
    return sum(_BIT_OF[name] for name in block.columns)


def _checked_lengths(
    rows: list[SeriesFields],
) -> tuple[list[bool], list[int], list[int], list[int]]:
    """For each series: whether its structure is sound (a device uuid, whole int64
    timestamps, 1 to ``MAX_SERIES_SAMPLES`` samples, every column present with exactly one
    value per timestamp or absent), its sample count, the bitmap of its columns (bit i ⇔
    ``TELEMETRY_COLUMNS[i]``, the stored chunk's bitmap) and its timestamps' byte length.
    One array operation for a whole commit's series."""
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
    return sound.tolist(), samples.tolist(), bitmaps.tolist(), sizes[:, 1].tolist()


@dataclass(frozen=True)
class _Part:
    """A block to validate, with per series its device's slot, the index of the write that
    carried it and its arrival rank in the commit (ascending within a part)."""

    block: SeriesBlock
    slots: npt.NDArray[np.int64]
    writes: npt.NDArray[np.int64]
    ranks: Sequence[int]


@dataclass
class _Group:
    """A commit's series that carry one column set, with where each came from."""

    rows: list[SeriesFields] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    writes: list[int] = field(default_factory=list)
    """Index of the write each series came from."""
    positions: list[int] = field(default_factory=list)
    """Index of each series within its message."""
    ranks: list[int] = field(default_factory=list)
    """Index of each series among the commit's series (their arrival order)."""

    def extend(
        self,
        rows: Sequence[SeriesFields],
        samples: Sequence[int],
        slots: Sequence[int],
        write: int,
        first: int,
        rank: int,
    ) -> None:
        """Add ``rows`` of message ``write``, the first at position ``first`` in it and at
        ``rank`` among the commit's series."""
        k = len(rows)
        self.rows.extend(rows)
        self.samples.extend(samples)
        self.slots.extend(slots)
        self.writes.extend([write] * k)
        self.positions.extend(range(first, first + k))
        self.ranks.extend(range(rank, rank + k))

    def part(self, bitmap: int) -> _Part:
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
        block = SeriesBlock(tuple(fields[0]), offsets, ts, columns)
        return _Part(block, _ints(self.slots), _ints(self.writes), self.ranks)


def _ints(values: list[int]) -> npt.NDArray[np.int64]:
    return np.fromiter(values, dtype=np.int64, count=len(values))


def _parse(wire: bytes) -> telemetry_pb2.TelemetryBatch:
    """The batch in ``wire``.

    Raises:
        WireError: the bytes are not a ``TelemetryBatch`` (the stream only framed them).
    """
    try:
        return telemetry_pb2.TelemetryBatch.FromString(wire)
    except DecodeError as exc:
        raise WireError(f"telemetry is not a TelemetryBatch: {exc}") from None
