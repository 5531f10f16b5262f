"""Compact raw chunks: one device's samples over a minute or more, encoded column by column and
compressed with zstd (the ``telemetry_packed.data`` column).

Per-message chunks (:mod:`flopwatt.store.chunks`) keep ingest cheap but cost ~80 bytes per
sample; the store's maintenance re-packs them once they have settled. Each column is transformed
so that what changes little between samples becomes bytes that are mostly zero, then the
columns are byte-shuffled (byte plane by byte plane) and compressed together:

* timestamps (ns): delta of delta, zigzag — a steady tick becomes zeros, jitter a few bits;
* integer columns (clocks, throttle bits, memory bytes): delta, zigzag;
* float columns whose values are exact decimals of a few digits (NVML reports milliwatts,
  millijoules, whole degrees and percent): the scaled integers, delta, zigzag — lossless,
  checked value by value before it is chosen;
* any other float column (NaN, full-precision noise): the XOR of each value's bits with its
  predecessor's (as in Gorilla), which zeroes the sign, exponent and leading mantissa bits.

Every encoding is lossless: :func:`unpack_compact` returns the exact bits :func:`pack_compact`
was given.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from flopwatt.records import TELEMETRY_COLUMNS

PACKED_MAGIC = b"FWZ1"
_HEADER = struct.Struct("<4sII")
"""magic, sample count, bitmap of present columns (bit i ⇔ ``TELEMETRY_COLUMNS[i]``)."""

RAW, DELTA, SCALED, XOR = 0, 1, 2, 3
SCALES = (1, 10, 100, 1000)
"""Decimal scales tried for float columns (10**k), smallest first."""

ZSTD_LEVEL = 9
"""Compression level: maintenance packs a device's minute once, and readers decompress it
rarely, so spend the CPU on the ratio (level 9 packs ~10 % smaller than 3 here)."""

_LE_DTYPES = {c.name: np.dtype(c.dtype).newbyteorder("<") for c in TELEMETRY_COLUMNS}


def _zigzag(d: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    return ((d << 1) ^ (d >> 63)).view(np.uint64)


def _unzigzag(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    return ((z >> np.uint64(1)).view(np.int64)) ^ -((z & np.uint64(1)).view(np.int64))


def delta(values: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    # int64 arithmetic wraps modulo 2**64, which the cumulative sum undoes exactly.
    with np.errstate(over="ignore"):
        d = np.diff(values, prepend=np.int64(0))
    return _zigzag(d)


def undelta(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    with np.errstate(over="ignore"):
        return np.cumsum(_unzigzag(z), dtype=np.int64)


def shuffle(words: npt.NDArray[Any]) -> bytes:
    """Byte planes: every value's byte 0, then every byte 1, ... (zstd sees runs of zeros)."""
    width = words.dtype.itemsize
    return (
        words.astype(words.dtype.newbyteorder("<"), copy=False)
        .view(np.uint8)
        .reshape(-1, width)
        .T.tobytes()
    )


def unshuffle(data: bytes, n: int, dtype: str) -> npt.NDArray[Any]:
    width = np.dtype(dtype).itemsize
    planes = np.frombuffer(data, dtype=np.uint8, count=n * width).reshape(width, n)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(n)


def encode_float(values: npt.NDArray[Any]) -> tuple[int, int, npt.NDArray[Any]]:
    """(encoding, scale exponent, words) for one float column."""
    if np.all(np.isfinite(values)):
        as64 = values.astype(np.float64)
        for k, scale in enumerate(SCALES):
            scaled = np.round(as64 * scale)
            if np.all(np.abs(scaled) < 2**52):
                back = (scaled / scale).astype(values.dtype)
                if np.array_equal(
                    back.view(f"u{values.dtype.itemsize}"), values.view(f"u{values.dtype.itemsize}")
                ):
                    return SCALED, k, delta(scaled.astype(np.int64))
    bits = values.view(f"<u{values.dtype.itemsize}")
    return XOR, 0, bits ^ np.concatenate((bits[:1] * 0, bits[:-1]))


