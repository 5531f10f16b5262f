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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from flopwatt.records import TELEMETRY_COLUMNS
from flopwatt.store.column_header import pack_column_header, unpack_column_header

PACKED_MAGIC = b"FWZ1"
PACKED_MAGIC_WIDE = b"FWZ2"
"""Header magics: 32-bit and 64-bit column bitmaps (see :mod:`flopwatt.store.column_header`)."""
_WHAT = "compact telemetry chunk"

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


def encode_floats(
    columns: Sequence[npt.NDArray[Any]],
) -> list[tuple[int, int, npt.NDArray[Any]]]:
    """(encoding, scale exponent, words) for each float column (all of one length): exact
    short decimals ``SCALED`` (the smallest of :data:`SCALES` that gives back every value bit
    for bit; words: the scaled integers, delta, zigzag), anything else ``XOR`` with the previous
    value's bits (words as wide as the values). Columns of a dtype are transformed as one
    matrix: a few numpy calls for a few dozen short columns, not a few per column."""
    out: list[tuple[int, int, npt.NDArray[Any]]] = [(XOR, 0, np.zeros(0))] * len(columns)
    groups: dict[np.dtype[Any], list[int]] = {}
    for i, c in enumerate(columns):
        groups.setdefault(c.dtype, []).append(i)
    for dtype, index in groups.items():
        matrix = np.stack([columns[i] for i in index])
        unsigned = f"u{dtype.itemsize}"
        bits = matrix.view(unsigned)
        xor = bits.copy()
        xor[:, 1:] ^= bits[:, :-1]
        scaled_words = np.empty(matrix.shape, dtype=np.uint64)
        codes = np.full(len(index), XOR, dtype=np.uint8)
        ks = np.zeros(len(index), dtype=np.uint8)
        wide = matrix.astype(np.float64)
        left = np.flatnonzero(np.isfinite(matrix).all(axis=1))
        for k, scale in enumerate(SCALES):
            if left.size == 0:
                break
            scaled = np.round(wide[left] * scale)
            exact = (np.abs(scaled) < 2**52).all(axis=1)
            with np.errstate(invalid="ignore", over="ignore"):
                back = (scaled / scale).astype(dtype).view(unsigned)
            exact &= (back == bits[left]).all(axis=1)
            hit = left[exact]
            if hit.size:
                scaled_words[hit] = delta_rows(scaled[exact].astype(np.int64))
                codes[hit] = SCALED
                ks[hit] = k
            left = left[~exact]
        for j, i in enumerate(index):
            if codes[j] == SCALED:
                out[i] = (SCALED, int(ks[j]), scaled_words[j])
            else:
                out[i] = (XOR, 0, xor[j])
    return out


def delta_rows(matrix: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """:func:`delta` of every row of an int64 matrix at once."""
    with np.errstate(over="ignore"):
        d = np.diff(matrix, axis=1, prepend=np.zeros((matrix.shape[0], 1), dtype=np.int64))
    return _zigzag(d)


def shuffle_rows(words: npt.NDArray[np.uint64]) -> bytes:
    """:func:`shuffle` of every row of a uint64 matrix, concatenated row after row."""
    m, n = words.shape
    planes = words.astype("<u8", copy=False).view(np.uint8).reshape(m, n, 8)
    return np.ascontiguousarray(planes.transpose(0, 2, 1)).tobytes()


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
    present: list[npt.NDArray[Any]] = []
    for i, spec in enumerate(TELEMETRY_COLUMNS):
        col = columns.get(spec.name)
        if col is None:
            continue
        if col.shape != (n,):
            raise ValueError(f"column {spec.name} has {col.shape} values for {n} samples")
        bitmap |= 1 << i
        present.append(np.ascontiguousarray(col.astype(_LE_DTYPES[spec.name], copy=False)))
    floats = [i for i, v in enumerate(present) if v.dtype.kind == "f"]
    ints = [i for i, v in enumerate(present) if v.dtype.kind != "f"]
    encoded: list[tuple[int, int, npt.NDArray[Any]]] = [(DELTA, 0, np.zeros(0))] * len(present)
    for i, e in zip(floats, encode_floats([present[i] for i in floats]), strict=True):
        encoded[i] = e
    if ints:
        words = delta_rows(np.stack([present[i].astype(np.int64) for i in ints]))
        for j, i in enumerate(ints):
            encoded[i] = (DELTA, 0, words[j])
    codes = bytearray()
    parts = [shuffle(delta(delta(timestamps_unix_ns.astype(np.int64)).view(np.int64)))]
    for code, k, words in encoded:
        codes += bytes((code, k))
        parts.append(shuffle(words))
    body = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(b"".join(parts))
    head = pack_column_header(PACKED_MAGIC, PACKED_MAGIC_WIDE, n, bitmap)
    return head + bytes(codes) + body


def unpack_compact(
    blob: bytes,
) -> tuple[npt.NDArray[np.int64], dict[str, npt.NDArray[Any]]]:
    """Inverse of :func:`pack_compact`: (timestamps, {column: values}), bit for bit.

    Raises:
        ValueError: not a compact chunk, or corrupt.
    """
    n, bitmap, codes_at = unpack_column_header(blob, PACKED_MAGIC, PACKED_MAGIC_WIDE, _WHAT)
    present = [spec for i, spec in enumerate(TELEMETRY_COLUMNS) if bitmap & (1 << i)]
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
