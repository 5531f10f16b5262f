"""The telemetry chunk: one device's samples of one message as a blob (the store's
``telemetry.data`` column). Engine-independent: every store engine and every reader of stored
telemetry (the report, the fault suite's ledger) uses these functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flopwatt.records import TELEMETRY_COLUMNS, SeriesBlock
from flopwatt.store.column_header import pack_column_header, unpack_column_header

ChunkRow = tuple[str, int, int, int, bytes]
"""One device's stored chunk: (device uuid, first and last timestamp ns, samples, blob)."""

_LE_DTYPES = {c.name: np.dtype(c.dtype).newbyteorder("<") for c in TELEMETRY_COLUMNS}

CHUNK_MAGIC = b"FWT1"
CHUNK_MAGIC_WIDE = b"FWT2"
"""The same chunk with a 64-bit column bitmap (see :mod:`flopwatt.store.column_header`)."""
_WHAT = "telemetry chunk"


def chunk_header(n: int, bitmap: int) -> bytes:
    """The chunk header for ``n`` samples with the columns of ``bitmap`` (narrowest that fits)."""
    return pack_column_header(CHUNK_MAGIC, CHUNK_MAGIC_WIDE, n, bitmap)


def pack_chunk(
    timestamps: np.ndarray[Any, Any], columns: Mapping[str, np.ndarray[Any, Any]]
) -> bytes:
    """One device's samples as a telemetry chunk blob (the ``data`` column).

    Layout, little-endian: magic ``FWT1``; uint32 sample count n; uint32 bitmap of the columns
    present (bit i ⇔ ``TELEMETRY_COLUMNS[i]``) — magic ``FWT2`` and a uint64 bitmap where a
    column past the 32nd is present; int64[n] timestamps (ns since the Unix epoch);
    then each present column's n values in ``TELEMETRY_COLUMNS`` order, in its own dtype.
    One blob per row keeps inserts several times cheaper than a column per array.
    """
    n = int(timestamps.shape[0])
    bitmap = 0
    parts = [b"", timestamps.astype("<i8", copy=False).tobytes()]
    for i, spec in enumerate(TELEMETRY_COLUMNS):
        col = columns.get(spec.name)
        if col is not None:
            bitmap |= 1 << i
            parts.append(col.astype(_LE_DTYPES[spec.name], copy=False).tobytes())
    parts[0] = chunk_header(n, bitmap)
    return b"".join(parts)


def pack_raw_chunk_rows(
    bitmap: int,
    series: Sequence[tuple[Any, ...]],
    samples: Sequence[int],
    firsts_unix_ns: Sequence[int],
    lasts_unix_ns: Sequence[int],
) -> list[ChunkRow]:
    """Chunk rows (see :func:`pack_chunk`) from bytes already in the chunk's layout.

    Each series is (device uuid, packed little-endian int64 timestamps, then each column's
    packed values in ``TELEMETRY_COLUMNS`` order, ``b""`` where absent); ``bitmap`` has the
    bits of the present columns. The wire's packed arrays have exactly this layout, so the
    writer stores them without decoding. The caller has checked every length against
    ``samples`` and supplies each series' first and last timestamp (ns).
    """
    return [
        (s[0], a, b, n, b"".join((chunk_header(n, bitmap), *s[1:])))
        for s, n, a, b in zip(series, samples, firsts_unix_ns, lasts_unix_ns, strict=True)
    ]


def pack_block_chunks(block: SeriesBlock) -> list[ChunkRow | None]:
    """Every device's chunk of ``block`` (see :func:`pack_chunk`), in device order; None for a
    device without samples. Each column is packed once for the whole block and cut per device,
    so a block joining many messages is packed in one pass."""
    bounds = block.offsets.tolist()
    nonempty = [d for d in range(len(block.device_uuids)) if bounds[d + 1] > bounds[d]]
    out: list[ChunkRow | None] = [None] * len(block.device_uuids)
    if not nonempty:
        return out
    ts_all = np.ascontiguousarray(block.timestamp_unix_ns.astype("<i8", copy=False))
    present = [
        (
            i,
            np.ascontiguousarray(
                block.columns[spec.name].astype(_LE_DTYPES[spec.name], copy=False)
            ),
        )
        for i, spec in enumerate(TELEMETRY_COLUMNS)
        if spec.name in block.columns
    ]
    bitmap = sum(1 << i for i, _ in present)
    n_dev = len(block.device_uuids)
    per_device = bounds[1] - bounds[0]
    if len(nonempty) == n_dev and bounds[-1] == per_device * n_dev:
        # Every device has the same number of samples (the usual batch): lay all blobs out as
        # the rows of one byte matrix, a few array copies for the whole block.
        n = per_device
        widths = [8 * n] + [col.dtype.itemsize * n for _, col in present]
        head = chunk_header(n, bitmap)
        matrix = np.empty((n_dev, len(head) + sum(widths)), dtype=np.uint8)
        matrix[:, : len(head)] = np.frombuffer(head, np.uint8)
        pos = len(head)
        for arr, width in zip([ts_all] + [col for _, col in present], widths, strict=True):
            matrix[:, pos : pos + width] = arr.view(np.uint8).reshape(n_dev, width)
            pos += width
        stamps = ts_all.reshape(n_dev, n)
        firsts = stamps.min(axis=1).tolist()
        lasts = stamps.max(axis=1).tolist()
        for d, (uuid, row) in enumerate(zip(block.device_uuids, matrix, strict=True)):
            out[d] = (uuid, firsts[d], lasts[d], n, row.tobytes())
        return out
    ts_bytes = ts_all.tobytes()
    packed = [(col.tobytes(), col.dtype.itemsize) for _, col in present]
    starts = np.array([bounds[d] for d in nonempty], dtype=np.int64)
    firsts = np.minimum.reduceat(ts_all, starts).tolist()
    lasts = np.maximum.reduceat(ts_all, starts).tolist()
    for k, d in enumerate(nonempty):
        a, b = bounds[d], bounds[d + 1]
        parts = [chunk_header(b - a, bitmap), ts_bytes[8 * a : 8 * b]]
        parts += [raw[a * size : b * size] for raw, size in packed]
        out[d] = (block.device_uuids[d], firsts[k], lasts[k], b - a, b"".join(parts))
    return out


def unpack_chunk(blob: bytes) -> tuple[np.ndarray[Any, Any], dict[str, np.ndarray[Any, Any]]]:
    """Inverse of :func:`pack_chunk`: (timestamps, {column: values}); absent columns absent.

    Raises:
        ValueError: not a telemetry chunk, or truncated.
    """
    n, bitmap, offset = unpack_column_header(blob, CHUNK_MAGIC, CHUNK_MAGIC_WIDE, _WHAT)
    ts = np.frombuffer(blob, dtype="<i8", count=n, offset=offset)
    offset += 8 * n
    columns = {}
    for i, spec in enumerate(TELEMETRY_COLUMNS):
        if bitmap & (1 << i):
            dtype = _LE_DTYPES[spec.name]
            columns[spec.name] = np.frombuffer(blob, dtype=dtype, count=n, offset=offset)
            offset += dtype.itemsize * n
    if offset != len(blob):
        raise ValueError("telemetry chunk has trailing or missing bytes")
    return ts, columns