def decode_words(
    words: npt.NDArray[Any], code: int, k: int, dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    """Values of ``dtype`` from their transformed words (inverse of the encodings above).

    Raises:
        ValueError: an unknown encoding.
    """
    if code == DELTA:
        return undelta(words.view(np.uint64)).astype(dtype)
    if code == SCALED:
        return (undelta(words.view(np.uint64)).astype(np.float64) / SCALES[k]).astype(dtype)
    if code == XOR:
        return np.bitwise_xor.accumulate(words).view(dtype)
    raise ValueError(f"unknown encoding {code}")


def pack_compact(
    timestamps_unix_ns: npt.NDArray[np.int64], columns: Mapping[str, npt.NDArray[Any]]
) -> bytes:
    """One device's samples (time order) as a compact chunk blob.

    Args:
        timestamps_unix_ns: sample times (ns since the Unix epoch).
        columns: column name → values, each as long as the timestamps; absent columns absent.

    Raises:
        ValueError: a column of another length or an unknown column.
    """
    n = int(timestamps_unix_ns.shape[0])
    unknown = set(columns) - set(_LE_DTYPES)
    if unknown:
        raise ValueError(f"unknown telemetry columns {sorted(unknown)}")
    bitmap = 0
    codes = bytearray()
    parts = [shuffle(delta(delta(timestamps_unix_ns.astype(np.int64)).view(np.int64)))]
    for i, spec in enumerate(TELEMETRY_COLUMNS):
        col = columns.get(spec.name)
        if col is None:
            continue
        if col.shape != (n,):
            raise ValueError(f"column {spec.name} has {col.shape} values for {n} samples")
        bitmap |= 1 << i
        values = np.ascontiguousarray(col.astype(_LE_DTYPES[spec.name], copy=False))
        if values.dtype.kind == "f":
            code, k, words = encode_float(values)
        else:
            code, k, words = DELTA, 0, delta(values.astype(np.int64))
        codes += bytes((code, k))
        parts.append(shuffle(words))
    body = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(b"".join(parts))
    return _HEADER.pack(PACKED_MAGIC, n, bitmap) + bytes(codes) + body


def unpack_compact(
    blob: bytes,
) -> tuple[npt.NDArray[np.int64], dict[str, npt.NDArray[Any]]]:
    """Inverse of :func:`pack_compact`: (timestamps, {column: values}), bit for bit.

    Raises:
        ValueError: not a compact chunk, or corrupt.
    """
    magic, n, bitmap = _HEADER.unpack_from(blob)
    if magic != PACKED_MAGIC:
        raise ValueError("not a flopwatt compact telemetry chunk")
    present = [spec for i, spec in enumerate(TELEMETRY_COLUMNS) if bitmap & (1 << i)]
    codes_at = _HEADER.size
    body_at = codes_at + 2 * len(present)
    try:
        raw = zstandard.ZstdDecompressor().decompress(bytes(blob[body_at:]))
    except zstandard.ZstdError as exc:
        raise ValueError(f"compact telemetry chunk is corrupt: {exc}") from exc
    pos = 0

    def take(dtype: str) -> npt.NDArray[Any]:
        nonlocal pos
        width = np.dtype(dtype).itemsize * n
        if pos + width > len(raw):
            raise ValueError("compact telemetry chunk is truncated")
        out = unshuffle(raw[pos : pos + width], n, dtype)
        pos += width
        return out

    ts = undelta(undelta(take("<u8")).view(np.uint64))
    columns: dict[str, npt.NDArray[Any]] = {}
    for j, spec in enumerate(present):
        code, k = blob[codes_at + 2 * j], blob[codes_at + 2 * j + 1]
        dtype = _LE_DTYPES[spec.name]
        columns[spec.name] = decode_words(
            take("<u8" if code != XOR else f"<u{dtype.itemsize}"), code, k, dtype
        )
    if pos != len(raw):
        raise ValueError("compact telemetry chunk has trailing bytes")
    return ts, columns
